"""What the report's charts are drawn from: the evaluation's metrics and the earlier runs turned into
points (the Pareto front and which of them are optimal) and win-rate rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from moalign.evaluation.report.style import POLICY_COLOR, REFERENCE_COLOR

#: metrics.json key -> shown name of each optional benchmark section, in the order the page lists them
BENCHMARKS = {
    "ifbench": "IFBench",
    "mt_bench": "MT-bench",
    "arena_hard": "Arena-Hard",
    "alpaca_eval": "AlpacaEval",
}


def number(value: Any) -> float | None:
    """A finite float, else None (missing, None, NaN, a string...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def label(name: str) -> str:
    return name.replace("_", " ")


def section(metrics: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = metrics.get(key)
    return value if isinstance(value, Mapping) else None


def models(results: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """A benchmark section's policy and reference results (an empty mapping for a missing one)."""
    policy, reference = results.get("policy"), results.get("reference")
    return (
        policy if isinstance(policy, Mapping) else {},
        reference if isinstance(reference, Mapping) else {},
    )


def pareto_optimal(points: Sequence[Mapping[str, Any]], x: str, y: str) -> list[bool]:
    """For each point, whether no other point dominates it on ``x`` and ``y`` (both maximised).

    ``q`` dominates ``p`` when it is at least as good on both and strictly better on one, so equal
    points are all optimal. A point missing either value is never optimal and dominates nothing.
    """
    coords = [(number(p.get(x)), number(p.get(y))) for p in points]
    valid = [(px, py) for px, py in coords if px is not None and py is not None]
    flags = []
    for px, py in coords:
        if px is None or py is None:
            flags.append(False)
            continue
        dominated = any(qx >= px and qy >= py and (qx > px or qy > py) for qx, qy in valid)
        flags.append(not dominated)
    return flags


def pareto_axes(dimensions: Sequence[str], pareto: tuple[str, str] | None) -> tuple[str, str]:
    """The two dimensions of the Pareto front: ``pareto``, else the first two (or the only one twice)."""
    if pareto is not None:
        return pareto
    return (dimensions[0], dimensions[1]) if len(dimensions) >= 2 else (dimensions[0], dimensions[0])


def pareto_points(
    metrics: Mapping[str, Any], experiments: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """This run's policy, the reference and each earlier run, as ``{"name", "kind", <dimension>: score}``."""
    policy, reference = metrics.get("policy") or {}, metrics.get("reference") or {}
    return [
        {"name": "this run (policy)", "kind": "policy", **(policy.get("scores") or {})},
        {"name": "reference", "kind": "reference", **(reference.get("scores") or {})},
        *(
            {"name": e.get("name", "run"), "kind": e.get("kind", "run"), **(e.get("scores") or {})}
            for e in experiments
        ),
    ]


def win_rows(
    metrics: Mapping[str, Any], experiments: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The win rate against the reference of this run, then of each earlier run that has one."""
    rows = [{"name": "this run", **(metrics.get("win_rate_vs_reference") or {})}]
    rows += [{"name": e.get("name", "run"), **e["win_rate"]} for e in experiments if e.get("win_rate")]
    return rows


def benchmark_win_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One bar per (Arena-Hard or AlpacaEval, model) that has a win rate."""
    rows = []
    for key in ("arena_hard", "alpaca_eval"):
        found = section(metrics, key)
        if found is None:
            continue
        for model, color in (("policy", POLICY_COLOR), ("reference", REFERENCE_COLOR)):
            result = found.get(model)
            if isinstance(result, Mapping) and number(result.get("win_rate")) is not None:
                rows.append({**result, "name": f"{BENCHMARKS[key]}: {model}", "color": color})
    return rows


def preference_names(dimensions: Sequence[str]) -> list[tuple[str, str, str]]:
    """(label, accuracy key, margin key) of the held-out diagnostics: plain prompt, then each dimension."""
    return [("plain prompt", "rewards/accuracies", "rewards/margins")] + [
        (label(d), f"{d}/accuracy", f"{d}/margin") for d in dimensions
    ]
