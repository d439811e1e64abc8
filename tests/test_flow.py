"""flows.pipeline on a toy DVC project, against Prefect's temporary test server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import pipeline as pipeline_module
from flows.pipeline import StageFailedError, pipeline, run_stage, stage_names

ROOT = Path(__file__).resolve().parents[1]

PREPARE = (
    "import yaml; n = yaml.safe_load(open('params.yaml'))['prepare']['n']; "
    "open('data.txt', 'w').write(' '.join(map(str, range(n))))"
)
REPORT = (
    "words = open('data.txt').read().split(); print('counted', len(words)); "
    "open('report.txt', 'w').write(str(len(words)))"
)
TOY_DVC_YAML = f"""\
stages:
  prepare:
    cmd: python -c "{PREPARE}"
    params:
      - prepare.n
    outs:
      - data.txt
  report:
    cmd: python -c "{REPORT}"
    deps:
      - data.txt
    outs:
      - report.txt
"""


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def _make_dvc_project(path: Path, dvc_yaml: str = TOY_DVC_YAML, n: int = 3) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=_env())
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True, env=_env())
    (path / "params.yaml").write_text(f"prepare:\n  n: {n}\n")
    (path / "dvc.yaml").write_text(dvc_yaml)
    return path


@pytest.fixture
def toy_project(tmp_path: Path) -> Path:
    return _make_dvc_project(tmp_path / "toy")


# --------------------------------------------------------------------------------------------------
# no server needed
# --------------------------------------------------------------------------------------------------


def test_stage_names_in_file_order(toy_project: Path) -> None:
    assert stage_names(toy_project) == ["prepare", "report"]
    assert stage_names(ROOT)[0] == "prepare_model"  # the real pipeline parses too
    with pytest.raises(FileNotFoundError, match="dvc.yaml"):
        stage_names(toy_project / "nowhere")


def test_retry_settings() -> None:
    assert run_stage.retries == 1
    assert run_stage.retry_delay_seconds == 10


def test_run_stage_fn_directly(toy_project: Path) -> None:
    assert run_stage.fn("prepare", str(toy_project)) == "prepare"
    assert (toy_project / "data.txt").read_text() == "0 1 2"


def test_run_stage_fn_failure_message(tmp_path: Path) -> None:
    project = _make_dvc_project(
        tmp_path / "failing",
        'stages:\n  boom:\n    cmd: python -c "import sys; print(\'about to fail\'); sys.exit(3)"\n',
    )
    with pytest.raises(StageFailedError) as caught:
        run_stage.fn("boom", str(project))
    error = caught.value
    assert error.stage == "boom" and error.returncode != 0
    assert "'boom'" in str(error)
    assert "about to fail" in str(error)  # the tail of the output is in the message


def test_cli_arguments(toy_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = pipeline_module._parse_args(["--repo-dir", "x", "--stage", "a", "--stage", "b"])
    assert (args.repo_dir, args.stages) == ("x", ["a", "b"])
    assert pipeline_module._parse_args([]).stages is None
    assert pipeline_module.main(["--list", "--repo-dir", str(toy_project)]) == 0
    assert capsys.readouterr().out.split() == ["prepare", "report"]
    with pytest.raises(SystemExit) as exited:
        pipeline_module._parse_args(["--help"])
    assert exited.value.code == 0
    assert "--stage" in capsys.readouterr().out


def test_prefect_yaml_declares_the_deployments_and_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment, scheduled, gpu = config["deployments"]
    assert deployment["entrypoint"] == "flows/pipeline.py:pipeline"
    assert deployment["work_pool"]["name"] == scheduled["work_pool"]["name"] == "moalign-cpu"
    assert "schedules" not in deployment  # run on demand; the scheduled deployment checks the data first
    assert scheduled["entrypoint"] == "flows/pipeline.py:retrain_on_new_data"
    assert [s["active"] for s in scheduled["schedules"]] == [True] and scheduled["schedules"][0]["cron"]
    # the training stages go to the GPU pool, one at a time
    assert gpu["entrypoint"] == "flows/pipeline.py:remote_stage"
    assert gpu["work_pool"]["name"] == "moalign-gpu" and gpu["concurrency_limit"] == 1
    target = f"moalign-remote-stage/{gpu['name']}"
    assert deployment["parameters"]["gpu_deployment"] == scheduled["parameters"]["gpu_deployment"] == target

    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)  # entrypoints are relative to the project root, as for `prefect deploy`
    for entry, name in ((deployment, "moalign-pipeline"), (scheduled, "moalign-retrain-on-new-data"),
                        (gpu, "moalign-remote-stage")):
        flow = load_flow_from_entrypoint(entry["entrypoint"])
        assert flow.name == name
        assert set(entry["parameters"]) <= set(flow.parameters.properties)

    try:  # Prefect's own schema for prefect.yaml (private module, may move between versions)
        from prefect.cli.deploy._models import PrefectYamlModel
    except ImportError:
        return
    model = PrefectYamlModel.model_validate(config)
    assert [d.work_pool.name for d in model.deployments] == ["moalign-cpu", "moalign-cpu", "moalign-gpu"]


# --------------------------------------------------------------------------------------------------
# through Prefect (temporary API server)
# --------------------------------------------------------------------------------------------------


def test_flow_runs_all_stages_and_rerun_is_a_no_op(prefect_harness, toy_project: Path) -> None:
    assert pipeline(repo_dir=str(toy_project)) == ["prepare", "report"]
    assert (toy_project / "data.txt").read_text() == "0 1 2"
    assert (toy_project / "report.txt").read_text() == "3"
    lock_path = toy_project / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text())
    assert set(lock["stages"]) == {"prepare", "report"}
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["prepare.n"] == 3
    before = lock_path.read_bytes()

    assert pipeline(repo_dir=str(toy_project)) == []  # dvc status says nothing is stale: no task runs
    assert lock_path.read_bytes() == before
    (toy_project / "params.yaml").write_text("prepare:\n  n: 4\n")
    assert pipeline(repo_dir=str(toy_project)) == ["prepare", "report"]
    assert (toy_project / "report.txt").read_text() == "4"


def test_flow_stage_subset_rebuilds_stale_upstream(prefect_harness, toy_project: Path) -> None:
    assert pipeline(repo_dir=str(toy_project)) == ["prepare", "report"]
    (toy_project / "params.yaml").write_text("prepare:\n  n: 5\n")
    # Only `report` is requested, but its upstream is stale: `dvc repro report` rebuilds it.
    assert pipeline(repo_dir=str(toy_project), stages=["report"]) == ["report"]
    assert (toy_project / "report.txt").read_text() == "5"
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline(repo_dir=str(toy_project), stages=["nope"])


def test_flow_failing_stage_raises_with_its_name(
    prefect_harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dvc_yaml = TOY_DVC_YAML + (
        "  explode:\n"
        "    cmd: python -c \"import sys; print('disk on fire'); sys.exit(2)\"\n"
        "    deps:\n"
        "      - report.txt\n"
    )
    project = _make_dvc_project(tmp_path / "failing", dvc_yaml)
    assert stage_names(project) == ["prepare", "report", "explode"]
    # Same task without the 10 s retry delay (the retry itself is exercised below).
    monkeypatch.setattr(pipeline_module, "run_stage", run_stage.with_options(retries=0))
    with pytest.raises(StageFailedError, match="explode") as caught:
        pipeline(repo_dir=str(project))
    assert "disk on fire" in str(caught.value)
    assert (project / "report.txt").exists()  # the stages before it ran


def test_flow_retries_a_failed_stage(
    prefect_harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fails on the first attempt, succeeds on the second (a marker file survives between them). Only
    # a stage that talks to a network is retried: the same command as a training stage fails.
    def flaky(name: str) -> str:
        return (
            f"stages:\n  {name}:\n    cmd: python -c \"import os, sys; first = not os.path.exists('tried'); "
            "open('tried', 'w').close(); open('out.txt', 'w').write('ok'); sys.exit(1 if first else 0)\"\n"
            "    outs:\n      - out.txt\n"
        )

    monkeypatch.setattr(pipeline_module, "run_stage", run_stage.with_options(retry_delay_seconds=0))
    project = _make_dvc_project(tmp_path / "judge", flaky("annotate"))
    assert pipeline(repo_dir=str(project)) == ["annotate"]
    assert (project / "out.txt").read_text() == "ok"
    project = _make_dvc_project(tmp_path / "train", flaky("train_policy"))
    with pytest.raises(StageFailedError, match="train_policy"):
        pipeline(repo_dir=str(project))


def test_retrain_on_new_data_runs_only_when_the_data_differs_from_the_champions(
    tmp_path: Path, isolated_mlflow: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import retrain_on_new_data

    project = tmp_path
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["register"]["tracking_uri"] = "sqlite:///mlflow.db"  # relative: resolved against the project
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "data.dvc").write_text("outs:\n- md5: aaa.dir\n  path: data/task\n")
    runs: list[str] = []
    monkeypatch.setattr(pipeline_module, "pipeline", lambda repo_dir, gpu_deployment=None: runs.append(repo_dir) or ["all"])

    assert retrain_on_new_data.fn(str(project)) == ["all"]  # no store, no champion: run
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = params["register"]["model_name"]
    client.create_registered_model(name)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags={"data_hash": "aaa.dir"})
    assert retrain_on_new_data.fn(str(project)) == ["all"]  # a version, but no champion yet
    client.set_registered_model_alias(name, "champion", "1")
    assert retrain_on_new_data.fn(str(project)) == []  # the champion was trained on this data
    (project / "data.dvc").write_text("outs:\n- md5: bbb.dir\n  path: data/task\n")
    assert retrain_on_new_data.fn(str(project)) == ["all"]
    assert len(runs) == 3
