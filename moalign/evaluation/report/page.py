"""The report's page: the figures drawn and saved as PNGs, and ``index.html`` rendered from the
Jinja2 template ``templates/report.html.j2`` (autoescaped) with the figures embedded."""

from __future__ import annotations

import base64
import functools
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure

from moalign.evaluation.report.charts import (
    heldout_preference_curves,
    pareto_front,
    radar_chart,
    training_curves,
    weight_trajectories,
    win_rate_bars,
)
from moalign.evaluation.report.data import (
    benchmark_win_rows,
    label,
    number,
    pareto_axes,
    pareto_optimal,
    pareto_points,
    section,
    win_rows,
)
from moalign.evaluation.report.style import DPI
from moalign.evaluation.report.tables import (
    benchmark_groups,
    controllability_facts,
    controllability_rows,
    experiment_rows,
    fmt,
    key_number_rows,
    key_win_rows,
    preference_rows,
)

#: the PNG files :func:`build_report` writes beside ``index.html``, by chart
FIGURE_FILES = {
    "radar": "radar.png",
    "pareto": "pareto.png",
    "win_rate": "win_rate.png",
    "training": "training_curves.png",
    "weights": "weights.png",
    "heldout_preference": "heldout_preference.png",
}
#: PNGs written only when metrics.json holds their section (an old one is removed otherwise):
#: Arena-Hard's and AlpacaEval's win rates against their baselines, and the controllability check
OPTIONAL_FIGURE_FILES = {
    "benchmark_win_rates": "benchmark_win_rates.png",
    "controllability": "controllability.png",
}


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("moalign.evaluation.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temp, 0o644)  # mkstemp's 0600 would keep the report from other readers
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _figures(
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    dimensions: Sequence[str],
    experiments: Sequence[Mapping[str, Any]],
    points: Sequence[Mapping[str, Any]],
    axes: tuple[str, str],
) -> dict[str, Figure]:
    """Every chart of the page, by key; the optional ones only when metrics.json has their section."""
    policy, reference = metrics.get("policy") or {}, metrics.get("reference") or {}
    figures = {
        "radar": radar_chart(
            {"policy": policy.get("scores") or {}, "reference": reference.get("scores") or {}}
        ),
        "pareto": pareto_front(points, *axes),
        "win_rate": win_rate_bars(win_rows(metrics, experiments)),
        "training": training_curves(history),
        "weights": weight_trajectories(history, dimensions),
        "heldout_preference": heldout_preference_curves(history, dimensions),
    }
    benchmark_rows = benchmark_win_rows(metrics)
    if benchmark_rows:
        figures["benchmark_win_rates"] = win_rate_bars(
            benchmark_rows,
            title="Win rate against each benchmark's baseline",
            xlabel="win rate vs the benchmark's baseline (ties count half)",
        )
    controllability = section(metrics, "controllability")
    if controllability is not None:
        from moalign.evaluation.controllability import controllability_figure

        figures["controllability"] = controllability_figure(controllability)
    return figures


def _meta(
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    experiments: Sequence[Mapping[str, Any]],
    generated_at: datetime,
) -> list[str]:
    """The line under the title: when, which training phases and steps, the budget, the prompts, the runs."""
    methods = sorted({str(e["phase"]) for e in history if e.get("phase")})
    steps = [number(e.get("step")) for e in history]
    last_step = max((s for s in steps if s is not None), default=None)
    meta = [f"generated {generated_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}"]
    if methods:
        meta.append(f"training phases: {', '.join(methods)}")
    if last_step is not None:
        meta.append(f"{int(last_step)} training steps")
    budget = section(metrics, "training_budget")
    if budget:
        meta.append(
            f"training budget: {fmt(budget.get('examples'), 0)} examples, {fmt(budget.get('steps'), 0)} steps, "
            f"{fmt(budget.get('tokens'), 0)} tokens, {fmt(budget.get('seconds'), 0)} s"
        )
    meta.append(f"{fmt(metrics.get('n_prompts'), 0)} held-out prompts")
    plural = "s" if len(experiments) != 1 else ""
    meta.append(f"{len(experiments)} earlier evaluated run{plural} from MLflow")
    return meta


def _judge_facts(win_rate: Mapping[str, Any]) -> list[str]:
    """Under the win-rate figure: who judged the pairs, and how many judgements failed."""
    parts = []
    if win_rate.get("judge"):
        parts.append(f"judge: {win_rate['judge']}")
    if number(win_rate.get("failures")) is not None:
        parts.append(f"{fmt(win_rate.get('failures'), 0)} judge failures")
    return parts


def _tables(
    metrics: Mapping[str, Any], dimensions: Sequence[str], points: Sequence[Mapping[str, Any]], axes: tuple[str, str]
) -> dict[str, Any]:
    """The template's table rows and notes' facts."""
    groups, judges = benchmark_groups(metrics)
    controllability = section(metrics, "controllability") or {}
    preference = section(metrics, "heldout_preference")
    return {
        "key_rows": key_number_rows(metrics, dimensions),
        "key_win_rows": key_win_rows(metrics),
        "judge_facts": _judge_facts(metrics.get("win_rate_vs_reference") or {}),
        "benchmark_groups": groups,
        "benchmark_judges": judges,
        "controllability_rows": controllability_rows(controllability),
        "controllability_facts": controllability_facts(controllability),
        "preference_rows": preference_rows(preference, dimensions) if preference else None,
        "preference_pairs": fmt(preference.get("n_pairs"), 0) if preference else "",
        "experiment_dimensions": [label(d) for d in dimensions],
        "experiment_rows": experiment_rows(points, pareto_optimal(points, *axes), dimensions),
    }


def _write_figures(out: Path, pngs: Mapping[str, bytes]) -> None:
    """Each PNG beside the page; an earlier report's optional figure of a section this run has not is removed."""
    files = {**FIGURE_FILES, **OPTIONAL_FIGURE_FILES}
    for key, png in pngs.items():
        _atomic_write(out / files[key], png)
    for key, name in OPTIONAL_FIGURE_FILES.items():
        if key not in pngs:
            (out / name).unlink(missing_ok=True)


def build_report(
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    dimensions: Sequence[str],
    experiments: Sequence[Mapping[str, Any]] | None = None,
    title: str = "moalign evaluation report",
    pareto: tuple[str, str] | None = None,
    generated_at: datetime | None = None,
) -> Path:
    """Write ``<out_dir>/index.html`` (self-contained) and the figures as PNGs; returns its path.

    - ``metrics``: the evaluate stage's ``metrics.json``;
    - ``history``: per-step training log entries (``models/policy/train_log.json``);
    - ``experiments``: earlier runs (``experiments_from_mlflow``) for the Pareto front and the
      win-rate bars, beside this run's policy and the reference (None or empty: those two only);
    - ``pareto``: the two dimensions of the Pareto front (default: the first two of ``dimensions``).

    The optional sections of ``metrics`` (benchmarks, controllability) get their cards and PNGs
    only when present; an optional PNG left in ``out_dir`` by an earlier report is removed when
    its section is absent. Every file is written through a temporary file and a rename.
    """
    out = Path(out_dir)
    dimensions = list(dimensions)
    experiments = list(experiments or [])
    axes = pareto_axes(dimensions, pareto)
    points = pareto_points(metrics, experiments)
    figures = _figures(metrics, history, dimensions, experiments, points, axes)
    pngs = {key: _png(fig) for key, fig in figures.items()}
    page = _environment().get_template("report.html.j2").render(
        title=title,
        meta=_meta(metrics, history, experiments, generated_at or datetime.now(UTC)),
        images={key: base64.b64encode(png).decode("ascii") for key, png in pngs.items()},
        optional=[key for key in OPTIONAL_FIGURE_FILES if key in pngs],
        **_tables(metrics, dimensions, points, axes),
    )
    _write_figures(out, pngs)
    index = out / "index.html"
    _atomic_write(index, page.encode("utf-8"))
    return index
