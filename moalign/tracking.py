"""MLflow tracking: where the store is, the runs a stage logs into, and reading them back.

The pipeline tracks into a local SQLite store (``sqlite:///mlflow.db``, a relative path counted from
the project directory) with artifacts beside it in ``mlartifacts/``, so it never needs an MLflow
server. A training stage opens its run with :func:`start_training_run` (a killed training continues
its unfinished run), logs each step live with :class:`StepMetricLogger` and closes it with
:func:`finish_training_run`; the register stage adds its results with :func:`log_results` before
:mod:`moalign.registry` registers the model. :func:`read_runs` gives an experiment's runs back as
plain :class:`RunRecord` values and never creates a store.

Core library: no Prefect or DVC imports.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# MLflow 3.x ships usage telemetry that starts a background sender when ``mlflow`` is imported; the
# pipeline must never touch the network, so opt out before the import (an explicit setting wins).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from moalign.credentials import SECRET_WORDS, redact_url_password  # noqa: E402

__all__ = [
    "ExperimentNotFound",
    "RUN_FILE",
    "RunRecord",
    "StepMetricLogger",
    "StoreError",
    "StoreNotFound",
    "TrackingError",
    "configure",
    "experiment_runs",
    "finish_training_run",
    "flatten_params",
    "is_number",
    "is_secret_key",
    "log_results",
    "open_store",
    "quiet_loggers",
    "read_runs",
    "resolve_tracking_uri",
    "run_exists",
    "sqlite_db_path",
    "start_training_run",
]

_logger = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # beside a trained policy: its training's MLflow run, which register continues
ARTIFACTS_DIRNAME = "mlartifacts"
NONFINITE_TAG = "nonfinite_metrics_skipped"
FINGERPRINT_TAG = "moalign.fingerprint"
_SQLITE = "sqlite:///"
# MLflow logs each new SQLite connection's schema check at INFO: no news to anyone reading a table.
_STORE_LOGGERS = ("mlflow.store.db.utils", "alembic")

# MLflow limits (mlflow.utils.validation): values per param, entities per log_batch call.
_MAX_PARAM_VALUE = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# A key is secret when one of credentials.SECRET_WORDS appears in it (case-insensitive) ...
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


# --------------------------------------------------------------------------------------------------
# Where the store is
# --------------------------------------------------------------------------------------------------


def sqlite_db_path(tracking_uri: str, project_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The absolute database file of a ``sqlite:///`` URI, None for any other store. A relative path
    counts from ``project_dir`` (default: the current directory, where the stages run). Reads no disk."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    raw = tracking_uri[len(_SQLITE) :]
    if raw in ("", ":memory:"):
        raise ValueError(f"{tracking_uri!r}: an on-disk SQLite file is required (artifacts live next to it)")
    db_path = Path(raw).expanduser()
    if not db_path.is_absolute():
        db_path = Path(project_dir if project_dir is not None else Path.cwd()) / db_path
    return db_path.resolve()


def resolve_tracking_uri(tracking_uri: str, project_dir: str | os.PathLike[str] | None = None) -> str:
    """``tracking_uri`` with a relative ``sqlite:///`` path made absolute (:func:`sqlite_db_path`);
    server URLs and other stores unchanged."""
    db_path = sqlite_db_path(tracking_uri, project_dir)
    # sqlite:////abs/path.db: three slashes for the scheme, one for the absolute path
    return tracking_uri if db_path is None else f"{_SQLITE}{db_path.as_posix()}"


@contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of the named loggers for the duration of the block."""
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, previous, strict=True):
            logger.setLevel(old)


def configure(tracking_uri: str, experiment: str) -> str:
    """Point MLflow tracking *and* the model registry at ``tracking_uri`` and select ``experiment``.

    With SQLite the database's folder is created, and a new experiment stores its artifacts under
    ``<db folder>/mlartifacts/<experiment>`` (MLflow's own default would be ``./mlruns`` relative to
    wherever the process happens to run). A deleted experiment of that name is restored. Returns
    the experiment id.
    """
    if not experiment:
        raise ValueError("experiment name must not be empty")
    db_path = sqlite_db_path(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with quiet_loggers(*_STORE_LOGGERS):  # the first connection creates/migrates the schema
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        existing = client.get_experiment_by_name(experiment)
    if existing is None:
        location = None
        if db_path is not None:
            location = (db_path.parent / ARTIFACTS_DIRNAME / re.sub(r"[^\w.-]", "_", experiment)).as_uri()
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


def is_number(value: Any) -> bool:
    """An int or float (NaN and infinities included), or a numpy/torch scalar holding one; not a bool."""
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
    return any(word in remainder for word in SECRET_WORDS)


def _flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in metrics.items():
        full_key = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flatten_metrics(value, full_key)
        else:
            yield full_key, value


def _metric_key(key: str) -> str:
    return _INVALID_KEY_CHARS.sub("_", key)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _step_metric_entities(step_metrics: list[dict[str, Any]], timestamp: int) -> tuple[list[Metric], int]:
    """Each numeric key of each entry except step/epoch at the entry's step; and the non-finite count."""
    metrics: list[Metric] = []
    skipped = 0
    for index, entry in enumerate(step_metrics):
        step = entry.get("step", index)
        step = int(step) if is_number(step) else index
        for key, value in entry.items():
            if key in ("step", "epoch") or not is_number(value):
                continue
            value = float(value)
            if not math.isfinite(value):
                skipped += 1
                continue
            metrics.append(Metric(_metric_key(str(key)), value, timestamp, step))
    return metrics, skipped


def _final_metric_values(final_metrics: Mapping[str, Any]) -> tuple[dict[str, float], int]:
    """The finite numbers of ``final_metrics`` by ``/``-joined key, and how many were not finite."""
    final: dict[str, float] = {}
    skipped = 0
    for key, value in _flatten_metrics(final_metrics):
        if not is_number(value):
            continue
        value = float(value)
        if math.isfinite(value):
            final[_metric_key(key)] = value
        else:
            skipped += 1
    return final, skipped


def _param_entities(params: Mapping[str, Any]) -> list[Param]:
    """Flattened params as MLflow entities, credentials dropped (:func:`is_secret_key`)."""
    flat_params = flatten_params(params)
    dropped = sorted(key for key in flat_params if is_secret_key(key))
    if dropped:
        _logger.info("not logging %d secret-looking params: %s", len(dropped), ", ".join(dropped))
    return [Param(_metric_key(key), redact_url_password(value)[:_MAX_PARAM_VALUE])
            for key, value in flat_params.items() if key not in dropped]


# --------------------------------------------------------------------------------------------------
# Logging into a run
# --------------------------------------------------------------------------------------------------


def run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether the store behind ``client`` holds run ``run_id``."""
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _log_params(client: MlflowClient, run_id: str, params: list[Param]) -> None:
    for chunk in _chunks(params, _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)


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
    entities, skipped = _step_metric_entities(history, _now_ms())
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


def log_results(
    client: MlflowClient, run_id: str, *, params: Mapping[str, Any], step_metrics: list[dict[str, Any]],
    final_metrics: Mapping[str, Any], tags: Mapping[str, str], continued: bool,
) -> None:
    """Add a stage's results to run ``run_id``.

    ``params`` (nested, logged flattened as ``train.beta``; credentials dropped): a ``continued`` run
    gets the keys it lacks. ``step_metrics`` (the Trainer's ``log_history``): the (key, step) values
    the run lacks. ``final_metrics``: the numbers, nested keys joined with ``/``, at step 0.
    Non-finite values are skipped and counted in the tag ``nonfinite_metrics_skipped``, set with ``tags``.
    """
    param_entities = _param_entities(params)
    if continued:
        param_entities = _params_not_logged(client, run_id, param_entities)
    _log_params(client, run_id, param_entities)
    final, skipped = _final_metric_values(final_metrics)
    skipped += _log_missing_steps(client, run_id, step_metrics)
    if final:
        timestamp = _now_ms()
        client.log_batch(run_id, metrics=[Metric(k, v, timestamp, 0) for k, v in final.items()])
    run_tags = {**{str(k): str(v) for k, v in tags.items()}, NONFINITE_TAG: str(skipped)}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])


# --------------------------------------------------------------------------------------------------
# Live training runs
# --------------------------------------------------------------------------------------------------


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
    _log_params(client, run.info.run_id, _param_entities(params))
    return run.info.run_id


class StepMetricLogger:
    """``on_log`` hook for :func:`moalign.training.preference.train_policy`: each log entry (loss,
    per-dimension weights, margins, accuracies...) goes to the run at its step as it is made."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = MlflowClient()

    def __call__(self, entry: dict[str, Any]) -> None:
        metrics, _ = _step_metric_entities([entry], _now_ms())
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


def finish_training_run(run_id: str, history: list[dict[str, Any]], status: str = "FINISHED") -> None:
    """Add the steps the run lacks (those trained before a resume) and end it with ``status``."""
    client = MlflowClient()
    skipped = _log_missing_steps(client, run_id, history)
    client.set_tag(run_id, NONFINITE_TAG, str(skipped))
    client.set_terminated(run_id, status)


# --------------------------------------------------------------------------------------------------
# Reading runs back
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data: params as logged (strings), each metric's last logged value."""

    run_id: str
    name: str | None
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    start_time: datetime | None  # UTC
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


class TrackingError(Exception):
    """The tracking store could not answer; the message says why, for the user."""


class StoreError(TrackingError):
    """The store is missing or unreadable."""


class StoreNotFound(StoreError):
    """No store at that path: reading never creates one."""


class ExperimentNotFound(TrackingError):
    """No active experiment of that name; ``existing`` lists the names there are."""

    def __init__(self, experiment: str, tracking_uri: str, existing: list[str]):
        self.experiment = experiment
        self.existing = list(existing)
        listing = ", ".join(repr(name) for name in self.existing) if self.existing else "none"
        super().__init__(f"no experiment {experiment!r} in {tracking_uri}; existing experiments: {listing}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def open_store(tracking_uri: str, project_dir: str | os.PathLike[str] | None = None) -> MlflowClient:
    """A client reading the store at ``tracking_uri`` (runs and registry), opened now so that a
    missing (:class:`StoreNotFound`) or unreadable (:class:`StoreError`) store is reported here."""
    try:
        db_path = sqlite_db_path(tracking_uri, project_dir)
    except ValueError:
        raise StoreError(f"{tracking_uri}: not an on-disk SQLite store") from None
    if db_path is not None and not db_path.is_file():  # MLflow would create an empty store
        raise StoreNotFound(f"no MLflow store at {tracking_uri}: {db_path} does not exist")
    uri = resolve_tracking_uri(tracking_uri, project_dir)
    with quiet_loggers(*_STORE_LOGGERS):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as error:  # MlflowException, sqlalchemy errors, OSError...
            raise StoreError(f"cannot read the MLflow store at {uri}: {_first_line(error)}") from error
    return client


def _search_runs(client: MlflowClient, experiment_id: str, max_runs: int | None) -> list[Any]:
    runs: list[Any] = []
    token = None
    while max_runs is None or len(runs) < max_runs:
        page_size = 1000 if max_runs is None else min(1000, max_runs - len(runs))
        page = client.search_runs(
            [experiment_id], order_by=["attributes.start_time DESC"], max_results=page_size, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _record(run: Any) -> RunRecord:
    info, data = run.info, run.data
    started = datetime.fromtimestamp(info.start_time / 1000, tz=UTC) if info.start_time else None
    return RunRecord(
        run_id=info.run_id, name=info.run_name, status=info.status, start_time=started,
        params=dict(data.params), metrics=dict(data.metrics), tags=dict(data.tags),
    )


def experiment_runs(client: MlflowClient, experiment: str, *, max_runs: int | None = None) -> list[RunRecord]:
    """The runs of ``experiment`` (all, or the ``max_runs`` newest), newest first.

    :class:`ExperimentNotFound` (with the names there are) when it is absent or deleted.
    """
    try:
        found = client.get_experiment_by_name(experiment)
        active = found is not None and found.lifecycle_stage != "deleted"
        runs = _search_runs(client, found.experiment_id, max_runs) if active else []
        names = [] if active else [e.name for e in client.search_experiments()]
    except Exception as error:  # MlflowException, sqlalchemy errors...: the caller gets one kind
        raise StoreError(
            f"cannot read the runs of {experiment!r} at {client.tracking_uri}: {_first_line(error)}"
        ) from error
    if not active:
        raise ExperimentNotFound(experiment, client.tracking_uri, names)
    return [_record(run) for run in runs]


def read_runs(
    tracking_uri: str, experiment: str, *, max_runs: int | None = None,
    project_dir: str | os.PathLike[str] | None = None,
) -> list[RunRecord]:
    """:func:`experiment_runs` of the store at ``tracking_uri`` (:func:`open_store`): read only."""
    return experiment_runs(open_store(tracking_uri, project_dir), experiment, max_runs=max_runs)
