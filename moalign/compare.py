"""Experiments x metrics from MLflow: the table behind ``moalign compare`` (the papers' Table 2).

:func:`collect_runs` reads the runs of one MLflow experiment (newest first) into plain dicts: run
identity, ``train.method`` and a few key params (the method-specific ones only for the methods that
read them), the registered model versions made from the run, and the last logged value of each
requested metric. :func:`comparison_table` formats them as strings (3 decimals, ``—`` where a run
lacks a value), the run and its numbers first, :func:`best_rows` finds the best value per metric
column and :func:`sort_rows` orders the rows. Only :func:`collect_runs` touches MLflow, through
:mod:`moalign.tracking`; it never writes (a missing SQLite file is an error, not a new empty store).
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from moalign import registry, tracking
from moalign.tracking import RunRecord, is_number
from moalign.training.methods import METHODS

__all__ = [
    "BASE_COLUMNS",
    "CompareError",
    "DEFAULT_METRICS",
    "best_rows",
    "collect_runs",
    "comparison_table",
    "format_value",
    "metric_direction",
    "metric_keys",
    "metric_label",
    "resolve_sort_key",
    "sort_rows",
    "table_columns",
    "write_csv",
    "write_json",
]

MISSING = "—"

WIN_RATE = "eval/win_rate_vs_reference/win_rate"
MEAN_SCORE = "eval/policy/mean_score"
SCORES_PREFIX = "eval/policy/scores/"
AVG_WORDS = "eval/policy/avg_words"
VALID_ROWS = "validate/valid_rows"
# The default metric set; the per-dimension policy scores found in the runs go after MEAN_SCORE.
DEFAULT_METRICS = (WIN_RATE, MEAN_SCORE, AVG_WORDS, VALID_ROWS)

_LABELS = {
    WIN_RATE: "win rate",
    MEAN_SCORE: "mean score",
    AVG_WORDS: "words",
    VALID_ROWS: "valid rows",
}

# (row field, table header) of every row's fields, in the exports' order.
BASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "run"),
    ("run_name", "name"),
    ("start_time", "started"),
    ("status", "status"),
    ("method", "method"),
    ("beta", "beta"),
    ("gamma", "gamma"),
    ("weights", "weights"),
    ("learning_rate", "lr"),
    ("lora", "lora"),
    ("version", "version"),
)

# The table's order: the run, then the numbers that rank it (the metric keys), then what explains them.
KEY_FIELDS = ("run_id", "method")
DETAIL_FIELDS = ("beta", "gamma", "weights", "learning_rate", "lora", "version", "run_name", "start_time", "status")

# row field -> MLflow param (flattened params.yaml key)
_PARAMS = {"method": "train.method", "learning_rate": "train.learning_rate"}
# shown for the methods whose losses read them (moalign.training.methods, Method.train_params)
_METHOD_PARAMS = ("beta", "gamma", "weights")

_SHORT_ID = 8


class CompareError(Exception):
    """A comparison could not be made as asked; the message says why, for the user. (A store or
    experiment that cannot be read is a :class:`moalign.tracking.TrackingError`.)"""


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


def metric_label(key: str) -> str:
    """Short column header: ``win rate``, ``mean score``, a dimension's name, else the key."""
    if key in _LABELS:
        return _LABELS[key]
    if key.startswith(SCORES_PREFIX):
        return key[len(SCORES_PREFIX) :]
    return key


_LOWER_IS_BETTER = (
    "loss",
    "losses",
    "judge_failures",
    "quarantined_rows",
    "quarantined_fraction",
    "runtime",
)
_NEUTRAL = (
    "avg_words",
    "valid_rows",
    "total_rows",
    "n",
    "n_prompts",
    "ties",
    "learning_rate",
    "total_flos",
    "grad_norm",
    "weight",
    "epoch",
)


def metric_direction(key: str) -> str | None:
    """``"max"`` when a higher value is better, ``"min"`` when lower is (losses, failures,
    quarantined rows), None when neither (lengths, row counts, weights: nothing to highlight)."""
    last = key.rsplit("/", 1)[-1].lower()
    if last in _NEUTRAL:
        return None
    if "failed_rows" in key or last.endswith(_LOWER_IS_BETTER):
        return "min"
    return "max"


def format_value(value: Any, decimals: int = 3, *, integer: bool = False) -> str:
    """``—`` for None/NaN; numbers with ``decimals`` places (whole numbers when ``integer``),
    tiny ones (a learning rate) in scientific notation; strings unchanged."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number):
            return MISSING
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        if integer and number.is_integer():
            return str(int(number))
        if number != 0 and abs(number) < 10 ** (-decimals):
            return f"{number:.2e}"
        return f"{number:.{decimals}f}"
    text = str(value)
    return text if text else MISSING


def metric_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric keys of ``rows``, in first-seen order."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in row.get("metrics", {}):
            keys.setdefault(key, None)
    return list(keys)


def _is_value(value: Any) -> bool:
    """A number that is not NaN (a logged value, not a gap)."""
    return is_number(value) and not math.isnan(value)


_COUNT_SUFFIXES = ("rows", "wins", "losses", "ties", "failures", "flipped", "n", "n_prompts")


def _integral_column(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    """A count (``validate/valid_rows``, ``.../wins``) whose values are all whole numbers."""
    last = key.rsplit("/", 1)[-1].lower()
    if not (last in _COUNT_SUFFIXES or last.endswith(_COUNT_SUFFIXES[:-2])):
        return False
    values = [row.get("metrics", {}).get(key) for row in rows]
    numbers = [float(v) for v in values if _is_value(v)]
    return bool(numbers) and all(v.is_integer() for v in numbers)


def table_columns(metric_keys: Sequence[str]) -> list[str]:
    """The row field or metric key of each table column: :data:`KEY_FIELDS`, the metric keys, then
    :data:`DETAIL_FIELDS`."""
    return [*KEY_FIELDS, *metric_keys, *DETAIL_FIELDS]


def comparison_table(
    rows: Sequence[Mapping[str, Any]], metric_keys: Sequence[str], decimals: int = 3
) -> tuple[list[str], list[list[str]]]:
    """``(headers, cells)`` of the :func:`table_columns`, all strings.

    Metric values get ``decimals`` places, except a count column (``valid_rows``, ``wins``) whose
    values are all whole numbers, which shows integers; a missing value is ``—``.
    """
    field_headers = dict(BASE_COLUMNS)
    columns = table_columns(metric_keys)
    headers = [field_headers[c] if c in field_headers else metric_label(c) for c in columns]
    integral = {key: _integral_column(rows, key) for key in metric_keys}
    cells = []
    for row in rows:
        metrics = row.get("metrics", {})
        cells.append([
            format_value(metrics.get(c), decimals, integer=integral[c]) if c in integral
            else _format_field(c, row.get(c))
            for c in columns
        ])
    return headers, cells


def _format_field(field: str, value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if field == "start_time" and isinstance(value, str):
        try:
            return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return value
    return str(value)


def best_rows(rows: Sequence[Mapping[str, Any]], metric_keys: Sequence[str]) -> dict[str, set[int]]:
    """Per metric key, the indices of the rows holding its best value (ties: all of them).

    Best is the highest, or the lowest for a loss-like key (:func:`metric_direction`). Keys without
    a direction, and columns with fewer than two values or all values equal, get no entry.
    """
    best: dict[str, set[int]] = {}
    for key in metric_keys:
        direction = metric_direction(key)
        if direction is None:
            continue
        values = [
            (i, float(row.get("metrics", {}).get(key)))
            for i, row in enumerate(rows)
            if _is_value(row.get("metrics", {}).get(key))
        ]
        if len(values) < 2:
            continue
        target = max(v for _, v in values) if direction == "max" else min(v for _, v in values)
        winners = {i for i, v in values if math.isclose(v, target, rel_tol=1e-12, abs_tol=1e-12)}
        if len(winners) < len(values):  # all equal: nothing stands out
            best[key] = winners
    return best


def resolve_sort_key(key: str, metric_keys: Sequence[str]) -> str:
    """The row field or metric key that ``key`` names: a field (``method``, ``beta``, ``run_name``),
    a header (``lr``, ``win rate``), a metric key, or a metric's last path part (``win_rate``,
    ``correctness``). ``CompareError`` names the choices when nothing, or more than one, matches."""
    wanted = key.strip()
    lowered = wanted.lower()
    for field, header in BASE_COLUMNS:
        if lowered in (field, header):
            return field
    if wanted in metric_keys:
        return wanted
    matches = [
        m
        for m in metric_keys
        if lowered in (metric_label(m).lower(), metric_label(m).lower().replace(" ", "_"))
        or m.rsplit("/", 1)[-1].lower() == lowered
    ]
    if len(matches) == 1:
        return matches[0]
    choices = [field for field, _ in BASE_COLUMNS] + list(metric_keys)
    if matches:
        raise CompareError(f"--sort {key!r} is ambiguous: {', '.join(matches)}")
    raise CompareError(f"--sort {key!r} names no column; choose one of: {', '.join(choices)}")


def sort_rows(rows: Sequence[Mapping[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows ordered by ``key`` (a field or metric key, see :func:`resolve_sort_key`), best first.

    Metrics: descending, ascending for lower-is-better keys (:func:`metric_direction`). Fields:
    numeric params ascending by value, text alphabetically, ``start_time`` newest first. Rows
    without a value go last; ties keep their order.
    """
    field_names = {field for field, _ in BASE_COLUMNS}
    if key in field_names:
        values = [row.get(key) for row in rows]
        descending = key == "start_time"
    else:
        values = [row.get("metrics", {}).get(key) for row in rows]
        descending = metric_direction(key) != "min"

    def number(value: Any) -> float | None:
        if _is_value(value):
            return float(value)
        try:
            parsed = float(str(value))
        except (TypeError, ValueError):
            return None
        return None if math.isnan(parsed) else parsed

    present = [(i, v) for i, v in enumerate(values) if v is not None and v != ""]
    missing = [i for i, v in enumerate(values) if v is None or v == ""]
    if present and all(number(v) is not None for _, v in present) and key != "start_time":
        ordered = sorted(present, key=lambda item: number(item[1]), reverse=descending)
    else:
        ordered = sorted(present, key=lambda item: str(item[1]).lower(), reverse=descending)
    return [dict(rows[i]) for i, _ in ordered] + [dict(rows[i]) for i in missing]


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _export_columns(metric_keys: Sequence[str]) -> list[str]:
    return (
        ["run_id_full"]
        + [field for field, _ in BASE_COLUMNS if field != "version"]
        + ["version", "registered"]
        + list(metric_keys)
    )


def write_csv(
    rows: Sequence[Mapping[str, Any]], metric_keys: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """One line per run: full run id, the fields, then the metric keys as columns (raw values, full
    precision, empty where missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = _export_columns(metric_keys)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            record = {**{k: v for k, v in row.items() if k != "metrics"}, **row.get("metrics", {})}
            record["registered"] = " ".join(record.get("registered") or [])
            writer.writerow(["" if record.get(col) is None else record.get(col) for col in columns])
    return path


def write_json(
    rows: Sequence[Mapping[str, Any]], metric_keys: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """``{"metrics": [...keys], "runs": [...rows]}`` with raw values (null where missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = [
        {**row, "metrics": {key: row.get("metrics", {}).get(key) for key in metric_keys}}
        for row in rows
    ]
    path.write_text(
        json.dumps({"metrics": list(metric_keys), "runs": runs}, indent=2) + "\n", encoding="utf-8"
    )
    return path


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------


def _dimension_order(runs: Sequence[RunRecord]) -> list[str]:
    """``dimensions.names`` as logged (newest run first), so score columns follow params.yaml."""
    order: list[str] = []
    for run in runs:
        raw = run.params.get("dimensions.names")
        if not raw:
            continue
        try:
            names = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            continue
        if isinstance(names, (list, tuple)):
            order += [str(name) for name in names if str(name) not in order]
    return order


def _default_metric_keys(runs: Sequence[RunRecord]) -> list[str]:
    present: set[str] = set()
    for run in runs:
        present.update(run.metrics)
    dims = {key[len(SCORES_PREFIX) :] for key in present if key.startswith(SCORES_PREFIX)}
    order = [d for d in _dimension_order(runs) if d in dims] + sorted(
        dims - set(_dimension_order(runs))
    )
    return [WIN_RATE, MEAN_SCORE, *(SCORES_PREFIX + d for d in order), AVG_WORDS, VALID_ROWS]


def _lora(params: Mapping[str, str]) -> str | None:
    enabled = params.get("train.lora.enabled")
    if enabled is None:
        return None
    if enabled.lower() in ("false", "0", "no"):
        return "off"
    rank = params.get("train.lora.r")
    return f"r{rank}" if rank else "on"


def _method_params(params: Mapping[str, str]) -> dict[str, str | None]:
    """beta, gamma, weights as logged, None where the run's method does not read them (all of them
    for a method this version does not know)."""
    method = METHODS.get(params.get("train.method") or "")
    used = _METHOD_PARAMS if method is None else method.train_params
    return {field: params.get(f"train.{field}") if field in used else None for field in _METHOD_PARAMS}


def _row(run: RunRecord, metric_keys: Sequence[str], versions: list[tuple[str, int]]) -> dict[str, Any]:
    names = {name for name, _ in versions}
    if len(names) <= 1:
        version = ",".join(str(number) for _, number in versions) or None
    else:
        version = ",".join(f"{name}/{number}" for name, number in versions)
    return {
        "run_id": run.run_id[:_SHORT_ID],
        "run_id_full": run.run_id,
        "run_name": run.name,
        "start_time": run.start_time.isoformat(timespec="seconds") if run.start_time else None,
        "status": run.status,
        **{field: run.params.get(param) for field, param in _PARAMS.items()},
        **_method_params(run.params),
        "lora": _lora(run.params),
        "version": version,
        "registered": [f"models:/{name}/{number}" for name, number in versions],
        "metrics": {key: run.metrics.get(key) for key in metric_keys},
    }


def collect_runs(
    tracking_uri: str,
    experiment: str,
    *,
    metrics: Sequence[str] | None = None,
    only_registered: bool = False,
    extra_metrics: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The runs of ``experiment`` in the store at ``tracking_uri``, newest first, one dict each.

    Each row: ``run_id`` (8 characters; ``run_id_full`` too), ``run_name``, ``start_time`` (ISO,
    UTC), ``status``, the params ``method`` (``train.method``), ``beta``, ``gamma``, ``weights``
    (None where the method does not read them), ``learning_rate`` (strings as logged, None when
    absent), ``lora`` (``r16``/``off``), ``version``
    (registered versions made from the run, ``"3,4"``; None when unregistered), ``registered``
    (their ``models:/`` URIs) and ``metrics``: ``{key: last logged value or None}`` over the same
    ordered keys in every row.

    ``metrics`` defaults to win rate vs reference, mean score, the per-dimension policy scores found
    in the runs (in ``dimensions.names`` order), avg words and valid rows. ``extra_metrics`` are
    added after them when at least one run logged them (``--sort`` on a metric not shown).
    ``only_registered`` keeps the runs with a registered version.

    Raises :class:`moalign.tracking.StoreError` for a missing or unreadable store,
    :class:`moalign.tracking.ExperimentNotFound` for an unknown experiment (with the existing names).
    """
    client = tracking.open_store(tracking_uri)
    runs = tracking.experiment_runs(client, experiment)
    keys = list(metrics) if metrics is not None else _default_metric_keys(runs)
    for key in extra_metrics:
        if key not in keys and any(key in run.metrics for run in runs):
            keys.append(key)
    versions = registry.versions_by_run(client, [run.run_id for run in runs]) if runs else {}
    rows = [_row(run, keys, versions.get(run.run_id, [])) for run in runs]
    if only_registered:
        rows = [row for row in rows if row["version"]]
    return rows
