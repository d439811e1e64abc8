"""Controllability: does the intensity asked for in a control tag show in the answer? (MOSLIM Fig. 5)

The experiment sets a single preference goal ``<dimension n>`` per prompt and varies ``n``; a judge
then scores that one dimension of each answer. A controllable policy's measured score rises with
the requested level, which the summary reports as the mean score per level (the curve) and as
Spearman's rank correlation between requested level and measured score over the individual answers
(one number per dimension: 1 = perfectly monotone, 0 = the tag is ignored, < 0 = inverted).

Only the bookkeeping lives here, as pure functions: :func:`control_requests` lays out what to
generate, the caller generates and judges, and :func:`controllability_summary`,
:func:`controllability_curve_rows` and :func:`controllability_figure` turn the judge's scores into
numbers, a table for a DVC plot and a chart. Nothing here writes files or calls a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from scipy.stats import spearmanr

from moalign.control_tags import TagStyle, tag_prompt

__all__ = [
    "ControlRequest",
    "control_requests",
    "controllability_curve_rows",
    "controllability_figure",
    "controllability_summary",
]


@dataclass(frozen=True)
class ControlRequest:
    """One generation to run: ``prompt`` is the tagged text asking for ``level`` on ``dimension``."""

    key: str
    prompt_id: str
    dimension: str
    level: int
    prompt: str


def control_requests(
    prompts: Sequence[tuple[str, str]],
    dimensions: Sequence[str],
    levels: Sequence[int],
    *,
    style: TagStyle = "moslim",
    scale: tuple[int, int] = (1, 5),
) -> list[ControlRequest]:
    """One request per (dimension, level, prompt), each prompt tagged with that single goal.

    ``prompts`` are ``(prompt_id, text)`` pairs. Each request's key, ``"{dimension}={level}:{prompt_id}"``,
    is how the caller reports the judge's score back to :func:`controllability_summary`, so repeated
    prompt ids or levels (which would make two requests share a key) are refused. ``scale`` is the
    range the tags accept, the one the policy was trained on; every level must lie within it.
    """
    seen: set[str] = set()
    for prompt_id, _ in prompts:
        if prompt_id in seen:
            raise ValueError(f"prompt id {prompt_id!r} appears more than once; request keys must be unique")
        seen.add(prompt_id)
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels {list(levels)} repeat a level; request keys must be unique")
    return [
        ControlRequest(
            key=f"{dimension}={level}:{prompt_id}",
            prompt_id=prompt_id,
            dimension=dimension,
            level=level,
            prompt=tag_prompt(text, {dimension: level}, dimensions, style=style, levels=scale),
        )
        for dimension in dimensions
        for level in levels
        for prompt_id, text in prompts
    ]


def _rank_correlation(pairs: list[tuple[int, float]]) -> tuple[float | None, float | None, str | None]:
    """Spearman's rho and its p-value, or why they are undefined (where scipy would give NaN)."""
    if len(pairs) < 3:
        return None, None, "fewer than 3 scored answers"
    if len({level for level, _ in pairs}) < 2:
        return None, None, "fewer than 2 levels have a scored answer"
    if len({score for _, score in pairs}) < 2:
        return None, None, "the measured score is constant"
    result = spearmanr([level for level, _ in pairs], [score for _, score in pairs])
    rho, p_value = float(result.statistic), float(result.pvalue)
    if not (math.isfinite(rho) and math.isfinite(p_value)):  # not expected after the checks above
        return None, None, "scipy returned no finite correlation"
    return rho, p_value, None


def controllability_summary(
    requests: Sequence[ControlRequest],
    measured: Mapping[str, float | None],
    dimensions: Sequence[str],
    levels: Sequence[int],
) -> dict[str, Any]:
    """Per dimension: the mean measured score per requested level and the level-score Spearman rho.

    ``measured`` maps each request key to the judge's score of the requested dimension, or ``None``
    where the judge failed: such answers are counted in ``failures`` and left out of the numbers,
    so a flaky judge shows up instead of biasing a level. Every request needs an entry; a missing
    one is an error rather than a silent gap. Undefined statistics are ``None`` with an
    ``undefined_reason``, never NaN, so the result is valid JSON for DVC metrics.
    """
    levels = list(levels)
    by_dimension: dict[str, list[tuple[int, float]]] = {dimension: [] for dimension in dimensions}
    failures = dict.fromkeys(dimensions, 0)
    for request in requests:
        if request.dimension not in by_dimension:
            raise ValueError(
                f"request {request.key!r} is for dimension {request.dimension!r}, "
                f"not one of {list(dimensions)}"
            )
        if request.level not in levels:
            raise ValueError(f"request {request.key!r} asks for level {request.level}, not one of {levels}")
        if request.key not in measured:
            raise ValueError(f"no measured score for request {request.key!r}")
        score = measured[request.key]
        if score is None:
            failures[request.dimension] += 1
            continue
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"measured score for request {request.key!r} is {score}, not a finite number")
        by_dimension[request.dimension].append((request.level, score))

    summary_dimensions = {}
    for dimension, pairs in by_dimension.items():
        means: dict[str, float | None] = {}
        for level in levels:
            scores = [score for requested, score in pairs if requested == level]
            means[str(level)] = sum(scores) / len(scores) if scores else None
        rho, p_value, reason = _rank_correlation(pairs)
        summary_dimensions[dimension] = {
            "mean_by_level": means,
            "spearman": rho,
            "p_value": p_value,
            "n": len(pairs),
            "failures": failures[dimension],
            "undefined_reason": reason,
        }
    return {
        "levels": levels,
        "n_prompts": len({request.prompt_id for request in requests}),
        "dimensions": summary_dimensions,
    }


def controllability_curve_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The curve as a wide table, one row per requested level and one column per dimension.

    That is the shape a DVC linear plot wants: x = ``requested``, y = the dimension columns draws one
    line per dimension. A level without a scored answer has an empty cell (``None``).
    """
    columns = summary["dimensions"]
    return [
        {"requested": level} | {name: stats["mean_by_level"][str(level)] for name, stats in columns.items()}
        for level in summary["levels"]
    ]


def controllability_figure(summary: Mapping[str, Any]) -> Figure:
    """Requested level against mean measured score, one line per dimension, rho in the legend.

    Every dimension gets a line (empty when it has no scored answer) so the legend always lists all
    of them; with nothing scored at all the chart says so instead of showing empty axes unexplained.
    """
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.add_subplot()
    levels = sorted(summary["levels"])
    any_points = False
    for name, stats in summary["dimensions"].items():
        points = [(level, stats["mean_by_level"][str(level)]) for level in levels]
        points = [(level, mean) for level, mean in points if mean is not None]
        any_points = any_points or bool(points)
        rho = stats["spearman"]
        label = f"{name} (ρ = {rho:.2f})" if rho is not None else f"{name} (ρ n/a)"
        ax.plot([level for level, _ in points], [mean for _, mean in points], marker="o", label=label)
    if not any_points:
        ax.text(0.5, 0.5, "no scored answers to plot", ha="center", va="center", transform=ax.transAxes)
    if levels:
        ax.set_xticks(levels)
    ax.set_xlabel("requested level")
    ax.set_ylabel("measured score (judge)")
    ax.set_title("Controllability: requested vs measured")
    if summary["dimensions"]:
        ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    return figure
