"""Model registration: a trained model logged to its MLflow run and registered as a new version.

One call to :func:`log_and_register` turns a finished stage into one MLflow run (the training's run
continued, see :mod:`moalign.tracking`, with params, missing step metrics, final metrics and
artifacts added), the model logged in the transformers flavor (MOSLIM's reward model as a pyfunc),
and a new version of a registered model carrying its lineage (git commit, DVC data hash) and the
``challenger`` alias. :func:`versions_by_run` reads back which versions a run made.

Core library: no Prefect or DVC imports (``.dvc`` files are read as plain YAML).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# first: it opts out of MLflow's usage telemetry before mlflow is imported
from moalign import tracking  # isort: skip

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

__all__ = [
    "CHALLENGER_ALIAS",
    "REWARD_MODEL_TASK",
    "RegisteredModel",
    "dvc_lock_hash",
    "dvc_tracked_hash",
    "git_commit",
    "log_and_register",
    "versions_by_run",
]

_logger = logging.getLogger(__name__)

CHALLENGER_ALIAS = "challenger"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version: ``model_uri`` is ``models:/<name>/<version>``."""

    name: str
    version: str
    run_id: str
    model_uri: str


# --------------------------------------------------------------------------------------------------
# Lineage
# --------------------------------------------------------------------------------------------------


def git_commit(repo_dir: str | os.PathLike[str] = ".") -> str | None:
    """The ``HEAD`` commit of the git repository containing ``repo_dir``; None outside git.

    Also None for a repository without commits or when git is not installed.
    """
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else None


def dvc_tracked_hash(dvc_file: str | os.PathLike[str]) -> str | None:
    """The ``md5`` of the single ``outs`` entry of a ``.dvc`` file (``dvc add`` output).

    Directory hashes keep DVC's ``.dir`` suffix. None when the file does not exist or the entry
    carries no md5; ``ValueError`` when the file is not a ``.dvc`` file with exactly one output.
    """
    path = Path(dvc_file)
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        count = len(outs) if isinstance(outs, list) else 0
        raise ValueError(f"{path}: expected exactly one entry under 'outs', found {count}")
    md5 = outs[0].get("md5")
    return str(md5) if md5 else None


def dvc_lock_hash(lock_file: str | os.PathLike[str], out_path: str) -> str | None:
    """The ``md5`` recorded in ``dvc.lock`` for the stage output ``out_path`` (any stage).

    For data produced by a pipeline stage rather than ``dvc add``. None when absent.
    """
    path = Path(lock_file)
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    wanted = Path(out_path).as_posix().rstrip("/")
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if Path(str(out.get("path", ""))).as_posix().rstrip("/") == wanted and out.get("md5"):
                return str(out["md5"])
    return None


# --------------------------------------------------------------------------------------------------
# Logging the model
# --------------------------------------------------------------------------------------------------


class _DropMessages(logging.Filter):
    """Drops log records whose message contains one of the given fragments."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


# Warnings/infos MLflow's transformers flavor always emits for an offline local checkpoint: it
# tries to read a model card and a license from the Hugging Face Hub under the checkpoint path.
_OFFLINE_NOISE = (
    "model card could not be retrieved",
    "Unable to find license information",
    "A local checkpoint path or PEFT model is given",
)


@contextmanager
def _quiet_transformers_flavor() -> Iterator[None]:
    """Drop the flavor's offline Hub noise and transformers' load/save progress bars."""
    from transformers.utils import logging as hf_logging

    target = logging.getLogger("mlflow.transformers")
    noise = _DropMessages(_OFFLINE_NOISE)
    target.addFilter(noise)
    bars_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        target.removeFilter(noise)
        if bars_enabled:
            hf_logging.enable_progress_bar()


def _local_checkpoint_supported(task: str) -> bool:
    """Whether MLflow can log ``task`` from a checkpoint path with the installed transformers.

    MLflow (checked up to 3.17.2) reads ``pipelines.check_task(task)[1]["impl"].__name__``; since
    transformers 5.x that entry is a dotted *string* (lazy import), so the path route raises
    ``AttributeError: 'str' object has no attribute '__name__'``.
    """
    from transformers import pipelines

    try:
        impl = pipelines.check_task(task)[1]["impl"]
    except Exception:  # unknown task: let MLflow report it
        return True
    return isinstance(impl, type)


def _pip_requirements() -> list[str]:
    """Pinned serving requirements of the installed stack.

    Passed explicitly because MLflow's default list for a torch model (3.17.2) pins
    ``torchvision`` and raises ``ModuleNotFoundError`` where it is not installed; it also skips
    MLflow's requirement inference, which would load the model again in a subprocess.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("transformers", "torch", "tokenizers", "safetensors", "accelerate"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def _log_transformers_model(model_dir: Path, task: str) -> Any:
    requirements = _pip_requirements()
    if _local_checkpoint_supported(task):
        # MLflow >= 2.16 accepts a local checkpoint path (a *str*, not a Path) with an explicit
        # task: the directory's save_pretrained files are copied as-is, no weights are loaded.
        return mlflow.transformers.log_model(
            transformers_model=str(model_dir), name="model", task=task, pip_requirements=requirements
        )
    # Fallback: load the checkpoint into a pipeline; MLflow writes it back with save_pretrained
    # (safetensors, no pickles). Costs one model load in memory, fine for the policy sizes here.
    import transformers

    pipeline = transformers.pipeline(task=task, model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    return mlflow.transformers.log_model(
        transformers_model=pipeline, name="model", task=task, pip_requirements=requirements
    )


#: ``log_and_register(task=...)`` for MOSLIM's multi-head reward model, logged as a pyfunc
REWARD_MODEL_TASK = "moslim-reward-model"


def _log_reward_model(model_dir: Path) -> Any:
    # a pyfunc around the saved folder: the transformers flavor holds pipelines only (see
    # moalign.rewards.serving); moalign's own code travels with it so a loader needs no install
    from moalign.rewards.serving import ARTIFACT, RewardModelPyfunc

    package = Path(__file__).resolve().parent
    return mlflow.pyfunc.log_model(
        name="reward_model", python_model=RewardModelPyfunc(), artifacts={ARTIFACT: str(model_dir)},
        code_paths=[str(package)], pip_requirements=_pip_requirements(),
    )


def _checked_model_dir(model_dir: Path, artifacts: list[Path], model_name: str) -> Path:
    """``model_dir`` made absolute, once it is a full HF checkpoint and every artifact exists."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        hint = ""
        if (model_dir / "adapter_config.json").is_file():
            hint = " (a LoRA adapter: merge it into the base model first)"
        raise FileNotFoundError(f"{model_dir}: not an HF model checkpoint, config.json missing{hint}")
    missing = [str(artifact) for artifact in artifacts if not artifact.exists()]
    if missing:
        raise FileNotFoundError(f"artifacts not found: {', '.join(missing)}")
    if not model_name:
        raise ValueError("model_name must not be empty")
    return model_dir


def _lineage(repo_dir: str | os.PathLike[str], data_hash: str | None, tags: Mapping[str, str]) -> dict[str, str]:
    """``git_commit`` (HEAD of ``repo_dir``), ``data_hash`` (else the md5 of ``<repo_dir>/data.dvc``)
    and ``tags``, unknown lineage as ``unknown``."""
    if data_hash is None:
        try:
            data_hash = dvc_tracked_hash(Path(repo_dir) / "data.dvc")
        except ValueError as error:
            _logger.warning("no data hash: %s", error)
    return {
        "git_commit": git_commit(repo_dir) or UNKNOWN,
        "data_hash": data_hash or UNKNOWN,
        **{str(key): str(value) for key, value in tags.items()},
    }


def _log_artifacts(artifacts: list[Path]) -> None:
    for artifact in artifacts:
        if artifact.is_dir():  # under its own name
            mlflow.log_artifacts(str(artifact), artifact_path=artifact.name)
        else:
            mlflow.log_artifact(str(artifact))


def _log_model(model_dir: Path, task: str) -> Any:
    if task == REWARD_MODEL_TASK:
        return _log_reward_model(model_dir)
    with _quiet_transformers_flavor():
        return _log_transformers_model(model_dir, task)


def _register_version(
    client: MlflowClient, model_name: str, model_info: Any, run_id: str, lineage: Mapping[str, str]
) -> Any:
    """A new version of ``model_name`` from the logged model, tagged with its lineage; the
    ``challenger`` alias moves to it."""
    # The client API instead of mlflow.register_model: same result, without its stderr prints.
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(
        name=model_name, source=model_info.model_uri, run_id=run_id, tags=dict(lineage), model_id=model_info.model_id,
    )
    client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, version.version)
    return version


REGISTRATION_KEY_TAG = "registration_key"


def registration_key(model_dir: Path, params: Mapping[str, Any], final_metrics: Mapping[str, Any],
                     lineage: Mapping[str, str], task: str) -> str:
    """What makes two registrations the same: the model's files, the params, the final metrics and
    the lineage. Registering the same key twice (a rerun of the register stage) returns the first
    version instead of logging and registering everything again."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    described = json.dumps([params, final_metrics, dict(lineage), task], sort_keys=True, default=str)
    digest.update(described.encode())
    return digest.hexdigest()[:32]


def _version_with_key(client: MlflowClient, model_name: str, key: str) -> Any | None:
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get(REGISTRATION_KEY_TAG) == key), None)


def log_and_register(
    *, run_name: str, params: Mapping[str, Any], step_metrics: list[dict[str, Any]], final_metrics: Mapping[str, Any],
    artifacts: list[Path], model_dir: Path, model_name: str, tags: Mapping[str, str], task: str = "text-generation",
    repo_dir: str | os.PathLike[str] = ".", data_hash: str | None = None, run_id: str | None = None,
) -> RegisteredModel:
    """Log one training run to MLflow and register its model as a new version of ``model_name``.

    - ``run_id``: the training stage's run (:func:`moalign.tracking.start_training_run`), continued so
      the live step metrics and the registered model sit in one run. Without it, or when the store
      does not hold it, a new run named ``run_name`` gets everything.
    - ``params``, ``step_metrics`` (the Trainer's ``log_history``), ``final_metrics`` (numbers only,
      nested keys joined with ``/``): logged as :func:`moalign.tracking.log_results` says.
    - ``artifacts``: files or directories (a directory is logged under its own name).
    - ``model_dir``: a full HF checkpoint, logged with the transformers flavor as its
      ``save_pretrained`` files (no pickles); a bare LoRA adapter is rejected (merge it first).
      ``task=REWARD_MODEL_TASK``: MOSLIM's reward model, logged as a pyfunc.

    The run and the version carry ``git_commit`` (HEAD of ``repo_dir``), ``data_hash`` (argument,
    else the md5 in ``<repo_dir>/data.dvc``) and ``tags``; unknown lineage is ``unknown``. The alias
    ``challenger`` moves to the new version. Uses the URIs set by :func:`moalign.tracking.configure`.
    """
    artifacts = [Path(artifact) for artifact in artifacts]
    model_dir = _checked_model_dir(model_dir, artifacts, model_name)
    lineage = _lineage(repo_dir, data_hash, tags)
    client = MlflowClient()
    key = registration_key(model_dir, params, final_metrics, lineage, task)
    existing = _version_with_key(client, model_name, key)
    if existing is not None:  # a rerun of register on the same training and evaluation
        _logger.info("%s version %s already holds this model, evaluation and lineage: nothing logged",
                     model_name, existing.version)
        return RegisteredModel(name=model_name, version=str(existing.version), run_id=existing.run_id,
                               model_uri=f"models:/{model_name}/{existing.version}")
    lineage[REGISTRATION_KEY_TAG] = key
    continued = run_id is not None and tracking.run_exists(client, run_id)
    if run_id is not None and not continued:
        _logger.warning("training run %s is not in this tracking store: logging a new run", run_id)
    with mlflow.start_run(run_id=run_id if continued else None, run_name=None if continued else run_name) as run:
        run_id = run.info.run_id
        tracking.log_results(client, run_id, params=params, step_metrics=step_metrics,
                             final_metrics=final_metrics, tags=lineage, continued=continued)
        _log_artifacts(artifacts)
        version = _register_version(client, model_name, _log_model(model_dir, task), run_id, lineage)
    return RegisteredModel(
        name=model_name, version=str(version.version), run_id=run_id,
        model_uri=f"models:/{model_name}/{version.version}",
    )


# --------------------------------------------------------------------------------------------------
# Reading the registry
# --------------------------------------------------------------------------------------------------


def versions_by_run(client: MlflowClient, run_ids: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """run id -> [(model name, version)] of the registered versions made from it, sorted; empty for a
    store without a model registry."""
    found: dict[str, list[tuple[str, int]]] = {}
    for start in range(0, len(run_ids), 100):
        quoted = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + 100])
        try:
            versions = client.search_model_versions(f"run_id IN ({quoted})")
        except Exception as error:  # a store without a model registry: no versions
            _logger.debug("no model versions: %s", error)
            return {}
        for version in versions:
            found.setdefault(version.run_id, []).append((version.name, int(version.version)))
    for entries in found.values():
        entries.sort()
    return found
