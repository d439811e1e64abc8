"""The evaluation report: charts of one pipeline run, and of the runs before it, in one HTML file.

The charts (:mod:`.charts`) are pure functions returning a matplotlib figure:

- :func:`radar_chart`: per-dimension judge scores, one polygon per model;
- :func:`pareto_front`: experiments on two chosen dimensions, the non-dominated set marked
  (:func:`pareto_optimal` decides it);
- :func:`win_rate_bars`: win rate against the reference with its 95% bootstrap interval as
  asymmetric error bars, the 0.5 line, and the length-controlled win rate as a second marker;
- :func:`training_curves`: loss and reward margin (online methods: mean reward and its trend) per
  logging step, one line per training phase;
- :func:`heldout_preference_curves`: preference accuracy and margin on the held-out pairs;
- :func:`weight_trajectories`: AMoPO's adaptive per-dimension weights per step.

:func:`build_report` (:mod:`.page`) writes ``<out_dir>/index.html``: a single self-contained page
(figures embedded as base64 PNG) rendered from ``templates/report.html.j2``, with a table of the key
numbers, the generation date and a note on each chart, plus each figure as a PNG beside it. The
evaluate stage's optional sections each add to the page only when metrics.json has them:
``ifbench``, ``mt_bench``, ``arena_hard`` and ``alpaca_eval`` a Benchmarks table (and, for the last
two, a chart of the win rates against their baselines), ``controllability`` the chart of
:func:`moalign.evaluation.controllability.controllability_figure` with Spearman's rho per dimension
(:data:`OPTIONAL_FIGURE_FILES`). :mod:`.data` turns metrics into the charts' points and rows,
:mod:`.tables` into the tables' cells.

:func:`experiments_from_mlflow` (:mod:`.mlflow_runs`) reads earlier runs of an MLflow experiment for
the Pareto front and the win-rate bars; an absent or empty store gives no runs, never an error.
:func:`report_stage` (:mod:`.stage`) is what the report stage calls. Core library: no DVC or Prefect
imports.
"""

from __future__ import annotations

from moalign.evaluation.report.charts import (
    heldout_preference_curves,
    pareto_front,
    radar_chart,
    training_curves,
    weight_trajectories,
    win_rate_bars,
)
from moalign.evaluation.report.data import pareto_optimal
from moalign.evaluation.report.mlflow_runs import experiments_from_mlflow
from moalign.evaluation.report.page import FIGURE_FILES, OPTIONAL_FIGURE_FILES, build_report
from moalign.evaluation.report.stage import report_stage

__all__ = [
    "FIGURE_FILES",
    "OPTIONAL_FIGURE_FILES",
    "build_report",
    "experiments_from_mlflow",
    "heldout_preference_curves",
    "pareto_front",
    "pareto_optimal",
    "radar_chart",
    "report_stage",
    "training_curves",
    "weight_trajectories",
    "win_rate_bars",
]
