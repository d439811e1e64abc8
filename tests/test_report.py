"""The evaluation report: Pareto optimality, each figure's content, the HTML page and the stage."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from typer.testing import CliRunner

from moalign.evaluation.report import (
    FIGURE_FILES,
    OPTIONAL_FIGURE_FILES,
    build_report,
    experiments_from_mlflow,
    pareto_front,
    pareto_optimal,
    radar_chart,
    training_curves,
    weight_trajectories,
    win_rate_bars,
)
from moalign.evaluation.report.data import benchmark_win_rows

ROOT = Path(__file__).resolve().parents[1]
DIMS = ["correctness", "instruction_following", "verbosity", "harmlessness"]


def _metrics() -> dict:
    return {
        "n_prompts": 32,
        "policy": {
            "avg_words": 35.2,
            "judge_failures": 0,
            "mean_score": 3.289,
            "scores": {"correctness": 3.16, "instruction_following": 2.81, "verbosity": 3.56,
                       "harmlessness": 3.62},
        },
        "reference": {
            "avg_words": 36.75,
            "judge_failures": 0,
            "mean_score": 3.227,
            "scores": {"correctness": 3.16, "instruction_following": 2.69, "verbosity": 3.44,
                       "harmlessness": 3.62},
        },
        "win_rate_vs_reference": {
            "win_rate": 0.53125, "wins": 2, "ties": 30, "losses": 0, "n": 32,
            "ci95_low": 0.5, "ci95_high": 0.578125, "length_controlled_win_rate": 0.5218,
        },
    }


def _history(phases=("amopo",), steps=4, weights=True) -> list[dict]:
    history, step = [], 0
    for phase in phases:
        for _ in range(steps):
            step += 1
            entry = {"step": step, "phase": phase, "loss": 2.0 - 0.1 * step,
                     "rewards/margins": 0.1 * step, "epoch": step / 10}
            if weights:
                entry.update({f"{d}/weight": 0.25 + 0.01 * ((i + step) % 3 - 1)
                              for i, d in enumerate(DIMS)})
            history.append(entry)
        # the Trainer's closing summary has no loss: not a point on any curve
        history.append({"step": step, "phase": phase, "train_runtime": 1.0, "train_loss": 1.5})
    return history


# ------------------------------------------------------------------------------------------------
# pareto_optimal
# ------------------------------------------------------------------------------------------------


def test_pareto_optimal_marks_the_non_dominated_points():
    points = [
        {"name": "a", "x": 3, "y": 3},
        {"name": "b", "x": 4, "y": 2},
        {"name": "c", "x": 2, "y": 2},      # dominated by a (and b)
        {"name": "d", "x": 4, "y": 2},      # equal to b: neither dominates the other
        {"name": "e", "x": 3, "y": 1},      # dominated by a and b
        {"name": "f", "x": 1, "y": 3},      # dominated by a (equal y, lower x)
        {"name": "g", "x": 5, "y": None},   # no y: never optimal, dominates nothing
    ]
    assert pareto_optimal(points, "x", "y") == [True, True, False, True, False, False, False]


def test_pareto_optimal_edge_cases():
    assert pareto_optimal([], "x", "y") == []
    assert pareto_optimal([{"x": 1.0, "y": 1.0}], "x", "y") == [True]
    assert pareto_optimal([{"x": 1.0}, {"y": 2.0}], "x", "y") == [False, False]
    with_nan = [{"x": float("nan"), "y": 9}, {"x": 1, "y": 1}]
    assert pareto_optimal(with_nan, "x", "y") == [False, True]
    # a strict trade-off: all optimal
    line = [{"x": i, "y": 10 - i} for i in range(5)]
    assert pareto_optimal(line, "x", "y") == [True] * 5


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def test_radar_chart_draws_one_polygon_per_model():
    m = _metrics()
    fig = radar_chart({"policy": m["policy"]["scores"], "reference": m["reference"]["scores"],
                       "other": {"correctness": 4.0}})
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.name == "polar"
    assert len(ax.patches) == 3
    assert len(ax.lines) == 3
    assert [" ".join(t.get_text().split()) for t in ax.get_xticklabels()] == [
        d.replace("_", " ") for d in DIMS
    ]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["policy", "reference"]
    assert "no score" in legend[2] and "verbosity" in legend[2]


def test_radar_chart_without_scores_says_so():
    fig = radar_chart({})
    assert "no per-dimension scores" in fig.axes[0].texts[0].get_text()


def test_pareto_front_marks_the_front_and_labels_each_position_once():
    points = [
        {"name": "this run (policy)", "kind": "policy", "correctness": 3.2, "verbosity": 3.6},
        {"name": "reference", "kind": "reference", "correctness": 3.0, "verbosity": 3.4},
        {"name": "dpo", "correctness": 3.6, "verbosity": 3.0},
        {"name": "dpo again", "correctness": 3.6, "verbosity": 3.0},
        {"name": "no scores", "correctness": None},
    ]
    fig = pareto_front(points, "correctness", "verbosity")
    ax = fig.axes[0]
    optimal, dominated = ax.collections[:2]
    assert len(optimal.get_offsets()) == 3 and len(dominated.get_offsets()) == 1
    assert len(ax.lines) == 1  # the dashed front through the optimal points
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["dpo, dpo again", "reference", "this run (policy)"]
    assert "correctness" in ax.get_xlabel() and "verbosity" in ax.get_ylabel()


def test_pareto_front_without_usable_points_is_an_informative_panel():
    fig = pareto_front([{"name": "a", "correctness": 3.0}], "correctness", "verbosity")
    assert "no experiment has scores" in fig.axes[0].texts[0].get_text()


def test_win_rate_bars_have_asymmetric_ci_error_bars_the_half_line_and_lc_markers():
    rows = [
        {"name": "this run", **_metrics()["win_rate_vs_reference"]},
        {"name": "older run", "win_rate": 0.4, "wins": 1, "ties": 6, "losses": 3},  # no CI, no LC
        {"name": "broken", "win_rate": None},  # dropped
    ]
    fig = win_rate_bars(rows)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    errors = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and len(bars[0].patches) == 2
    assert len(errors) == 1
    segments = errors[0].lines[2][0].get_segments()
    assert len(segments) == 1  # only the row with an interval
    (x_low, _), (x_high, _) = segments[0]
    assert (x_low, x_high) == pytest.approx((0.5, 0.578125))
    vertical = [line for line in ax.lines if list(line.get_xdata()) == [0.5, 0.5]]
    assert vertical, "the 0.5 line"
    diamonds = [line for line in ax.lines if line.get_marker() == "D"]
    assert len(diamonds) == 1 and list(diamonds[0].get_xdata()) == [pytest.approx(0.5218)]
    assert {t.get_text() for t in ax.texts} == {"W2 T30 L0", "W1 T6 L3"}
    ticks = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels()), strict=True))
    assert ticks == {1: "this run", 0: "older run"}  # first row on top


def test_win_rate_bars_without_rows():
    fig = win_rate_bars([])
    assert "no win rate" in fig.axes[0].texts[0].get_text()


def test_training_curves_draw_one_line_per_phase_and_skip_summary_entries():
    fig = training_curves(_history(phases=("sft", "dpo"), steps=3))
    loss_ax, margin_ax = fig.axes[:2]
    assert [line.get_label() for line in loss_ax.lines] == ["sft", "dpo"]
    assert list(loss_ax.lines[1].get_xdata()) == [4, 5, 6]  # steps counted across phases
    assert len(margin_ax.lines) == 3  # two phases and the zero line


def test_training_curves_of_an_online_run_show_its_reward_and_trend():
    history = [{"phase": "moslim_rloo", "step": s, "loss": 0.1, "reward": 0.1 * s} for s in range(1, 6)]
    fig = training_curves(history)
    reward_ax = fig.axes[1]
    assert "reward" in reward_ax.get_title()
    assert [line.get_label()[:5] for line in reward_ax.lines] == ["moslim_rloo"[:5], "trend"]
    assert "+0.1/step" in reward_ax.lines[1].get_label()


def test_training_curves_without_margins_say_so():
    history = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}]
    fig = training_curves(history)
    assert len(fig.axes[0].lines) == 1
    assert "rewards/margins" in fig.axes[1].texts[0].get_text()


def test_weight_trajectories_one_line_per_dimension_plus_uniform():
    fig = weight_trajectories(_history(), DIMS)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == [
        "correctness", "instruction following", "verbosity", "harmlessness", "uniform 1/4"
    ]
    assert len(ax.lines[0].get_xdata()) == 4


def test_weight_trajectories_without_weights_is_an_informative_panel():
    fig = weight_trajectories(_history(phases=("dpo",), weights=False), DIMS)
    text = fig.axes[0].texts[0].get_text()
    assert "No per-dimension weights" in text and "dpo" in text
    assert not fig.axes[0].lines
    # an empty history too
    assert weight_trajectories([], DIMS).axes[0].texts


# ------------------------------------------------------------------------------------------------
# The HTML page
# ------------------------------------------------------------------------------------------------


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_build_report_writes_a_self_contained_page_with_the_key_numbers(tmp_path):
    experiments = [{"name": "dpo 1234abcd", "kind": "run",
                    "scores": {"correctness": 3.5, "instruction_following": 2.5},
                    "win_rate": {"win_rate": 0.45, "ci95_low": 0.3, "ci95_high": 0.6}}]
    when = datetime(2026, 11, 23, 17, 5, tzinfo=UTC)
    index = build_report(tmp_path / "reports", metrics=_metrics(), history=_history(),
                         dimensions=DIMS, experiments=experiments, title="A <test> report",
                         generated_at=when)
    assert index == tmp_path / "reports" / "index.html"
    page = index.read_text()
    images = _images(page)
    assert len(images) == len(FIGURE_FILES) and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert "A &lt;test&gt; report" in page  # escaped
    assert "2026-11-23 17:05 UTC" in page
    for number in ("3.16", "2.81", "2.69", "+0.12", "0.531", "[0.500, 0.578]", "0.522", "35.2",
                   "dpo 1234abcd", "instruction following"):
        assert number in page, number
    assert "<script" not in page and "http" not in page.replace('lang="en"', "")  # nothing fetched
    for name in FIGURE_FILES.values():
        assert (tmp_path / "reports" / name).read_bytes().startswith(b"\x89PNG")
    leftovers = [p.name for p in (tmp_path / "reports").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_build_report_copes_with_an_old_metrics_file_no_history_and_no_experiments(tmp_path):
    metrics = _metrics()
    for key in ("ci95_low", "ci95_high", "length_controlled_win_rate"):
        del metrics["win_rate_vs_reference"][key]  # metrics.json from before the intervals
    metrics["policy"]["scores"]["verbosity"] = None  # a dimension the judge failed on throughout
    index = build_report(tmp_path, metrics=metrics, history=[], dimensions=DIMS, experiments=None)
    page = index.read_text()
    assert len(_images(page)) == len(FIGURE_FILES)
    assert "no interval recorded" in page
    assert "this run (policy)" in page and "reference" in page


# ------------------------------------------------------------------------------------------------
# MLflow
# ------------------------------------------------------------------------------------------------


def test_experiments_from_a_missing_store_are_none_and_no_store_is_created(tmp_path):
    db = tmp_path / "mlflow.db"
    assert experiments_from_mlflow(f"sqlite:///{db}", "moalign", DIMS) == []
    assert not db.exists()


def test_experiments_from_an_unreadable_store_are_none(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database")
    assert experiments_from_mlflow(f"sqlite:///{junk}", "moalign", DIMS) == []
    assert junk.read_bytes() == b"not a database"


def test_experiments_from_mlflow_empty_experiment_and_runs(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("moalign", artifact_location=str(tmp_path / "art"))
    assert experiments_from_mlflow(uri, "moalign", DIMS) == []  # empty experiment
    assert experiments_from_mlflow(uri, "elsewhere", DIMS) == []  # no such experiment

    client.create_run(experiment_id, run_name="training-only")  # no eval metrics: skipped
    scored = client.create_run(experiment_id, run_name="dpo-smollm2")
    run_id = scored.info.run_id
    for key, value in {"eval/policy/scores/correctness": 3.5, "eval/policy/scores/verbosity": 3.0,
                       "eval/win_rate_vs_reference/win_rate": 0.6,
                       "eval/win_rate_vs_reference/ci95_low": 0.4}.items():
        client.log_metric(run_id, key, value)
    client.log_param(run_id, "train.method", "dpo")
    found = experiments_from_mlflow(uri, "moalign", DIMS)
    assert len(found) == 1
    assert found[0]["name"] == f"dpo-smollm2 {run_id[:8]}"
    assert found[0]["method"] == "dpo"
    assert found[0]["scores"] == {"correctness": 3.5, "instruction_following": None,
                                  "verbosity": 3.0, "harmlessness": None}
    assert found[0]["win_rate"] == {"win_rate": 0.6, "ci95_low": 0.4}
    assert experiments_from_mlflow(uri, "moalign", DIMS, exclude_run_ids=[run_id]) == []


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------


def _stage_inputs(tmp_path) -> list[str]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["register"]["tracking_uri"] = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    policy = tmp_path / "models" / "policy"
    policy.mkdir(parents=True)
    (policy / "train_log.json").write_text(json.dumps(_history()))
    (policy / "mlflow_run.json").write_text(json.dumps({"run_id": "abc", "experiment": "moalign"}))
    return ["--metrics", str(tmp_path / "metrics.json"),
            "--history", str(policy / "train_log.json"), "--out", str(tmp_path / "reports"),
            "--params", str(tmp_path / "params.yaml")]


def test_report_stage_writes_the_page_without_an_mlflow_store(tmp_path):
    from components import report

    result = CliRunner().invoke(report.app, _stage_inputs(tmp_path))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "reports" / "index.html").read_text()
    assert len(_images(page)) == len(FIGURE_FILES) and "0.531" in page
    assert "correctness vs instruction following" not in page  # titles live in the images
    assert not (tmp_path / "absent" / "mlflow.db").exists()


def test_report_stage_rejects_an_unknown_pareto_dimension(tmp_path):
    from components import report

    args = _stage_inputs(tmp_path) + ["--pareto-x", "charm"]
    result = CliRunner().invoke(report.app, args)
    assert result.exit_code == 2
    assert "charm" in result.output and "dimensions.names" in result.output
    assert not (tmp_path / "reports").exists()


# ------------------------------------------------------------------------------------------------
# Optional sections: benchmarks and controllability
# ------------------------------------------------------------------------------------------------


def _ifbench(strict, loose, scored=19) -> dict:
    return {"prompt_level_strict_acc": strict, "prompt_level_loose_acc": loose,
            "instruction_level_strict_acc": 0.4, "instruction_level_loose_acc": 0.45,
            "n_prompts": 20, "n_prompts_scored": scored, "n_instructions": 31,
            "n_unverifiable": 2, "per_category": {"count": {"n": 5, "strict": 0.2, "loose": 0.4}}}


def _pairwise(win_rate, **extra) -> dict:
    return {"win_rate": win_rate, "ci95_low": win_rate - 0.1, "ci95_high": win_rate + 0.1,
            "length_controlled_win_rate": win_rate + 0.02, "wins": 12, "ties": 3, "losses": 5,
            "n": 20, "failures": 1, "avg_words": 120.5, "baseline_avg_words": 310.25, **extra}


def _full_metrics() -> dict:
    metrics = _metrics()
    metrics["win_rate_vs_reference"].update(
        {"judge": "qwen <b>judge</b> (amopo_winrate, position swap)", "failures": 3})
    metrics["ifbench"] = {"policy": _ifbench(0.25, 0.375), "reference": _ifbench(0.2, None)}
    metrics["mt_bench"] = {
        "judge": "<script>alert(1)</script>",
        "policy": {"overall": 6.125, "turn_1": 6.5, "turn_2": None, "n_ratings": 160,
                   "failures": 4, "per_category": {"writing": {"score": 7.25, "n": 20,
                                                                "failures": 0},
                                                    "math & <logic>": {"score": 3.0, "n": 20,
                                                                       "failures": 1}}},
        "reference": {"overall": 5.5, "turn_1": 5.75, "turn_2": 5.25, "n_ratings": 160,
                      "failures": 0, "per_category": {"writing": {"score": 6.0, "n": 20,
                                                                   "failures": 0}}},
    }
    metrics["arena_hard"] = {"baseline": "gpt-4-0314.jsonl", "judge": "arena judge",
                             "policy": _pairwise(0.5, score=0.4321),
                             "reference": _pairwise(0.3, score=None)}
    metrics["alpaca_eval"] = {"baseline": "gpt4_turbo.json", "judge": "alpaca judge",
                              "policy": _pairwise(0.625), "reference": _pairwise(0.4)}
    metrics["controllability"] = {
        "style": "moslim", "levels": [1, 2, 3, 4, 5], "n_prompts": 8,
        "dimensions": {
            "verbosity": {"mean_by_level": {"1": 2.0, "2": 2.5, "3": 3.0, "4": 3.5, "5": 4.25},
                          "spearman": 0.8766, "p_value": 0.0004, "n": 38, "failures": 2,
                          "undefined_reason": None},
            "<harm>": {"mean_by_level": {str(level): 3.0 for level in range(1, 6)},
                       "spearman": None, "p_value": None, "n": 40, "failures": 0,
                       "undefined_reason": "constant scores <all 3>"},
        },
    }
    return metrics


def _text(page: str) -> str:
    """The page's visible text, tags dropped and whitespace collapsed (entities kept)."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def _benchmark_rows(page: str) -> dict[str, list[str]]:
    """The Benchmarks table as ``metric -> [policy, reference, Δ]`` (text of the cells)."""
    table = re.search(r'<table class="benchmarks">(.*?)</table>', page, re.DOTALL)
    assert table, "no benchmarks table"
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.DOTALL)[1:]:  # after the head
        cells = re.findall(r'<td(?: class="(?:metric|reason)")?>(.*?)</td>', row, re.DOTALL)
        cells = [_text(c) for c in cells]
        rows.setdefault(cells[0], [])
        rows[cells[0]].append(cells[1:])
    return rows


def test_build_report_shows_every_benchmark_and_the_controllability_check(tmp_path):
    index = build_report(tmp_path, metrics=_full_metrics(), history=_history(), dimensions=DIMS)
    page = index.read_text()
    assert len(_images(page)) == len(FIGURE_FILES) + 2  # every figure, benchmark win rates and controllability
    for name in OPTIONAL_FIGURE_FILES.values():
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")

    rows = _benchmark_rows(page)
    # IFBench as percentages, Δ in percentage points, a null as —
    assert rows["prompt-level strict accuracy"] == [["25.0%", "20.0%", "+5.0 pp"]]
    assert rows["prompt-level loose accuracy"] == [["37.5%", "—", "—"]]
    assert rows["prompts scored"] == [["19 of 20", "19 of 20", ""]]
    # MT-bench on its 1-10 scale, a category only the policy has, a missing turn 2
    assert rows["overall (1-10)"] == [["6.12", "5.50", "+0.62"]]
    assert rows["turn 2"] == [["—", "5.25", "—"]]
    assert rows["writing"] == [["7.25", "6.00", "+1.25"]]
    assert rows["math &amp; &lt;logic&gt;"] == [["3.00", "—", "—"]]
    # Arena-Hard then AlpacaEval: the same metric names, in this order
    assert rows["score (weighted battles)"] == [["43.2%", "—", "—"]]
    assert rows["win rate [95% CI]"] == [
        ["50.0% [40.0, 60.0]", "30.0% [20.0, 40.0]", "+20.0 pp"],
        ["62.5% [52.5, 72.5]", "40.0% [30.0, 50.0]", "+22.5 pp"],
    ]
    assert rows["length-controlled win rate"][0] == ["52.0%", "32.0%", "+20.0 pp"]
    assert rows["wins / ties / losses"][0] == ["12 / 3 / 5", "12 / 3 / 5", ""]
    assert rows["average words"][0] == ["120.5", "120.5", "+0.0"]
    assert rows["baseline&#39;s average words"][0] == ["310.2", "310.2", ""]  # autoescaped apostrophe
    assert rows["judge failures"] == [["4 of 160", "0 of 160", ""], ["1 of 20", "1 of 20", ""],
                                      ["1 of 20", "1 of 20", ""]]
    assert "vs gpt-4-0314.jsonl" in page and "vs gpt4_turbo.json" in page
    text = _text(page)
    assert "MT-bench: &lt;script&gt;alert(1)&lt;/script&gt; · Arena-Hard: arena judge" in text
    # the held-out win rate's judge under its figure, escaped
    assert "judge: qwen &lt;b&gt;judge&lt;/b&gt; (amopo_winrate, position swap); 3 judge" in text

    # controllability: its figure and one row per dimension, ρ or why it is undefined
    card = re.search(r'<section class="card" id="controllability">(.*?)</section>', page, re.DOTALL)
    assert card and len(_images(card.group(1))) == 1
    card_text = _text(card.group(1))
    assert "verbosity +0.877 &lt; 0.001 38 2" in card_text
    assert "&lt;harm&gt; undefined: constant scores &lt;all 3&gt; 40 0" in card_text
    assert "conditioning: moslim; levels 1, 2, 3, 4, 5; 8 prompts" in card_text
    assert "<script" not in page and "<harm>" not in page and "<b>judge</b>" not in page


def test_build_report_without_the_optional_sections_shows_none_of_them(tmp_path):
    # an earlier report of the same folder had them: their figures must not linger
    build_report(tmp_path, metrics=_full_metrics(), history=_history(), dimensions=DIMS)
    page = build_report(tmp_path, metrics=_metrics(), history=_history(),
                        dimensions=DIMS).read_text()
    assert len(_images(page)) == len(FIGURE_FILES)
    for absent in ("Benchmarks", 'id="benchmarks"', 'id="benchmark_win_rates"',
                   'id="controllability"', "Spearman", "IFBench", "MT-bench", "Arena-Hard",
                   "AlpacaEval:", "<b>AlpacaEval</b>", "judge:", "Judges:", "pp</span>"):
        assert absent not in page, absent
    assert not any((tmp_path / name).exists() for name in OPTIONAL_FIGURE_FILES.values())


def test_build_report_with_only_some_benchmarks(tmp_path):
    metrics = _metrics()
    metrics["ifbench"] = {"policy": _ifbench(None, None, scored=0)}  # no reference run
    # Arena-Hard against the reference model itself: no reference result of its own
    metrics["arena_hard"] = {"baseline": "reference", "judge": "j",
                             "policy": _pairwise(0.55, score=None, baseline_avg_words=36.75)}
    page = build_report(tmp_path, metrics=metrics, history=[], dimensions=DIMS).read_text()
    rows = _benchmark_rows(page)
    assert rows["prompt-level strict accuracy"] == [["—", "—", "—"]]
    assert rows["prompts scored"] == [["0 of 20", "—", ""]]
    assert rows["score (weighted battles)"] == [["—", "baseline", "—"]]
    assert rows["win rate [95% CI]"] == [["55.0% [45.0, 65.0]", "baseline", "—"]]
    assert rows["average words"] == [["120.5", "36.8", "+83.8"]]  # the reference's words
    assert not [metric for metric in rows if "baseline" in metric and "average words" in metric]
    assert "vs the reference model" in page
    assert "MT-bench" not in page and "AlpacaEval:" not in page and "Spearman" not in page
    assert "<b>AlpacaEval</b>" not in page
    assert len(_images(page)) == len(FIGURE_FILES) + 1  # the benchmark win rates, no controllability
    assert not (tmp_path / OPTIONAL_FIGURE_FILES["controllability"]).exists()


def test_build_report_draws_the_controllability_summary_it_is_given(tmp_path, monkeypatch):
    from moalign.evaluation import controllability

    seen = []

    def figure(summary):
        seen.append(summary)
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([1, 2], [1, 2])
        return fig

    monkeypatch.setattr(controllability, "controllability_figure", figure)
    metrics = {**_metrics(), "controllability": _full_metrics()["controllability"]}
    page = build_report(tmp_path, metrics=metrics, history=[], dimensions=DIMS).read_text()
    assert seen == [metrics["controllability"]]
    assert 'id="controllability"' in page and 'id="benchmarks"' not in page


def test_benchmark_win_rate_figure_has_one_bar_per_benchmark_and_model():
    metrics = _full_metrics()
    metrics["alpaca_eval"]["reference"]["win_rate"] = None  # no bar for it
    rows = benchmark_win_rows(metrics)
    assert [r["name"] for r in rows] == ["Arena-Hard: policy", "Arena-Hard: reference",
                                         "AlpacaEval: policy"]
    fig = win_rate_bars(rows)
    ax = fig.axes[0]
    ticks = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels()), strict=True))
    assert ticks == {2: "Arena-Hard: policy", 1: "Arena-Hard: reference", 0: "AlpacaEval: policy"}
    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    colors = {tuple(round(v, 3) for v in p.get_facecolor()[:3]) for p in bars.patches}
    assert len(colors) == 2  # the policy's bars and the reference's differ


def test_build_report_escapes_names_from_mlflow_the_log_and_the_benchmarks(tmp_path):
    hostile = "<img src=x onerror=alert(1)>"
    metrics = {**_metrics(), "arena_hard": {"baseline": hostile, "policy": _pairwise(0.5)}}
    experiments = [{"name": hostile, "scores": {"correctness": 3.0, "instruction_following": 2.0}}]
    history = [{"step": 1, "phase": hostile, "loss": 1.0}]
    page = build_report(tmp_path, metrics=metrics, history=history, dimensions=DIMS,
                        experiments=experiments).read_text()
    assert hostile not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") == 3  # the experiments table, the meta line, the baseline
