"""Server mode, as a team deploys it: a real Prefect server and MLflow tracking server, each on
PostgreSQL, one Prefect process worker per work pool of prefect.yaml, and the pipeline started as a
deployment run. Nothing in params.yaml changes: the environment (PREFECT_API_URL,
MLFLOW_TRACKING_URI) switches every stage to the servers.

Needs PostgreSQL on 127.0.0.1:5432 that lets user ``postgres`` in without a password (trust auth,
as on CI); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import _env, run, smoke_project

pytestmark = pytest.mark.integration

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
BIN = Path(sys.executable).parent
PIPELINE = "moalign-pipeline/moalign-pipeline"
GPU_DEPLOYMENT = "moalign-remote-stage/moalign-train-on-gpu"
# the whole tiny pipeline takes minutes; a busy 2-core machine may need many of them
FLOW_TIMEOUT_S = 3600
STOP_TIMEOUT_S = 20


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def _admin_connection():
    """An autocommit connection to the ``postgres`` database; skips the test when there is none."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=3):
            pass
    except OSError as error:
        pytest.skip(f"no PostgreSQL on {PG_HOST}:{PG_PORT} ({error}); the server-mode test needs one")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install -e '.[test]'")
    try:
        connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as error:
        pytest.skip(f"PostgreSQL on {PG_HOST}:{PG_PORT} refuses user {PG_USER!r} without a password: {error}")
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return connection


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """Two fresh databases, ``prefect`` and ``mlflow`` (name -> database), dropped afterwards."""
    connection = _admin_connection()
    run_id = uuid.uuid4().hex[:12]
    names = {role: f"moalign_test_{run_id}_{role}" for role in ("prefect", "mlflow")}
    created: list[str] = []
    try:
        with connection.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
        yield names
    finally:
        with connection.cursor() as cursor:
            for name in created:
                # FORCE: a server or worker that is still closing its pool must not keep the database
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


def _pg_url(database: str, driver: str = "postgresql") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


class Processes:
    """Long-running processes of one test, each in its own process group with its output in
    ``<logs>/<name>.log``; :meth:`stop_all` ends them and whatever they started."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.started[name] = process
        return process

    def tail(self, name: str, lines: int = 60) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def tails(self, lines: int = 60) -> str:
        return "\n".join(f"----- {name} (last {lines} lines) -----\n{self.tail(name, lines)}" for name in self.started)

    def stop_all(self) -> None:
        import psutil

        # a process worker starts each flow run in a session of its own: find those before their
        # worker goes, or killing the worker's group would leave them (and their dvc repro) running
        descendants: list[psutil.Process] = []
        for process in self.started.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(process.pid).children(recursive=True)
        for process in reversed(list(self.started.values())):  # workers before the servers they talk to
            _signal_group(process, signal.SIGTERM)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        _, alive = psutil.wait_procs(descendants, timeout=max(0.1, deadline - time.monotonic()))
        for process in self.started.values():  # the leader may be gone while its group is not
            _signal_group(process, signal.SIGKILL)
            process.wait()
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session: the group id is the leader's pid


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop_all()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, processes: Processes, name: str, timeout_s: float = 180) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log when it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited ({process.returncode}) before {url} answered:\n{processes.tail(name)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s:\n{processes.tail(name)}")


def _call(args: list[str], cwd: Path, env: dict[str, str], processes: Processes) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}\n{processes.tails(30)}")
    return result.stdout


# --------------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------------


def test_pipeline_runs_on_prefect_and_mlflow_servers(databases, processes, tmp_path):
    from mlflow import MlflowClient
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    project = smoke_project(tmp_path / "project", "the server-mode test")
    gpu_clone = tmp_path / "gpu-clone"
    artifact_root = tmp_path / "mlartifacts"
    prefect_home = tmp_path / "prefect-home"
    prefect_port, mlflow_port = _free_port(), _free_port()
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"

    env = _env()
    env.update(
        PREFECT_HOME=str(prefect_home),  # the user's profiles, results and logs stay untouched
        PREFECT_API_URL=prefect_api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",  # pick runs up in seconds, not the default 10
        MLFLOW_TRACKING_URI=mlflow_url,
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="true",
        # prefect.yaml's pull step is {{ $PWD }}: a subprocess's cwd does not set PWD, and the
        # inherited one would point the deployments at this test's checkout
        PWD=str(project),
    )
    server_env = dict(env, PREFECT_API_DATABASE_CONNECTION_URL=_pg_url(databases["prefect"], "postgresql+asyncpg"))

    # --no-scheduler: the hourly moalign-retrain-on-new-data must not start beside the run under test
    prefect_server = processes.start(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port),
         "--no-scheduler", "--no-ui", "--analytics-off"],
        tmp_path, server_env)
    # +psycopg2: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the team extra does not install
    # --artifacts-destination: the server stores what clients upload (mlflow-artifacts:/) in the tmp folder
    mlflow_server = processes.start(
        "mlflow-server",
        [str(BIN / "mlflow"), "server", "--backend-store-uri", _pg_url(databases["mlflow"], "postgresql+psycopg2"),
         "--serve-artifacts", "--artifacts-destination", str(artifact_root),
         "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        tmp_path, env)
    _wait_http(f"{prefect_api}/health", prefect_server, processes, "prefect-server")
    _wait_http(f"{mlflow_url}/health", mlflow_server, processes, "mlflow-server")

    prefect = str(BIN / "prefect")
    for pool in ("moalign-cpu", "moalign-gpu"):
        _call([prefect, "work-pool", "create", pool, "--type", "process"], project, env, processes)
    _call([prefect, "--no-prompt", "deploy", "--all"], project, env, processes)
    # the GPU host trains in a clone of its own, so outputs can only travel through the DVC remote
    # (beside both folders, .dvc/config); deploying from there points the deployment at it
    run(["git", "clone", "-q", str(project), str(gpu_clone)], tmp_path)
    _call([prefect, "--no-prompt", "deploy", "--name", GPU_DEPLOYMENT.split("/")[1]], gpu_clone,
          dict(env, PWD=str(gpu_clone)), processes)
    for pool, workspace in (("moalign-cpu", project), ("moalign-gpu", gpu_clone)):
        processes.start(f"worker-{pool}", [prefect, "worker", "start", "--pool", pool, "--name", f"test-{pool}"],
                        workspace, env)

    with SyncPrefectClient(prefect_api) as client:
        deployment = client.read_deployment_by_name(PIPELINE)
        gpu = client.read_deployment_by_name(GPU_DEPLOYMENT)
        for deployed, workspace in ((deployment, project), (gpu, gpu_clone)):
            assert deployed.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(workspace)}}
            ], f"{deployed.name} would run outside {workspace}"
        started = time.monotonic()
        flow_run = client.create_flow_run_from_deployment(deployment.id)
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            if flow_run.state is not None and flow_run.state.is_final():
                break
            assert time.monotonic() - started < FLOW_TIMEOUT_S, (
                f"{PIPELINE} still {flow_run.state_name} after {FLOW_TIMEOUT_S} s\n{processes.tails()}")
            time.sleep(3)
        elapsed = time.monotonic() - started
        # limit: Prefect 3.8's client sends a missing one as null, which FastAPI >= 0.151 rejects (422)
        gpu_runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[gpu.id])),
                                         limit=20)
    print(f"\n{PIPELINE} ended {flow_run.state_name} after {elapsed:.0f} s")

    logs = processes.tails()
    assert flow_run.state.is_completed(), f"{PIPELINE} ended {flow_run.state_name}: {flow_run.state.message}\n{logs}"
    # the training stages went through the GPU pool's deployment, each completed there
    handed = {run_.parameters.get("stage"): run_.state_name for run_ in gpu_runs}
    assert handed == {"train_reward": "Completed", "train_policy": "Completed"}, f"{handed}\n{logs}"

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert set(lock["stages"]) == set(stages), f"dvc.lock lacks {set(stages) - set(lock['stages'])}\n{logs}"
    # what the project records for the training stages is what the clone made
    trained = yaml.safe_load((gpu_clone / "dvc.lock").read_text())["stages"]
    for stage in ("train_reward", "train_policy"):
        assert lock["stages"][stage] == trained[stage], stage
    status = run(["dvc", "status", "--json"], project).stdout
    assert status.strip() in ("", "{}"), f"dvc status after the run: {status}"

    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    version = client.get_model_version("moalign-policy", "1")
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert version.tags.get("git_commit") == head, version.tags
    data_md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert version.tags.get("data_hash") == data_md5, version.tags
    assert str(client.get_model_version_by_alias("moalign-policy", "challenger").version) == "1"
    # the server keeps what clients upload under --artifacts-destination (mlflow-artifacts:/<path>)
    run_artifacts = client.get_run(version.run_id).info.artifact_uri
    assert run_artifacts.startswith("mlflow-artifacts:/"), run_artifacts
    assert (artifact_root / run_artifacts.removeprefix("mlflow-artifacts:/") / "metrics.json").is_file()
    # over REST a version carries no model_id; its source is models:/<model_id>
    model_artifacts = client.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    assert (artifact_root / model_artifacts.removeprefix("mlflow-artifacts:/") / "MLmodel").is_file(), model_artifacts
    for workspace in (project, gpu_clone):
        assert not (workspace / "mlflow.db").exists(), f"a stage in {workspace} logged to the SQLite default"
