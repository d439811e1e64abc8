"""Earlier runs of the MLflow experiment, for the report's Pareto front and win-rate bars
(read through :mod:`moalign.tracking`, like ``moalign compare``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from moalign.evaluation.report.data import number

_logger = logging.getLogger(__name__)

_WIN_RATE_FIELDS = ("win_rate", "ci95_low", "ci95_high", "length_controlled_win_rate", "wins", "ties", "losses", "n")


def experiments_from_mlflow(
    tracking_uri: str,
    experiment: str,
    dimensions: Sequence[str],
    *,
    exclude_run_ids: Sequence[str] = (),
    max_runs: int = 200,
) -> list[dict[str, Any]]:
    """Runs of ``experiment`` that hold evaluation scores (``eval/policy/scores/<dimension>``),
    newest first, as ``{"name", "run_id", "kind": "run", "scores", "win_rate"}``.

    Reads only. A missing store or experiment, an unreadable store, or runs without scores give an
    empty list (logged), never an error: the report must not fail because nothing was registered
    yet. ``exclude_run_ids``: runs shown otherwise (the current policy's)."""
    from moalign.tracking import ExperimentNotFound, StoreNotFound, TrackingError, read_runs

    try:
        runs = read_runs(tracking_uri, experiment, max_runs=max_runs)
    except (StoreNotFound, ExperimentNotFound) as error:
        _logger.info("%s: the report shows the current run only", error)
        return []
    except TrackingError as error:  # the report goes on without earlier runs
        _logger.warning("could not read MLflow runs: %s", error)
        return []
    excluded = set(exclude_run_ids)
    experiments = []
    for run in runs:
        scores = {d: number(run.metrics.get(f"eval/policy/scores/{d}")) for d in dimensions}
        if run.run_id in excluded or all(v is None for v in scores.values()):
            continue
        win = {k: run.metrics.get(f"eval/win_rate_vs_reference/{k}") for k in _WIN_RATE_FIELDS}
        win = {k: v for k, v in win.items() if number(v) is not None}
        experiments.append({
            "name": f"{run.name or 'run'} {run.run_id[:8]}", "run_id": run.run_id, "kind": "run",
            "method": run.params.get("train.method"), "scores": scores,
            "mean_score": number(run.metrics.get("eval/policy/mean_score")), "win_rate": win or None,
        })
    return experiments
