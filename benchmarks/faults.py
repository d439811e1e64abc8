"""Judge faults against calls and items: what a misbehaving endpoint costs an annotation run.

Run from the repository root::

    .venv/bin/python benchmarks/faults.py                  # 200 items x 2 dimensions at 0/10/30/50 % faults
    .venv/bin/python benchmarks/faults.py --rates 0 0.2 --items 100 --max-retries 2

For each fault rate a fresh loopback fake server (``tests/fake_openai_server.py``, a child process)
injects a mix of every fault kind it knows (malformed and truncated JSON, empty choices, a missing
message content, an HTML page, a connection cut mid-body, 500, 429) at that rate in all, seeded, and
a fresh ``LLMJudge`` (the SDK's real backoff, ``--max-retries`` as ``judge.max_retries``) scores
``--items`` responses on ``--dimensions`` through one ``score_batch``: the annotation stage's path.
An item is completed when every dimension is scored; a call still failing after its retries is
that item's failure, logged with the endpoint. A second run on the same cache (the server's draws
go on) then shows what a rerun asks again.

Checks that must hold (exit status 1 otherwise): every item completed or failed with each failed
call named with the endpoint, no answered request asked twice across both runs (the server's
``answered`` counts), and the rerun took every answered call from the cache. The table is a
measurement; there is no target on calls or time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# after the path insert above: the script runs from a checkout, without installing it
from moalign.data.schema import TaskPrompt  # noqa: E402
from moalign.judges.llm import EndpointConfig, LLMJudge  # noqa: E402
from tests.fake_openai_server import FakeOpenAIServer  # noqa: E402

MODEL = "fake-judge"
#: each kind's share of the injected faults
MIX = {"malformed_json": 0.25, "empty_choices": 0.1, "missing_content": 0.1, "wrong_content_type": 0.1,
       "reset": 0.15, "http_500": 0.2, "http_429": 0.1}


class _FailureLines(logging.Handler):
    """Collects the judge's failure warnings (kept off the terminal)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def make_items(n: int) -> list[tuple[TaskPrompt, str]]:
    return [
        (TaskPrompt(id=f"f{i}", split="train", category="bench", prompt=f"Explain item {i} briefly."),
         f"Item {i} is explained here in one sentence.")
        for i in range(n)
    ]


def score(server: FakeOpenAIServer, args, cache: Path, items, failures: _FailureLines) -> dict:
    """One run: requests, calls failed, items completed, failure lines naming the endpoint."""
    endpoint = EndpointConfig(base_url=server.url, model=MODEL, concurrency=args.concurrency,
                              max_retries=args.max_retries)
    before = server.total
    failures.lines.clear()
    start = time.perf_counter()
    with LLMJudge(args.dimensions, endpoint, cache) as judge:
        judge.show_progress = False
        scores = judge.score_batch(items)
        hits, failed = judge.cache_hits, judge.failures
    return {
        "seconds": time.perf_counter() - start,
        "requests": server.total - before,
        "cache_hits": hits,
        "calls_failed": failed,
        "completed": sum(len(s) == len(args.dimensions) for s in scores),
        "named": sum(server.url in line for line in failures.lines),
        "scored_calls": sum(len(s) for s in scores),
    }


def row(rate: float, args, folder: Path, failures: _FailureLines) -> dict:
    items = make_items(args.items)
    faults = {kind: rate * share for kind, share in MIX.items()} if rate else {}
    with FakeOpenAIServer(latency=args.latency, model=MODEL, faults=faults, fault_seed=args.seed,
                          process=True) as server:
        cache = folder / f"faults-{rate}.sqlite"
        first = score(server, args, cache, items, failures)
        answered_first = sum(server.answered.values())
        rerun = score(server, args, cache, items, failures)
        stats = server.stats()
    calls = args.items * len(args.dimensions)
    answered_twice = sum(n > 1 for n in stats["answered"].values())
    # every call not scored is a recorded failure, and its warning names the endpoint
    ok = (
        first["calls_failed"] == calls - first["scored_calls"] == first["named"]
        and rerun["calls_failed"] == calls - rerun["scored_calls"] == rerun["named"]
        and answered_twice == 0
        and rerun["cache_hits"] == answered_first
    )
    return {"rate": rate, "calls": calls, "first": first, "rerun": rerun, "faults": stats["faults"],
            "answered_twice": answered_twice, "ok": ok}


def render(args, rows: list[dict]) -> None:
    print(f"{args.items} items x {len(args.dimensions)} dimensions, concurrency {args.concurrency}, "
          f"max_retries {args.max_retries}, latency {args.latency} s, seed {args.seed}")
    headers = ["fault rate %", "judge calls", "requests", "requests per call", "faults injected",
               "items completed", "items failed", "calls failed (named)", "wall s",
               "rerun requests", "rerun cache hits", "items completed after rerun", "answered twice"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        first, rerun = r["first"], r["rerun"]
        cells = [f"{100 * r['rate']:.0f}", r["calls"], first["requests"], f"{first['requests'] / r['calls']:.2f}",
                 sum(r["faults"].values()), first["completed"], args.items - first["completed"],
                 f"{first['calls_failed']} ({first['named']})", f"{first['seconds']:.1f}",
                 rerun["requests"], rerun["cache_hits"], rerun["completed"], r["answered_twice"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/faults.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5],
                        help="fault rates, each a share of requests (the kinds mixed as MIX says)")
    parser.add_argument("--items", type=int, default=200, help="responses scored per rate")
    parser.add_argument("--dimensions", nargs="+", default=["helpfulness", "harmlessness"])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-retries", type=int, default=5, help="judge.max_retries (params.yaml: 5)")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the fake server spends per request")
    parser.add_argument("--seed", type=int, default=0, help="the fake server's fault_seed")
    args = parser.parse_args(argv)

    failures = _FailureLines()
    judge_log = logging.getLogger("moalign.judges.llm")
    judge_log.addHandler(failures)
    judge_log.propagate = False
    with tempfile.TemporaryDirectory(prefix="moalign-faults-bench-") as tmp:
        rows = [row(rate, args, Path(tmp), failures) for rate in args.rates]
    render(args, rows)
    if not all(r["ok"] for r in rows):
        print("CHECK FAILED: an item unaccounted for, a failure not naming the endpoint, an answered request asked "
              "twice, or a rerun that did not take every answered call from the cache", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
