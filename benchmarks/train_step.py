"""Training-step throughput and peak memory: moalign's trainer against TRL's, on the same pairs.

Run from the repository root (fp32 on the CPU unless told otherwise; the real measurement takes a
while on SmolLM2)::

    .venv/bin/python benchmarks/train_step.py                      # models/base, 8 pairs, batch 4
    .venv/bin/python benchmarks/train_step.py --model /tmp/tiny --pairs 4 --batch-size 2 --steps 2 --json /tmp/t.json
    .venv/bin/python benchmarks/train_step.py --only moalign-simpo --only trl-cpo-simpo --json out.json
    .venv/bin/python benchmarks/train_step.py --device cuda --dtype bfloat16 --attn sdpa --gradient-checkpointing \
        --only moalign-simpo --only moalign-amopo --only moalign-amopo-fast --json gpu.json
    .venv/bin/python benchmarks/train_step.py --help

What it measures. Every configuration (row) trains the same model on the same first N pairs of
``data/validated/train.jsonl`` with the same batch size (pairs per optimizer step), maximum length,
optimizer defaults, device and precision (``--device``/``--dtype``: fp32 on the CPU by default), and
either full fine-tuning or the same LoRA adapters (``--lora``; the adapter settings come from
``train.lora`` in params.yaml):

* ``moalign-simpo``  -- ``moalign.training.preference.train_policy`` with ``train.method=simpo``;
* ``moalign-amopo``  -- the same with ``train.method=amopo``: each pair is scored under the K
  dimension prompts (K = ``len(dimensions.names)``), so a step runs K x 2 sequences per pair, with
  ``train.amopo_memory=low`` (a few pairs per forward and backward, at most SimPO's 2 x B sequences);
* ``moalign-amopo-fast`` -- the same with ``train.amopo_memory=fast``: one forward over all B x K x 2
  sequences of the step (moalign's AMoPO step before the low-memory one; the same gradients);
* ``trl-cpo-simpo``  -- TRL's ``CPOTrainer`` (``trl.experimental.cpo`` in TRL 1.x) with
  ``loss_type="simpo"``, ``cpo_alpha=0`` (pure SimPO), the prompt rendered with the chat template;
* ``trl-dpo``        -- TRL's ``DPOTrainer`` (sigmoid loss) with its reference model (a frozen copy
  of the policy, or the adapter-disabled policy under LoRA), scored every step.

Each row runs in a fresh subprocess (this script with ``--_worker``), so the peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, read after the last optimizer step and before
any final checkpoint is written) belongs to that configuration alone; a row that fails prints its
error in the table and the other rows still run.

On a GPU (``--device cuda``; ``--dtype bfloat16`` as moalign's ``dtype: auto`` picks there) the moalign
rows go through ``train_policy(dtype=...)``, which places the model with ``moalign.models.pick_device``
and sets the Trainer's bf16/fp16 from the dtype. moalign has no setting for the attention kernel or
activation checkpointing, so ``--attn`` (``model.set_attn_implementation``) and
``--gradient-checkpointing`` (``model.activation_checkpointing_enable()``, non-reentrant, as the
Trainer's own ``activation_checkpointing`` does) are applied to the trained model by the step
callback before the first step, the same way in every row. Each row then also records
``peak_cuda_mib`` (``torch.cuda.max_memory_allocated`` after the last step; every row is a fresh
process, and its peak is reset before training) and the ratio ``amopo_peak_cuda_memory_vs_simpo``;
the step time is taken after a ``torch.cuda.synchronize()``.

Per optimizer step it records, from a ``transformers.TrainerCallback``:

* the wall time between consecutive ``on_step_end`` events (data loading, forward, backward,
  optimizer, logging: the whole step); the first ``--warmup-steps`` steps are not timed;
* the tokens that went through the policy's forward: the non-pad tokens (prompt + completion) of
  every sequence, counted by a forward pre-hook on the trained model from the attention mask, with
  gradients enabled only -- so AMoPO's K x 2 sequences per pair all count, and TRL DPO's
  reference forward (no-grad) does not;
* the pairs per step (sequences / 2 / prompts per pair).

Targets (from the issue), printed under the table as PASS/FAIL:

* moalign SimPO tokens/s >= TRL CPO(simpo) tokens/s;
* AMoPO s/pair <= 1.1 x K x SimPO s/pair (moalign's SimPO row);
* AMoPO peak RSS <= 1.3 x SimPO peak RSS (``amopo_peak_memory_vs_simpo``);
* AMoPO (low) s/step <= 1.15 x AMoPO (fast) s/step (``amopo_low_vs_fast_time``);
* on a GPU: AMoPO peak CUDA memory <= 1.3 x SimPO's (``amopo_peak_cuda_memory_vs_simpo``).

The results (configuration, every row with its per-step times, the ratios, the targets and the
machine's load average before and after) go to ``benchmarks/results/train_step.json`` unless
``--json`` names another file. The script is a measurement, not a test: it never fails on a missed
target (exit status 1 means a row failed to run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

METHODS = {
    "moalign-simpo": "moalign SimPO",
    "moalign-amopo": "moalign AMoPO (amopo_memory: low)",
    "moalign-amopo-fast": "moalign AMoPO (amopo_memory: fast)",
    "trl-cpo-simpo": "TRL CPO (simpo, cpo_alpha=0)",
    "trl-dpo": "TRL DPO (sigmoid, ref model)",
}
AMOPO_TARGET = 1.1
MEMORY_TARGET = 1.3  # AMoPO peak RSS / SimPO peak RSS at the same batch
LOW_TIME_TARGET = 1.15  # AMoPO low-memory s/step / AMoPO one-forward s/step
DEFAULT_JSON = REPO_ROOT / "benchmarks/results/train_step.json"

WORKER_ENV = {
    "CUDA_VISIBLE_DEVICES": "",  # --device cpu: every row on the CPU, whatever the machine has (dropped for cuda)
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    "PYTHONUNBUFFERED": "1",
}


def _worker_env(device: str) -> dict[str, str]:
    """WORKER_ENV for a row on ``device``: the GPUs stay visible to a cuda row."""
    return {k: v for k, v in WORKER_ENV.items() if device == "cpu" or k != "CUDA_VISIBLE_DEVICES"}


# ------------------------------------------------------------------------------------------------
# command line


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where X says something (not None, not the store_true False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/train_step.py",
        description=(
            "Time optimizer steps (tokens/s, pairs/s) and peak RSS of moalign SimPO and AMoPO against TRL's "
            "CPOTrainer(simpo) and DPOTrainer on the same pairs, fp32 on the CPU unless --device/--dtype say "
            "otherwise, one subprocess per row."
        ),
        epilog=(
            "Methods: " + ", ".join(f"{k} ({v})" for k, v in METHODS.items()) + ". "
            "tokens/s counts the non-pad prompt+completion tokens of every sequence through the trained "
            "model's forward (AMoPO: all K x 2 sequences per pair; DPO: policy only, not the reference)."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, default=None,
        help="HF model directory [default: models/base if it exists, else a tiny random Llama made in a temp dir]",
    )
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data/validated/train.jsonl",
                        help="preference rows (PreferenceRow JSONL); the first --pairs rows are used")
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml",
                        help="params.yaml: dimensions (K, AMoPO template), beta, gamma, LoRA settings, max_length")
    parser.add_argument("--pairs", type=int, default=8, help="number of preference pairs (N)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step (no accumulation)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps timed per row (after the warm-up)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="optimizer steps run first and not timed")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every row this many times, interleaved (A B C A B C ...); the table shows the "
                             "median s/step over the repeats and the spread, so one disturbed run cannot decide a target")
    parser.add_argument("--max-length", type=int, default=None,
                        help="prompt + response tokens per sequence [default: train.max_length of params.yaml]")
    parser.add_argument("--lora", action=argparse.BooleanOptionalAction, default=False,
                        help="train the train.lora adapters of params.yaml in every row instead of full fine-tuning")
    parser.add_argument("--learning-rate", type=float, default=1e-6,
                        help="same for every row; it does not change the timing, a small one keeps losses finite")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where every row trains (cuda: the GPU moalign.models.pick_device picks)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default="float32",
                        help="the model's dtype, passed to train_policy as params.yaml's model.dtype would be "
                             "(auto: float32 on the CPU, bfloat16 on a GPU)")
    parser.add_argument("--attn", default=None, metavar="IMPL",
                        help="attention implementation set on the trained model (sdpa, eager, flash_attention_2, ...) "
                             "[default: the one transformers loads the model with]")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                        help="activation (gradient) checkpointing of the decoder layers, non-reentrant, in every row")
    parser.add_argument("--only", action="append", choices=list(METHODS), metavar="METHOD",
                        help="run only this method (repeatable); one of: " + ", ".join(METHODS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in every worker [default: torch's own choice]")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per row before it is killed")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="OUT",
                        help="write the results as JSON here (a smoke run: name another file)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs even when every row succeeds")
    parser.add_argument("--seed", type=int, default=0)
    # internal: one row in this process
    parser.add_argument("--_worker", choices=list(METHODS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


# ------------------------------------------------------------------------------------------------
# worker: one configuration in this process


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _make_step_recorder(prompts_per_pair: int, attn: str | None = None, checkpointing: bool = False):
    """A TrainerCallback timing each optimizer step and counting the tokens of the policy's forwards.
    Before the first step it sets the attention implementation ``attn`` (None: leave it) and, with
    ``checkpointing``, turns on activation checkpointing of the trained model."""
    import torch
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self):
            self.tokens = 0
            self.sequences = 0
            self.ends: list[tuple[float, int, int]] = []  # (time, tokens so far, sequences so far)
            self.start = None
            self.peak_rss_mib = None
            self.peak_cuda_mib = None
            self.peak_cuda_reserved_mib = None
            self.cuda_at_start_mib = None
            self.checkpointing = None
            self.attn = None
            self.model_dtype = None
            self.device = None
            self.trainable = None
            self._handle = None
            self._pending: list = []  # token counts still on the device

        def _count(self, module, args, kwargs):
            if not torch.is_grad_enabled():  # reference forwards (no-grad) are not trained sequences
                return
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            if mask is not None:
                # kept as a tensor: int() here would wait for the GPU before every forward
                self._pending.append(mask.sum())
                self.sequences += int(mask.shape[0])
            elif input_ids is not None:
                self.tokens += int(input_ids.numel())
                self.sequences += int(input_ids.shape[0])

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None and self._handle is None:
                if attn is not None:
                    model.set_attn_implementation(attn)
                if checkpointing and not model.is_activation_checkpointing:
                    model.activation_checkpointing_enable()  # non-reentrant, the Trainer's own default
                    model.config.use_cache = False
                self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
                self.checkpointing = bool(getattr(model, "is_activation_checkpointing", False))
                self.attn = getattr(model.config, "_attn_implementation", None)
                self.model_dtype = str(model.dtype).removeprefix("torch.")
                self.device = str(model.device)
                self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if _cuda_in_use():
                torch.cuda.synchronize()
                self.cuda_at_start_mib = torch.cuda.memory_allocated() / 2**20  # weights (+ anything kept)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if _cuda_in_use():
                torch.cuda.synchronize()  # the step's kernels are queued, not done, when the Trainer returns
            if self._pending:
                self.tokens += int(torch.stack(self._pending).sum())
                self._pending.clear()
            self.ends.append((time.perf_counter(), self.tokens, self.sequences))
            self._profile(state)
            self.peak_rss_mib = _peak_rss_mib()  # before any final checkpoint or model save
            if _cuda_in_use():
                self.peak_cuda_mib = torch.cuda.max_memory_allocated() / 2**20
                self.peak_cuda_reserved_mib = torch.cuda.max_memory_reserved() / 2**20

        _profiler = None

        def _profile(self, state):
            """With TRAIN_STEP_PROFILE_DIR set: torch.profiler over the steps after the first, its
            operator table (by CPU and by device time) written there per row. A diagnosis aid: the
            profiler's own cost makes those steps slower, so a profiled run's times are not reported."""
            folder = os.environ.get("TRAIN_STEP_PROFILE_DIR")
            if not folder:
                return
            if self._profiler is None and len(self.ends) == 1:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if _cuda_in_use():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self._profiler = torch.profiler.profile(activities=activities)
                self._profiler.__enter__()
            elif self._profiler is not None and state.global_step >= state.max_steps:
                self._profiler.__exit__(None, None, None)
                table = self._profiler.key_averages()
                name = next((a for a in sys.argv if a in METHODS), "row")
                out = Path(folder) / f"profile_{name}.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                device_key = "self_cuda_time_total" if _cuda_in_use() else "self_cpu_time_total"
                out.write_text(table.table(sort_by="self_cpu_time_total", row_limit=35) + "\n\n"
                               + table.table(sort_by=device_key, row_limit=25), encoding="utf-8")
                self._profiler = None

        def on_train_end(self, args, state, control, **kwargs):
            if self._handle is not None:
                self._handle.remove()
                self._handle = None

        def summary(self, warmup: int) -> dict:
            steps = len(self.ends)
            if steps <= warmup:
                raise RuntimeError(f"only {steps} optimizer steps ran, none left to time after {warmup} warm-up")
            t0, tok0, seq0 = self.ends[warmup - 1] if warmup > 0 else (self.start, 0, 0)
            t1, tok1, seq1 = self.ends[-1]
            seconds, tokens, sequences = t1 - t0, tok1 - tok0, seq1 - seq0
            pairs = sequences / (2 * prompts_per_pair)
            times = [self.start] + [end[0] for end in self.ends]
            step_times = [b - a for a, b in zip(times[warmup:], times[warmup + 1 :], strict=False)]
            timed = steps - warmup
            return {
                "steps_total": steps,
                "steps_timed": timed,
                "seconds": seconds,
                "s_per_step": seconds / timed,
                "step_seconds": step_times,
                "tokens": tokens,
                "tokens_per_step": tokens / timed,
                "tokens_per_s": tokens / seconds,
                "sequences": sequences,
                "pairs": pairs,
                "pairs_per_s": pairs / seconds,
                "s_per_pair": seconds / pairs if pairs else float("nan"),
                "prompts_per_pair": prompts_per_pair,
                "peak_rss_mib": self.peak_rss_mib,
                **({} if self.peak_cuda_mib is None else {
                    "peak_cuda_mib": self.peak_cuda_mib,
                    "peak_cuda_reserved_mib": self.peak_cuda_reserved_mib,
                    "cuda_at_start_mib": self.cuda_at_start_mib,
                }),
                "activation_checkpointing": self.checkpointing,
                "attn_implementation": self.attn,
                "model_dtype": self.model_dtype,
                "model_device": self.device,
                "trainable_parameters": self.trainable,
            }

    return StepRecorder()


def _load_rows(path: Path, n: int):
    from moalign.data.schema import PreferenceRow, read_jsonl

    rows = read_jsonl(path, PreferenceRow)
    if len(rows) < n:
        raise ValueError(f"{path} has {len(rows)} rows, fewer than --pairs {n}")
    return rows[:n]


def _run_moalign(method: str, opts, params, rows, max_length: int, total_steps: int, workdir: Path,
                 amopo_memory: str = "low") -> dict:
    from moalign.training.phases import objective_dimensions
    from moalign.training.preference import train_policy

    train = params.train
    steps_per_epoch = math.ceil(len(rows) / opts.batch_size)
    epochs = total_steps / steps_per_epoch  # train_policy has no max_steps: the Trainer runs ceil(epochs x spe)
    while math.ceil(epochs * steps_per_epoch) > total_steps:
        epochs = math.nextafter(epochs, 0.0)
    train = train.model_copy(update={
        "method": method,
        "epochs": epochs,
        "batch_size": opts.batch_size,
        "gradient_accumulation_steps": 1,
        "max_length": max_length,
        "learning_rate": opts.learning_rate,
        "logging_steps": 1,
        "save_steps": 10**9,  # no checkpoint inside the timed steps
        "lora": train.lora.model_copy(update={"enabled": opts.lora}),
        "amopo_memory": amopo_memory,
    })
    prompts = len(objective_dimensions(train, params.dimensions.names)) if method == "amopo" else 1
    recorder = _make_step_recorder(prompts, opts.attn, opts.gradient_checkpointing)
    train_policy(
        rows, opts.model, workdir / "out", workdir / "checkpoints",
        train=train, dimensions=params.dimensions, dtype=opts.dtype, seed=opts.seed, callbacks=[recorder],
    )
    return recorder.summary(opts.warmup_steps)


def _trl_common(opts, params, max_length: int, total_steps: int, workdir: Path, config_class) -> dict:
    import dataclasses

    from moalign.models import resolve_dtype

    # TRL configs default to activation (gradient) checkpointing; moalign does not checkpoint, and with
    # --gradient-checkpointing the step recorder turns it on in every row alike. transformers 5 renamed the
    # argument (the old name still works, with a FutureWarning)
    names = {f.name for f in dataclasses.fields(config_class)}
    dtype = str(resolve_dtype(opts.dtype)).removeprefix("torch.")
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return dict(
        **{checkpointing: False},
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=1,
        max_steps=total_steps,
        learning_rate=opts.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=params.train.warmup_ratio,  # as moalign passes it
        max_length=max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=opts.seed,
        bf16=dtype == "bfloat16",  # as moalign's Trainer arguments follow its dtype
        fp16=dtype == "float16",
        use_cpu=opts.device == "cpu",
        remove_unused_columns=False,
        disable_tqdm=True,
    )


def _trl_model_and_data(opts, rows):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moalign.generation import chat_prompt
    from moalign.models import resolve_dtype

    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=resolve_dtype(opts.dtype))
    # the prompt exactly as moalign renders it (chat template, generation prompt); the responses as text
    # (both trainers append the EOS token, as moalign does)
    dataset = Dataset.from_list([
        {"prompt": chat_prompt(tokenizer, row.prompt), "chosen": row.chosen.text, "rejected": row.rejected.text}
        for row in rows
    ])
    return model, tokenizer, dataset


def _run_trl_cpo(opts, params, rows, max_length: int, total_steps: int, workdir: Path) -> dict:
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # TRL 1.x: CPO lives in trl.experimental

    from moalign.training.runs import lora_config

    model, tokenizer, dataset = _trl_model_and_data(opts, rows)
    config = CPOConfig(
        **_trl_common(opts, params, max_length, total_steps, workdir, CPOConfig),
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=params.train.beta,
        simpo_gamma=params.train.gamma,
    )
    recorder = _make_step_recorder(1, opts.attn, opts.gradient_checkpointing)
    trainer = CPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[recorder],
        peft_config=lora_config(model, params.train.lora) if opts.lora else None,  # moalign's own adapters
    )
    trainer.train()
    return recorder.summary(opts.warmup_steps)


def _run_trl_dpo(opts, params, rows, max_length: int, total_steps: int, workdir: Path) -> dict:
    from trl import DPOConfig, DPOTrainer

    from moalign.training.runs import lora_config

    model, tokenizer, dataset = _trl_model_and_data(opts, rows)
    config = DPOConfig(
        **_trl_common(opts, params, max_length, total_steps, workdir, DPOConfig),
        loss_type=["sigmoid"],
        beta=0.1,
        precompute_ref_log_probs=False,  # the reference model scores every batch, TRL's default
    )
    recorder = _make_step_recorder(1, opts.attn, opts.gradient_checkpointing)
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[recorder],
        peft_config=lora_config(model, params.train.lora) if opts.lora else None,  # moalign's own adapters
    )
    trainer.train()
    return recorder.summary(opts.warmup_steps)


def run_worker(opts) -> None:
    """One row: train, then write the measurement as JSON to ``opts._result``."""
    for key, value in _worker_env(opts.device).items():
        os.environ.setdefault(key, value)
    import torch

    from moalign.config import load_params

    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no GPU (torch.cuda.is_available() is False)")
        torch.cuda.reset_peak_memory_stats()
    params = load_params(opts.params)
    max_length = opts.max_length or params.train.max_length
    rows = _load_rows(opts.data, opts.pairs)
    total_steps = opts.warmup_steps + opts.steps
    with tempfile.TemporaryDirectory(prefix=f"train-step-{opts._worker}-") as tmp:
        workdir = Path(tmp)
        if opts._worker == "moalign-simpo":
            result = _run_moalign("simpo", opts, params, rows, max_length, total_steps, workdir)
        elif opts._worker == "moalign-amopo":
            result = _run_moalign("amopo", opts, params, rows, max_length, total_steps, workdir, "low")
        elif opts._worker == "moalign-amopo-fast":
            result = _run_moalign("amopo", opts, params, rows, max_length, total_steps, workdir, "fast")
        elif opts._worker == "trl-cpo-simpo":
            result = _run_trl_cpo(opts, params, rows, max_length, total_steps, workdir)
        else:
            result = _run_trl_dpo(opts, params, rows, max_length, total_steps, workdir)
    result["torch_threads"] = torch.get_num_threads()
    if opts.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    opts._result.write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------
# driver: one subprocess per row, then the table


def _default_model(tmp_root: Path) -> tuple[Path, str]:
    base = REPO_ROOT / "models/base"
    if (base / "config.json").exists():
        return base, "models/base"
    from moalign.models import prepare_base_model

    out = prepare_base_model("tiny-random-llama", tmp_root / "tiny-random-llama")
    return out, "tiny-random-llama (models/base not found; made in a temp dir)"


def _error_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b", line):
            return line
    return lines[-1] if lines else "no output"


def _worker_command(opts, method: str, result_path: Path) -> list[str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--_worker", method, "--_result", str(result_path),
        "--model", str(opts.model), "--data", str(opts.data), "--params", str(opts.params),
        "--pairs", str(opts.pairs), "--batch-size", str(opts.batch_size), "--steps", str(opts.steps),
        "--warmup-steps", str(opts.warmup_steps), "--learning-rate", repr(opts.learning_rate),
        "--seed", str(opts.seed), "--lora" if opts.lora else "--no-lora",
        "--device", opts.device, "--dtype", opts.dtype,
        "--gradient-checkpointing" if opts.gradient_checkpointing else "--no-gradient-checkpointing",
    ]
    if opts.attn:
        command += ["--attn", opts.attn]
    if opts.max_length:
        command += ["--max-length", str(opts.max_length)]
    if opts.threads:
        command += ["--threads", str(opts.threads)]
    return command


def run_row(opts, method: str, log_dir: Path) -> dict:
    result_path = log_dir / f"{method}.json"
    log_path = log_dir / f"{method}.log"
    result_path.unlink(missing_ok=True)  # a repeat must not read the previous repeat's result
    env = {**os.environ, **_worker_env(opts.device)}
    started = time.perf_counter()
    row = {"method": method, "label": METHODS[method], "log": str(log_path)}
    try:
        with log_path.open("w") as log:
            process = subprocess.run(
                _worker_command(opts, method, result_path), stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=REPO_ROOT, timeout=opts.timeout,
            )
        if process.returncode != 0 or not result_path.exists():
            row["error"] = f"exit {process.returncode}: {_error_line(log_path.read_text(errors='replace'))}"
        else:
            row.update(json.loads(result_path.read_text()))
    except subprocess.TimeoutExpired:
        row["error"] = f"timed out after {opts.timeout:g} s"
    row["wall_s"] = time.perf_counter() - started
    return row


def merge_repeats(runs: list[dict]) -> dict:
    """One row from the repeats of a method: median s/step (tokens and pairs per step are the same
    in every repeat, so the rates follow from it), the slowest and fastest repeat as the spread.
    A repeat that failed makes the row fail: a partial median would hide it."""
    import statistics

    failed = [r for r in runs if "error" in r]
    if failed:
        return {**failed[0], "repeats": len(runs)}
    per_step = [r["s_per_step"] for r in runs]
    row = dict(runs[0])
    s_per_step = statistics.median(per_step)
    pairs_per_step = row["pairs"] / row["steps_timed"]
    row.update(
        repeats=len(runs),
        s_per_step=s_per_step,
        s_per_step_runs=per_step,
        spread=(min(per_step), max(per_step)),
        tokens_per_s=row["tokens_per_step"] / s_per_step,
        pairs_per_s=pairs_per_step / s_per_step,
        s_per_pair=s_per_step / pairs_per_step,
        peak_rss_mib=max(r["peak_rss_mib"] for r in runs),
        step_seconds=[t for r in runs for t in r["step_seconds"]],
        wall_s=sum(r["wall_s"] for r in runs),
    )
    for field in ("peak_cuda_mib", "peak_cuda_reserved_mib"):
        if field in row:
            row[field] = max(r[field] for r in runs)
    return row


def _fmt(value, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ratio_target(rows: dict[str, dict], name: str, numerator: str, denominator: str, field: str, limit: float,
                  what: str) -> tuple[float | None, dict]:
    """``rows[numerator][field] / rows[denominator][field]`` against ``limit``, stored in the numerator's row."""
    target = f"{what} ≤ {limit} × {METHODS[denominator]}"
    if numerator not in rows or denominator not in rows:
        return None, {"target": target, "passed": None, "detail": f"needs both the {numerator} and {denominator} rows"}
    ratio = rows[numerator][field] / rows[denominator][field]
    rows[numerator][name] = ratio
    detail = f"ratio {ratio:.2f} ({rows[numerator][field]:.3f} vs {rows[denominator][field]:.3f})"
    return ratio, {"target": target, "passed": ratio <= limit, "detail": detail}


def compute_targets(rows: dict[str, dict], k: int) -> tuple[dict[str, float | None], list[dict]]:
    """The targets and the ratios they test (None where a row they need is missing or failed)."""
    ok = {m: r for m, r in rows.items() if "error" not in r}
    ratio = None
    if "moalign-amopo" in ok and "moalign-simpo" in ok:
        ratio = ok["moalign-amopo"]["s_per_pair"] / (k * ok["moalign-simpo"]["s_per_pair"])
        rows["moalign-amopo"]["amopo_vs_k_simpo"] = ratio
    targets = []
    if "moalign-simpo" in ok and "trl-cpo-simpo" in ok:
        ours, theirs = ok["moalign-simpo"]["tokens_per_s"], ok["trl-cpo-simpo"]["tokens_per_s"]
        targets.append({
            "target": "moalign SimPO tokens/s ≥ TRL CPO(simpo) tokens/s",
            "passed": ours >= theirs,
            "detail": f"{ours:.1f} vs {theirs:.1f} tokens/s ({ours / theirs:.2f}x)",
        })
    else:
        targets.append({"target": "moalign SimPO tokens/s ≥ TRL CPO(simpo) tokens/s", "passed": None,
                        "detail": "needs both the moalign-simpo and trl-cpo-simpo rows"})
    if ratio is not None:
        targets.append({
            "target": f"AMoPO s/pair ≤ {AMOPO_TARGET} × K × SimPO s/pair",
            "passed": ratio <= AMOPO_TARGET,
            "detail": f"ratio {ratio:.2f} (K={k}: AMoPO {ok['moalign-amopo']['s_per_pair']:.3f} s/pair, "
                      f"SimPO {ok['moalign-simpo']['s_per_pair']:.3f} s/pair)",
        })
    else:
        targets.append({"target": f"AMoPO s/pair ≤ {AMOPO_TARGET} × K × SimPO s/pair", "passed": None,
                        "detail": "needs both the moalign-amopo and moalign-simpo rows"})
    memory, memory_target = _ratio_target(ok, "peak_rss_vs_simpo", "moalign-amopo", "moalign-simpo", "peak_rss_mib",
                                          MEMORY_TARGET, "AMoPO peak RSS")
    fast_memory, _ = _ratio_target(ok, "peak_rss_vs_simpo", "moalign-amopo-fast", "moalign-simpo", "peak_rss_mib",
                                   MEMORY_TARGET, "AMoPO (fast) peak RSS")
    time, time_target = _ratio_target(ok, "s_per_step_vs_fast", "moalign-amopo", "moalign-amopo-fast", "s_per_step",
                                      LOW_TIME_TARGET, "AMoPO (low) s/step")
    targets += [memory_target, time_target]
    ratios = {"amopo_vs_k_simpo": ratio, "amopo_peak_memory_vs_simpo": memory,
              "amopo_fast_peak_memory_vs_simpo": fast_memory, "amopo_low_vs_fast_time": time}
    if any("peak_cuda_mib" in r for r in rows.values()):  # a GPU run: the memory that limits the batch there
        cuda, cuda_target = _ratio_target(ok, "peak_cuda_vs_simpo", "moalign-amopo", "moalign-simpo", "peak_cuda_mib",
                                          MEMORY_TARGET, "AMoPO peak CUDA memory")
        fast_cuda, _ = _ratio_target(ok, "peak_cuda_vs_simpo", "moalign-amopo-fast", "moalign-simpo",
                                     "peak_cuda_mib", MEMORY_TARGET, "AMoPO (fast) peak CUDA memory")
        targets.append(cuda_target)
        ratios.update(amopo_peak_cuda_memory_vs_simpo=cuda, amopo_fast_peak_cuda_memory_vs_simpo=fast_cuda)
    return ratios, targets


HEADERS = ["method", "steps timed", "s/step", "s/step range", "tokens/s", "pairs/s", "peak RSS (MiB)",
           "RSS/SimPO", "AMoPO/(K×SimPO)"]
CUDA_HEADERS = ["peak CUDA (MiB)", "CUDA/SimPO"]


def table_cells(row: dict, with_error: bool, cuda: bool = False) -> list[str]:
    if "error" in row:
        cells = [row["label"], "ERROR"] + ["—"] * (len(HEADERS) - 2)
    else:
        cells = [
            row["label"],
            f"{row.get('repeats', 1)} x {row['steps_timed']}",
            _fmt(row["s_per_step"], ".3f"),
            "—" if row.get("repeats", 1) < 2 else f"{row['spread'][0]:.2f}–{row['spread'][1]:.2f}",
            _fmt(row["tokens_per_s"], ".1f"),
            _fmt(row["pairs_per_s"], ".3f"),
            _fmt(row["peak_rss_mib"], ".0f"),
            _fmt(row.get("peak_rss_vs_simpo"), ".2f"),
            _fmt(row.get("amopo_vs_k_simpo"), ".2f"),
        ]
    if cuda:
        cells += [_fmt(row.get("peak_cuda_mib"), ".0f"), _fmt(row.get("peak_cuda_vs_simpo"), ".2f")]
    if with_error:
        error = row.get("error", "")
        cells.append(error if len(error) <= 300 else error[:297] + "...")
    return cells


def print_report(title: str, rows: list[dict], targets: list[dict]) -> None:
    with_error = any("error" in r for r in rows)
    cuda = any("peak_cuda_mib" in r for r in rows)
    headers = HEADERS + (CUDA_HEADERS if cuda else []) + (["error"] if with_error else [])
    cells = [table_cells(r, with_error, cuda) for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        lines = [headers] + cells
        widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
        print(title)
        for i, line in enumerate(lines):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
    else:
        error_width = min(60, max((len(line[-1]) for line in cells), default=0)) if with_error else 0
        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            if header == "error":
                table.add_column(header, justify="left", overflow="fold", min_width=error_width, style="red")
            else:
                table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
        for row, line in zip(rows, cells, strict=True):
            table.add_row(*line, style="red" if "error" in row else None)
        Console(width=max(160 + error_width, Console().width)).print(table)
    for target in targets:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[target["passed"]]
        print(f"{verdict}  {target['target']}: {target['detail']}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts._worker:
        run_worker(opts)
        return 0
    for name in ("pairs", "batch_size", "steps", "repeats"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if opts.warmup_steps < 0:
        parser.error("--warmup-steps must be at least 0")
    for key, value in WORKER_ENV.items():
        if key != "CUDA_VISIBLE_DEVICES":
            os.environ.setdefault(key, value)

    from moalign.config import load_params

    params = load_params(opts.params)
    k = len(params.dimensions.names)
    methods = [m for m in METHODS if not opts.only or m in opts.only]
    load_before = os.getloadavg()  # other work on the machine skews s/step (not the ratios of one run as much)
    with tempfile.TemporaryDirectory(prefix="train-step-model-") as tmp:
        if opts.model is None:
            opts.model, model_name = _default_model(Path(tmp))
        else:
            model_name = str(opts.model)
            if not (opts.model / "config.json").exists():
                parser.error(f"--model {opts.model}: not an HF model directory (no config.json)")
        opts.model = Path(opts.model).resolve()
        opts.data, opts.params = Path(opts.data).resolve(), Path(opts.params).resolve()
        log_dir = Path(tempfile.mkdtemp(prefix="train-step-logs-"))
        runs: dict[str, list[dict]] = {method: [] for method in methods}
        # interleaved, so a slow spell of the machine hits every method rather than one
        for repeat in range(opts.repeats):
            for method in methods:
                print(f"[train_step] running {method} ({repeat + 1}/{opts.repeats}) ...", file=sys.stderr, flush=True)
                row = run_row(opts, method, log_dir)
                runs[method].append(row)
                outcome = row.get("error") or f"{row['s_per_step']:.3f} s/step"
                print(f"[train_step]   {method}: {outcome} ({row['wall_s']:.0f} s)", file=sys.stderr)
        results = {method: merge_repeats(method_runs) for method, method_runs in runs.items()}

    ratios, targets = compute_targets(results, k)
    load_after = os.getloadavg()
    max_length = opts.max_length or params.train.max_length
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(opts.dtype, opts.dtype)
    extras = (f", attention {opts.attn}" if opts.attn else "") + (
        ", activation checkpointing" if opts.gradient_checkpointing else "")
    title = (
        f"Train step, {model_name}: {opts.pairs} pairs, batch {opts.batch_size} pairs, max_length {max_length}, "
        f"{precision} {opts.device.upper()}{extras}, {'LoRA (train.lora)' if opts.lora else 'full fine-tuning'}, "
        f"{opts.steps} timed step(s) after {opts.warmup_steps} warm-up, {opts.repeats} repeat(s), K={k}"
    )
    rows = [results[m] for m in methods]
    print_report(title, rows, targets)

    failed = any("error" in r for r in rows)
    if failed or opts.keep_logs:
        print(f"worker logs: {log_dir}")
    else:
        for path in log_dir.iterdir():
            path.unlink()
        log_dir.rmdir()
        for row in rows:
            row.pop("log", None)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps({
            "config": {
                "model": model_name, "pairs": opts.pairs, "batch_size": opts.batch_size, "steps": opts.steps,
                "warmup_steps": opts.warmup_steps, "repeats": opts.repeats, "max_length": max_length, "lora": opts.lora,
                "learning_rate": opts.learning_rate, "threads": opts.threads, "k": k, "dtype": opts.dtype,
                "device": opts.device, "attn_implementation": opts.attn,
                "gradient_checkpointing": opts.gradient_checkpointing, "data": str(opts.data),
            },
            "load_average": {"before": load_before, "after": load_after},
            "rows": rows,
            **ratios,
            "targets": targets,
        }, indent=1, ensure_ascii=False))
        print(f"results written to {opts.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
