"""Generation throughput of each backend (moalign/generation_backends.py), side by side in one run.

Run from the repository root (CPU, fp32; a few minutes on SmolLM2-135M with 2 cores)::

    .venv/bin/python benchmarks/generation.py                     # models/base, batch 1, 8, 32
    .venv/bin/python benchmarks/generation.py --model /tmp/models_base --repeats 3
    .venv/bin/python benchmarks/generation.py --backends transformers,ctranslate2:float32
    .venv/bin/python benchmarks/generation.py --help

What it measures. The first B prompts of the embedded task (``data/task/prompts.jsonl``, or the same
pool made in memory when the file is missing), in the chat template, left-padded into one batch of B,
decoded greedily for up to ``--new-tokens`` tokens by every backend (``name:compute_type`` for
ctranslate2, whose model is converted into a temporary folder before the clock starts), interleaved (each repeat runs
every backend once at each batch size, so a machine's load shifts hit them alike) after one warm-up
call per backend. New tokens/s = the tokens the rows got (up to and including their end token)
over the wall time of the call; the best repeat counts, and every repeat's time is recorded.

The equality check: at every batch size, the fraction of rows whose new token ids are those of the
``transformers`` backend (1.0 = token for token). Where rows differ, what the difference does on the
embedded task: the programmatic judge's mean score per dimension of each backend's answers at the
largest batch (``task_scores``; the answers are cut at ``--new-tokens``, so the absolute numbers are
low, the comparison is the point).

``speedup_vs_transformers`` = the best other backend's tokens/s at batch 32 over ``transformers``'
at batch 32 (issue 17: target >= 4, floor 2). The results, with the machine's load average before and
after, go to ``benchmarks/results/generation.json`` unless ``--json`` names another file. A
measurement, not a test: a missed target never fails it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"


def task_prompts(path: Path, count: int):
    """The first ``count`` prompts of the embedded task file (or of the same pool, made in memory)."""
    from moalign.data.schema import TaskPrompt
    from moalign.data.synthetic import generate_pool

    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        tasks = [TaskPrompt.model_validate(row) for row in rows]
    else:
        tasks = generate_pool(0, 1000, 200)
    if len(tasks) < count:
        raise SystemExit(f"{path}: {len(tasks)} prompts, the largest batch needs {count}")
    return tasks[:count]


def row_until_stop(row: list[int], stop_ids: list[int]) -> list[int]:
    """A row's new tokens up to and including its first stop token (the rest is padding)."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return row[: position + 1]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/generation.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="models/base", help="HF model directory (prepare_model's output)")
    parser.add_argument("--tasks", default="data/task/prompts.jsonl", help="the embedded task's prompts")
    parser.add_argument("--backends", default="transformers,ctranslate2:float32,ctranslate2:int8_float32",
                        help="comma-separated backends, ctranslate2 with its compute type after a colon")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=48, help="max new tokens per row")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per backend and batch size")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    from moalign.generation import DecodingConfig, chat_prompt, stop_token_ids
    from moalign.generation_backends import BACKEND_FUNCTIONS, converted_model_dir
    from moalign.judges.programmatic import SUPPORTED_DIMENSIONS, ProgrammaticJudge
    from moalign.models import load_model_and_tokenizer

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "transformers" not in backends:
        backends.insert(0, "transformers")  # the reference every ratio and equality is taken against
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    load_before = os.getloadavg()
    model, tokenizer = load_model_and_tokenizer(args.model, "float32")
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    tokenizer.padding_side = "left"
    tasks = task_prompts(Path(args.tasks), max(batch_sizes))
    prompts = [task.prompt for task in tasks]
    cache = tempfile.TemporaryDirectory(prefix="moalign-generation-bench-")
    configs = {}
    for name in backends:
        backend, _, compute_type = name.partition(":")
        configs[name] = DecodingConfig(max_new_tokens=args.new_tokens, backend=backend, cache_dir=cache.name,
                                       **({"compute_type": compute_type} if compute_type else {}))
        if backend == "ctranslate2":  # the one-off conversion is not generation time
            converted_model_dir(args.model, cache.name, configs[name].compute_type)

    def run(name: str, batch: int):
        encoded = tokenizer([chat_prompt(tokenizer, p) for p in prompts[:batch]], return_tensors="pt",
                            padding=True, add_special_tokens=False)
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.inference_mode():
            tokens = BACKEND_FUNCTIONS[configs[name].backend](
                model, encoded.input_ids, encoded.attention_mask, configs[name], tokenizer.pad_token_id, stops)
        return tokens, time.perf_counter() - started

    for backend in backends:  # warm-up: first-call allocations, lazy imports, loading converted models
        run(backend, 1)
    times: dict[str, dict[int, list[float]]] = {b: {n: [] for n in batch_sizes} for b in backends}
    counts: dict[str, dict[int, int]] = {b: {} for b in backends}
    outputs: dict[str, dict[int, list[list[int]]]] = {b: {} for b in backends}
    for repeat in range(args.repeats):
        for batch in batch_sizes:
            for backend in backends:
                tokens, seconds = run(backend, batch)
                times[backend][batch].append(seconds)
                outputs[backend][batch] = [row_until_stop(row, stops) for row in tokens.tolist()]
                counts[backend][batch] = sum(len(row) for row in outputs[backend][batch])
                print(f"repeat {repeat} batch {batch:>3} {backend:<26} {counts[backend][batch] / seconds:8.1f} "
                      f"new tokens/s ({seconds:.2f} s, load {os.getloadavg()[0]:.2f})", flush=True)

    judge = ProgrammaticJudge(SUPPORTED_DIMENSIONS)
    largest_batch = max(batch_sizes)
    task_scores = {}
    for backend in backends:
        answers = tokenizer.batch_decode(outputs[backend][largest_batch], skip_special_tokens=True)
        scores = [judge.score(task, answer.strip()) for task, answer in zip(tasks, answers, strict=True)]
        task_scores[backend] = {name: round(sum(s[name] for s in scores) / len(scores), 3)
                                for name in SUPPORTED_DIMENSIONS}
    rows: dict[str, dict[str, dict]] = {}
    for backend in backends:
        rows[backend] = {}
        for batch in batch_sizes:
            reference = outputs["transformers"][batch]
            same = sum(a == b for a, b in zip(outputs[backend][batch], reference, strict=True))
            rows[backend][str(batch)] = {
                "new_tokens": counts[backend][batch],
                "seconds": [round(s, 3) for s in times[backend][batch]],
                "tokens_per_s": round(counts[backend][batch] / min(times[backend][batch]), 2),
                "greedy_rows_equal_to_transformers": round(same / len(reference), 4),
            }
    largest = str(max(batch_sizes))
    others = [b for b in backends if b != "transformers"]
    best = max(others, key=lambda b: rows[b][largest]["tokens_per_s"]) if others else "transformers"
    speedup = rows[best][largest]["tokens_per_s"] / rows["transformers"][largest]["tokens_per_s"]
    result = {
        "model": str(args.model),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "batch_sizes": batch_sizes,
        "backends": rows,
        "best_backend": best,
        "speedup_vs_transformers": round(speedup, 3),
        "speedup_at_batch": int(largest),
        # per backend: every row at every batch size token for token that of transformers
        "greedy_outputs_equal": {name: all(row["greedy_rows_equal_to_transformers"] == 1.0 for row in backend.values())
                                 for name, backend in rows.items()},
        "task_scores_at_batch": int(largest),
        "task_scores": task_scores,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }
    print(f"\nbest backend at batch {largest}: {best}, {speedup:.2f}x transformers (target >= 4, floor 2); "
          f"greedy outputs equal to transformers': {result['greedy_outputs_equal'][best]}")
    for name, scores in task_scores.items():
        print(f"task scores at batch {largest}, {name:<26}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
