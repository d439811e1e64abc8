"""The report stage: the evaluation's metrics, the policy's training log and the experiment's earlier
MLflow runs in, ``index.html`` and its figures out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from moalign.evaluation.report.mlflow_runs import experiments_from_mlflow
from moalign.evaluation.report.page import build_report

_logger = logging.getLogger(__name__)


def report_stage(config, metrics: Path, history: Path, out_dir: Path, pareto: tuple[str, str]) -> tuple[Path, int]:
    """The report stage: ``out_dir/index.html`` from the evaluation's ``metrics``, the policy's training
    log ``history`` (a missing log leaves the training charts out) and the experiment's earlier MLflow
    runs. Returns the page and how many earlier runs it compares."""
    from moalign.tracking import RUN_FILE

    results = json.loads(Path(metrics).read_text())
    history = Path(history)
    if history.is_file():
        steps = json.loads(history.read_text())
    else:
        _logger.warning("%s does not exist: the report has no training curves", history)
        steps = []
    # the current policy's MLflow run is shown from metrics.json; earlier registrations of the same
    # run (a re-run of register) would otherwise appear twice
    run_file = history.parent / RUN_FILE
    current = [json.loads(run_file.read_text()).get("run_id")] if run_file.is_file() else []
    section = config.register_
    dimensions = list(config.dimensions.names)
    experiments = experiments_from_mlflow(
        section.tracking_uri, section.experiment, dimensions, exclude_run_ids=[r for r in current if r],
    )
    index = build_report(out_dir, metrics=results, history=steps, dimensions=dimensions, experiments=experiments,
                         title="moalign evaluation report", pareto=pareto)
    return index, len(experiments)
