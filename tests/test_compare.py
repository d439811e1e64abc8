"""moalign.compare and ``moalign compare``: pure formatting, collection from a throwaway SQLite
MLflow store (runs made through moalign.tracking, as the pipeline makes them) and the CLI."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlflow.tracking._model_registry.utils as _registry_utils  # noqa: E402
import mlflow.tracking._tracking_service.utils as _tracking_utils  # noqa: E402
import mlflow.tracking.fluent as _fluent  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from moalign import tracking  # noqa: E402
from moalign.cli import app  # noqa: E402
from moalign.compare import (  # noqa: E402
    AVG_WORDS,
    MEAN_SCORE,
    VALID_ROWS,
    WIN_RATE,
    CompareError,
    best_rows,
    collect_runs,
    comparison_table,
    format_value,
    metric_direction,
    metric_keys,
    resolve_sort_key,
    sort_rows,
)
from moalign.tracking import ExperimentNotFound, StoreError, StoreNotFound  # noqa: E402

CORRECTNESS = "eval/policy/scores/correctness"
VERBOSITY = "eval/policy/scores/verbosity"
DIMENSIONS = ["correctness", "instruction_following", "verbosity", "harmlessness"]


# --------------------------------------------------------------------------------------------------
# pure functions on constructed rows
# --------------------------------------------------------------------------------------------------


def _row(run_id: str, method: str | None, metrics: dict[str, float | None]) -> dict:
    return {
        "run_id": run_id,
        "run_name": f"{method}-run" if method else None,
        "start_time": "2026-11-23T16:38:59+00:00",
        "status": "FINISHED",
        "method": method,
        "beta": "0.8",
        "gamma": None,
        "weights": None,
        "learning_rate": "5e-05",
        "lora": "r16",
        "version": None,
        "metrics": metrics,
    }


def _rows() -> list[dict]:
    return [
        _row(
            "aaaa1111",
            "amopo",
            {"win": 0.6, "mean": 3.53125, AVG_WORDS: 40.0, VALID_ROWS: 77.0, "loss": 0.5},
        ),
        _row(
            "bbbb2222",
            "dpo",
            {"win": 0.45, "mean": 3.1, AVG_WORDS: 55.5, VALID_ROWS: 77.0, "loss": 0.25},
        ),
        _row(
            "cccc3333",
            "sft",
            {"win": None, "mean": None, AVG_WORDS: None, VALID_ROWS: 70.0, "loss": None},
        ),
    ]


def test_format_value() -> None:
    assert format_value(None) == "—"
    assert format_value(float("nan")) == "—"
    assert format_value(0.53125) == "0.531"
    assert format_value(2) == "2.000"
    assert format_value(77.0, integer=True) == "77"
    assert format_value(35.5, integer=True) == "35.500"  # integer only applies to whole numbers
    assert format_value(5e-5) == "5.00e-05"  # would be 0.000 with three decimals
    assert format_value(0.0) == "0.000"
    assert format_value(1.23456, decimals=1) == "1.2"
    assert format_value("amopo") == "amopo"
    assert format_value("") == "—"


def test_comparison_table_headers_cells_and_missing_values() -> None:
    keys = ["win", "mean", AVG_WORDS, VALID_ROWS, "absent"]
    headers, cells = comparison_table(_rows(), keys)
    # the run, its numbers, then the details
    assert headers[:7] == ["run", "method", "win", "mean", "words", "valid rows", "absent"]
    assert headers[7:] == ["beta", "gamma", "weights", "lr", "lora", "version", "name", "started", "status"]
    assert len(cells) == 3 and all(len(line) == len(headers) for line in cells)
    amopo = dict(zip(headers, cells[0], strict=True))
    assert amopo["method"] == "amopo" and amopo["beta"] == "0.8" and amopo["lr"] == "5e-05"
    assert amopo["started"] == "2026-11-23 16:38"
    assert amopo["gamma"] == "—" and amopo["version"] == "—"
    assert (amopo["win"], amopo["mean"], amopo["words"]) == ("0.600", "3.531", "40.000")
    assert amopo["valid rows"] == "77"  # a count column of whole numbers shows integers
    _, rate_cells = comparison_table(
        [_row("x", "dpo", {WIN_RATE: 1.0}), _row("y", "dpo", {WIN_RATE: 0.0})], [WIN_RATE]
    )
    assert [line[2] for line in rate_cells] == ["1.000", "0.000"]  # a rate stays a rate
    assert amopo["absent"] == "—"
    sft = dict(zip(headers, cells[2], strict=True))
    assert (sft["win"], sft["mean"], sft["valid rows"]) == ("—", "—", "70")


def test_known_metric_keys_get_short_headers() -> None:
    headers, _ = comparison_table([], [WIN_RATE, MEAN_SCORE, CORRECTNESS, AVG_WORDS, VALID_ROWS])
    assert headers[2:7] == ["win rate", "mean score", "correctness", "words", "valid rows"]


def test_metric_direction() -> None:
    assert metric_direction(WIN_RATE) == "max"
    assert metric_direction(CORRECTNESS) == "max"
    assert metric_direction("loss") == "min"
    assert metric_direction("train_loss") == "min"
    assert metric_direction("eval/policy/judge_failures") == "min"
    assert metric_direction("validate/failed_rows_per_expectation/labels_agree") == "min"
    assert metric_direction(AVG_WORDS) is None
    assert metric_direction(VALID_ROWS) is None
    assert metric_direction("correctness/weight") is None


def test_best_rows_direction_ties_and_neutral_columns() -> None:
    rows = _rows()
    best = best_rows(rows, ["win", "loss", AVG_WORDS, VALID_ROWS])
    assert best["win"] == {0}  # highest
    assert best["loss"] == {1}  # lowest: a loss
    assert (
        AVG_WORDS not in best and VALID_ROWS not in best
    )  # length, count: neither better nor worse
    rows[1]["metrics"]["win"], rows[2]["metrics"]["win"] = 0.6, 0.3
    assert best_rows(rows, ["win"])["win"] == {0, 1}  # a tie marks both
    rows[2]["metrics"]["win"] = 0.6
    assert "win" not in best_rows(rows, ["win"])  # all equal: nothing stands out
    assert best_rows(rows[:1], ["win"]) == {}  # one value is no comparison


def test_sort_rows_best_first_missing_last() -> None:
    rows = _rows()
    assert [r["method"] for r in sort_rows(rows, "win")] == ["amopo", "dpo", "sft"]
    assert [r["method"] for r in sort_rows(rows, "loss")] == ["dpo", "amopo", "sft"]  # ascending
    assert [r["method"] for r in sort_rows(rows, "method")] == ["amopo", "dpo", "sft"]
    rows[0]["beta"], rows[1]["beta"], rows[2]["beta"] = "10", "0.2", None
    assert [r["beta"] for r in sort_rows(rows, "beta")] == ["0.2", "10", None]  # numeric, not text
    assert [r["method"] for r in rows] == ["amopo", "dpo", "sft"]  # input untouched


def test_resolve_sort_key_names() -> None:
    keys = [WIN_RATE, MEAN_SCORE, CORRECTNESS, VERBOSITY, AVG_WORDS]
    assert resolve_sort_key("win_rate", keys) == WIN_RATE
    assert resolve_sort_key("win rate", keys) == WIN_RATE
    assert resolve_sort_key("mean_score", keys) == MEAN_SCORE
    assert resolve_sort_key("correctness", keys) == CORRECTNESS
    assert resolve_sort_key(VERBOSITY, keys) == VERBOSITY
    assert resolve_sort_key("lr", keys) == "learning_rate"
    assert resolve_sort_key("Method", keys) == "method"
    with pytest.raises(CompareError, match="names no column.*method"):
        resolve_sort_key("nonsense", keys)
    with pytest.raises(CompareError, match="ambiguous"):
        resolve_sort_key("mean_score", [MEAN_SCORE, "eval/reference/mean_score"])


def test_metric_keys_first_seen_order() -> None:
    rows = [{"metrics": {"a": 1, "b": 2}}, {"metrics": {"c": 3, "a": 4}}]
    assert metric_keys(rows) == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------------
# a throwaway store: three runs logged as the pipeline logs them
# --------------------------------------------------------------------------------------------------


def _params(method: str, beta: float, lora: bool) -> dict:
    return {
        "seed": 0,
        "dimensions": {"names": DIMENSIONS},
        "train": {
            "method": method,
            "beta": beta,
            "gamma": 2.0,
            "weights": "gaussian",
            "learning_rate": 5e-5,
            "lora": {"enabled": lora, "r": 16},
        },
    }


def _eval(win: float, scores: dict[str, float], words: float) -> dict[str, float]:
    metrics = {
        WIN_RATE: win,
        MEAN_SCORE: sum(scores.values()) / len(scores),
        AVG_WORDS: words,
        VALID_ROWS: 77.0,
        "eval/reference/mean_score": 3.0,
    }
    metrics.update({f"eval/policy/scores/{name}": value for name, value in scores.items()})
    return metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``sqlite:////abs/mlflow.db`` holding experiment ``moalign`` (amopo, dpo and a failed sft run
    without evaluation; dpo registered as version 1) and an empty experiment ``empty``."""
    folder = tmp_path_factory.mktemp("compare-store")
    with pytest.MonkeyPatch.context() as patch:
        for var in (
            "MLFLOW_TRACKING_URI",
            "MLFLOW_REGISTRY_URI",
            "MLFLOW_EXPERIMENT_ID",
            "MLFLOW_EXPERIMENT_NAME",
        ):
            patch.delenv(var, raising=False)
        patch.setattr(_tracking_utils, "_tracking_uri", None)
        patch.setattr(_registry_utils, "_registry_uri", None)
        patch.setattr(_fluent, "_active_experiment_id", None)
        patch.chdir(folder)
        uri = f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
        tracking.configure(uri, "empty")
        experiment_id = tracking.configure(uri, "moalign")
        client = MlflowClient()
        runs = [
            (
                "amopo",
                0.8,
                True,
                _eval(0.6, {"correctness": 3.2, "verbosity": 3.8}, 40.0),
                "FINISHED",
            ),
            (
                "dpo",
                0.2,
                False,
                _eval(0.45, {"correctness": 3.4, "verbosity": 2.9}, 55.5),
                "FINISHED",
            ),
            ("sft", 1.0, True, {}, "FAILED"),
        ]
        for method, beta, lora, metrics, status in runs:
            run_id = tracking.start_training_run(
                experiment_id, f"{method}-tiny", _params(method, beta, lora), fingerprint=method
            )
            tracking.StepMetricLogger(run_id)({"loss": 1.0, "correctness/weight": 0.5, "step": 1})
            history = [
                {"loss": 1.0, "step": 1},
                {"loss": 0.5 if method == "amopo" else 0.7, "step": 2},
            ]
            tracking.finish_training_run(run_id, history, status=status)
            for key, value in metrics.items():
                client.log_metric(run_id, key, value, step=0)
            if method == "dpo":
                client.create_registered_model("moalign-policy")
                source = f"{client.get_run(run_id).info.artifact_uri}/model"
                client.create_model_version("moalign-policy", source, run_id=run_id)
        yield uri


def test_collect_runs_from_the_store(store: str) -> None:
    rows = collect_runs(store, "moalign")
    assert [row["method"] for row in rows] == ["sft", "dpo", "amopo"]  # newest first
    by_method = {row["method"]: row for row in rows}
    amopo, dpo, sft = by_method["amopo"], by_method["dpo"], by_method["sft"]
    assert len(amopo["run_id"]) == 8 and amopo["run_id_full"].startswith(amopo["run_id"])
    assert amopo["run_name"] == "amopo-tiny" and amopo["status"] == "FINISHED"
    assert (amopo["beta"], amopo["gamma"], amopo["weights"]) == ("0.8", "2.0", "gaussian")
    # logged for every run, shown where the method reads them: DPO reads beta only, SFT none
    assert (dpo["beta"], dpo["gamma"], dpo["weights"]) == ("0.2", None, None)
    assert (sft["beta"], sft["gamma"], sft["weights"]) == (None, None, None)
    assert amopo["learning_rate"] == "5e-05"
    assert (amopo["lora"], dpo["lora"]) == ("r16", "off")
    assert dpo["version"] == "1" and dpo["registered"] == ["models:/moalign-policy/1"]
    assert amopo["version"] is None and amopo["registered"] == []
    assert sft["status"] == "FAILED"
    # default metrics: win rate, mean score, the scores found (dimensions.names order), words, rows
    keys = metric_keys(rows)
    assert keys == [WIN_RATE, MEAN_SCORE, CORRECTNESS, VERBOSITY, AVG_WORDS, VALID_ROWS]
    assert amopo["metrics"][WIN_RATE] == pytest.approx(0.6)
    assert dpo["metrics"][CORRECTNESS] == pytest.approx(3.4)
    assert dpo["metrics"][AVG_WORDS] == pytest.approx(55.5)
    assert all(value is None for value in sft["metrics"].values())
    assert list(sft["metrics"]) == keys  # every row has every key

    chosen = collect_runs(store, "moalign", metrics=["loss", WIN_RATE], only_registered=True)
    assert [row["method"] for row in chosen] == ["dpo"]
    assert chosen[0]["metrics"] == {"loss": pytest.approx(0.7), WIN_RATE: pytest.approx(0.45)}
    extra = collect_runs(store, "moalign", extra_metrics=["loss", "never_logged"])
    assert metric_keys(extra)[-1] == "loss"  # added: logged by a run; never_logged: dropped
    assert collect_runs(store, "empty") == []


def test_collect_runs_errors(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExperimentNotFound, match="'nope'") as caught:
        collect_runs(store, "nope")
    assert {"moalign", "empty"} <= set(caught.value.existing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreNotFound, match=r"sqlite:///missing\.db"):
        collect_runs("sqlite:///missing.db", "moalign")
    assert not (tmp_path / "missing.db").exists()  # reading never creates a store
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(StoreError, match=r"junk\.db"):
        collect_runs("sqlite:///junk.db", "moalign")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _invoke(*args: str):
    return CliRunner().invoke(app, ["compare", *args])


def _line_of(output: str, text: str) -> int:
    return next(i for i, line in enumerate(output.splitlines()) if text in line)


def test_cli_table_has_every_run(store: str) -> None:
    result = _invoke("--tracking-uri", store, "--experiment", "moalign")
    assert result.exit_code == 0, result.output
    for text in (
        "amopo-tiny",
        "dpo-tiny",
        "sft-tiny",
        "win rate",
        "correctness",
        "verbosity",
        "0.600",
    ):
        assert text in result.output
    dpo_line = result.output.splitlines()[_line_of(result.output, "dpo-tiny")]
    assert "0.450" in dpo_line and "55.500" in dpo_line and "off" in dpo_line


def test_cli_sort_orders_rows(store: str) -> None:
    by_win = _invoke("--tracking-uri", store, "--experiment", "moalign", "--sort", "win_rate")
    assert by_win.exit_code == 0, by_win.output
    out = by_win.output
    assert _line_of(out, "amopo-tiny") < _line_of(out, "dpo-tiny") < _line_of(out, "sft-tiny")
    by_correctness = _invoke(
        "--tracking-uri", store, "--experiment", "moalign", "--sort", "correctness"
    )
    out = by_correctness.output
    assert _line_of(out, "dpo-tiny") < _line_of(out, "amopo-tiny") < _line_of(out, "sft-tiny")
    # a metric not shown is collected for the sort (and shown): lowest loss first
    by_loss = _invoke("--tracking-uri", store, "--experiment", "moalign", "--sort", "loss")
    assert by_loss.exit_code == 0, by_loss.output
    assert _line_of(by_loss.output, "amopo-tiny") < _line_of(by_loss.output, "dpo-tiny")
    bad = _invoke("--tracking-uri", store, "--experiment", "moalign", "--sort", "nonsense")
    assert bad.exit_code == 2 and "nonsense" in bad.output


def test_cli_csv_and_json(store: str, tmp_path: Path) -> None:
    out_csv, out_json = tmp_path / "out" / "table.csv", tmp_path / "table.json"
    result = _invoke(
        "--tracking-uri",
        store,
        "--experiment",
        "moalign",
        "--csv",
        str(out_csv),
        "--json",
        str(out_json),
        "--metric",
        WIN_RATE,
        "--metric",
        "loss",
    )
    assert result.exit_code == 0, result.output
    with out_csv.open(newline="") as handle:
        lines = list(csv.reader(handle))
    header, body = lines[0], lines[1:]
    assert header[:3] == ["run_id_full", "run_id", "run_name"]
    assert header[-2:] == [WIN_RATE, "loss"]
    assert len(body) == 3
    records = {row[header.index("method")]: dict(zip(header, row, strict=True)) for row in body}
    assert float(records["amopo"][WIN_RATE]) == pytest.approx(0.6)
    assert records["sft"][WIN_RATE] == ""  # missing: empty cell
    assert records["dpo"]["version"] == "1"
    data = json.loads(out_json.read_text())
    assert data["metrics"] == [WIN_RATE, "loss"]
    assert {run["method"] for run in data["runs"]} == {"amopo", "dpo", "sft"}


def test_cli_defaults_from_params_and_only_registered(store: str, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        f"register:\n  tracking_uri: {store}\n  experiment: moalign\n  model_name: m\n"
        "train:\n  not_a_key: 1\n"  # other sections are not validated here
    )
    result = _invoke("--params", str(params), "--only-registered")
    assert result.exit_code == 0, result.output
    assert "dpo-tiny" in result.output and "amopo-tiny" not in result.output
    missing = _invoke("--params", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "nope.yaml" in missing.output


def test_cli_errors_and_empty_experiment(store: str, tmp_path: Path) -> None:
    unknown = _invoke("--tracking-uri", store, "--experiment", "no-such-exp")
    assert unknown.exit_code == 1
    assert "no-such-exp" in unknown.output and "moalign" in unknown.output  # names what exists
    empty = _invoke("--tracking-uri", store, "--experiment", "empty")
    assert empty.exit_code == 0 and "No runs" in empty.output
    absent = f"sqlite:///{(tmp_path / 'absent.db').as_posix()}"
    unreadable = _invoke("--tracking-uri", absent, "--experiment", "moalign")
    assert unreadable.exit_code == 1 and "absent.db" in unreadable.output


def test_the_params_a_method_reads_are_train_settings() -> None:
    from moalign.config import TrainParams
    from moalign.training.methods import METHODS

    for method in METHODS.values():
        assert set(method.train_params) <= set(TrainParams.model_fields), method.name
    assert "weights" in METHODS["amopo"].train_params and "weights" not in METHODS["simpo"].train_params
    assert METHODS["simpo"].train_params == ("beta", "gamma") and METHODS["moslim_rloo"].train_params == ()


def test_simpo_row_shows_its_own_params_not_amopos_weights(isolated_mlflow: Path) -> None:
    import re

    uri = f"sqlite:///{(isolated_mlflow / 'mlflow.db').as_posix()}"
    experiment_id = tracking.configure(uri, "sweep")
    for method in ("amopo", "simpo"):
        params = _params(method, 0.8, True)
        params["train"]["weights"] = "authors_code"  # AMoPO's, logged for both
        run_id = tracking.start_training_run(experiment_id, f"{method}-run", params, fingerprint=method)
        tracking.finish_training_run(run_id, [])
    rows = {row["method"]: row for row in collect_runs(uri, "sweep")}
    assert (rows["simpo"]["beta"], rows["simpo"]["gamma"], rows["simpo"]["weights"]) == ("0.8", "2.0", None)
    assert rows["amopo"]["weights"] == "authors_code"
    result = _invoke("--tracking-uri", uri, "--experiment", "sweep")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    simpo, amopo = lines[_line_of(result.output, "simpo-run")], lines[_line_of(result.output, "amopo-run")]
    assert "authors_code" in amopo and "authors_code" not in simpo
    assert re.search(r"\b0\.8\s+2\.0\s+—", simpo)  # beta, gamma, no weights


def test_cli_fits_an_80_column_terminal_numbers_first(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80")
    result = _invoke("--tracking-uri", store, "--experiment", "moalign")
    assert result.exit_code == 0, result.output
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    assert max(len(line.rstrip()) for line in plain.splitlines()) <= 80
    lines = plain.splitlines()
    above, header = lines[_line_of(plain, "method") - 1], lines[_line_of(plain, "method")]
    assert "win" in above and "mean" in above  # headers stacked a word a line, bottom-aligned
    order = [header.index(word) for word in ("run", "method", "rate", "score", "correctness", "verbosity")]
    assert order == sorted(order)  # the run, then the key numbers
    for text in ("correctness", "verbosity", "0.600", "0.450", "3.400", "FAILED"):
        assert text in plain  # whole: the details were left out first
    assert "left out (narrow terminal): started, lr" in " ".join(plain.split())


def test_cli_help_explains_itself() -> None:
    result = CliRunner().invoke(app, ["compare", "--help"])
    assert result.exit_code == 0
    for text in ("Table 2", "--sort", "--csv", "--only-registered", "Examples", "moalign compare"):
        assert text in result.output


def test_cli_terminal_highlights_best_and_fits_narrow_width(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the output as a terminal
    monkeypatch.setenv("COLUMNS", "110")
    result = _invoke("--tracking-uri", store, "--experiment", "moalign")
    assert result.exit_code == 0, result.output
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    assert max(len(line.rstrip()) for line in plain.splitlines()) <= 110
    assert "left out (narrow terminal): " in plain
    # "win rate", stacked: a narrow terminal gives every word of a metric header its own line
    lines = plain.splitlines()
    above, header = lines[_line_of(plain, "rate") - 1], lines[_line_of(plain, "rate")]
    assert above.index("win") + len("win") == header.index("rate") + len("rate")
    # the best win rate (amopo, 0.600) and correctness (dpo, 3.400) are bold
    assert re.search(r"\x1b\[1[;0-9]*m\s*0\.600", result.output)
    assert re.search(r"\x1b\[1[;0-9]*m\s*3\.400", result.output)
    assert not re.search(r"\x1b\[1[;0-9]*m\s*0\.450", result.output)
