"""moalign.promotion (the champion/challenger gate) and `moalign promote`, against a throwaway SQLite
MLflow store. Versions are registered cheaply: a run with a metrics.json and a responses.jsonl
artifact, and a model version whose source is a ``runs:/`` URI (no model is logged)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from statistics import mean

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from moalign import promotion, tracking
from moalign.cli import app
from moalign.config import ParamsError, parse_params

MODEL = "policy"
URI = "sqlite:///mlflow.db"
PROMPTS = [f"p{i}" for i in range(12)]
REFERENCE = {"correctness": 3, "verbosity": 3}


def _good(i: int) -> dict[str, int]:
    return {"correctness": 4 if i % 3 else 3, "verbosity": 4}


def _better(i: int) -> dict[str, int]:
    return {"correctness": 5 if i % 3 else 4, "verbosity": 4}  # +0.5 over _good on every prompt


def _trades_verbosity(i: int) -> dict[str, int]:
    return {"correctness": 5, "verbosity": 3}  # better on average than _good, 1 point less verbose


def _evaluation(policy, ci95_low: float, prompts=PROMPTS) -> tuple[dict, list[dict]]:
    """metrics.json and responses.jsonl rows as the evaluate stage writes them (the keys the gate reads)."""
    rows = [{"prompt_id": p, "policy": {"text": "a", "scores": policy(i)},
             "reference": {"text": "b", "scores": REFERENCE}, "outcome": "win"} for i, p in enumerate(prompts)]
    scores = {d: mean(row["policy"]["scores"][d] for row in rows) for d in REFERENCE}
    metrics = {
        "win_rate_vs_reference": {"win_rate": ci95_low + 0.1, "ci95_low": ci95_low, "ci95_high": ci95_low + 0.2,
                                  "n": len(rows), "failures": 0, "judge": "per-dimension scores"},
        "policy": {"scores": scores, "mean_score": mean(scores.values()), "judge_failures": 0},
        "reference": {"scores": dict(REFERENCE), "mean_score": 3, "judge_failures": 0},
        "score_changes": {d: {"delta": scores[d] - REFERENCE[d]} for d in REFERENCE},
        "n_prompts": len(rows),
    }
    return metrics, rows


def _register(client: MlflowClient, tmp: Path, policy=_good, *, ci95_low=0.6, model=MODEL, judge="programmatic",
              status="FINISHED", prompts=PROMPTS, edit=None, skip=()) -> str:
    """A new version of ``model`` whose run logged an evaluation of ``policy``; alias challenger."""
    metrics, rows = _evaluation(policy, ci95_low, prompts)
    if edit is not None:
        edit(metrics, rows)
    run_id = client.create_run(tracking.configure(URI, "promotion")).info.run_id
    client.log_param(run_id, "judge.backend", judge)
    folder = tmp / run_id
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "responses.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name in ("metrics.json", "responses.jsonl"):
        if name not in skip:
            client.log_artifact(run_id, str(folder / name))
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model)
    version = str(client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id).version)
    client.set_registered_model_alias(model, "challenger", version)
    return version


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database with its schema made once: creating one costs seconds, copying it none."""
    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def store(isolated_mlflow: Path, empty_store: Path) -> MlflowClient:
    shutil.copy(empty_store, isolated_mlflow / "mlflow.db")
    tracking.configure(URI, "promotion")
    return MlflowClient()


def _champion(client: MlflowClient, model: str = MODEL) -> str | None:
    aliases = client.get_registered_model(model).aliases
    return str(aliases["champion"]) if "champion" in aliases else None


def _tags(client: MlflowClient, version: str, model: str = MODEL) -> dict[str, str]:
    tags = client.get_model_version(model, version).tags
    return {k.removeprefix(promotion.TAG_PREFIX): v for k, v in tags.items() if k.startswith(promotion.TAG_PREFIX)}


def test_first_version_is_promoted_when_it_beats_the_starting_model(store, tmp_path):
    version = _register(store, tmp_path)
    decision = promotion.promote(URI, MODEL)  # default: the challenger
    assert decision.promoted and decision.version == version == "1" and decision.compared_with is None
    assert _champion(store) == "1"
    tags = _tags(store, "1")
    assert tags["decision"] == "champion" and tags["compared_with"] == "none"
    assert float(tags["win_rate_ci95_low"]) == pytest.approx(0.6)
    assert "vs_champion_delta" not in tags


def test_first_version_not_promoted_without_a_clear_win(store, tmp_path):
    _register(store, tmp_path, ci95_low=0.45)
    decision = promotion.promote(URI, MODEL)
    assert decision.decision == "challenger" and "not above 0.5" in decision.reasons[0]
    assert _champion(store) is None
    assert _tags(store, "1")["decision"] == "challenger"


def test_better_candidate_is_promoted_over_the_champion(store, tmp_path):
    _register(store, tmp_path)
    promotion.promote(URI, MODEL)
    _register(store, tmp_path, _better)
    decision = promotion.promote(URI, MODEL, 2)
    assert decision.promoted and decision.compared_with == "1", decision.reasons
    assert _champion(store) == "2"
    tags = _tags(store, "2")
    assert tags["compared_with"] == "1"
    assert float(tags["vs_champion_delta"]) == pytest.approx(0.5)
    assert float(tags["vs_champion_ci95_low"]) > 0
    # already the champion: nothing to decide again
    assert promotion.promote(URI, MODEL, 2).reasons == ("already the champion: nothing to do",)


def test_candidate_worse_on_one_dimension_is_not_promoted(store, tmp_path):
    _register(store, tmp_path)
    promotion.promote(URI, MODEL)
    _register(store, tmp_path, _trades_verbosity)
    decision = promotion.promote(URI, MODEL, max_regression={"verbosity": 0.5})
    assert decision.decision == "challenger"
    assert decision.numbers["vs_champion_delta"] > 0  # better on the mean, but not on every dimension
    assert decision.reasons == ("verbosity vs champion version 1 -1.000, a loss over the allowed 0.5",)
    assert _champion(store) == "1"
    tags = _tags(store, "2")
    assert tags["decision"] == "challenger" and "verbosity vs champion version 1" in tags["reasons"]
    assert float(tags["vs_champion.verbosity"]) == -1.0
    # with a looser tolerance the same evaluations promote
    assert promotion.promote(URI, MODEL, 2, max_regression={"verbosity": 1.0}).promoted
    assert _champion(store) == "2"


def _null_win_rate(metrics, rows):
    metrics["win_rate_vs_reference"].update(win_rate=None, ci95_low=None)


def _judge_failures(metrics, rows):
    metrics["policy"]["judge_failures"] = 2


def _fewer_rows(metrics, rows):
    del rows[3:]


PARTIAL = {
    "no responses.jsonl": ({"skip": ("responses.jsonl",)}, "missing per-prompt rows"),
    "no metrics.json": ({"skip": ("metrics.json",)}, "missing metrics"),
    "null win rate": ({"edit": _null_win_rate}, "null win rate"),
    "judge failures": ({"edit": _judge_failures}, "2 judge failures"),
    "n unlike the rows": ({"edit": _fewer_rows}, "n=12 but 3 per-prompt rows"),
    "failed run": ({"status": "FAILED"}, "run FAILED, not FINISHED"),
    "running run": ({"status": "RUNNING"}, "run RUNNING, not FINISHED"),
}


def test_failed_or_partial_evaluation_never_promotes(store, tmp_path):
    for index, (case, (settings, reason)) in enumerate(PARTIAL.items()):
        model = f"partial-{index}"
        _register(store, tmp_path, _better, ci95_low=0.9, model=model, **settings)
        decision = promotion.promote(URI, model)
        assert decision.decision == "challenger", case
        assert any(reason in r for r in decision.reasons), (case, decision.reasons)
        assert _champion(store, model) is None, case
        assert _tags(store, "1", model)["decision"] == "challenger", case


def test_promotion_needs_comparable_evaluations(store, tmp_path):
    _register(store, tmp_path)
    promotion.promote(URI, MODEL)
    _register(store, tmp_path, _better, judge="openai_compatible")
    _register(store, tmp_path, _better, prompts=[f"q{i}" for i in range(12)])
    other_judge = promotion.promote(URI, MODEL, 2)
    other_prompts = promotion.promote(URI, MODEL, 3)
    assert other_judge.reasons[0].startswith("not comparable: judge differs")
    assert other_prompts.reasons == ("not comparable: prompt ids differ (12 only in version 3, 12 only in version 1)",)
    assert _champion(store) == "1"


def test_racing_promotions_leave_one_consistent_champion(store, tmp_path):
    _register(store, tmp_path)
    promotion.promote(URI, MODEL)
    _register(store, tmp_path, _good, ci95_low=0.7)  # v2: no better than v1 is, would lose to anyone
    _register(store, tmp_path, _better)  # v3
    _register(store, tmp_path, lambda i: {"correctness": 5, "verbosity": 5})  # v4: the best
    start, decisions, errors = threading.Barrier(2), {}, []

    def race(version: str) -> None:
        try:
            start.wait()
            decisions[version] = promotion.promote(URI, MODEL, version)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=race, args=(v,)) for v in ("3", "4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and set(decisions) == {"3", "4"}
    # whichever went first, the second compared itself with the champion the first left
    assert _champion(store) == "4" and _tags(store, "4")["decision"] == "champion"
    assert {_tags(store, v)["decision"] for v in ("3", "4")} <= {"champion", "challenger"}
    if _tags(store, "3")["decision"] == "champion":
        assert _tags(store, "4")["compared_with"] == "3"
    else:
        assert _tags(store, "3")["compared_with"] == "4"
    assert not _tags(store, "2")  # never judged


def test_promote_dry_run_moves_and_tags_nothing(store, tmp_path):
    _register(store, tmp_path)
    result = CliRunner().invoke(app, ["promote", "--tracking-uri", URI, "--model-name", MODEL, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "policy version 1: champion (against no champion yet)" in result.output
    assert "dry run: no alias moved, no tag written" in result.output
    assert _champion(store) is None and not _tags(store, "1")
    result = CliRunner().invoke(app, ["promote", "--tracking-uri", URI, "--model-name", MODEL])
    assert result.exit_code == 0 and "alias champion -> version 1" in result.output
    assert _champion(store) == "1"


def test_promote_command_rejects_bad_input(store, tmp_path):
    _register(store, tmp_path)
    runner = CliRunner()
    cases = {
        ("--version", "9"): "'policy' has no version 9",
        ("--model-name", "nope"): "no registered model 'nope'",
        ("--tracking-uri", "sqlite:///missing/mlflow.db"): "no MLflow store",
    }
    for args, message in cases.items():
        result = runner.invoke(app, ["promote", "--tracking-uri", URI, "--model-name", MODEL, *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    help_text = runner.invoke(app, ["promote", "--help"]).output
    assert "champion" in help_text and "--dry-run" in help_text


def test_promotion_settings_are_validated():
    assert parse_params({}).register_.promote == "auto"
    with pytest.raises(ParamsError, match=r"register.max_regression names \['length'\]"):
        parse_params({"register": {"max_regression": {"length": 0.1}}})
    with pytest.raises(ParamsError, match="register.max_regression must be >= 0"):
        parse_params({"register": {"max_regression": {"verbosity": -0.1}}})
    with pytest.raises(ParamsError, match="register.promote: got 'sometimes'"):
        parse_params({"register": {"promote": "sometimes"}})


def test_promotion_rule_allows_a_loss_of_exactly_the_tolerance():
    metrics, rows = _evaluation(_good, 0.6)
    champion_metrics, champion_rows = _evaluation(_good, 0.6)
    for row in rows:
        row["policy"]["scores"] = {"correctness": row["policy"]["scores"]["correctness"] + 1, "verbosity": 3.9}
    candidate = promotion.Evaluation("2", metrics, rows, "judge")
    champion = promotion.Evaluation("1", champion_metrics, champion_rows, "judge")
    assert promotion.decide(MODEL, candidate, champion, {"verbosity": 0.1}).promoted
    assert not promotion.decide(MODEL, candidate, champion, {"verbosity": 0.05}).promoted
