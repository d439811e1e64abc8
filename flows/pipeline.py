"""Prefect 3 flow that runs the DVC pipeline stage by stage.

DVC owns *what* to run and caching (``dvc.yaml``/``dvc.lock``); Prefect adds observability,
retries and scheduling around it: one task run per stage, with the stage's output streamed to the
Prefect logger line by line.

Run locally (Prefect starts a temporary API server by itself, nothing to start by hand)::

    python -m flows.pipeline                       # every stage, in dvc.yaml order
    python -m flows.pipeline --stage train_policy --stage evaluate
    python -m flows.pipeline --help

Deployments: see ``prefect.yaml``. With ``gpu_deployment`` set, the training stages are handed to
that deployment (the ``moalign-gpu`` work pool): the flow pushes its outputs to the DVC remote, runs
:func:`remote_stage` there through ``run_deployment`` and waits, then pulls the stage's outputs
and its ``dvc.lock`` entry back (``flows.workspace``, ``docs/remote.md``).
"""

from __future__ import annotations

import os

# Before importing prefect (its settings are read from the environment). Explicit values win.
if not os.environ.get("PREFECT_API_URL"):
    # No server configured: let Prefect start its temporary local API server on demand. It is the
    # default of Prefect's built-in "ephemeral" profile, but a user profile can switch it off.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    # Its first start migrates a fresh SQLite database: 20 s (the default) is tight on a slow disk.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
# No usage analytics from the client (Prefect and MLflow both honour DO_NOT_TRACK) or the server.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import deque  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.exceptions import MissingContextError  # noqa: E402

from flows.workspace import stage_env  # noqa: E402

__all__ = ["StageFailedError", "hand_off_stage", "pipeline", "remote_stage", "retrain_on_new_data", "run_stage",
           "stage_names"]

TAIL_LINES = 40


class StageFailedError(RuntimeError):
    """``dvc repro <stage>`` exited non-zero; the message has the stage name and the output tail."""

    def __init__(self, stage: str, returncode: int, tail: str) -> None:
        super().__init__(
            f"DVC stage {stage!r} failed (dvc repro exit code {returncode}); last output lines:\n{tail}"
        )
        self.stage = stage
        self.returncode = returncode
        self.tail = tail

    def __reduce__(self):  # keep it picklable for Prefect's state/result handling
        return (type(self), (self.stage, self.returncode, self.tail))


def stage_names(repo_dir: str | os.PathLike[str] = ".") -> list[str]:
    """Stage names of ``<repo_dir>/dvc.yaml`` in file order.

    The file lists stages upstream first, so file order is a valid execution order (no
    ``dvc dag`` call needed).
    """
    path = Path(repo_dir) / "dvc.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dvc.yaml (pass the project root as --repo-dir)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"{path}: no 'stages' mapping")
    return [str(name) for name in stages]


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger; a module logger when called outside a run (``run_stage.fn``)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


# Retries: only the stages that talk to networks (an LLM judge endpoint, an MLflow server) get one,
# for a dropped connection or an overloaded endpoint; DVC makes it cheap, since whatever finished is
# in dvc.lock and the cache. A training stage is not retried: its failure is a bug or a lost GPU,
# and a rerun resumes from its checkpoints anyway.
NETWORK_STAGES = frozenset({"annotate", "evaluate", "register"})

# The stages worth an accelerator: with a gpu_deployment they run on the GPU work pool.
TRAINING_STAGES = frozenset({"train_reward", "train_policy"})


# NO_CACHE: never let Prefect skip a stage from its own cache; deciding what is up to date is DVC's
# job (it hashes deps/params/outs, Prefect would only hash the task inputs).
@task(
    name="dvc-repro",
    task_run_name="dvc-repro-{stage}",
    retries=1,
    retry_delay_seconds=10,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def run_stage(stage: str, repo_dir: str) -> str:
    """Run ``dvc repro <stage>`` in ``repo_dir``, streaming its output to the Prefect logger.

    Plain ``dvc repro <stage>`` rather than ``--single-item``: the flow runs stages in pipeline
    order, so upstream stages are already up to date when a stage runs and DVC only re-checks
    them (cheap, hashes are cached); if a stage is run alone, its stale upstream still gets rebuilt
    instead of silently consuming outdated inputs.
    """
    logger = _logger()
    command = [sys.executable, "-m", "dvc", "repro", stage]
    logger.info("$ dvc repro %s  (in %s)", stage, repo_dir)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        command,
        cwd=repo_dir,
        env=stage_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        try:
            for raw in process.stdout:
                # tqdm-style progress bars rewrite one line with \r: keep the latest state only.
                line = raw.rstrip("\n").rsplit("\r", 1)[-1].rstrip()
                if line:
                    tail.append(line)
                    logger.info(line)
        except BaseException:  # cancelled or interrupted: do not leave dvc running alone
            process.kill()
            raise
        returncode = process.wait()
    if returncode != 0:
        raise StageFailedError(stage, returncode, "\n".join(tail))
    return stage


@task(name="hand-off", task_run_name="hand-off-{stage}", cache_policy=NO_CACHE, persist_result=False)
def hand_off_stage(stage: str, repo_dir: str, deployment: str) -> str:
    """Run ``stage`` as a run of ``deployment`` (:func:`remote_stage` on another work pool) and take
    its outputs back: push this workspace's outputs, hand over the upstream ``dvc.lock`` entries,
    the git commit and the remote's address, wait, then pull what the stage made."""
    from prefect.deployments import run_deployment

    from flows import workspace
    from moalign.registry import git_commit

    root = Path(repo_dir)
    workspace.push(root)
    parameters = {
        "stage": stage,
        "upstream": workspace.lock_entries(root, workspace.upstream_stages(root, stage)),
        "commit": git_commit(root),
        "remote_url": workspace.remote_url(root),
    }
    _logger().info("handing %s to %s (commit %s)", stage, deployment, parameters["commit"])
    run = run_deployment(deployment, parameters=parameters)
    state = run.state
    if state is None or not state.is_completed():
        reason = "no state" if state is None else f"{state.name}: {state.message or ''}"
        raise StageFailedError(stage, 1, f"flow run {run.name} of {deployment} ended {reason}")
    workspace.receive(root, state.result())
    return stage


def _anything_stale(root: Path, stages: Sequence[str] | None) -> bool:
    """Whether DVC would run anything for ``stages`` (all when None) and their upstream. One ``dvc
    status`` (about a second) instead of a ``dvc repro`` task per stage keeps a scheduled no-op run
    cheap; when in doubt (status fails), run."""
    command = [sys.executable, "-m", "dvc", "status", "--json", *(["--with-deps", *stages] if stages else [])]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=stage_env())
    try:
        return result.returncode != 0 or bool(json.loads(result.stdout or "{}"))
    except json.JSONDecodeError:
        return True


@flow(name="moalign-pipeline")
def pipeline(repo_dir: str = ".", stages: list[str] | None = None, gpu_deployment: str | None = None) -> list[str]:
    """Run the DVC stages of ``repo_dir`` in pipeline order; return the names of the stages run.

    ``stages`` selects a subset (still run in ``dvc.yaml`` order); default: every stage. DVC skips
    stages whose deps, params and outs are unchanged, so a rerun is cheap. ``gpu_deployment``
    (``"moalign-remote-stage/moalign-train-on-gpu"``) hands the training stages that are stale to
    that deployment instead of running them here.
    """
    root = Path(repo_dir).resolve()
    order = stage_names(root)
    if stages:
        unknown = sorted(set(stages) - set(order))
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has: {', '.join(order)}")
        selected = [name for name in order if name in set(stages)]
    else:
        selected = order
    logger = get_run_logger()
    if not _anything_stale(root, stages and selected):
        logger.info("dvc status: every stage is up to date, nothing to run")
        return []
    logger.info("stages to run: %s", ", ".join(selected))
    done: list[str] = []
    for stage in selected:
        if gpu_deployment and stage in TRAINING_STAGES:
            if _anything_stale(root, [stage]):
                hand_off_stage(stage, str(root), gpu_deployment)
                done.append(stage)
            continue
        task_for_stage = run_stage if stage in NETWORK_STAGES else run_stage.with_options(retries=0)
        task_for_stage(stage, str(root))
        done.append(stage)
    return done


# persist_result: the caller (hand_off_stage) reads the returned dvc.lock entries from the flow run's
# result; across machines that needs result storage both can reach (docs/remote.md).
@flow(name="moalign-remote-stage", persist_result=True)
def remote_stage(stage: str, upstream: dict, commit: str | None = None, remote_url: str | None = None,
                 repo_dir: str = ".") -> dict:
    """One stage in this worker's workspace (``repo_dir``): check out ``commit``, take the upstream
    ``dvc.lock`` entries and their outputs from the DVC remote, ``dvc repro`` the stage alone, push its
    outputs; returns its ``dvc.lock`` entry (:func:`flows.workspace.run_stage_here`)."""
    from flows import workspace

    return workspace.run_stage_here(Path(repo_dir).resolve(), stage, upstream, commit=commit, remote_url=remote_url)


@flow(name="moalign-retrain-on-new-data")
def retrain_on_new_data(repo_dir: str = ".", gpu_deployment: str | None = None) -> list[str]:
    """The scheduled entry point: run :func:`pipeline` only when the DVC-tracked data (``data.dvc``)
    differs from the data the MLflow champion was trained on (its ``data_hash`` tag); otherwise do
    nothing. With no champion yet, it runs."""
    from moalign.config import load_params
    from moalign.promotion import champion_data_hash
    from moalign.registry import dvc_tracked_hash

    root = Path(repo_dir).resolve()
    register = load_params(root / "params.yaml").register_
    current = dvc_tracked_hash(root / "data.dvc")
    served = champion_data_hash(register.tracking_uri, register.model_name, project_dir=root)
    if current is not None and current == served:
        _logger().info("data %s is what the champion of %s was trained on: nothing to do", current,
                       register.model_name)
        return []
    _logger().info("data %s, champion trained on %s: running the pipeline", current, served or "nothing yet")
    return pipeline(repo_dir=str(root), gpu_deployment=gpu_deployment)


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description=(
            "Run the moalign DVC pipeline as a Prefect flow: one task per stage, in dvc.yaml order, "
            "each running `dvc repro <stage>`. Up-to-date stages are skipped by DVC. Without "
            "PREFECT_API_URL, Prefect starts a temporary local API server for the run."
        ),
        epilog="example: python -m flows.pipeline --stage annotate --stage validate",
    )
    parser.add_argument(
        "--repo-dir", default=".", help="project root holding dvc.yaml (default: current directory)"
    )
    parser.add_argument(
        "--stage",
        dest="stages",
        action="append",
        metavar="NAME",
        help="run only this stage (repeatable; run in dvc.yaml order); default: all stages",
    )
    parser.add_argument(
        "--gpu-deployment",
        metavar="FLOW/DEPLOYMENT",
        help="hand the training stages to this Prefect deployment (e.g. moalign-remote-stage/moalign-train-on-gpu, "
        "served by a worker of the moalign-gpu pool; needs PREFECT_API_URL and a DVC remote both reach); "
        "default: run them here",
    )
    parser.add_argument("--list", action="store_true", help="print the stage names in order and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list:
        print("\n".join(stage_names(args.repo_dir)))
        return 0
    pipeline(repo_dir=args.repo_dir, stages=args.stages, gpu_deployment=args.gpu_deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
