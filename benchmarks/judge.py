"""LLM-judge annotation throughput and resume overhead, against a loopback fake OpenAI server.

Run from the repository root::

    .venv/bin/python benchmarks/judge.py                        # latency 0.2 s, capacity 64, c = 1 8 32 64
    .venv/bin/python benchmarks/judge.py --calls 512 --concurrency 16 64 128 --json out.json
    .venv/bin/python benchmarks/judge.py --help

What it measures.

1. Throughput. ``tests/fake_openai_server.py`` serves ``/v1/chat/completions`` on 127.0.0.1: every
   request sleeps ``--latency`` seconds inside one of ``--capacity`` slots (more requests wait), so
   the server can do at most ``capacity / latency`` calls/s, and does no other work worth naming. By
   default it runs in a child process, so its event loop does not share the client's GIL (a real
   endpoint is another machine); ``--server-in-thread`` puts it in this process instead. For each
   client concurrency in ``--concurrency`` a fresh ``LLMJudge`` with a fresh cache scores ``--calls``
   distinct responses on one dimension (one call each) through ``score_batch``, the path the
   annotation stage takes: templates, the aiohttp transport, the parser, the SQLite cache,
   the progress bar. The wall time of that ``score_batch`` gives calls/s, compared with the server's
   capacity (``efficiency``) and with what this concurrency could reach at best
   (``min(concurrency, capacity) / latency``).
2. Resume overhead. A cache is filled with ``--resume-items`` judged calls (``JudgeCache.put_many``,
   keyed exactly as the judge keys them), then a fresh ``LLMJudge`` scores those items: every one is
   a cache hit. The wall time of that ``score_batch`` is the cost of resuming a run that had done
   them all, and the server must see zero requests during it.

Targets, printed as PASS/FAIL: the best concurrency reaches >= ``--target-efficiency`` (90 %) of the
server's capacity; the all-cached ``score_batch`` over ``--resume-items`` takes < ``--resume-target-s``
(10 s). A missed target is reported, not raised; the exit status is 1 only when a check that must
hold (every call made exactly once, no request while resuming, every item scored) does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# after the path insert above: the script runs from a checkout, without installing it
from moalign.data.schema import TaskPrompt  # noqa: E402
from moalign.judges.cache import CachedCall, JudgeCache, call_key  # noqa: E402
from moalign.judges.llm import EndpointConfig, LLMJudge  # noqa: E402
from tests.fake_openai_server import FakeOpenAIServer  # noqa: E402

MODEL = "fake-judge"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/judge.py",
        description=(
            "Annotation throughput (calls/s) of moalign's LLMJudge against a loopback fake OpenAI-compatible "
            "server with a fixed latency and capacity, at several client concurrencies; then the time of a "
            "score_batch whose every call is already in the cache (the cost of resuming)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--latency", type=float, default=0.2,
                        help="seconds the fake server spends on every request (asyncio.sleep: no CPU)")
    parser.add_argument("--capacity", type=int, default=64,
                        help="requests the fake server serves in parallel; more wait for a slot. Server "
                             "capacity in calls/s = capacity / latency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64], metavar="C",
                        help="client concurrencies (judge.concurrency) to time, one row each")
    parser.add_argument("--waves", type=int, default=None,
                        help="instead of --calls: waves x concurrency calls per row (the same number of full "
                             "waves in every row)")
    parser.add_argument("--calls", type=int, default=256,
                        help="judge calls per row (distinct responses, one dimension, fresh cache per row); "
                             "at concurrency 1 a row takes calls x latency seconds")
    parser.add_argument("--dimension", default="helpfulness", help="the template every call uses")
    parser.add_argument("--server-in-thread", action="store_true",
                        help="run the fake server in a thread of this process (it then competes with the "
                             "client for the GIL) instead of a child process")
    parser.add_argument("--no-progress", action="store_true",
                        help="turn the judge's tqdm progress bar off (on by default: it is part of the real path)")
    parser.add_argument("--resume-items", type=int, default=10_000,
                        help="cached calls the resume measurement scores (0 skips it)")
    parser.add_argument("--target-efficiency", type=float, default=0.9,
                        help="target: best calls/s / server capacity calls/s")
    parser.add_argument("--resume-target-s", type=float, default=10.0,
                        help="target: seconds for the all-cached score_batch over --resume-items")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write the configuration, the rows, the resume timing and the targets as JSON")
    return parser


def make_items(n: int, tag: str) -> list[tuple[TaskPrompt, str]]:
    return [
        (TaskPrompt(id=f"{tag}-{i}", split="train", category="bench", prompt=f"[{tag}] Explain item {i} briefly."),
         f"Item {i} is explained here in one or two sentences, as the instruction asked ({tag}).")
        for i in range(n)
    ]


def calls_for(args, concurrency: int) -> int:
    """--waves W: W x concurrency calls, so every row runs the same number of full waves and the
    batch's start and end (client creation, the last stragglers) weigh the same in every row."""
    return args.waves * concurrency if args.waves else args.calls


def throughput_row(server: FakeOpenAIServer, args, concurrency: int, folder: Path) -> dict:
    server.reset()
    calls = calls_for(args, concurrency)
    items = make_items(calls, f"c{concurrency}")
    endpoint = EndpointConfig(base_url=server.url, model=MODEL, concurrency=concurrency)
    judge = LLMJudge([args.dimension], endpoint, folder / f"throughput-c{concurrency}.sqlite")
    judge.show_progress = not args.no_progress
    try:
        start = time.perf_counter()
        scores = judge.score_batch(items)
        seconds = time.perf_counter() - start
    finally:
        judge.close()
    stats = server.stats()
    capacity_rate = args.capacity / args.latency
    ideal_rate = min(concurrency, args.capacity) / args.latency
    rate = calls / seconds
    return {
        "concurrency": concurrency,
        "calls": calls,
        "seconds": seconds,
        "calls_per_s": rate,
        "server_capacity_calls_per_s": capacity_rate,
        "ideal_calls_per_s": ideal_rate,
        "efficiency": rate / capacity_rate,
        "of_ideal": rate / ideal_rate,
        "server_requests": stats["total"],
        "server_max_in_flight": stats["max_in_flight"],
        "scored": sum(1 for s in scores if args.dimension in s),
        "ok": stats["total"] == calls and sum(1 for s in scores if args.dimension in s) == calls
        and stats["max_in_flight"] <= concurrency,
    }


def resume_row(server: FakeOpenAIServer, args, folder: Path) -> dict:
    n = args.resume_items
    items = make_items(n, "resume")
    cache_path = folder / "resume.sqlite"
    endpoint = EndpointConfig(base_url=server.url, model=MODEL, concurrency=64)
    judge = LLMJudge([args.dimension], endpoint, cache_path)
    version = judge.templates[args.dimension].version
    judge.close()

    start = time.perf_counter()
    cache = JudgeCache(cache_path)
    reply = '{"reason": "ok", "score": 3}'
    cache.put_many(
        (call_key(version, MODEL, t.prompt, r), args.dimension, MODEL, version, CachedCall(4, reply, None, 1, 110))
        for t, r in items
    )
    cache.close()
    fill_seconds = time.perf_counter() - start

    server.reset()
    start = time.perf_counter()
    judge = LLMJudge([args.dimension], endpoint, cache_path)
    open_seconds = time.perf_counter() - start
    try:
        start = time.perf_counter()
        scores = judge.score_batch(items)
        seconds = time.perf_counter() - start
        hits = judge.cache_hits
    finally:
        judge.close()
    requests = server.stats()["total"]
    return {
        "items": n,
        "fill_seconds": fill_seconds,
        "open_seconds": open_seconds,
        "seconds": seconds,
        "items_per_s": n / seconds if seconds else float("inf"),
        "cache_hits": hits,
        "server_requests": requests,
        "scored": sum(1 for s in scores if s.get(args.dimension) == 4),
        "ok": requests == 0 and hits == n and all(s.get(args.dimension) == 4 for s in scores),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"


def render(args, rows: list[dict], resume: dict | None, targets: list[tuple[str, str, str]], server_mode: str) -> None:
    title = (f"LLMJudge vs fake OpenAI server ({server_mode}): latency {args.latency} s, capacity {args.capacity} "
             f"-> {args.capacity / args.latency:.0f} calls/s; "
             f"{f'{args.waves} waves x concurrency' if args.waves else args.calls} calls per row; {machine()}")
    headers = ["concurrency", "calls", "wall s", "calls/s", "server capacity calls/s", "ideal calls/s at c",
               "efficiency %", "% of ideal at c", "server max in flight"]
    body = [[str(r["concurrency"]), str(r["calls"]), f"{r['seconds']:.2f}", f"{r['calls_per_s']:.1f}",
             f"{r['server_capacity_calls_per_s']:.0f}", f"{r['ideal_calls_per_s']:.0f}",
             f"{100 * r['efficiency']:.1f}", f"{100 * r['of_ideal']:.1f}", str(r["server_max_in_flight"])]
            for r in rows]
    resume_lines = []
    if resume:
        resume_lines.append(
            f"Resume: {resume['items']} cached calls -> score_batch {resume['seconds']:.3f} s "
            f"({resume['items_per_s']:.0f} items/s; judge open {resume['open_seconds']:.3f} s, cache fill "
            f"{resume['fill_seconds']:.2f} s), server requests during it: {resume['server_requests']}, "
            f"cache hits: {resume['cache_hits']}"
        )
    target_lines = [f"{name}: {verdict} ({detail})" for name, verdict, detail in targets]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(headers))
        for line in body:
            print(" | ".join(line))
        for line in resume_lines + target_lines:
            print(line)
        return
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="right")
    for line in body:
        table.add_row(*line)
    console.print(table)
    for line in resume_lines + target_lines:
        console.print(line, highlight=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server_mode = "thread" if args.server_in_thread else "child process"
    rows: list[dict] = []
    resume = None
    with tempfile.TemporaryDirectory(prefix="moalign-judge-bench-") as tmp, \
            FakeOpenAIServer(latency=args.latency, capacity=args.capacity, model=MODEL,
                             process=not args.server_in_thread) as server:
        folder = Path(tmp)
        # one untimed call: the server's and the SDK's imports and first connection are not a row's cost
        warm = LLMJudge([args.dimension], EndpointConfig(base_url=server.url, model=MODEL), folder / "warm.sqlite")
        warm.score_batch(make_items(1, "warm-up"))
        warm.close()
        for concurrency in args.concurrency:
            rows.append(throughput_row(server, args, concurrency, folder))
        if args.resume_items > 0:
            resume = resume_row(server, args, folder)

    targets = []
    if rows:
        best = max(rows, key=lambda r: r["calls_per_s"])
        verdict = "PASS" if best["efficiency"] >= args.target_efficiency else "FAIL"
        targets.append((f"best calls/s >= {100 * args.target_efficiency:.0f}% of server capacity", verdict,
                        (f"{best['calls_per_s']:.1f} calls/s at concurrency {best['concurrency']} = "
                         f"{100 * best['efficiency']:.1f}% of {best['server_capacity_calls_per_s']:.0f}")))
    if resume:
        verdict = "PASS" if resume["seconds"] < args.resume_target_s and resume["ok"] else "FAIL"
        targets.append((f"all-cached score_batch over {resume['items']} items < {args.resume_target_s:g} s", verdict,
                        f"{resume['seconds']:.3f} s, {resume['server_requests']} server requests"))
    render(args, rows, resume, targets, server_mode)

    checks_ok = all(r["ok"] for r in rows) and (resume is None or resume["ok"])
    if not checks_ok:
        print("CHECK FAILED: a row made a wrong number of requests, exceeded its concurrency, or left items unscored;"
              " or the resume run sent requests", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "server": server_mode,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "rows": rows,
            "resume": resume,
            "targets": [{"target": n, "verdict": v, "detail": d} for n, v, d in targets],
            "checks_ok": checks_ok,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
