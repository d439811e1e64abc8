"""moalign.tracking: the tracking URI, params and step metrics logged live into a throwaway SQLite
MLflow store, a killed training continuing its run, and runs read back as plain records."""

from __future__ import annotations

from pathlib import Path

import pytest

# first: it switches MLflow's usage telemetry off before mlflow is imported
from moalign import tracking  # isort: skip
from moalign.tracking import (  # isort: skip
    ExperimentNotFound,
    StoreError,
    StoreNotFound,
    flatten_params,
    is_number,
    is_secret_key,
    read_runs,
    resolve_tracking_uri,
    sqlite_db_path,
)

import mlflow
from mlflow import MlflowClient




# --------------------------------------------------------------------------------------------------
# where the store is
# --------------------------------------------------------------------------------------------------


def test_relative_sqlite_uri_resolves_under_the_project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    expected = f"sqlite:///{(project / 'mlflow.db').resolve().as_posix()}"
    assert resolve_tracking_uri("sqlite:///mlflow.db", project) == expected
    assert resolve_tracking_uri("sqlite:///stores/../mlflow.db", project) == expected
    assert sqlite_db_path("sqlite:///mlflow.db", project) == (project / "mlflow.db").resolve()
    monkeypatch.chdir(tmp_path)  # without a project dir: the current directory, where stages run
    assert resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{(tmp_path / 'mlflow.db').resolve().as_posix()}"
    absolute = f"sqlite:///{(tmp_path / 'elsewhere.db').resolve().as_posix()}"
    assert resolve_tracking_uri(absolute, project) == absolute
    assert not (project / "mlflow.db").exists() and not project.exists()  # resolving touches nothing


@pytest.mark.parametrize(
    "uri", ["http://localhost:5000", "https://mlflow.example.org/", "databricks", "file:///tmp/mlruns", "postgresql://db/m"]
)
def test_server_and_other_store_uris_are_untouched(uri: str, tmp_path: Path) -> None:
    assert resolve_tracking_uri(uri, tmp_path) == uri
    assert sqlite_db_path(uri, tmp_path) is None


def test_in_memory_sqlite_is_refused() -> None:
    for uri in ("sqlite:///:memory:", "sqlite:///"):
        with pytest.raises(ValueError, match="on-disk SQLite"):
            resolve_tracking_uri(uri)


# --------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------


def test_is_number() -> None:
    import numpy as np

    for value in (1, 0.5, float("nan"), float("inf"), np.float32(2.5), np.int64(3)):
        assert is_number(value), value
    for value in (True, None, "1.0", np.array([1.0, 2.0]), [1]):
        assert not is_number(value), value


def test_flatten_params_dotted_keys_and_strings() -> None:
    nested = {
        "seed": 0,
        "train": {"beta": 0.8, "lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}},
        "model": {"path": None},
        "empty": {},
    }
    assert flatten_params(nested) == {
        "seed": "0",
        "train.beta": "0.8",
        "train.lora.r": "16",
        "train.lora.target_modules": "['q_proj', 'v_proj']",
        "model.path": "None",
    }
    assert flatten_params({"beta": 1}, prefix="train") == {"train.beta": "1"}
    assert nested["train"]["lora"]["r"] == 16  # pure: input untouched


@pytest.mark.parametrize(
    "key",
    [
        "hf_token",
        "HF_TOKEN",
        "api_key",
        "OPENAI_API_KEY",
        "judge.apiKey",
        "db.password",
        "client_secret",
        "auth.tokens.hub",
        "credentials.path",
        "tokenizer_secret",
        "hub.read_token",
        "judge.service_tokens",
    ],
)
def test_secret_keys_detected(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "train.beta",
        "annotate.max_new_tokens",
        "validate.max_tokens",
        "evaluate.max_new_tokens",
        "judge.max_reply_tokens",
        "judge.max_total_tokens",
        "model.tokenizer_path",
        "evaluate.benchmark_max_new_tokens",
    ],
)
def test_token_counts_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key)


def test_passwords_in_urls_are_masked_before_logging() -> None:
    from moalign.credentials import redact_url_password
    from moalign.tracking import _param_entities

    assert redact_url_password("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact_url_password("http://user:p%40ss@host/api and https://h/x") == "http://user:***@host/api and https://h/x"
    for clean in ("sqlite:///mlflow.db", "http://127.0.0.1:5000", "https://user@host/v1", "a:b@c"):
        assert redact_url_password(clean) == clean
    logged = {p.key: p.value for p in _param_entities({"register": {"tracking_uri": "http://u:pw@mlflow:5000"}})}
    assert logged == {"register.tracking_uri": "http://u:***@mlflow:5000"}


# --------------------------------------------------------------------------------------------------
# the run lifecycle
# --------------------------------------------------------------------------------------------------


def test_configure_resolves_relative_sqlite_and_local_artifacts(isolated_mlflow: Path) -> None:
    experiment_id = tracking.configure("sqlite:///mlflow.db", "moalign-test")
    expected = f"sqlite:///{(isolated_mlflow / 'mlflow.db').resolve().as_posix()}"
    assert mlflow.get_tracking_uri() == expected
    assert mlflow.get_registry_uri() == expected
    assert (isolated_mlflow / "mlflow.db").is_file()
    experiment = MlflowClient().get_experiment(experiment_id)
    assert experiment.name == "moalign-test"
    assert experiment.artifact_location.startswith((isolated_mlflow / "mlartifacts").resolve().as_uri())
    assert tracking.configure("sqlite:///mlflow.db", "moalign-test") == experiment_id  # idempotent


def test_training_run_logs_live_and_a_resumed_training_continues_its_run(isolated_mlflow: Path) -> None:
    experiment_id = tracking.configure("sqlite:///mlflow.db", "moalign-test")
    client = MlflowClient()
    params = {"train": {"beta": 0.8}, "judge": {"api_key": "sk-SUPERSECRET"}}
    run_id = tracking.start_training_run(experiment_id, "amopo-tiny", params, fingerprint="fp1")
    log = tracking.StepMetricLogger(run_id)
    log({"loss": 1.0, "correctness/weight": 0.6, "step": 1, "phase": "amopo", "epoch": 0.5})
    assert [m.value for m in client.get_metric_history(run_id, "correctness/weight")] == [0.6]
    # killed here; the rerun has the same fingerprint, so it continues the same run
    tracking.finish_training_run(run_id, [], status="FAILED")
    assert tracking.start_training_run(experiment_id, "amopo-tiny", params, fingerprint="fp1") == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    # its history holds step 1 (restored from the checkpoint) and step 2 (trained after the resume)
    history = [{"loss": 1.0, "correctness/weight": 0.6, "step": 1}, {"loss": 0.5, "correctness/weight": 0.4, "step": 2}]
    tracking.finish_training_run(run_id, history)
    tracking.finish_training_run(run_id, history)  # idempotent: nothing logged twice
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert loss == [(1, 1.0), (2, 0.5)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.beta"] == "0.8"
    assert "SUPERSECRET" not in repr(run.data.params)
    # a finished run is never continued: the same fingerprint trained again is a new run
    assert tracking.start_training_run(experiment_id, "amopo-tiny", params, fingerprint="fp1") != run_id
    assert tracking.start_training_run(experiment_id, "amopo-tiny", params, fingerprint="fp2") != run_id


# --------------------------------------------------------------------------------------------------
# reading runs back
# --------------------------------------------------------------------------------------------------


def test_read_runs_gives_plain_records_newest_first(isolated_mlflow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment_id = tracking.configure("sqlite:///mlflow.db", "moalign-test")
    tracking.configure("sqlite:///mlflow.db", "other")
    params = {"train": {"method": "dpo", "beta": 0.2}, "judge": {"api_key": "sk-SUPERSECRET"}}
    first = tracking.start_training_run(experiment_id, "dpo-tiny", params, fingerprint="a", tags={"method": "dpo"})
    tracking.finish_training_run(first, [{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}])
    second = tracking.start_training_run(experiment_id, "amopo-tiny", {"train": {"method": "amopo"}}, fingerprint="b")
    tracking.finish_training_run(second, [], status="FAILED")

    runs = read_runs("sqlite:///mlflow.db", "moalign-test")
    assert [run.run_id for run in runs] == [second, first]  # newest first
    dpo = runs[1]
    assert (dpo.name, dpo.status) == ("dpo-tiny", "FINISHED")
    assert dpo.params == {"train.method": "dpo", "train.beta": "0.2"}  # strings as logged, no secrets
    assert dpo.metrics == {"loss": 0.5}  # each metric's last value
    assert dpo.tags["method"] == "dpo" and dpo.tags[tracking.NONFINITE_TAG] == "0"
    assert dpo.start_time is not None and dpo.start_time.tzinfo is not None
    assert runs[0].status == "FAILED"
    assert [run.run_id for run in read_runs("sqlite:///mlflow.db", "moalign-test", max_runs=1)] == [second]
    assert read_runs("sqlite:///mlflow.db", "other") == []
    # the same store read from elsewhere: a relative path counts from the project dir
    monkeypatch.chdir(isolated_mlflow.parent)
    assert len(read_runs("sqlite:///mlflow.db", "moalign-test", project_dir=isolated_mlflow)) == 2
    monkeypatch.chdir(isolated_mlflow)

    MlflowClient().delete_experiment(experiment_id)
    with pytest.raises(ExperimentNotFound, match="'moalign-test'") as caught:
        read_runs("sqlite:///mlflow.db", "moalign-test")  # deleted counts as absent
    assert "other" in caught.value.existing and "moalign-test" not in caught.value.existing


def test_reading_never_creates_a_store(isolated_mlflow: Path) -> None:
    with pytest.raises(StoreNotFound, match=r"missing\.db"):
        read_runs("sqlite:///missing.db", "moalign")
    assert not (isolated_mlflow / "missing.db").exists()
    (isolated_mlflow / "junk.db").write_text("not a database")
    with pytest.raises(StoreError, match=r"junk\.db"):
        read_runs("sqlite:///junk.db", "moalign")
    with pytest.raises(StoreError, match="on-disk"):
        read_runs("sqlite:///:memory:", "moalign")
