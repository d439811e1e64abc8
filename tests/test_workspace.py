"""flows.workspace: a stage run in another clone through the DVC remote, and its result taken back.

The fast tests use a toy DVC project (three chained `python -c` stages and a `dvc add`-ed data
folder); the integration test hands the real train_policy of the tiny random Llama between two
clones and registers the result in the first one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import workspace
from flows.workspace import (
    WorkspaceError,
    apply_lock_entries,
    lock_entries,
    push,
    receive,
    remote_url,
    run_stage_here,
    stage_env,
    upstream_stages,
)

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------
# dvc.lock entries
# --------------------------------------------------------------------------------------------------

LOCK = """\
schema: '2.0'
stages:
  prepare:
    cmd: python prepare.py
    params:
      params.yaml:
        lr: 5e-07
    outs:
    - path: data.txt
      hash: md5
      md5: 0123456789abcdef0123456789abcdef
      size: 5
  report:
    cmd: python report.py
"""


def test_lock_entries_round_trip_keeps_the_other_stages(tmp_path: Path) -> None:
    (tmp_path / "dvc.lock").write_text(LOCK)
    prepare = lock_entries(tmp_path, ["prepare"])
    # DVC writes YAML 1.2: 5e-07 is a float there (PyYAML would read a string, and DVC a changed param)
    assert prepare["prepare"]["params"]["params.yaml"]["lr"] == 5e-07
    new = {"train": {"cmd": "python train.py", "outs": [{"path": "model", "md5": "ab.dir"}]}}
    apply_lock_entries(tmp_path, {**new, "report": {"cmd": "python report.py --fast"}})
    written = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert written["schema"] == "2.0" and list(written["stages"]) == ["prepare", "report", "train"]
    assert lock_entries(tmp_path, ["prepare"]) == prepare
    assert lock_entries(tmp_path, ["train", "report"]) == {**new, "report": {"cmd": "python report.py --fast"}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.lock"]  # no temporary file left behind


def test_apply_creates_the_lock_file_and_a_failed_write_leaves_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_lock_entries(tmp_path, {"prepare": {"cmd": "python prepare.py"}})
    assert yaml.safe_load((tmp_path / "dvc.lock").read_text()) == {
        "schema": "2.0", "stages": {"prepare": {"cmd": "python prepare.py"}}}
    before = (tmp_path / "dvc.lock").read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        apply_lock_entries(tmp_path, {"report": {"cmd": "python report.py"}})
    assert (tmp_path / "dvc.lock").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.lock"]


def test_a_stage_without_an_entry_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train_policy.*run them first"):
        lock_entries(tmp_path, ["train_policy"])  # no dvc.lock at all
    (tmp_path / "dvc.lock").write_text(LOCK)
    with pytest.raises(ValueError, match=r"no entry for stage\(s\) evaluate: run them first \(dvc repro evaluate\)"):
        lock_entries(tmp_path, ["prepare", "evaluate"])
    (tmp_path / "dvc.lock").write_text("schema: '3.0'\nstages: {}\n")
    with pytest.raises(ValueError, match="schema '3.0'"):
        apply_lock_entries(tmp_path, {})


def test_stage_env_puts_this_interpreter_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.delenv("DVC_NO_ANALYTICS", raising=False)
    env = stage_env()
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin"]
    assert env["DVC_NO_ANALYTICS"] == "1"


# --------------------------------------------------------------------------------------------------
# a toy project handed between two clones
# --------------------------------------------------------------------------------------------------

PREPARE = (
    "import yaml; n = yaml.safe_load(open('params.yaml'))['n']; seed = int(open('data/seed.txt').read()); "
    "open('numbers.txt', 'w').write(' '.join(str(seed + i) for i in range(n)))"
)
SQUARE = (
    "import json; xs = [int(x) for x in open('numbers.txt').read().split()]; "
    "open('squares.txt', 'w').write(' '.join(str(x * x) for x in xs)); "
    "json.dump(dict(count=len(xs)), open('square.json', 'w'))"
)
TOTAL = (
    "import json; total = sum(int(x) for x in open('squares.txt').read().split()); print('total', total); "
    "open('total.txt', 'w').write(str(total)); json.dump(dict(total=total), open('total.json', 'w'))"
)
TOY_DVC_YAML = f"""\
stages:
  prepare:
    cmd: python -c "{PREPARE}"
    deps:
      - data
    params:
      - n
    outs:
      - numbers.txt
  square:
    cmd: python -c "{SQUARE}"
    deps:
      - numbers.txt
    outs:
      - squares.txt
    metrics:
      - square.json:
          cache: false
  total:
    cmd: python -c "{TOTAL}"
    deps:
      - squares.txt
    outs:
      - total.txt
    metrics:
      - total.json:
          cache: false
"""


def _git_env() -> dict[str, str]:
    names = {"GIT_AUTHOR_NAME": "moalign-test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
             "GIT_COMMITTER_NAME": "moalign-test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    return {**stage_env(), **names}


def _sh(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=_git_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _dvc(cwd: Path, *args: str) -> str:
    return _sh([sys.executable, "-m", "dvc", *args], cwd)


def _status(cwd: Path, *targets: str) -> dict:
    return json.loads(_dvc(cwd, "status", "--json", *targets) or "{}")


def _head(cwd: Path) -> str:
    return _sh(["git", "rev-parse", "HEAD"], cwd).strip()


@pytest.fixture
def toy_origin(tmp_path: Path) -> Path:
    """A committed toy project whose data folder (data.dvc) is tracked by DVC, with the project's
    own .dvc/config (the remote `../../moalign-dvc-remote`)."""
    origin = tmp_path / "origin"
    origin.mkdir()
    _sh(["git", "init", "-q"], origin)
    _dvc(origin, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", origin / ".dvc" / "config")
    (origin / "params.yaml").write_text("n: 3\n")
    (origin / "dvc.yaml").write_text(TOY_DVC_YAML)
    (origin / "data").mkdir()
    (origin / "data" / "seed.txt").write_text("2")
    _dvc(origin, "add", "-q", "data")
    _sh(["git", "add", "-A"], origin)
    _sh(["git", "commit", "-qm", "toy"], origin)
    return origin


def _clone(origin: Path, dest: Path) -> Path:
    _sh(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    return dest


def test_upstream_stages_follow_dvcs_graph(toy_origin: Path) -> None:
    assert upstream_stages(toy_origin, "total") == ["prepare", "square"]
    assert upstream_stages(toy_origin, "square") == ["prepare"]
    assert upstream_stages(toy_origin, "prepare") == []  # data.dvc has no dvc.lock entry to hand over
    with pytest.raises(ValueError, match=r"no stage 'evaluate'.*prepare, square, total"):
        upstream_stages(toy_origin, "evaluate")
    # the real pipeline: what train_policy needs, in dvc.yaml order, nothing downstream
    assert upstream_stages(ROOT, "train_policy") == [
        "prepare_model", "annotate", "validate", "train_reward", "reference_logps", "policy_inputs"]


def test_a_stage_runs_in_another_clone_and_its_result_comes_back(
    toy_origin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clones = toy_origin.parent / "clones"
    # B elsewhere: its own ../../moalign-dvc-remote is another folder, A's remote_url() reaches A's
    a, b = _clone(toy_origin, clones / "A"), _clone(toy_origin, toy_origin.parent / "far" / "away" / "B")
    # a later commit the worker has not fetched yet
    (toy_origin / "params.yaml").write_text("n: 4\n")
    _sh(["git", "commit", "-qam", "four numbers"], toy_origin)
    _sh(["git", "pull", "-q"], a)
    (a / "data").mkdir()
    (a / "data" / "seed.txt").write_text("2")  # regenerated, as `make data` does on a fresh clone
    _dvc(a, "repro", "square")  # verifies data.dvc too, which puts the data in A's cache
    assert _status(a, "data.dvc") == {}
    push(a)
    remote = clones / "moalign-dvc-remote"  # .dvc/config's ../../moalign-dvc-remote, beside the clone
    assert (remote / "files" / "md5").is_dir() and remote_url(a) == str(remote)

    handed = lock_entries(a, upstream_stages(a, "total"))
    with caplog.at_level(logging.INFO, logger=workspace.__name__):
        result = run_stage_here(b, "total", handed, commit=_head(a), remote_url=remote_url(a))
    assert remote_url(b) == str(remote)
    assert _head(b) == _head(a)  # fetched and checked out
    assert (b / "data" / "seed.txt").read_text() == "2"  # data.dvc pulled: prepare depends on it
    assert (b / "total.txt").read_text() == str(4 + 9 + 16 + 25)
    assert "Running stage 'total'" in caplog.text and "Running stage 'square'" not in caplog.text
    assert lock_entries(b, ["prepare", "square"]) == handed
    assert set(result) == {"total"}
    assert {out["path"] for out in result["total"]["outs"]} == {"total.txt", "total.json"}

    assert "total" in _status(a)
    receive(a, result)
    assert (a / "total.txt").read_text() == "54"
    assert json.loads((a / "total.json").read_text()) == {"total": 54}  # uncached, through the remote too
    assert _status(a) == {}
    assert "Running stage" not in _dvc(a, "repro")

    # an uncached output that no longer matches its record is never pushed as if it did
    (a / "total.json").write_text('{"total": 0}')
    with pytest.raises(ValueError, match=r"total\.json is not what .*dvc\.lock records for stage 'total'"):
        push(a, ["total"])
    with caplog.at_level(logging.WARNING, logger=workspace.__name__):
        push(a)  # everything else still goes
    assert "not pushed" in caplog.text and "total.json" in caplog.text


def _hand_off_with(monkeypatch: pytest.MonkeyPatch, worker: Path, calls: list, state_of=None) -> None:
    """run_deployment as the GPU pool would answer it: remote_stage in ``worker``'s clone."""
    from types import SimpleNamespace

    import prefect.deployments
    from prefect.states import Completed

    import flows.pipeline as pipeline_module

    def run_deployment(name: str, parameters: dict, **_: object) -> SimpleNamespace:
        calls.append((name, parameters["stage"]))
        if state_of is not None:
            return SimpleNamespace(name="gpu-run", state=state_of(parameters))
        result = pipeline_module.remote_stage.fn(repo_dir=str(worker), **parameters)
        return SimpleNamespace(name="gpu-run", state=Completed(data=result))

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    monkeypatch.setattr(pipeline_module, "TRAINING_STAGES", frozenset({"square"}))


def test_the_flow_hands_its_training_stage_to_the_gpu_deployment(
    prefect_harness, toy_origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline

    clones = toy_origin.parent / "clones"
    a, b = _clone(toy_origin, clones / "A"), _clone(toy_origin, clones / "B")
    (a / "data").mkdir()
    (a / "data" / "seed.txt").write_text("2")
    calls: list = []
    _hand_off_with(monkeypatch, b, calls)
    gpu = "moalign-remote-stage/moalign-train-on-gpu"
    assert pipeline(repo_dir=str(a), gpu_deployment=gpu) == ["prepare", "square", "total"]
    assert calls == [(gpu, "square")]
    assert (b / "squares.txt").read_text() == "4 9 16"  # trained in the worker's clone...
    assert (a / "total.txt").read_text() == "29"  # ...and the flow carried on with its outputs
    assert _status(a) == {}
    calls.clear()
    assert pipeline(repo_dir=str(a), gpu_deployment=gpu) == [] and calls == []  # nothing stale: no hand-off


def test_a_failed_gpu_run_fails_the_flow_with_its_reason(
    prefect_harness, toy_origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.states import Failed

    from flows.pipeline import StageFailedError, pipeline

    a = _clone(toy_origin, toy_origin.parent / "A")
    (a / "data").mkdir()
    (a / "data" / "seed.txt").write_text("2")
    calls: list = []
    _hand_off_with(monkeypatch, a, calls, state_of=lambda parameters: Failed(message="CUDA out of memory"))
    with pytest.raises(StageFailedError, match=r"(?s)'square'.*gpu-run.*CUDA out of memory"):
        pipeline(repo_dir=str(a), gpu_deployment="moalign-remote-stage/moalign-train-on-gpu")
    assert not (a / "total.txt").exists()  # nothing downstream ran on missing outputs


def test_a_worker_never_redoes_upstream_work(toy_origin: Path) -> None:
    worker = _clone(toy_origin, toy_origin.parent / "W")  # beside origin: the same remote
    push(toy_origin)  # data.dvc's data (origin's `dvc add` cached it)
    # nothing handed over: square's output is missing and DVC's error must surface
    with pytest.raises(WorkspaceError) as caught:
        run_stage_here(worker, "total", {}, commit=_head(toy_origin))
    assert "dvc repro --single-item total" in str(caught.value)
    assert "squares.txt" in caught.value.tail
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)  # Prefect keeps it in a state
    assert not (worker / "numbers.txt").exists() and not (worker / "squares.txt").exists()


def test_a_worker_refuses_to_check_out_over_uncommitted_work(toy_origin: Path) -> None:
    apply_lock_entries(toy_origin, {"prepare": {"cmd": "echo"}})
    _sh(["git", "add", "dvc.lock"], toy_origin)
    _sh(["git", "commit", "-qm", "a lock file"], toy_origin)
    worker = _clone(toy_origin, toy_origin.parent / "clones" / "W")
    (toy_origin / "params.yaml").write_text("n: 5\n")
    _sh(["git", "commit", "-qam", "five"], toy_origin)
    (worker / "dvc.yaml").write_text(TOY_DVC_YAML + "\n# a local edit\n")
    with pytest.raises(RuntimeError, match=r"uncommitted changes to dvc\.yaml"):
        run_stage_here(worker, "prepare", {}, commit=_head(toy_origin))
    assert "local edit" in (worker / "dvc.yaml").read_text()
    # dvc.lock is DVC's bookkeeping: a changed one does not block the checkout
    _sh(["git", "checkout", "-q", "--", "dvc.yaml"], worker)
    apply_lock_entries(worker, {"stale": {"cmd": "echo"}})
    assert _sh(["git", "diff", "--name-only"], worker).split() == ["dvc.lock"]
    # the worker generates nothing itself: data.dvc comes from the remote, which is empty here
    with pytest.raises(WorkspaceError, match="dvc pull data.dvc"):
        run_stage_here(worker, "prepare", {}, commit=_head(toy_origin))
    assert _head(worker) == _head(toy_origin)


# --------------------------------------------------------------------------------------------------
# the real pipeline: train_policy of the tiny random Llama in a second clone
# --------------------------------------------------------------------------------------------------


# slow (-m slow): tests/test_servers.py covers the same hand-off of the real pipeline in the default
# run (its GPU worker trains in a clone of its own), where PostgreSQL is reachable; this one needs no
# server and runs the stages directly, about 90 s on 2 cores
@pytest.mark.integration
@pytest.mark.slow
def test_train_policy_runs_in_another_clone_and_registers_in_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    from tests.test_pipeline_e2e import run, smoke_project

    # the stages must log to each clone's own store, never to a tracking server a test may have set
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    origin = smoke_project(tmp_path / "origin", "the two-clone test")  # its data/task is not committed
    a, b = tmp_path / "clones" / "A", tmp_path / "clones" / "B"
    for clone in (a, b):
        run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)

    run([sys.executable, "-m", "moalign.data.synthetic", "--out", "data/task"], a)
    needed = upstream_stages(a, "train_policy")
    run([sys.executable, "-m", "dvc", "repro", *needed], a)
    push(a)
    head = run(["git", "rev-parse", "HEAD"], a).stdout.strip()

    with caplog.at_level(logging.INFO, logger=workspace.__name__):
        result = run_stage_here(b, "train_policy", lock_entries(a, needed), commit=head)
    assert "Running stage 'train_policy'" in caplog.text
    assert not any(f"Running stage '{stage}'" in caplog.text for stage in needed)
    assert lock_entries(b, needed) == lock_entries(a, needed)  # B took A's results, redid none
    assert (b / "data" / "task").is_dir()  # pulled (data.dvc), never generated there

    status = json.loads(run([sys.executable, "-m", "dvc", "status", "--json", "train_policy"], a).stdout or "{}")
    assert status, "train_policy should be missing in A before the result comes back"
    receive(a, result)
    status = json.loads(run([sys.executable, "-m", "dvc", "status", "--json", "train_policy"], a).stdout or "{}")
    assert status == {}
    trained = {p: p.read_bytes() for p in (a / "models" / "policy").rglob("*") if p.is_file()}
    assert trained and (a / "plots" / "train_curves.json").is_file()

    # the whole pipeline: what follows train_policy runs (register does not need report), it does not
    output = run([sys.executable, "-m", "dvc", "repro"], a).stdout
    assert "Running stage 'train_policy'" not in output
    assert all(f"Running stage '{s}'" in output for s in ("evaluate", "report", "register")), output[-3000:]
    assert {p: p.read_bytes() for p in (a / "models" / "policy").rglob("*") if p.is_file()} == trained
    assert json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], a).stdout or "{}") == {}

    record = json.loads((a / "registry" / "model_version.json").read_text())
    uri = f"sqlite:///{a / 'mlflow.db'}"
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(record["name"], record["version"])
    assert version.tags["git_commit"] == head
    assert version.tags["data_hash"] == yaml.safe_load((a / "data.dvc").read_text())["outs"][0]["md5"]
    print(f"two-clone hand-off of train_policy: {time.monotonic() - started:.0f} s")
