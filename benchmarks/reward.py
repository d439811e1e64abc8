"""Reward scoring throughput: one K-head reward model against K single-head reward models.

MOSLIM's reason for a multi-head reward model is cost: K preference dimensions share one backbone,
so scoring a response for all K heads takes one forward instead of K. This script measures that
on the same inputs:

* ``multi-head``    -- one ``MultiHeadRewardModel`` with K heads, scored with
  ``moalign.rewards.model.score_texts`` (tokenise, sort by length, batch, one forward per batch);
* ``K single-head`` -- K ``MultiHeadRewardModel``s with one head each and their own backbone (K
  copies of the same weights, as K separately trained reward models would be), each scoring every
  input with ``score_texts`` in turn.

Both rows use the same N (prompt, response) inputs, batch size and maximum length, in fp32 on the
CPU (or the GPU if there is one). Each repeat times both rows back to back after an untimed warm-up;
the table reports the median repeat. Throughput counts input sequences scored for all K
dimensions per second, so the K single-head row needs K forwards for each of them.

Target (from the issue): speed-up = (K single-head time) / (multi-head time) >= 0.8 x K.

Run from the repository root::

    .venv/bin/python benchmarks/reward.py                        # tiny random Llama, a quick check
    .venv/bin/python benchmarks/reward.py --model-dir models/base  # the real number (SmolLM2-135M)
    .venv/bin/python benchmarks/reward.py --help

The default model is a 2-layer random Llama built into a temporary folder (seconds, but its
timings say little: at that size per-batch overheads dominate). For a real number use
``models/base``, the SmolLM2-135M-Instruct directory ``dvc repro prepare_model`` makes.
The script measures; it never fails on a missed target.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

WORDS = (
    "the",
    "model",
    "answers",
    "a",
    "question",
    "about",
    "rivers",
    "cities",
    "numbers",
    "and",
    "history",
    "with",
    "care",
    "while",
    "a",
    "reader",
    "checks",
    "each",
    "claim",
    "against",
    "sources",
    "and",
    "notes",
    "where",
    "the",
    "reasoning",
    "is",
    "weak",
    "or",
    "strong",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Throughput of scoring N (prompt, response) inputs with one K-head reward model (one "
            "backbone forward for all heads) versus K single-head reward models (K backbones, one "
            "forward each). Target: speed-up >= 0.8 x K."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-dir",
        default=None,
        help="HF model directory for the backbone; default: a tiny random Llama built in a temporary "
        "folder (moalign.models.prepare_base_model('tiny-random-llama')). For a real number use "
        "models/base (SmolLM2-135M, made by `dvc repro prepare_model`).",
    )
    parser.add_argument("--dimensions", type=int, default=4, help="K: heads of the multi-head model")
    parser.add_argument("--classes", type=int, default=5, help="classes per head")
    parser.add_argument("--sequences", type=int, default=64, help="N: inputs scored per row")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per input at most")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs per forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the table shows the median")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs and the heads")
    parser.add_argument("--json", type=Path, default=None, help="also write the settings and results here")
    return parser


def synthetic_inputs(count: int, max_length: int, seed: int) -> tuple[list[str], list[str]]:
    """N prompts and responses of varied length, the longest near ``max_length`` tokens."""
    rng = random.Random(seed)
    prompts, responses = [], []
    for i in range(count):
        prompts.append(f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 20))) + "?")
        words = rng.randint(max(1, max_length // 4), max(2, max_length * 3 // 4))
        responses.append(" ".join(rng.choices(WORDS, k=words)) + ".")
    return prompts, responses


def time_scoring(models, tokenizer, prompts, responses, batch_size: int, max_length: int) -> float:
    """Seconds for every model to score every input (``score_texts``), one model after another."""
    import torch

    from moalign.rewards.model import score_texts

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for model in models:
        score_texts(model, tokenizer, prompts, responses, batch_size=batch_size, max_length=max_length)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoTokenizer

    from moalign.models import pick_device, prepare_base_model
    from moalign.rewards.model import MultiHeadRewardModel, encode_pairs

    k = args.dimensions
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = (
            Path(args.model_dir) if args.model_dir else prepare_base_model("tiny-random-llama", scratch)
        )
        device = pick_device()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        names = [f"dimension_{i}" for i in range(k)]
        torch.manual_seed(args.seed)
        multi = [MultiHeadRewardModel.from_backbone(model_dir, names, [args.classes] * k, device=device)]
        singles = [
            MultiHeadRewardModel.from_backbone(model_dir, [name], [args.classes], device=device)
            for name in names
        ]

    prompts, responses = synthetic_inputs(args.sequences, args.max_length, args.seed)
    tokens = sum(len(ids) for ids in encode_pairs(tokenizer, prompts, responses, args.max_length))
    for model in multi + singles:  # warm-up: first-call allocations and kernel selection are not timed
        time_scoring([model], tokenizer, prompts[:2], responses[:2], args.batch_size, args.max_length)

    times: dict[str, list[float]] = {"multi": [], "single": []}
    for _ in range(args.repeats):
        times["multi"].append(
            time_scoring(multi, tokenizer, prompts, responses, args.batch_size, args.max_length)
        )
        times["single"].append(
            time_scoring(singles, tokenizer, prompts, responses, args.batch_size, args.max_length)
        )
    multi_s, single_s = statistics.median(times["multi"]), statistics.median(times["single"])
    speedup = single_s / multi_s
    return {
        "settings": {
            "model_dir": str(args.model_dir or "tiny-random-llama (temporary)"),
            "dimensions": k,
            "classes": args.classes,
            "sequences": args.sequences,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "input_tokens": tokens,
            "device": str(device),
            "dtype": "float32",
            "torch_threads": torch.get_num_threads(),
            "machine": platform.platform(),
        },
        "times_s": times,
        "multi_head": {"seconds": multi_s, "sequences_per_s": args.sequences / multi_s},
        "single_heads": {"seconds": single_s, "sequences_per_s": args.sequences / single_s},
        "speedup": speedup,
        "target": 0.8 * k,
        "passed": speedup >= 0.8 * k,
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    settings, k = result["settings"], result["settings"]["dimensions"]
    table = Table(
        title=f"Reward scoring: 1 model with {k} heads vs {k} single-head models",
        caption=(
            f"{settings['sequences']} inputs ({settings['input_tokens']} tokens), max length "
            f"{settings['max_length']}, batch {settings['batch_size']}, median of {settings['repeats']} "
            f"repeats, {settings['device']} {settings['dtype']}, {settings['torch_threads']} threads; "
            f"model {settings['model_dir']}"
        ),
    )
    for column in ("row", "seq/s", "time (s)", "speed-up", f"target (0.8×{k})", "result"):
        table.add_column(column, justify="left" if column == "row" else "right")
    verdict = "PASS" if result["passed"] else "FAIL"
    multi, single = result["multi_head"], result["single_heads"]
    table.add_row(
        f"multi-head ({k} heads)",
        f"{multi['sequences_per_s']:.2f}",
        f"{multi['seconds']:.2f}",
        f"{result['speedup']:.2f}×",
        f"{result['target']:.1f}×",
        verdict,
    )
    table.add_row(
        f"{k} single-head", f"{single['sequences_per_s']:.2f}", f"{single['seconds']:.2f}", "1.00×", "—", ""
    )
    Console(width=max(120, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dimensions < 1 or args.sequences < 1 or args.repeats < 1:
        raise SystemExit("--dimensions, --sequences and --repeats must be at least 1")
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
