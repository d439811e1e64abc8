"""The evaluation report: charts of one pipeline run, and of the runs before it, in one HTML file.

Five pure plotting functions, each returning a matplotlib :class:`~matplotlib.figure.Figure` built
with the object-oriented API (no pyplot, no global state, rendered by the Agg canvas):

- :func:`radar_chart`: per-dimension judge scores, one polygon per model;
- :func:`pareto_front`: experiments on two chosen dimensions, the non-dominated set marked
  (:func:`pareto_optimal` decides it);
- :func:`win_rate_bars`: win rate against the reference with its 95% bootstrap interval as
  asymmetric error bars, the 0.5 line, and the length-controlled win rate as a second marker;
- :func:`training_curves`: loss and reward margin (online methods: mean reward and its trend) per
  logging step, one line per training phase;
- :func:`weight_trajectories`: AMoPO's adaptive per-dimension weights per step.

:func:`build_report` writes ``<out_dir>/index.html``: a single self-contained page (figures embedded
as base64 PNG), a table of the key numbers, the generation date and a note on each chart, plus
each figure as a PNG beside it. The evaluate stage's optional sections each add to the page only
when metrics.json has them: ``ifbench``, ``mt_bench``, ``arena_hard`` and ``alpaca_eval`` a
Benchmarks table (and, for the last two, a chart of the win rates against their baselines),
``controllability`` the chart of :func:`moalign.evaluation.controllability.controllability_figure`
with Spearman's rho per dimension (:data:`OPTIONAL_FIGURE_FILES`).

:func:`experiments_from_mlflow` reads earlier runs of an MLflow experiment for the Pareto front and
the win-rate bars; an absent or empty store gives no runs, never an error. Core library: no DVC or
Prefect imports.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle

__all__ = [
    "FIGURE_FILES",
    "OPTIONAL_FIGURE_FILES",
    "build_report",
    "experiments_from_mlflow",
    "pareto_front",
    "pareto_optimal",
    "radar_chart",
    "training_curves",
    "weight_trajectories",
    "win_rate_bars",
]

_logger = logging.getLogger(__name__)

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

SCORE_RANGE = (1.0, 5.0)  # the judges' scale
_POLICY_COLOR = "#1f77b4"
_REFERENCE_COLOR = "#7f7f7f"
_RUN_COLOR = "#9ecae1"
_LC_COLOR = "#d62728"
_DPI = 110
_WIN_RATE_FIELDS = (
    "win_rate",
    "ci95_low",
    "ci95_high",
    "length_controlled_win_rate",
    "wins",
    "ties",
    "losses",
    "n",
)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, else None (missing, None, NaN, a string...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _label(name: str) -> str:
    return name.replace("_", " ")


def _empty_panel(ax, text: str, width: int = 60) -> None:
    """A blank panel that says why it is blank (wrapped at ``width`` characters)."""
    ax.text(
        0.5,
        0.5,
        textwrap.fill(text, width),
        ha="center",
        va="center",
        fontsize=10,
        color="#555555",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#dddddd")


def _color_cycle(n: int) -> list[str]:
    palette = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#bcbd22",
        "#17becf",
        "#7f7f7f",
    ]
    return [palette[i % len(palette)] for i in range(n)]


def _model_color(name: str, index: int) -> str:
    lowered = name.lower()
    if lowered.startswith("reference"):
        return _REFERENCE_COLOR
    if lowered.startswith("policy"):
        return _POLICY_COLOR
    return _color_cycle(index + 2)[-1]


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def radar_chart(scores_by_model: Mapping[str, Mapping[str, float | None]]) -> Figure:
    """Per-dimension scores of each model on a 1-5 radar: one filled polygon (``ax.patches``) and
    one outline per model. Dimensions are those of the first model, then any others in order of
    appearance; a score a model lacks sits at the centre (1) and is named in the legend."""
    fig = Figure(figsize=(6.0, 5.2), dpi=_DPI, layout="constrained")
    dimensions: list[str] = []
    for scores in scores_by_model.values():
        dimensions.extend(d for d in scores if d not in dimensions)
    if not scores_by_model or not dimensions:
        _empty_panel(fig.add_subplot(), "no per-dimension scores to show")
        return fig
    ax = fig.add_subplot(projection="polar")
    angles = [2 * math.pi * i / len(dimensions) for i in range(len(dimensions))]
    closed = [*angles, angles[0]]
    low, high = SCORE_RANGE
    for index, (model, scores) in enumerate(scores_by_model.items()):
        values = [_number(scores.get(d)) for d in dimensions]
        missing = [d for d, v in zip(dimensions, values, strict=True) if v is None]
        radii = [low if v is None else v for v in values]
        radii = [*radii, radii[0]]
        color = _model_color(model, index)
        label = model if not missing else f"{model} (no score: {', '.join(missing)})"
        ax.plot(closed, radii, color=color, linewidth=2, marker="o", markersize=4, label=label)
        ax.fill(closed, radii, color=color, alpha=0.15)
    ax.set_xticks(angles)
    ax.set_xticklabels([textwrap.fill(_label(d), 14) for d in dimensions], fontsize=10)
    ax.tick_params(axis="x", pad=8)
    for angle, tick in zip(angles, ax.get_xticklabels(), strict=True):
        side = math.cos(angle)  # labels left and right of the circle grow away from it
        tick.set_horizontalalignment("left" if side > 0.1 else "right" if side < -0.1 else "center")
    ax.set_ylim(low, high)
    ax.set_yticks([2, 3, 4, 5])
    ax.set_yticklabels(["2", "3", "4", "5"], fontsize=8, color="#666666")
    ax.set_rlabel_position(90 / max(len(dimensions), 1))
    ax.set_title("Per-dimension scores (judge, 1-5)", fontsize=11, pad=18)
    fig.legend(
        loc="outside lower center", ncols=min(len(scores_by_model), 3), fontsize=9, frameon=False
    )
    return fig


def pareto_optimal(points: Sequence[Mapping[str, Any]], x: str, y: str) -> list[bool]:
    """For each point, whether no other point dominates it on ``x`` and ``y`` (both maximised).

    ``q`` dominates ``p`` when it is at least as good on both and strictly better on one, so equal
    points are all optimal. A point missing either value is never optimal and dominates nothing.
    """
    coords = [(_number(p.get(x)), _number(p.get(y))) for p in points]
    valid = [(px, py) for px, py in coords if px is not None and py is not None]
    flags = []
    for px, py in coords:
        if px is None or py is None:
            flags.append(False)
            continue
        dominated = any(qx >= px and qy >= py and (qx > px or qy > py) for qx, qy in valid)
        flags.append(not dominated)
    return flags


def _kind_style(kind: str) -> dict[str, Any]:
    if kind == "reference":
        return {"marker": "s", "color": _REFERENCE_COLOR}
    if kind == "policy":
        return {"marker": "*", "color": _POLICY_COLOR}
    return {"marker": "o", "color": _RUN_COLOR}


def _merged_labels(
    points: Sequence[Mapping[str, Any]], x: str, y: str, limit: int = 3
) -> list[tuple[float, float, str]]:
    """One label per distinct (x, y): coincident experiments share it (``a, b +2 more``)."""
    groups: dict[tuple[float, float], list[str]] = {}
    for point in points:
        px, py = _number(point.get(x)), _number(point.get(y))
        if px is None or py is None:
            continue
        groups.setdefault((round(px, 9), round(py, 9)), []).append(str(point.get("name", "?")))
    labels = []
    for (px, py), names in groups.items():
        shown = ", ".join(names[:limit]) + (
            f" +{len(names) - limit} more" if len(names) > limit else ""
        )
        labels.append((px, py, shown))
    return labels


def pareto_front(points: Sequence[Mapping[str, Any]], x: str, y: str) -> Figure:
    """Experiments on dimensions ``x`` and ``y`` (higher is better on both).

    ``points``: dicts with ``name``, the two scores under the dimension names, and optionally
    ``kind`` (``policy`` = this run, ``reference``, anything else = an earlier run). Pareto-optimal
    points are drawn with a black edge and joined by the dashed front; dominated ones are faded.
    Each distinct position gets one text label (``ax.texts``) naming the experiments there.
    Two scatter collections: optimal and dominated (an empty one when there are none)."""
    fig = Figure(figsize=(6.4, 5.2), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    flags = pareto_optimal(points, x, y)
    usable = [
        (p, f)
        for p, f in zip(points, flags, strict=True)
        if _number(p.get(x)) is not None and _number(p.get(y)) is not None
    ]
    if not usable:
        _empty_panel(ax, f"no experiment has scores for both {_label(x)} and {_label(y)}")
        return fig
    # this run drawn last (on top of coincident earlier runs), then the reference
    order = {"policy": 2, "reference": 1}
    for optimal in (True, False):
        chosen = sorted(
            (p for p, f in usable if f is optimal), key=lambda p: order.get(str(p.get("kind")), 0)
        )
        styles = [_kind_style(str(p.get("kind", "run"))) for p in chosen]
        # one collection per group; markers differ by kind, so draw the markers as paths per point
        collection = ax.scatter(
            [float(p[x]) for p in chosen],
            [float(p[y]) for p in chosen],
            c=[s["color"] for s in styles] or None,
            s=[(300 if s["marker"] == "*" else 110) * (1 if optimal else 0.6) for s in styles],
            edgecolors="black" if optimal else "none",
            linewidths=1.2,
            alpha=1.0 if optimal else 0.55,
            zorder=3 if optimal else 2,
            label="Pareto-optimal" if optimal else "dominated",
        )

        collection.set_paths(
            [
                MarkerStyle(s["marker"])
                .get_path()
                .transformed(MarkerStyle(s["marker"]).get_transform())
                for s in styles
            ]
        )
    front = sorted(
        ((float(p[x]), float(p[y])) for p, f in usable if f), key=lambda q: (q[0], -q[1])
    )
    if len(front) > 1:
        ax.step(
            [q[0] for q in front],
            [q[1] for q in front],
            where="pre",
            color="black",
            linestyle="--",
            linewidth=1,
            zorder=1,
            label="front",
        )
    xs = [float(p[x]) for p, _ in usable]
    ys = [float(p[y]) for p, _ in usable]
    middle = (max(xs) + min(xs)) / 2
    for px, py, text in _merged_labels([p for p, _ in usable], x, y):
        right_half = px > middle + 1e-9  # labels point inwards, so they stay inside the axes
        ax.annotate(
            textwrap.fill(text, 40),
            (px, py),
            xytext=(-8 if right_half else 8, 8),
            textcoords="offset points",
            ha="right" if right_half else "left",
            fontsize=8,
            color="#333333",
        )
    for setter, values in ((ax.set_xlim, xs), (ax.set_ylim, ys)):
        centre, span = (max(values) + min(values)) / 2, max(max(values) - min(values), 0.5)
        setter(centre - 0.75 * span, centre + 0.75 * span)
    ax.set_xlabel(f"{_label(x)} (higher is better)")
    ax.set_ylabel(f"{_label(y)} (higher is better)")
    ax.set_title(f"Pareto front: {_label(x)} vs {_label(y)}", fontsize=11)
    ax.grid(True, alpha=0.3)

    handles = [
        Line2D(
            [], [], marker="*", color=_POLICY_COLOR, linestyle="", markersize=12, label="this run"
        ),
        Line2D(
            [],
            [],
            marker="s",
            color=_REFERENCE_COLOR,
            linestyle="",
            markersize=8,
            label="reference",
        ),
        Line2D(
            [], [], marker="o", color=_RUN_COLOR, linestyle="", markersize=8, label="earlier run"
        ),
        Line2D(
            [],
            [],
            marker="o",
            color="white",
            markeredgecolor="black",
            linestyle="--",
            markersize=8,
            label="Pareto-optimal (front)",
        ),
    ]
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    return fig


def win_rate_bars(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str = "Win rate against the reference (position swap)",
    xlabel: str = "win rate vs reference (ties count half)",
) -> Figure:
    """Win rate against the reference, one bar per row, ties counting half.

    ``rows``: dicts with ``name`` and ``win_rate``, optionally ``ci95_low``/``ci95_high`` (drawn as
    asymmetric error bars: one errorbar container for the rows that have them),
    ``length_controlled_win_rate`` (a red diamond), ``wins``/``ties``/``losses`` (written under
    the bar) and ``color`` (default: the first row this run's blue, the others pale). The 0.5 line
    is where the policy is as good as the reference (or a benchmark's baseline: ``title`` and
    ``xlabel`` say against what)."""
    rows = [r for r in rows if _number(r.get("win_rate")) is not None]
    height = max(3.2, 1.6 + 0.55 * len(rows))
    fig = Figure(figsize=(6.4, height), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    if not rows:
        _empty_panel(ax, "no win rate recorded")
        return fig
    positions = list(range(len(rows)))[::-1]  # first row on top
    rates = [float(r["win_rate"]) for r in rows]
    colors = [
        str(r.get("color") or (_POLICY_COLOR if i == 0 else _RUN_COLOR)) for i, r in enumerate(rows)
    ]
    ax.barh(positions, rates, color=colors, height=0.6, alpha=0.8, zorder=2)
    with_ci = [
        (pos, r)
        for pos, r in zip(positions, rows, strict=True)
        if _number(r.get("ci95_low")) is not None and _number(r.get("ci95_high")) is not None
    ]
    if with_ci:
        centres = [float(r["win_rate"]) for _, r in with_ci]
        below = [
            max(c - float(r["ci95_low"]), 0.0) for c, (_, r) in zip(centres, with_ci, strict=True)
        ]
        above = [
            max(float(r["ci95_high"]) - c, 0.0) for c, (_, r) in zip(centres, with_ci, strict=True)
        ]
        ax.errorbar(
            centres,
            [pos for pos, _ in with_ci],
            xerr=[below, above],
            fmt="none",
            ecolor="black",
            elinewidth=1.6,
            capsize=6,
            zorder=3,
            label="95% bootstrap CI",
        )
    lc = [
        (pos, _number(r.get("length_controlled_win_rate")))
        for pos, r in zip(positions, rows, strict=True)
    ]
    lc = [(pos, v) for pos, v in lc if v is not None]
    if lc:
        ax.plot(
            [v for _, v in lc],
            [pos for pos, _ in lc],
            linestyle="",
            marker="D",
            color=_LC_COLOR,
            markersize=7,
            zorder=4,
            label="length-controlled win rate",
        )
    ax.axvline(0.5, color="black", linestyle=":", linewidth=1, zorder=1, label="0.5 = on par")
    for pos, row in zip(positions, rows, strict=True):
        counts = [row.get(k) for k in ("wins", "ties", "losses")]
        if all(_number(c) is not None for c in counts):
            note = f"W{int(counts[0])} T{int(counts[1])} L{int(counts[2])}"
            ax.text(0.01, pos - 0.42, note, fontsize=7, color="#444444", va="center", zorder=5)
    ax.set_yticks(positions)
    ax.set_yticklabels([str(r.get("name", "?")) for r in rows], fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(min(positions) - 0.7, max(positions) + 0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def _phases(
    history: Sequence[Mapping[str, Any]], key: str
) -> dict[str, tuple[list[float], list[float]]]:
    """``phase -> (steps, values)`` of the entries that carry ``key`` (in log order)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, entry in enumerate(history):
        value = _number(entry.get(key))
        if value is None:
            continue
        step = _number(entry.get("step"))
        steps, values = series.setdefault(str(entry.get("phase") or "train"), ([], []))
        steps.append(index + 1 if step is None else step)
        values.append(value)
    return series


def training_curves(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Training loss and, per logging step, the reward margin (``rewards/margins``, preference
    methods) or the mean reward (online methods, with its least-squares trend dashed): two panels,
    one line per training phase (multi-phase methods such as SPO or Rewarded Soups log several)."""
    from moalign.training.online import REWARD_LOG_KEYS
    from moalign.training.runs import reward_trend

    reward_key = next((k for k in ("rewards/margins", *REWARD_LOG_KEYS.values()) if _phases(history, k)),
                      "rewards/margins")
    margin = reward_key == "rewards/margins"
    fig = Figure(figsize=(11, 3.8), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in (
        (axes[0], "loss", "Training loss"),
        (axes[1], reward_key, "Reward margin (chosen - rejected)" if margin else f"Mean reward ({reward_key})"),
    ):
        series = _phases(history, key)
        if not series:
            _empty_panel(ax, f"'{key}' was not logged by this training")
            ax.set_title(title, fontsize=11)
            continue
        trends = {} if key != reward_key or margin else (reward_trend(list(history), key) or {})
        for color, (phase, (steps, values)) in zip(
            _color_cycle(len(series)), series.items(), strict=True
        ):
            ax.plot(
                steps,
                values,
                color=color,
                linewidth=1.6,
                marker="o" if len(steps) <= 40 else None,
                markersize=3,
                label=phase,
            )
            fit = trends.get(phase)
            if fit and fit["slope"] is not None:
                mean_step, mean_value = sum(steps) / len(steps), sum(values) / len(values)
                ends = [min(steps), max(steps)]
                ax.plot(ends, [mean_value + fit["slope"] * (x - mean_step) for x in ends], color=color,
                        linewidth=1.2, linestyle="--",
                        label=f"trend {fit['slope']:+.3g}/step [{fit['ci95'][0]:+.2g}, {fit['ci95'][1]:+.2g}]")
        if margin and key == reward_key:
            ax.axhline(0, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(title="phase", fontsize=8, title_fontsize=8)
    return fig


def _preference_names(dimensions: Sequence[str]) -> list[tuple[str, str, str]]:
    """(label, accuracy key, margin key) of the held-out diagnostics: plain prompt, then each dimension."""
    return [("plain prompt", "rewards/accuracies", "rewards/margins")] + [
        (_label(d), f"{d}/accuracy", f"{d}/margin") for d in dimensions
    ]


def heldout_preference_curves(history: Sequence[Mapping[str, Any]], dimensions: Sequence[str]) -> Figure:
    """Held-out preference accuracy and mean margin (``eval_*``, moalign/training/diagnostics.py) per
    evaluation step, one line per prompt the pairs are scored under; step 0 is the starting policy."""
    names = _preference_names(dimensions)
    fig = Figure(figsize=(11, 3.8), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    logged = False
    for ax, column, title in ((axes[0], 1, "Held-out preference accuracy"), (axes[1], 2, "Held-out mean margin")):
        ax.set_title(title, fontsize=11)
        for color, name in zip(_color_cycle(len(names)), names, strict=True):
            steps_values = [(s, v) for steps, values in _phases(history, f"eval_{name[column]}").values()
                            for s, v in zip(steps, values)]
            if steps_values:
                logged = True
                ax.plot(*zip(*steps_values), color=color, linewidth=1.6, marker="o", markersize=3, label=name[0])
        if not logged:
            _empty_panel(ax, "No held-out diagnostics were logged by this training (offline methods log "
                         "them with --eval-pairs; see train.eval_steps)")
            continue
        ax.axhline(0.5 if column == 1 else 0.0, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _preference_table(section: Mapping[str, Any] | None, dimensions: Sequence[str]) -> str:
    """Reference vs policy held-out preference accuracy and margin (metrics.json ``heldout_preference``)."""
    if not section:
        return ('<p class="note">No held-out preference diagnostics in metrics.json (the evaluate stage '
                "computes them from --eval-pairs).</p>")
    policy, reference = section.get("policy") or {}, section.get("reference") or {}
    rows = "\n".join(
        f"<tr><td>{label}</td><td>{_pct(reference.get(acc))}</td><td>{_pct(policy.get(acc))}</td>"
        f"<td>{_pp_delta(policy.get(acc), reference.get(acc))}</td><td>{_fmt(reference.get(margin), 3)}</td>"
        f"<td>{_fmt(policy.get(margin), 3)}</td></tr>"
        for label, acc, margin in _preference_names(dimensions)
    )
    return (
        "<table><thead><tr><th>prompt</th><th>accuracy, reference</th><th>accuracy, policy</th><th>Δ</th>"
        f"<th>margin, reference</th><th>margin, policy</th></tr></thead><tbody>{rows}</tbody></table>"
        f'<p class="note">{_fmt(section.get("n_pairs"), 0)} validated eval pairs. Accuracy: share of pairs whose '
        "chosen answer has the higher length-normalised log-likelihood; margin: the mean difference "
        "(no beta, no reference model, the same for every method).</p>"
    )


def weight_trajectories(history: Sequence[Mapping[str, Any]], dimensions: Sequence[str]) -> Figure:
    """AMoPO's per-dimension weights (``<dimension>/weight``) per step, one line per dimension, and
    the uniform weight 1/K dotted. Methods that log no weights get a panel that says so."""
    names = list(dimensions) or sorted(
        {k[: -len("/weight")] for e in history for k in e if k.endswith("/weight")}
    )
    series = {d: _phases(history, f"{d}/weight") for d in names}
    series = {d: s for d, s in series.items() if s}
    fig = Figure(figsize=(11, 3.8 if series else 1.8), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("AMoPO adaptive weights per dimension", fontsize=11)
    if not series:
        methods = sorted({str(e["phase"]) for e in history if e.get("phase")})
        method = f" ({', '.join(methods)})" if methods else ""
        _empty_panel(
            ax,
            f"No per-dimension weights were logged: the training method{method} does not "
            "weight dimensions adaptively. AMoPO logs '<dimension>/weight' every step.",
            width=110,
        )
        return fig
    for color, (dimension, phases) in zip(_color_cycle(len(series)), series.items(), strict=True):
        steps = [s for steps, _ in phases.values() for s in steps]
        values = [v for _, values in phases.values() for v in values]
        ax.plot(
            steps,
            values,
            color=color,
            linewidth=1.8,
            marker="o" if len(steps) <= 40 else None,
            markersize=3,
            label=_label(dimension),
        )
    ax.axhline(
        1 / len(series), color="black", linestyle=":", linewidth=1, label=f"uniform 1/{len(series)}"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("weight (softmax over dimensions)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


# --------------------------------------------------------------------------------------------------
# Earlier experiments from MLflow
# --------------------------------------------------------------------------------------------------


def _sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    raw = tracking_uri[len(prefix) :]
    path = Path(raw).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


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

    Reads only: a SQLite store that does not exist is not created. A missing store or experiment,
    an unreadable store, or runs without scores give an empty list (logged), never an error: the
    report must not fail because nothing was registered yet. ``exclude_run_ids``: runs shown
    otherwise (the current policy's)."""
    db_path = _sqlite_path(tracking_uri)
    if db_path is not None:
        if not db_path.is_file():
            _logger.info("no MLflow store at %s: the report shows the current run only", db_path)
            return []
        tracking_uri = f"sqlite:///{db_path.resolve().as_posix()}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    try:
        from mlflow import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            _logger.info("no MLflow experiment %r in %s", experiment, tracking_uri)
            return []
        runs = client.search_runs(
            [found.experiment_id], max_results=max_runs, order_by=["attributes.start_time DESC"]
        )
    except Exception as error:  # noqa: BLE001 - the report goes on without earlier runs
        _logger.warning(
            "could not read MLflow runs from %s: %s", tracking_uri, str(error).splitlines()[0]
        )
        return []
    excluded = set(exclude_run_ids)
    experiments = []
    for run in runs:
        if run.info.run_id in excluded:
            continue
        metrics = run.data.metrics
        scores = {d: _number(metrics.get(f"eval/policy/scores/{d}")) for d in dimensions}
        if all(v is None for v in scores.values()):
            continue
        win = {k: metrics.get(f"eval/win_rate_vs_reference/{k}") for k in _WIN_RATE_FIELDS}
        win = {k: v for k, v in win.items() if _number(v) is not None}
        experiments.append(
            {
                "name": f"{run.info.run_name or 'run'} {run.info.run_id[:8]}",
                "run_id": run.info.run_id,
                "kind": "run",
                "method": run.data.params.get("train.method"),
                "scores": scores,
                "mean_score": _number(metrics.get("eval/policy/mean_score")),
                "win_rate": win or None,
            }
        )
    return experiments


# --------------------------------------------------------------------------------------------------
# The HTML report
# --------------------------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
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


def _fmt(value: Any, digits: int = 2) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:.{digits}f}"


def _pct(value: Any, digits: int = 1) -> str:
    """A 0-1 rate as a percentage (``0.25`` -> ``25.0%``); missing -> ``—``."""
    number = _number(value)
    return "—" if number is None else f"{100 * number:.{digits}f}%"


def _delta(
    policy: Any, reference: Any, *, scale: float = 1.0, digits: int = 2, unit: str = ""
) -> str:
    """Policy minus reference (times ``scale``), signed and coloured; ``—`` when either is
    missing."""
    p, r = _number(policy), _number(reference)
    if p is None or r is None:
        return "—"
    d = (p - r) * scale
    css = "up" if d > 1e-9 else "down" if d < -1e-9 else "flat"
    return f'<span class="{css}">{d:+.{digits}f}{unit}</span>'


def _pp_delta(policy: Any, reference: Any) -> str:
    """The difference of two 0-1 rates in percentage points."""
    return _delta(policy, reference, scale=100.0, digits=1, unit=" pp")


def _key_numbers_table(metrics: Mapping[str, Any], dimensions: Sequence[str]) -> str:
    policy, reference = metrics.get("policy") or {}, metrics.get("reference") or {}
    ps, rs = policy.get("scores") or {}, reference.get("scores") or {}
    rows = [
        (_label(d), _fmt(ps.get(d)), _fmt(rs.get(d)), _delta(ps.get(d), rs.get(d)))
        for d in dimensions
    ]
    rows.append(
        (
            "<b>mean score</b>",
            f"<b>{_fmt(policy.get('mean_score'))}</b>",
            f"<b>{_fmt(reference.get('mean_score'))}</b>",
            _delta(policy.get("mean_score"), reference.get("mean_score")),
        )
    )
    rows.append(
        ("average words", _fmt(policy.get("avg_words"), 1), _fmt(reference.get("avg_words"), 1), "")
    )
    rows.append(
        (
            "judge failures",
            _fmt(policy.get("judge_failures"), 0),
            _fmt(reference.get("judge_failures"), 0),
            "",
        )
    )
    body = "\n".join(
        f"<tr><td>{a}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows
    )
    table = (
        "<table><thead><tr><th>metric</th><th>policy</th><th>reference</th><th>Δ</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )
    wr = metrics.get("win_rate_vs_reference") or {}
    ci = (
        f" [{_fmt(wr.get('ci95_low'), 3)}, {_fmt(wr.get('ci95_high'), 3)}]"
        if _number(wr.get("ci95_low")) is not None
        else " (no interval recorded)"
    )
    counts = ", ".join(f"{_fmt(wr.get(k), 0)} {k}" for k in ("wins", "ties", "losses"))
    win_rows = [
        ("win rate vs reference (95% CI)", f"<b>{_fmt(wr.get('win_rate'), 3)}</b>{ci}"),
        ("length-controlled win rate", _fmt(wr.get("length_controlled_win_rate"), 3)),
        ("outcomes", counts),
        ("held-out prompts", _fmt(metrics.get("n_prompts"), 0)),
    ]
    win_body = "\n".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in win_rows)
    return table + f'<table class="win"><tbody>{win_body}</tbody></table>'


def _experiments_table(
    points: Sequence[Mapping[str, Any]], flags: Sequence[bool], dimensions: Sequence[str]
) -> str:
    head = "".join(f"<th>{html.escape(_label(d))}</th>" for d in dimensions)
    rows = []
    for point, optimal in zip(points, flags, strict=True):
        cells = "".join(f"<td>{_fmt(point.get(d))}</td>" for d in dimensions)
        rows.append(
            f"<tr><td>{html.escape(str(point['name']))}</td>{cells}"
            f"<td>{'yes' if optimal else ''}</td></tr>"
        )
    return (
        '<table class="experiments"><thead><tr><th>experiment</th>'
        f"{head}<th>Pareto-optimal</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


# --- the optional benchmark sections of metrics.json (evaluate.benchmarks) ---

#: metrics.json key -> shown name, in the order of the Benchmarks table
_BENCHMARKS = {
    "ifbench": "IFBench",
    "mt_bench": "MT-bench",
    "arena_hard": "Arena-Hard",
    "alpaca_eval": "AlpacaEval",
}
_MUTED_BASELINE = '<span class="muted">baseline</span>'
# a table row: metric (HTML), policy, reference, Δ, and whether it is a sub-row
_Row = tuple[str, str, str, str, bool]


#: what each benchmark's rows mean, in the Benchmarks card's note when the benchmark is there
_BENCHMARK_NOTES = {
    "ifbench": (
        "IFBench is checked by code, no judge: strict takes the response as written, loose also "
        "accepts it without markdown or its first or last line; a prompt counts when every "
        "instruction in it is followed."
    ),
    "mt_bench": (
        "MT-bench: a judge rates each of the two turns 1-10 (indented: the mean per category)."
    ),
    "arena_hard": (
        "Arena-Hard: a judge compares each answer with the baseline's; its score counts a strong "
        "verdict as three battles, the win rate counts ties half."
    ),
    "alpaca_eval": (
        "AlpacaEval: a judge compares each answer with the baseline's, ties counting half; the "
        "length-controlled win rate removes the judge's preference for longer answers."
    ),
}


def _section(metrics: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = metrics.get(key)
    return value if isinstance(value, Mapping) else None


def _models(section: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    policy, reference = section.get("policy"), section.get("reference")
    return (
        policy if isinstance(policy, Mapping) else {},
        reference if isinstance(reference, Mapping) else {},
    )


def _of(row: Mapping[str, Any], part: str, whole: str) -> str:
    """``part of whole`` counts (``—`` when the model has no result)."""
    if not row:
        return "—"
    return f"{_fmt(row.get(part), 0)} of {_fmt(row.get(whole), 0)}"


def _win_cell(row: Mapping[str, Any]) -> str:
    """``53.1% [50.0, 57.8]``: the win rate with its 95% interval when there is one."""
    text = _pct(row.get("win_rate"))
    low, high = _number(row.get("ci95_low")), _number(row.get("ci95_high"))
    if text != "—" and low is not None and high is not None:
        text += f' <span class="ci">[{100 * low:.1f}, {100 * high:.1f}]</span>'
    return text


def _outcomes(row: Mapping[str, Any]) -> str:
    counts = [_number(row.get(k)) for k in ("wins", "ties", "losses")]
    if not row or any(c is None for c in counts):
        return "—"
    return " / ".join(f"{int(c)}" for c in counts if c is not None)


def _ifbench_rows(section: Mapping[str, Any]) -> list[_Row]:
    p, r = _models(section)
    rows: list[_Row] = []
    for key, label in (
        ("prompt_level_strict_acc", "prompt-level strict accuracy"),
        ("prompt_level_loose_acc", "prompt-level loose accuracy"),
        ("instruction_level_strict_acc", "instruction-level strict accuracy"),
        ("instruction_level_loose_acc", "instruction-level loose accuracy"),
    ):
        bold = key == "prompt_level_strict_acc"
        cells = [_pct(p.get(key)), _pct(r.get(key))]
        if bold:
            label, cells = f"<b>{label}</b>", [f"<b>{c}</b>" for c in cells]
        rows.append((label, cells[0], cells[1], _pp_delta(p.get(key), r.get(key)), False))
    rows.append(
        (
            "prompts scored",
            _of(p, "n_prompts_scored", "n_prompts"),
            _of(r, "n_prompts_scored", "n_prompts"),
            "",
            False,
        )
    )
    rows.append(
        (
            "unverifiable instructions",
            _fmt(p.get("n_unverifiable"), 0),
            _fmt(r.get("n_unverifiable"), 0),
            "",
            False,
        )
    )
    return rows


def _mt_bench_rows(section: Mapping[str, Any]) -> list[_Row]:
    p, r = _models(section)
    rows: list[_Row] = [
        (
            "<b>overall (1-10)</b>",
            f"<b>{_fmt(p.get('overall'))}</b>",
            f"<b>{_fmt(r.get('overall'))}</b>",
            _delta(p.get("overall"), r.get("overall")),
            False,
        ),
    ]
    for turn in ("turn_1", "turn_2"):
        delta = _delta(p.get(turn), r.get(turn))
        rows.append((_label(turn), _fmt(p.get(turn)), _fmt(r.get(turn)), delta, False))
    p_cats, r_cats = p.get("per_category") or {}, r.get("per_category") or {}
    categories = [*p_cats, *(c for c in r_cats if c not in p_cats)]
    for category in categories:
        pc, rc = p_cats.get(category) or {}, r_cats.get(category) or {}
        rows.append(
            (
                html.escape(str(category)),
                _fmt(pc.get("score")),
                _fmt(rc.get("score")),
                _delta(pc.get("score"), rc.get("score")),
                True,
            )
        )
    failures = [_of(m, "failures", "n_ratings") for m in (p, r)]
    rows.append(("judge failures", failures[0], failures[1], "", False))
    return rows


def _pairwise_rows(section: Mapping[str, Any], *, arena: bool) -> list[_Row]:
    """Arena-Hard's or AlpacaEval's rows. When Arena-Hard's baseline is the reference model
    itself, the reference column says ``baseline`` and its words are the baseline's."""
    p, r = _models(section)
    against_reference = arena and section.get("baseline") == "reference" and not r
    # the headline first: Arena-Hard's battle score, AlpacaEval's length-controlled win rate
    rates = (
        ["score", "win_rate", "length_controlled_win_rate"]
        if arena
        else ["length_controlled_win_rate", "win_rate"]
    )
    labels = {
        "score": "score (weighted battles)",
        "win_rate": "win rate [95% CI]",
        "length_controlled_win_rate": "length-controlled win rate",
    }
    rows: list[_Row] = []
    for index, key in enumerate(rates):
        label = labels[key]
        cells = [_win_cell(m) if key == "win_rate" else _pct(m.get(key)) for m in (p, r)]
        if index == 0:
            label, cells = f"<b>{label}</b>", [f"<b>{c}</b>" for c in cells]
        if against_reference:
            cells[1] = _MUTED_BASELINE
        rows.append((label, cells[0], cells[1], _pp_delta(p.get(key), r.get(key)), False))
    rows.append(
        (
            "wins / ties / losses",
            _outcomes(p),
            _MUTED_BASELINE if against_reference else _outcomes(r),
            "",
            False,
        )
    )
    reference_words = r.get("avg_words") if r else None
    if against_reference:
        reference_words = p.get("baseline_avg_words")
    rows.append(
        (
            "average words",
            _fmt(p.get("avg_words"), 1),
            _fmt(reference_words, 1),
            _delta(p.get("avg_words"), reference_words, digits=1),
            False,
        )
    )
    if not against_reference:
        rows.append(
            (
                "baseline's average words",
                _fmt(p.get("baseline_avg_words"), 1),
                _fmt(r.get("baseline_avg_words"), 1),
                "",
                False,
            )
        )
    rows.append(
        (
            "judge failures",
            _of(p, "failures", "n"),
            "—" if against_reference else _of(r, "failures", "n"),
            "",
            False,
        )
    )
    return rows


def _baseline_text(key: str, section: Mapping[str, Any]) -> str:
    baseline = section.get("baseline")
    if key not in ("arena_hard", "alpaca_eval") or baseline is None:
        return ""
    if baseline == "reference":
        return "vs the reference model"
    return f"vs {baseline}"


def _benchmarks_card(metrics: Mapping[str, Any]) -> str:
    """The Benchmarks card: one group of rows per benchmark section in ``metrics``, or ``""``."""
    builders = {
        "ifbench": _ifbench_rows,
        "mt_bench": _mt_bench_rows,
        "arena_hard": lambda s: _pairwise_rows(s, arena=True),
        "alpaca_eval": lambda s: _pairwise_rows(s, arena=False),
    }
    body, judges, notes = [], [], []
    for key, name in _BENCHMARKS.items():
        section = _section(metrics, key)
        if section is None:
            continue
        notes.append(_BENCHMARK_NOTES[key])
        rows = builders[key](section)
        baseline = _baseline_text(key, section)
        head = f"<b>{html.escape(name)}</b>" + (
            f'<div class="muted">{html.escape(baseline)}</div>' if baseline else ""
        )
        for index, (metric, policy, reference, delta, sub) in enumerate(rows):
            first = (
                f'<td class="bench" rowspan="{len(rows)}">{head}</td>' if index == 0 else ""
            )
            css = ' class="first"' if index == 0 else ' class="sub"' if sub else ""
            body.append(
                f"<tr{css}>{first}<td class=\"metric\">{metric}</td><td>{policy}</td>"
                f"<td>{reference}</td><td>{delta}</td></tr>"
            )
        if section.get("judge"):
            judges.append(f"{name}: {section['judge']}")
    if not body:
        return ""
    judge_note = (
        f'<p class="note">Judges: {html.escape(" · ".join(judges))}.</p>' if judges else ""
    )
    return (
        '<section class="card" id="benchmarks"><h2>Benchmarks</h2>'
        '<table class="benchmarks"><thead><tr><th>benchmark</th><th>metric</th><th>policy</th>'
        f"<th>reference</th><th>Δ</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<p class="note">{html.escape(" ".join([_NOTES["benchmarks"], *notes]))}</p>'
        f"{judge_note}</section>"
    )


def _benchmark_win_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One bar per (Arena-Hard or AlpacaEval, model) that has a win rate."""
    rows = []
    for key in ("arena_hard", "alpaca_eval"):
        section = _section(metrics, key)
        if section is None:
            continue
        for model, color in (("policy", _POLICY_COLOR), ("reference", _REFERENCE_COLOR)):
            result = section.get(model)
            if isinstance(result, Mapping) and _number(result.get("win_rate")) is not None:
                rows.append({**result, "name": f"{_BENCHMARKS[key]}: {model}", "color": color})
    return rows


def _p_value(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "—"
    return "&lt; 0.001" if number < 0.001 else f"{number:.3f}"


def _controllability_extra(summary: Mapping[str, Any]) -> str:
    """The table under the controllability figure: Spearman's ρ per dimension (or why it is
    undefined), its p-value, the number of scored responses and the judge failures."""
    dimensions = summary.get("dimensions")
    dimensions = dimensions if isinstance(dimensions, Mapping) else {}
    rows = []
    for dimension, result in dimensions.items():
        result = result if isinstance(result, Mapping) else {}
        rho = _number(result.get("spearman"))
        if rho is None:
            reason = result.get("undefined_reason") or "not defined"
            cells = f'<td colspan="2" class="reason">undefined: {html.escape(str(reason))}</td>'
        else:
            cells = f"<td><b>{rho:+.3f}</b></td><td>{_p_value(result.get('p_value'))}</td>"
        rows.append(
            f"<tr><td>{html.escape(_label(str(dimension)))}</td>{cells}"
            f"<td>{_fmt(result.get('n'), 0)}</td><td>{_fmt(result.get('failures'), 0)}</td></tr>"
        )
    levels = summary.get("levels")
    levels = levels if isinstance(levels, Sequence) and not isinstance(levels, str) else []
    facts = []
    if summary.get("style"):
        facts.append(f"conditioning: {summary['style']}")
    if levels:
        facts.append(f"levels {', '.join(str(level) for level in levels)}")
    if _number(summary.get("n_prompts")) is not None:
        facts.append(f"{_fmt(summary.get('n_prompts'), 0)} prompts")
    table = (
        '<table class="controllability"><thead><tr><th>dimension</th><th>Spearman ρ</th>'
        f"<th>p</th><th>n</th><th>failures</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    note = f'<p class="note">{html.escape("; ".join(facts))}</p>' if facts else ""
    return table + note


def _judge_note(win_rate: Mapping[str, Any]) -> str:
    """Under the win-rate figure: who judged the pairs, and how many judgements failed."""
    parts = []
    if win_rate.get("judge"):
        parts.append(f"judge: {win_rate['judge']}")
    if _number(win_rate.get("failures")) is not None:
        parts.append(f"{_fmt(win_rate.get('failures'), 0)} judge failures")
    return f'<p class="note">{html.escape("; ".join(parts))}</p>' if parts else ""


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
  background:#f6f7f9;color:#222}
main{max-width:1180px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:24px;margin:6px 0 2px}h2{font-size:17px;margin:0 0 8px}
.meta{color:#666;font-size:13px;margin-bottom:16px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin-bottom:16px}
.card{background:#fff;border:1px solid #e3e5e8;border-radius:8px;padding:14px 16px}
.wide{margin-bottom:16px}
img{max-width:100%;height:auto;display:block;margin:0 auto}
.note{color:#555;font-size:12.5px;line-height:1.45;margin:8px 0 0}
table{border-collapse:collapse;font-size:13px;margin:0 0 10px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eceef1;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f0f2f5;font-weight:600}
table.win td:last-child{text-align:left}
.up{color:#1a7f37;font-weight:600}.down{color:#cf222e;font-weight:600}.flat{color:#777}
.muted,.ci{color:#777}.muted{font-size:12px;font-weight:400}
table.benchmarks td.bench{text-align:left;vertical-align:top;white-space:nowrap}
table.benchmarks td.metric{text-align:left}
table.benchmarks th:nth-child(1){width:16%}
table.benchmarks th:nth-child(2){text-align:left;width:34%}
table.benchmarks tr.first td{border-top:2px solid #d5d9de}
table.benchmarks tr.sub td{font-size:12px;color:#555;padding-top:1px;padding-bottom:1px}
table.benchmarks tr.sub td.metric{padding-left:22px}
td.reason{text-align:left;color:#777;font-size:12px}
"""

_NOTES = {
    "radar": (
        "Mean judge score (1-5) of the trained policy and of the reference on the held-out "
        "prompts, per dimension. The further out, the better; where the polygons coincide the "
        "training changed nothing on that dimension."
    ),
    "pareto": (
        "Every evaluated run of the MLflow experiment, this run and the reference, on two "
        "dimensions. A point is Pareto-optimal (black edge, dashed front) when no other point is "
        "at least as good on both and better on one; the front is the trade-off the methods "
        "reach. Coincident experiments share one label."
    ),
    "win_rate": (
        "Share of held-out prompts on which the policy beats the reference, each pair judged in "
        "both orders (a tie when they disagree; ties count half). Error bars: 95% bootstrap "
        "interval. Red diamond: the AlpacaEval-style length-controlled win rate, which removes "
        "the judge's preference for longer answers. Right of the dotted 0.5 line is better than "
        "the reference."
    ),
    "training": (
        "Loss and reward margin (chosen minus rejected implicit reward, averaged over the batch) "
        "at each logging step; one line per training phase. A growing margin means the policy "
        "separates the preferred answers from the rejected ones."
    ),
    "benchmarks": (
        "The policy and the reference on the public benchmarks the evaluate stage ran. Δ is "
        "policy minus reference (pp: percentage points); — means no value."
    ),
    "benchmark_win_rates": (
        "Win rate of the policy and of the reference against each benchmark's baseline answers "
        "(ties count half). Error bars: 95% interval. Red diamond: the length-controlled win "
        "rate, which removes the judge's preference for longer answers. Right of the dotted 0.5 "
        "line is better than the baseline."
    ),
    "controllability": (
        "Does the policy follow the preference level asked for in the prompt? Each prompt is "
        "asked at every level of one dimension, the judge scores the answers, and Spearman's ρ "
        "correlates the level asked with the score (1: the score rises with the level, 0: the "
        "level is ignored). Where ρ cannot be computed (e.g. the scores do not vary) the table "
        "says why."
    ),
    "weights": (
        "AMoPO's adaptive weights: per step, a softmax over the dimensions of a Gaussian draw "
        "from the mean and variance of the token probabilities (Eq. 10). A dimension above the "
        "dotted uniform line gets more of the gradient at that step."
    ),
    "heldout_preference": (
        "The policy's preference on the validated eval pairs, before training (step 0) and at each "
        "evaluation step: the share of pairs whose chosen answer is the more likely one (left; 0.5 is "
        "chance) and the mean length-normalised log-likelihood margin (right), under the plain prompt "
        "and under each dimension prompt. A training path that learns moves these within a few steps."
    ),
}


def _figure_card(key: str, title: str, png: bytes, extra: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    # the figure carries its own title: no heading above it
    return (
        f'<section class="card" id="{key}">'
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        f'<p class="note">{html.escape(_NOTES[key])}</p>{extra}</section>'
    )


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
    - ``experiments``: earlier runs (:func:`experiments_from_mlflow`) for the Pareto front and the
      win-rate bars, beside this run's policy and the reference (None or empty: those two only);
    - ``pareto``: the two dimensions of the Pareto front (default: the first two of ``dimensions``).

    The optional sections of ``metrics`` (benchmarks, controllability) get their cards and PNGs
    only when present; an optional PNG left in ``out_dir`` by an earlier report is removed when
    its section is absent. Every file is written through a temporary file and a rename.
    """
    out = Path(out_dir)
    dimensions = list(dimensions)
    experiments = list(experiments or [])
    generated_at = generated_at or datetime.now(UTC)
    policy, reference = metrics.get("policy") or {}, metrics.get("reference") or {}
    if pareto is None:
        pareto = (
            (dimensions[0], dimensions[1])
            if len(dimensions) >= 2
            else (dimensions[0], dimensions[0])
        )
    x, y = pareto

    points = [
        {"name": "this run (policy)", "kind": "policy", **(policy.get("scores") or {})},
        {"name": "reference", "kind": "reference", **(reference.get("scores") or {})},
        *(
            {"name": e.get("name", "run"), "kind": e.get("kind", "run"), **(e.get("scores") or {})}
            for e in experiments
        ),
    ]
    win_rows = [{"name": "this run", **(metrics.get("win_rate_vs_reference") or {})}]
    win_rows += [
        {"name": e.get("name", "run"), **e["win_rate"]} for e in experiments if e.get("win_rate")
    ]

    figures = {
        "radar": radar_chart(
            {"policy": policy.get("scores") or {}, "reference": reference.get("scores") or {}}
        ),
        "pareto": pareto_front(points, x, y),
        "win_rate": win_rate_bars(win_rows),
        "training": training_curves(history),
        "weights": weight_trajectories(history, dimensions),
        "heldout_preference": heldout_preference_curves(history, dimensions),
    }
    benchmark_win_rows = _benchmark_win_rows(metrics)
    if benchmark_win_rows:
        figures["benchmark_win_rates"] = win_rate_bars(
            benchmark_win_rows,
            title="Win rate against each benchmark's baseline",
            xlabel="win rate vs the benchmark's baseline (ties count half)",
        )
    controllability = _section(metrics, "controllability")
    if controllability is not None:
        from moalign.evaluation.controllability import controllability_figure

        figures["controllability"] = controllability_figure(controllability)
    pngs = {key: _png(fig) for key, fig in figures.items()}
    flags = pareto_optimal(points, x, y)

    # the Benchmarks table across the page; below it, side by side, the benchmark win rates and
    # the controllability check (either across the page when it is alone)
    benchmarks = _benchmarks_card(metrics)
    if benchmarks:
        benchmarks = f'<div class="wide">{benchmarks}</div>'
    optional_cards = []
    if "benchmark_win_rates" in pngs:
        optional_cards.append(
            _figure_card(
                "benchmark_win_rates",
                "Win rates against the benchmarks' baselines",
                pngs["benchmark_win_rates"],
            )
        )
    if "controllability" in pngs:
        optional_cards.append(
            _figure_card(
                "controllability",
                "Controllability: score by requested preference level",
                pngs["controllability"],
                _controllability_extra(controllability or {}),
            )
        )
    if len(optional_cards) == 2:
        optional_html = f'<div class="grid">{"".join(optional_cards)}</div>'
    else:
        optional_html = "".join(f'<div class="wide">{card}</div>' for card in optional_cards)

    methods = sorted({str(e["phase"]) for e in history if e.get("phase")})
    steps = [_number(e.get("step")) for e in history]
    last_step = max((s for s in steps if s is not None), default=None)
    meta = [f"generated {generated_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}"]
    if methods:
        meta.append(f"training phases: {', '.join(methods)}")
    if last_step is not None:
        meta.append(f"{int(last_step)} training steps")
    budget = _section(metrics, "training_budget")
    if budget:
        meta.append(
            f"training budget: {_fmt(budget.get('examples'), 0)} examples, {_fmt(budget.get('steps'), 0)} steps, "
            f"{_fmt(budget.get('tokens'), 0)} tokens, {_fmt(budget.get('seconds'), 0)} s"
        )
    meta.append(f"{_fmt(metrics.get('n_prompts'), 0)} held-out prompts")
    plural = "s" if len(experiments) != 1 else ""
    meta.append(f"{len(experiments)} earlier evaluated run{plural} from MLflow")

    win_note = _judge_note(metrics.get("win_rate_vs_reference") or {})
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{html.escape(title)}</h1>
<div class="meta">{html.escape(" · ".join(meta))}</div>
<div class="grid">
<section class="card" id="numbers"><h2>Key numbers</h2>{_key_numbers_table(metrics, dimensions)}
<p class="note">Judge scores are means over the held-out prompts (1-5, higher is better on every
dimension); Δ is policy minus reference.</p></section>
{_figure_card("radar", "Scores per dimension", pngs["radar"])}
</div>
<div class="grid">
{_figure_card("pareto", "Pareto front across experiments", pngs["pareto"])}
{_figure_card("win_rate", "Win rate against the reference", pngs["win_rate"], win_note)}
</div>
{benchmarks}
{optional_html}
<div class="wide">{_figure_card("training", "Training curves", pngs["training"])}</div>
<div class="wide">{_figure_card("heldout_preference", "Held-out preference accuracy and margin",
                                pngs["heldout_preference"],
                                _preference_table(_section(metrics, "heldout_preference"), dimensions))}</div>
<div class="wide">{_figure_card("weights", "AMoPO weight trajectories", pngs["weights"])}</div>
<section class="card wide" id="experiments"><h2>Experiments in the Pareto chart</h2>
{_experiments_table(points, flags, dimensions)}</section>
</main></body></html>
"""
    files = {**FIGURE_FILES, **OPTIONAL_FIGURE_FILES}
    for key, png in pngs.items():
        _atomic_write(out / files[key], png)
    for key, name in OPTIONAL_FIGURE_FILES.items():
        if key not in pngs:  # an earlier report's figure of a section this run has not
            (out / name).unlink(missing_ok=True)
    index = out / "index.html"
    _atomic_write(index, page.encode("utf-8"))
    return index


def report_stage(config, metrics: Path, history: Path, out_dir: Path, pareto: tuple[str, str]) -> tuple[Path, int]:
    """The report stage: ``out_dir/index.html`` from the evaluation's ``metrics``, the policy's training
    log ``history`` (a missing log leaves the training charts out) and the experiment's earlier MLflow
    runs. Returns the page and how many earlier runs it compares."""
    import json

    from moalign.registry import RUN_FILE

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
