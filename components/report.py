"""Stage report: the evaluation as one HTML page (reports/index.html) with its figures as PNGs.

Charts: per-dimension scores of policy and reference (radar), a Pareto front of two dimensions
across the evaluated runs of the MLflow experiment (register.experiment at register.tracking_uri;
read only, and the current run plus the reference when the store is missing or empty), win rates
with their 95% intervals, the training curves and AMoPO's per-dimension weights. Open
reports/index.html in a browser: it is self-contained (images embedded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    metrics: Annotated[Path, typer.Option(help="Evaluation metrics (metrics.json).")],
    history: Annotated[
        Path, typer.Option(help="Per-step training log (models/policy/train_log.json).")
    ],
    out: Annotated[Path, typer.Option(help="Report folder (reports): index.html and figures.")],
    pareto_x: Annotated[
        str | None,
        typer.Option(help="Dimension on the Pareto chart's x axis (default: the first)."),
    ] = None,
    pareto_y: Annotated[
        str | None, typer.Option(help="Dimension on its y axis (default: the second).")
    ] = None,
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("report")
    from moalign.evaluation.report import report_stage

    dimensions = list(config.dimensions.names)
    x = pareto_x or dimensions[0]
    y = pareto_y or (dimensions[1] if len(dimensions) > 1 else dimensions[0])
    for option, value in (("--pareto-x", x), ("--pareto-y", y)):
        if value not in dimensions:
            raise typer.BadParameter(
                f"{value!r} is not one of dimensions.names: {', '.join(dimensions)}",
                param_hint=option,
            )
    if not metrics.is_file():
        raise typer.BadParameter(
            f"{metrics} does not exist (the evaluate stage writes it)", param_hint="--metrics"
        )
    index, earlier = report_stage(config, metrics, history, out, (x, y))
    log.info("wrote %s (%d earlier runs from MLflow)", index, earlier)


if __name__ == "__main__":
    app()
