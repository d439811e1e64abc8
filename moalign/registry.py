"""MLflow tracking and model registration for a trained policy.

Everything runs against a local SQLite backend store (``sqlite:///mlflow.db``) with artifacts in a
folder next to it (``mlartifacts/``), so the pipeline never needs an MLflow server. One call to
:func:`log_and_register` turns a finished training stage into one MLflow run (flattened params,
the Trainer's per-step metric history, final metrics, artifacts, the model in the transformers
flavor) plus a new version of a registered model carrying its lineage (git commit, DVC data hash)
and the ``challenger`` alias.

Core library: no Prefect or DVC imports (``.dvc`` files are read as plain YAML).
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# MLflow 3.x ships usage telemetry that starts a background sender when ``mlflow`` is imported; the
# pipeline must never touch the network, so opt out before the import (an explicit setting wins).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

__all__ = [
    "CHALLENGER_ALIAS",
    "RUN_FILE",
    "RegisteredModel",
    "configure",
    "dvc_lock_hash",
    "dvc_tracked_hash",
    "finish_training_run",
    "flatten_params",
    "git_commit",
    "is_secret_key",
    "log_and_register",
    "sqlite_db_path",
    "start_training_run",
    "StepMetricLogger",
]

_logger = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # beside a trained policy: its training's MLflow run, which register continues
CHALLENGER_ALIAS = "challenger"
ARTIFACTS_DIRNAME = "mlartifacts"
UNKNOWN = "unknown"
NONFINITE_TAG = "nonfinite_metrics_skipped"

# MLflow limits (mlflow.utils.validation): values per param, entities per log_batch call.
_MAX_PARAM_VALUE = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# A key is secret when one of these words appears in it (case-insensitive) ...
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential")
# ... outside a dotted component that is known to be harmless: token *counts* such as
# ``max_new_tokens`` / ``max_tokens`` and the tokenizer's name or path. Without this exception every
# generation-length setting in params.yaml would be dropped as a "token".
_HARMLESS_COMPONENT = re.compile(
    # any leading words (``benchmark_max_new_tokens``), but a count word right before "tokens"
    r"(?:[a-z0-9]+_)*(?:max|min|num|n|total|new|prompt|response|completion|context|reply|input|output)_tokens?"
    r"|tokeni[sz]er(?:_(?:name|path|dir|id|type|class))?",
    re.IGNORECASE,
)
_INVALID_KEY_CHARS = re.compile(r"[^\w\-. /]")


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version: ``model_uri`` is ``models:/<name>/<version>``."""

    name: str
    version: str
    run_id: str
    model_uri: str


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def sqlite_db_path(tracking_uri: str) -> Path | None:
    """The absolute database file of a ``sqlite:///`` URI (None for other stores); a relative path
    counts from the current directory. Touches nothing on disk."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    raw = tracking_uri[len(prefix) :]
    if raw in ("", ":memory:"):
        raise ValueError(f"{tracking_uri!r}: an on-disk SQLite file is required (artifacts live next to it)")
    db_path = Path(raw).expanduser()
    if not db_path.is_absolute():  # sqlite:///mlflow.db -> relative to the current directory
        db_path = Path.cwd() / db_path
    return db_path.resolve()


def _resolve_tracking_uri(tracking_uri: str) -> tuple[str, Path | None]:
    """Absolute ``sqlite:///`` URI and the database's folder (None for other stores)."""
    db_path = sqlite_db_path(tracking_uri)
    if db_path is None:
        return tracking_uri, None
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # sqlite:////abs/path.db: three slashes for the scheme, one for the absolute path.
    return f"sqlite:///{db_path.as_posix()}", db_path.parent


def configure(tracking_uri: str, experiment: str) -> str:
    """Point MLflow tracking *and* the model registry at ``tracking_uri`` and select ``experiment``.

    A relative ``sqlite:///`` path is resolved against the current directory. With SQLite a new
    experiment stores its artifacts under ``<db folder>/mlartifacts/<experiment>`` (MLflow's own
    default would be ``./mlruns`` relative to wherever the process happens to run). A deleted
    experiment of that name is restored. Returns the experiment id.
    """
    if not experiment:
        raise ValueError("experiment name must not be empty")
    uri, db_dir = _resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # The first connection creates/migrates the SQLite schema; its INFO lines are no news.
    with _quiet_loggers("mlflow.store.db.utils", "alembic"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        existing = client.get_experiment_by_name(experiment)
    if existing is None:
        location = None
        if db_dir is not None:
            folder = db_dir / ARTIFACTS_DIRNAME / re.sub(r"[^\w.-]", "_", experiment)
            location = folder.as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = existing.experiment_id
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


def flatten_params(nested: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"beta": 0.8}}`` -> ``{"train.beta": "0.8"}``; lists and scalars become strings.

    Empty mappings disappear (they carry no value); ``None`` becomes ``"None"``.
    """
    flat: dict[str, str] = {}
    for key, value in nested.items():
        full_key = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, full_key))
        else:
            flat[full_key] = str(value)
    return flat


def is_secret_key(key: str) -> bool:
    """True when a (dotted) param key names a credential: it contains key/token/secret/password.

    Token counts (``annotate.max_new_tokens``) and tokenizer names are not secrets.
    """
    remainder = ".".join(
        "" if _HARMLESS_COMPONENT.fullmatch(part) else part for part in key.split(".")
    ).lower()
    return any(word in remainder for word in _SECRET_WORDS)


def _flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in metrics.items():
        full_key = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flatten_metrics(value, full_key)
        else:
            yield full_key, value


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or _is_numpy_number(value)


def _is_numpy_number(value: Any) -> bool:
    # numpy / torch scalars without importing either: they expose item() returning a Python number.
    item = getattr(value, "item", None)
    if item is None or getattr(value, "shape", None) not in ((), None):
        return False
    try:
        result = item()
    except (TypeError, ValueError):
        return False
    return isinstance(result, (int, float)) and not isinstance(result, bool)


def _metric_key(key: str) -> str:
    return _INVALID_KEY_CHARS.sub("_", key)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
# Logging and registration
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


@contextmanager
def _quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of the named loggers for the duration of the block."""
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, previous):
            logger.setLevel(old)


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


def _step_metric_entities(step_metrics: list[dict[str, Any]], timestamp: int) -> tuple[list[Metric], int]:
    metrics: list[Metric] = []
    skipped = 0
    for index, entry in enumerate(step_metrics):
        step = entry.get("step", index)
        step = int(step) if _is_number(step) else index
        for key, value in entry.items():
            if key in ("step", "epoch") or not _is_number(value):
                continue
            value = float(value)
            if not math.isfinite(value):
                skipped += 1
                continue
            metrics.append(Metric(_metric_key(str(key)), value, timestamp, step))
    return metrics, skipped


def _param_entities(params: Mapping[str, Any]) -> list[Param]:
    """Flattened params as MLflow entities, credentials dropped (:func:`is_secret_key`)."""
    flat_params = flatten_params(params)
    dropped = sorted(key for key in flat_params if is_secret_key(key))
    if dropped:
        _logger.info("not logging %d secret-looking params: %s", len(dropped), ", ".join(dropped))
    return [Param(_metric_key(key), value[:_MAX_PARAM_VALUE]) for key, value in flat_params.items() if key not in dropped]


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _params_not_logged(client: MlflowClient, run_id: str, params: list[Param]) -> list[Param]:
    """MLflow params are immutable: a run continued at register time gets only the new keys. A value
    that changed since training (a register.* or evaluate.* setting, which DVC does not retrain
    for) is kept as a ``param_at_register.<key>`` tag."""
    logged = client.get_run(run_id).data.params
    changed = {p.key: p.value for p in params if p.key in logged and logged[p.key] != p.value}
    for key, value in changed.items():
        client.set_tag(run_id, f"param_at_register.{key}", value[:_MAX_PARAM_VALUE])
    return [p for p in params if p.key not in logged]


def _log_missing_steps(client: MlflowClient, run_id: str, history: list[dict[str, Any]]) -> int:
    """Log the (key, step) values of ``history`` the run does not hold yet; returns the non-finite
    count. Idempotent, so a history logged live, partly live (a resumed training) or not at all
    ends up in the run exactly once."""
    entities, skipped = _step_metric_entities(history, int(time.time() * 1000))
    logged: dict[str, set[int]] = {}
    missing = []
    for metric in entities:
        if metric.key not in logged:
            logged[metric.key] = {m.step for m in client.get_metric_history(run_id, metric.key)}
        if metric.step not in logged[metric.key]:
            missing.append(metric)
    for chunk in _chunks(missing, _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    return skipped


# --------------------------------------------------------------------------------------------------
# Live training runs
# --------------------------------------------------------------------------------------------------

FINGERPRINT_TAG = "moalign.fingerprint"


def start_training_run(
    experiment_id: str, run_name: str, params: Mapping[str, Any], *, fingerprint: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The MLflow run a training stage logs into, live: the newest unfinished run with the same
    ``fingerprint`` (a killed training resumes its checkpoint, so it continues its run too), else a
    new run with ``params`` logged. End it with :func:`finish_training_run`."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        _logger.info("continuing MLflow run %s of the interrupted training", run_id)
        return run_id
    run = client.create_run(
        experiment_id, run_name=run_name, tags={FINGERPRINT_TAG: fingerprint, **dict(tags or {})}
    )
    for chunk in _chunks(_param_entities(params), _PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=chunk)
    return run.info.run_id


class StepMetricLogger:
    """``on_log`` hook for :func:`moalign.training.preference.train_policy`: each log entry (loss,
    per-dimension weights, margins, accuracies...) goes to the run at its step as it is made."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = MlflowClient()

    def __call__(self, entry: dict[str, Any]) -> None:
        metrics, _ = _step_metric_entities([entry], int(time.time() * 1000))
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


def finish_training_run(run_id: str, history: list[dict[str, Any]], status: str = "FINISHED") -> None:
    """Add the steps the run lacks (those trained before a resume) and end it with ``status``."""
    client = MlflowClient()
    skipped = _log_missing_steps(client, run_id, history)
    client.set_tag(run_id, NONFINITE_TAG, str(skipped))
    client.set_terminated(run_id, status)


def log_and_register(
    *,
    run_name: str,
    params: Mapping[str, Any],
    step_metrics: list[dict[str, Any]],
    final_metrics: Mapping[str, Any],
    artifacts: list[Path],
    model_dir: Path,
    model_name: str,
    tags: Mapping[str, str],
    task: str = "text-generation",
    repo_dir: str | os.PathLike[str] = ".",
    data_hash: str | None = None,
    run_id: str | None = None,
) -> RegisteredModel:
    """Log one training run to MLflow and register its model as a new version of ``model_name``.

    - ``params``: nested (e.g. the validated ``params.yaml``), logged flattened (``train.beta``);
      keys naming credentials (:func:`is_secret_key`) are dropped.
    - ``step_metrics``: the HF ``Trainer.state.log_history``; each numeric key except
      ``step``/``epoch`` is logged at its ``step``. Non-finite values are skipped and counted in the
      run tag ``nonfinite_metrics_skipped`` (so are non-finite ``final_metrics``).
    - ``final_metrics``: numbers only (other values are ignored), nested dicts flattened with ``/``.
    - ``artifacts``: files or directories (a directory is logged under its own name).
    - ``model_dir``: a full HF checkpoint (``config.json``, safetensors weights, tokenizer files),
      logged with the transformers flavor as ``save_pretrained`` files (no pickles): copied from
      disk where MLflow supports that for the installed transformers, else loaded into a pipeline
      and re-saved (see :func:`_local_checkpoint_supported`). A bare LoRA adapter directory is
      rejected: merge it into the base model first.

    - ``run_id``: the training stage's run (:func:`start_training_run`), continued so the live step
      metrics and the registered model sit in one run; entries of ``step_metrics`` it lacks are
      added. Without it, or when the store does not hold it, a new run gets the whole history.

    The new version carries tags ``git_commit`` (HEAD of ``repo_dir``), ``data_hash`` (argument,
    else the md5 in ``<repo_dir>/data.dvc``) and ``tags``; unknown lineage is tagged ``unknown``.
    The alias ``challenger`` moves to the new version. Uses the URIs set by :func:`configure`.
    """
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        hint = ""
        if (model_dir / "adapter_config.json").is_file():
            hint = " (a LoRA adapter: merge it into the base model first)"
        raise FileNotFoundError(f"{model_dir}: not an HF model checkpoint, config.json missing{hint}")
    artifacts = [Path(artifact) for artifact in artifacts]
    missing = [str(artifact) for artifact in artifacts if not artifact.exists()]
    if missing:
        raise FileNotFoundError(f"artifacts not found: {', '.join(missing)}")
    if not model_name:
        raise ValueError("model_name must not be empty")

    param_entities = _param_entities(params)
    timestamp = int(time.time() * 1000)
    skipped = 0
    final: dict[str, float] = {}
    for key, value in _flatten_metrics(final_metrics):
        if not _is_number(value):
            continue
        value = float(value)
        if math.isfinite(value):
            final[_metric_key(key)] = value
        else:
            skipped += 1

    commit = git_commit(repo_dir)
    if data_hash is None:
        try:
            data_hash = dvc_tracked_hash(Path(repo_dir) / "data.dvc")
        except ValueError as error:
            _logger.warning("no data hash: %s", error)
    lineage = {
        "git_commit": commit or UNKNOWN,
        "data_hash": data_hash or UNKNOWN,
        **{str(key): str(value) for key, value in tags.items()},
    }

    client = MlflowClient()
    resumed = run_id is not None and _run_exists(client, run_id)
    if run_id is not None and not resumed:
        _logger.warning("training run %s is not in this tracking store: logging a new run", run_id)
    with mlflow.start_run(run_id=run_id if resumed else None, run_name=None if resumed else run_name) as run:
        run_id = run.info.run_id
        if resumed:
            param_entities = _params_not_logged(client, run_id, param_entities)
        for chunk in _chunks(param_entities, _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=chunk)
        skipped += _log_missing_steps(client, run_id, step_metrics)
        if final:
            client.log_batch(run_id, metrics=[Metric(k, v, timestamp, 0) for k, v in final.items()])
        run_tags = {**lineage, NONFINITE_TAG: str(skipped)}
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])

        for artifact in artifacts:
            if artifact.is_dir():
                mlflow.log_artifacts(str(artifact), artifact_path=artifact.name)
            else:
                mlflow.log_artifact(str(artifact))

        if task == REWARD_MODEL_TASK:
            model_info = _log_reward_model(model_dir)
        else:
            with _quiet_transformers_flavor():
                model_info = _log_transformers_model(model_dir, task)

        # The client API instead of mlflow.register_model: same result, without its stderr prints.
        try:
            client.create_registered_model(model_name)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        version = client.create_model_version(
            name=model_name,
            source=model_info.model_uri,
            run_id=run_id,
            tags=lineage,
            model_id=model_info.model_id,
        )
        client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, version.version)

    return RegisteredModel(
        name=model_name,
        version=str(version.version),
        run_id=run_id,
        model_uri=f"models:/{model_name}/{version.version}",
    )
