"""The report's charts: pure functions, each returning a matplotlib :class:`~matplotlib.figure.Figure`
built with the object-oriented API (no pyplot, no global state, rendered by the Agg canvas)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle

from moalign.evaluation.report.data import label, number, pareto_optimal, preference_names
from moalign.evaluation.report.style import (
    DPI,
    LENGTH_CONTROLLED_COLOR,
    POLICY_COLOR,
    REFERENCE_COLOR,
    RUN_COLOR,
)

SCORE_RANGE = (1.0, 5.0)  # the judges' scale


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
        return REFERENCE_COLOR
    if lowered.startswith("policy"):
        return POLICY_COLOR
    return _color_cycle(index + 2)[-1]


# --------------------------------------------------------------------------------------------------
# Per-dimension scores
# --------------------------------------------------------------------------------------------------


def radar_chart(scores_by_model: Mapping[str, Mapping[str, float | None]]) -> Figure:
    """Per-dimension scores of each model on a 1-5 radar: one filled polygon (``ax.patches``) and
    one outline per model. Dimensions are those of the first model, then any others in order of
    appearance; a score a model lacks sits at the centre (1) and is named in the legend."""
    fig = Figure(figsize=(6.0, 5.2), dpi=DPI, layout="constrained")
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
        values = [number(scores.get(d)) for d in dimensions]
        missing = [d for d, v in zip(dimensions, values, strict=True) if v is None]
        radii = [low if v is None else v for v in values]
        radii = [*radii, radii[0]]
        color = _model_color(model, index)
        name = model if not missing else f"{model} (no score: {', '.join(missing)})"
        ax.plot(closed, radii, color=color, linewidth=2, marker="o", markersize=4, label=name)
        ax.fill(closed, radii, color=color, alpha=0.15)
    ax.set_xticks(angles)
    ax.set_xticklabels([textwrap.fill(label(d), 14) for d in dimensions], fontsize=10)
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


# --------------------------------------------------------------------------------------------------
# The Pareto front
# --------------------------------------------------------------------------------------------------


def _kind_style(kind: str) -> dict[str, Any]:
    if kind == "reference":
        return {"marker": "s", "color": REFERENCE_COLOR}
    if kind == "policy":
        return {"marker": "*", "color": POLICY_COLOR}
    return {"marker": "o", "color": RUN_COLOR}


def _merged_labels(
    points: Sequence[Mapping[str, Any]], x: str, y: str, limit: int = 3
) -> list[tuple[float, float, str]]:
    """One label per distinct (x, y): coincident experiments share it (``a, b +2 more``)."""
    groups: dict[tuple[float, float], list[str]] = {}
    for point in points:
        px, py = number(point.get(x)), number(point.get(y))
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


def _scatter_points(ax, usable: Sequence[tuple[Mapping[str, Any], bool]], x: str, y: str) -> None:
    """Two scatter collections, optimal then dominated, each point's marker by its kind."""
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


def _front_line(ax, usable: Sequence[tuple[Mapping[str, Any], bool]], x: str, y: str) -> None:
    """The dashed staircase through the optimal points (when there are two or more)."""
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


def _label_and_frame(ax, points: Sequence[Mapping[str, Any]], x: str, y: str) -> None:
    """One label per position, pointing inwards, and axes 1.5 times the points' spread (at least 0.75)."""
    xs = [float(p[x]) for p in points]
    ys = [float(p[y]) for p in points]
    middle = (max(xs) + min(xs)) / 2
    for px, py, text in _merged_labels(points, x, y):
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


def _pareto_legend(ax) -> None:
    handles = [
        Line2D(
            [], [], marker="*", color=POLICY_COLOR, linestyle="", markersize=12, label="this run"
        ),
        Line2D(
            [],
            [],
            marker="s",
            color=REFERENCE_COLOR,
            linestyle="",
            markersize=8,
            label="reference",
        ),
        Line2D(
            [], [], marker="o", color=RUN_COLOR, linestyle="", markersize=8, label="earlier run"
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


def pareto_front(points: Sequence[Mapping[str, Any]], x: str, y: str) -> Figure:
    """Experiments on dimensions ``x`` and ``y`` (higher is better on both).

    ``points``: dicts with ``name``, the two scores under the dimension names, and optionally
    ``kind`` (``policy`` = this run, ``reference``, anything else = an earlier run). Pareto-optimal
    points are drawn with a black edge and joined by the dashed front; dominated ones are faded.
    Each distinct position gets one text label (``ax.texts``) naming the experiments there.
    Two scatter collections: optimal and dominated (an empty one when there are none)."""
    fig = Figure(figsize=(6.4, 5.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    flags = pareto_optimal(points, x, y)
    usable = [
        (p, f)
        for p, f in zip(points, flags, strict=True)
        if number(p.get(x)) is not None and number(p.get(y)) is not None
    ]
    if not usable:
        _empty_panel(ax, f"no experiment has scores for both {label(x)} and {label(y)}")
        return fig
    _scatter_points(ax, usable, x, y)
    _front_line(ax, usable, x, y)
    _label_and_frame(ax, [p for p, _ in usable], x, y)
    ax.set_xlabel(f"{label(x)} (higher is better)")
    ax.set_ylabel(f"{label(y)} (higher is better)")
    ax.set_title(f"Pareto front: {label(x)} vs {label(y)}", fontsize=11)
    ax.grid(True, alpha=0.3)
    _pareto_legend(ax)
    return fig


# --------------------------------------------------------------------------------------------------
# Win rates
# --------------------------------------------------------------------------------------------------


def _interval_bars(ax, positions: Sequence[int], rows: Sequence[Mapping[str, Any]]) -> None:
    """The 95% intervals as asymmetric error bars: one container, for the rows that have one."""
    with_ci = [
        (pos, r)
        for pos, r in zip(positions, rows, strict=True)
        if number(r.get("ci95_low")) is not None and number(r.get("ci95_high")) is not None
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


def _length_controlled_markers(ax, positions: Sequence[int], rows: Sequence[Mapping[str, Any]]) -> None:
    lc = [
        (pos, number(r.get("length_controlled_win_rate")))
        for pos, r in zip(positions, rows, strict=True)
    ]
    lc = [(pos, v) for pos, v in lc if v is not None]
    if lc:
        ax.plot(
            [v for _, v in lc],
            [pos for pos, _ in lc],
            linestyle="",
            marker="D",
            color=LENGTH_CONTROLLED_COLOR,
            markersize=7,
            zorder=4,
            label="length-controlled win rate",
        )


def _outcome_counts(ax, positions: Sequence[int], rows: Sequence[Mapping[str, Any]]) -> None:
    """``W2 T30 L0`` under each bar whose wins, ties and losses are all known."""
    for pos, row in zip(positions, rows, strict=True):
        counts = [row.get(k) for k in ("wins", "ties", "losses")]
        if all(number(c) is not None for c in counts):
            note = f"W{int(counts[0])} T{int(counts[1])} L{int(counts[2])}"
            ax.text(0.01, pos - 0.42, note, fontsize=7, color="#444444", va="center", zorder=5)


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
    rows = [r for r in rows if number(r.get("win_rate")) is not None]
    height = max(3.2, 1.6 + 0.55 * len(rows))
    fig = Figure(figsize=(6.4, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not rows:
        _empty_panel(ax, "no win rate recorded")
        return fig
    positions = list(range(len(rows)))[::-1]  # first row on top
    rates = [float(r["win_rate"]) for r in rows]
    colors = [
        str(r.get("color") or (POLICY_COLOR if i == 0 else RUN_COLOR)) for i, r in enumerate(rows)
    ]
    ax.barh(positions, rates, color=colors, height=0.6, alpha=0.8, zorder=2)
    _interval_bars(ax, positions, rows)
    _length_controlled_markers(ax, positions, rows)
    ax.axvline(0.5, color="black", linestyle=":", linewidth=1, zorder=1, label="0.5 = on par")
    _outcome_counts(ax, positions, rows)
    ax.set_yticks(positions)
    ax.set_yticklabels([str(r.get("name", "?")) for r in rows], fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(min(positions) - 0.7, max(positions) + 0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _phases(
    history: Sequence[Mapping[str, Any]], key: str
) -> dict[str, tuple[list[float], list[float]]]:
    """``phase -> (steps, values)`` of the entries that carry ``key`` (in log order)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, entry in enumerate(history):
        value = number(entry.get(key))
        if value is None:
            continue
        step = number(entry.get("step"))
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
    fig = Figure(figsize=(11, 3.8), dpi=DPI, layout="constrained")
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
                within = fit.get("within_prompt") or {}
                if within.get("slope") is not None:
                    ax.plot(ends, [mean_value + within["slope"] * (x - mean_step) for x in ends], color=color,
                            linewidth=1.2, linestyle=":",
                            label=f"within prompt {within['slope']:+.3g}/step "
                                  f"[{within['ci95'][0]:+.2g}, {within['ci95'][1]:+.2g}]")
        if margin and key == reward_key:
            ax.axhline(0, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(title="phase", fontsize=8, title_fontsize=8)
    return fig


def heldout_preference_curves(history: Sequence[Mapping[str, Any]], dimensions: Sequence[str]) -> Figure:
    """Held-out preference accuracy and mean margin (``eval_*``, moalign/training/diagnostics.py) per
    evaluation step, one line per prompt the pairs are scored under; step 0 is the starting policy."""
    names = preference_names(dimensions)
    fig = Figure(figsize=(11, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    logged = False
    for ax, column, title in ((axes[0], 1, "Held-out preference accuracy"), (axes[1], 2, "Held-out mean margin")):
        ax.set_title(title, fontsize=11)
        for color, name in zip(_color_cycle(len(names)), names, strict=True):
            steps_values = [(s, v) for steps, values in _phases(history, f"eval_{name[column]}").values()
                            for s, v in zip(steps, values, strict=True)]
            if steps_values:
                logged = True
                ax.plot(*zip(*steps_values, strict=True), color=color, linewidth=1.6, marker="o", markersize=3, label=name[0])
        if not logged:
            _empty_panel(ax, "No held-out diagnostics were logged by this training (offline methods log "
                         "them with --eval-pairs; see train.eval_steps)")
            continue
        ax.axhline(0.5 if column == 1 else 0.0, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def weight_trajectories(history: Sequence[Mapping[str, Any]], dimensions: Sequence[str]) -> Figure:
    """AMoPO's per-dimension weights (``<dimension>/weight``) per step, one line per dimension, and
    the uniform weight 1/K dotted. Methods that log no weights get a panel that says so."""
    names = list(dimensions) or sorted(
        {k[: -len("/weight")] for e in history for k in e if k.endswith("/weight")}
    )
    series = {d: _phases(history, f"{d}/weight") for d in names}
    series = {d: s for d, s in series.items() if s}
    fig = Figure(figsize=(11, 3.8 if series else 1.8), dpi=DPI, layout="constrained")
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
            label=label(dimension),
        )
    ax.axhline(
        1 / len(series), color="black", linestyle=":", linewidth=1, label=f"uniform 1/{len(series)}"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("weight (softmax over dimensions)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig

