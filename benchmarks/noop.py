"""What a run costs when nothing changed: `dvc repro` and the Prefect flow on an up-to-date project.

A scheduled deployment wakes up far more often than data changes, so its no-op run should be cheap.
Targets (issue 15): under 3 s through `dvc repro`, under 10 s through the Prefect flow
(`python -m flows.pipeline`, which starts Prefect's temporary API server when PREFECT_API_URL is
unset and runs one `dvc repro <stage>` task per stage).

Run from the repository root after a full `dvc repro` (the script refuses a project with stale
stages, since it would then time real work)::

    .venv/bin/python benchmarks/noop.py --repeats 3

Each repeat is a fresh process, as a scheduled run would be. The script measures; it never fails on
a missed target. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGETS_S = {"dvc repro": 3.0, "prefect flow": 10.0}


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-dir", type=Path, default=Path("."), help="an up-to-date moalign project")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repo = args.repo_dir.resolve()
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True, text=True)
    if status.returncode != 0 or json.loads(status.stdout or "{}"):
        sys.exit(f"{repo}: stages are stale or dvc status failed; run `dvc repro` first\n{status.stdout[:2000]}")
    commands = {
        "dvc repro": [sys.executable, "-m", "dvc", "repro"],
        "prefect flow": [sys.executable, "-m", "flows.pipeline", "--repo-dir", str(repo)],
    }
    print(f"{'path':<14}{'runs':>6}{'median s':>10}{'min s':>8}{'target s':>10}  met")
    for name, command in commands.items():
        times = [_timed(command, repo) for _ in range(args.repeats)]
        median = statistics.median(times)
        met = "yes" if median < TARGETS_S[name] else "no"
        print(f"{name:<14}{len(times):>6}{median:>10.2f}{min(times):>8.2f}{TARGETS_S[name]:>10.1f}  {met}")


if __name__ == "__main__":
    main()
