"""Load: an annotation of many items against a faulty endpoint, with memory sampled as it runs.

Run from the repository root::

    .venv/bin/python benchmarks/load.py                      # 10,000 items, concurrency 64, 10 % faults
    .venv/bin/python benchmarks/load.py --items 1000 --concurrency 16 --fault-rate 0.3

``moalign.annotation.annotate`` (the annotate stage's path: one ``score_batch`` over every
candidate, the SQLite call cache, the judge client's real backoff) scores ``--items`` candidates, two per
prompt, on ``--dimensions`` against the loopback fake server of ``tests/fake_openai_server.py`` (a
child process, so that it does not share this process's GIL) injecting every fault kind it knows at
``--fault-rate`` in all, mixed as ``benchmarks/faults.py`` mixes them. A thread samples this
process's resident memory (RSS) with the number of judge calls finished, so the table shows RSS at
10 %, 50 % and 100 % of the calls: flat memory is no growth beyond the results themselves.

Checks (exit status 1 otherwise): every item completed or failed (completed + failed == items),
each unscored call counted in the stage summary's ``judge_failed`` by kind and logged naming the
endpoint, and no answered call asked twice (the server's ``answered`` counts).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# after the path insert above: the script runs from a checkout, without installing it
from benchmarks.faults import MIX  # noqa: E402
from moalign.annotation import annotate  # noqa: E402
from moalign.data.schema import TaskPrompt  # noqa: E402
from moalign.judges.llm import EndpointConfig, LLMJudge  # noqa: E402
from tests.fake_openai_server import FakeOpenAIServer  # noqa: E402

MODEL = "fake-judge"
MiB = 1024 * 1024


def rss_reader() -> tuple[Callable[[], int], str]:
    """This process's resident set size in bytes, and how it is read. psutil when installed (it is
    no dependency of moalign, only of some of its dependencies), else Linux's /proc/self/status."""
    try:
        import psutil
    except ImportError:
        def from_proc() -> int:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            raise RuntimeError("/proc/self/status has no VmRSS line (not Linux?)")

        return from_proc, "/proc/self/status VmRSS"
    process = psutil.Process()
    return (lambda: process.memory_info().rss), "psutil"


class _FailureLines(logging.Handler):
    """Counts the judge's failure warnings that name the endpoint (kept off the terminal)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(logging.WARNING)
        self.endpoint, self.named = endpoint, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.named += self.endpoint in record.getMessage()


class _CountingJudge(LLMJudge):
    """The judge, counting finished calls (answered, or failed after their retries) for the sampler."""

    finished = 0

    async def _ask(self, client, spec):
        call = await super()._ask(client, spec)
        self.finished += 1  # one event loop: no lock needed
        return call


class _Sampler(threading.Thread):
    """(seconds, calls finished, RSS bytes) every ``every`` seconds until stopped."""

    def __init__(self, judge: _CountingJudge, read_rss: Callable[[], int], every: float):
        super().__init__(daemon=True, name="rss-sampler")
        self.judge, self.read_rss, self.every = judge, read_rss, every
        self.samples: list[tuple[float, int, int]] = []
        self.halt = threading.Event()
        self.start_time = time.perf_counter()

    def sample(self) -> None:
        self.samples.append((time.perf_counter() - self.start_time, self.judge.finished, self.read_rss()))

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.sample()  # the end of the run


def make_tasks(items: int, per_prompt: int) -> tuple[list[TaskPrompt], list[list[str]]]:
    """``items`` candidates, ``per_prompt`` to a prompt (the last prompt may have fewer)."""
    tasks, candidates = [], []
    for p in range(math.ceil(items / per_prompt)):
        tasks.append(TaskPrompt(id=f"load{p}", split="train", category="load", prompt=f"Explain load item {p}."))
        count = min(per_prompt, items - p * per_prompt)
        candidates.append([f"Item {p} explained, take {c}." for c in range(count)])
    return tasks, candidates


def rss_at(samples: list[tuple[float, int, int]], calls: int) -> int:
    """RSS at the first sample with at least ``calls`` calls finished (the last sample otherwise)."""
    return next((rss for _, done, rss in samples if done >= calls), samples[-1][2])


def run_load(
    items: int = 10_000,
    concurrency: int = 64,
    fault_rate: float = 0.1,
    dimensions: tuple[str, ...] = ("helpfulness", "harmlessness"),
    max_retries: int = 1,
    latency: float = 0.02,
    seed: int = 0,
    per_prompt: int = 2,
    sample_every: float = 0.05,
    server_process: bool = True,
    folder: str | os.PathLike[str] | None = None,
) -> dict:
    """One annotation run under load; returns the table's numbers and ``ok`` (the checks)."""
    # imported before the baseline, so that RSS growth is the run's: the HTTP client and the SDK's
    # error classes (imported when the judge makes its client) and mlflow (failure_summary's redaction)
    import aiohttp  # noqa: F401
    import openai  # noqa: F401

    from moalign import tracking  # noqa: F401

    read_rss, rss_source = rss_reader()
    tasks, candidates = make_tasks(items, per_prompt)
    faults = {kind: fault_rate * share for kind, share in MIX.items()} if fault_rate else {}
    with tempfile.TemporaryDirectory(prefix="moalign-load-", dir=folder) as tmp, FakeOpenAIServer(
        latency=latency, model=MODEL, faults=faults, fault_seed=seed, process=server_process
    ) as server:
        endpoint = EndpointConfig(base_url=server.url, model=MODEL, concurrency=concurrency,
                                  max_retries=max_retries)
        judge_log, failures = logging.getLogger("moalign.judges.llm"), _FailureLines(server.url)
        judge_log.addHandler(failures)
        propagate, judge_log.propagate = judge_log.propagate, False
        with _CountingJudge(dimensions, endpoint, Path(tmp) / "cache.sqlite") as judge:
            judge.show_progress = False
            sampler = _Sampler(judge, read_rss, sample_every)
            sampler.sample()  # the baseline: inputs built, judge open, nothing scored
            sampler.start()
            start = time.perf_counter()
            try:
                _, scored, stats = annotate(tasks, lambda _: candidates, judge, "load")
            finally:
                sampler.stop()
                judge_log.removeHandler(failures)
                judge_log.propagate = propagate
            wall = time.perf_counter() - start
            summary = stats.as_dict()["judge_failed"]
            cached_rows = len(judge.cache)
        served = server.stats(brief=True)
    calls = items * len(dimensions)
    unscored = sum(len(dimensions) - len(c.scores) for c in scored)
    completed = sum(len(c.scores) == len(dimensions) for c in scored)
    samples = sampler.samples
    result = {
        "items": items, "dimensions": len(dimensions), "concurrency": concurrency, "fault_rate": fault_rate,
        "max_retries": max_retries, "latency": latency, "seed": seed, "judge_calls": calls,
        "requests": served["total"], "faults_injected": served["faults"], "items_scored": len(scored),
        "items_completed": completed, "items_failed": summary["items"], "calls_failed": summary["calls"],
        "failed_by_kind": summary["by_kind"], "unscored_calls": unscored, "failures_named": failures.named,
        "answered_calls": served["answered_calls"], "answered_twice": served["answered_twice"],
        "cached_rows": cached_rows, "max_in_flight": served["max_in_flight"], "wall_s": wall,
        "rss_source": rss_source, "rss_start_mib": samples[0][2] / MiB,
        "rss_peak_mib": max(rss for _, _, rss in samples) / MiB,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MiB,
        "rss_at_mib": {f"{p}%": rss_at(samples, math.ceil(calls * p / 100)) / MiB for p in (10, 50, 100)},
        "samples": len(samples),
    }
    result["accounted"] = len(scored) == items and completed + summary["items"] == items
    # every call not scored is one failure in the summary, and every answered call was asked once
    result["ok"] = (
        result["accounted"]
        and summary["calls"] == unscored == failures.named
        and served["answered_twice"] == 0
        and served["answered_calls"] == cached_rows
    )
    return result


def render(r: dict) -> None:
    print(f"{r['items']} items x {r['dimensions']} dimensions, concurrency {r['concurrency']}, faults "
          f"{100 * r['fault_rate']:.0f} %, max_retries {r['max_retries']}, latency {r['latency']} s, "
          f"seed {r['seed']}; RSS read with {r['rss_source']}, {r['samples']} samples")
    at = r["rss_at_mib"]
    growth = at["100%"] - at["10%"]
    kinds = ", ".join(f"{k} {n}" for k, n in r["failed_by_kind"].items()) or "none"
    injected = ", ".join(f"{k} {n}" for k, n in sorted(r["faults_injected"].items())) or "none"
    rows = [
        ("items", r["items"]),
        ("judge calls", r["judge_calls"]),
        ("requests made", f"{r['requests']} ({r['requests'] / r['judge_calls']:.2f} per call)"),
        ("faults injected", f"{sum(r['faults_injected'].values())} ({injected})"),
        ("items completed", r["items_completed"]),
        ("items failed", r["items_failed"]),
        ("calls failed, by kind", f"{r['calls_failed']} ({kinds}); {r['failures_named']} logged naming the endpoint"),
        ("every item accounted for", "yes" if r["accounted"] else "NO"),
        ("answered calls asked twice", r["answered_twice"]),
        ("server max in flight", r["max_in_flight"]),
        ("wall s", f"{r['wall_s']:.1f} ({r['judge_calls'] / r['wall_s']:.0f} calls/s)"),
        ("RSS before the run MiB", f"{r['rss_start_mib']:.1f}"),
        ("peak RSS MiB (sampled; ru_maxrss)", f"{r['rss_peak_mib']:.1f}; {r['ru_maxrss_mib']:.1f}"),
        ("RSS at 10 % / 50 % / 100 % of calls MiB", f"{at['10%']:.1f} / {at['50%']:.1f} / {at['100%']:.1f}"),
        ("growth 10 % -> 100 %", f"{growth:+.1f} MiB ({growth * 1024 / (0.9 * r['items']):+.2f} KiB per item)"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/load.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000, help="candidates annotated (two per prompt)")
    parser.add_argument("--concurrency", type=int, default=64, help="judge.concurrency")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of requests faulted, kinds mixed")
    parser.add_argument("--dimensions", nargs="+", default=["helpfulness", "harmlessness"])
    parser.add_argument("--max-retries", type=int, default=1,
                        help="judge.max_retries; params.yaml's 5 loses about one call in a million at 10 %% "
                             "faults, so the default is low enough for failures to be counted")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the fake server spends per request")
    parser.add_argument("--seed", type=int, default=0, help="the fake server's fault_seed")
    parser.add_argument("--sample-every", type=float, default=0.05, help="seconds between RSS samples")
    parser.add_argument("--server-in-thread", action="store_true",
                        help="run the fake server in a thread of this process (its memory then counts too)")
    args = parser.parse_args(argv)
    result = run_load(
        items=args.items, concurrency=args.concurrency, fault_rate=args.fault_rate,
        dimensions=tuple(args.dimensions), max_retries=args.max_retries, latency=args.latency,
        seed=args.seed, sample_every=args.sample_every, server_process=not args.server_in_thread,
    )
    render(result)
    if not result["ok"]:
        print("CHECK FAILED: an item unaccounted for, an unscored call missing from the summary, or an "
              "answered call asked twice", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
