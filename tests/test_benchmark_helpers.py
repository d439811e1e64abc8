"""The pure parts of benchmarks/train_step.py (how repeats become one row of the table) and benchmarks/load.py."""

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("train_step", Path(__file__).parents[1] / "benchmarks/train_step.py")
train_step = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_step)


def run(s_per_step: float, rss: float = 100.0) -> dict:
    return {"label": "x", "steps_timed": 2, "s_per_step": s_per_step, "pairs": 8.0, "tokens_per_step": 400.0,
            "peak_rss_mib": rss, "step_seconds": [s_per_step] * 2, "wall_s": 10.0}


def test_median_of_repeats_decides_the_rates():
    row = train_step.merge_repeats([run(2.0), run(9.0, rss=300.0), run(4.0)])
    assert row["s_per_step"] == 4.0 and row["spread"] == (2.0, 9.0)  # the disturbed repeat is outvoted
    assert row["tokens_per_s"] == pytest.approx(100.0)
    assert row["pairs_per_s"] == pytest.approx(1.0) and row["s_per_pair"] == pytest.approx(1.0)
    assert row["peak_rss_mib"] == 300.0 and row["repeats"] == 3 and len(row["step_seconds"]) == 6


def test_a_failed_repeat_fails_the_row():
    row = train_step.merge_repeats([run(2.0), {"label": "x", "error": "exit 1: boom", "wall_s": 1.0}])
    assert row["error"] == "exit 1: boom"
    assert train_step.table_cells(row, with_error=True)[1] == "ERROR"


load_spec = importlib.util.spec_from_file_location("load_bench", Path(__file__).parents[1] / "benchmarks/load.py")
load = importlib.util.module_from_spec(load_spec)
load_spec.loader.exec_module(load)


def test_load_items_and_rss_milestones():
    tasks, candidates = load.make_tasks(5, per_prompt=2)
    assert [len(c) for c in candidates] == [2, 2, 1] and len({t.prompt for t in tasks}) == 3
    assert len({text for texts in candidates for text in texts}) == 5  # every item its own judge calls
    samples = [(0.0, 0, 100), (0.1, 3, 110), (0.2, 9, 120), (0.3, 10, 125)]
    assert [load.rss_at(samples, n) for n in (1, 3, 4, 10, 11)] == [110, 110, 120, 125, 125]


def test_load_rss_without_psutil_reads_proc(monkeypatch):
    with_psutil, source = load.rss_reader()
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    from_proc, fallback = load.rss_reader()
    assert (source, fallback) == ("psutil", "/proc/self/status VmRSS")
    assert abs(from_proc() - with_psutil()) < 32 * 1024 * 1024  # both this process's RSS, read a moment apart
