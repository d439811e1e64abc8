"""The rows of the report's tables, as plain text cells the template escapes: the key numbers, the
Benchmarks table, the held-out preference and controllability tables, the experiments' scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from moalign.evaluation.report.data import BENCHMARKS, label, models, number, preference_names, section


class Cell(NamedTuple):
    """A table cell: ``text`` (in a ``<span class="css">`` when ``css`` is set), then the muted
    interval ``ci``, both bold when ``bold``; then ``after``, plain."""

    text: str
    bold: bool = False
    css: str = ""
    ci: str = ""
    after: str = ""


class Row(NamedTuple):
    """A row of the Benchmarks table; ``sub`` rows (MT-bench's categories) are indented."""

    metric: Cell
    policy: Cell
    reference: Cell
    delta: Cell
    sub: bool = False


class BenchmarkGroup(NamedTuple):
    """One benchmark's rows, its metrics.json key (for its note) and against what it compares."""

    key: str
    name: str
    baseline: str
    rows: list[Row]


class ControllabilityRow(NamedTuple):
    """Spearman's ρ of one dimension, or (``rho`` empty) the reason it is undefined."""

    dimension: str
    rho: str
    p_value: str
    reason: str
    n: str
    failures: str


_BASELINE = Cell("baseline", css="muted")
_BLANK = Cell("")


def fmt(value: Any, digits: int = 2) -> str:
    found = number(value)
    return "—" if found is None else f"{found:.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    """A 0-1 rate as a percentage (``0.25`` -> ``25.0%``); missing -> ``—``."""
    found = number(value)
    return "—" if found is None else f"{100 * found:.{digits}f}%"


def delta(policy: Any, reference: Any, *, scale: float = 1.0, digits: int = 2, unit: str = "") -> Cell:
    """Policy minus reference (times ``scale``), signed and coloured; ``—`` when either is missing."""
    p, r = number(policy), number(reference)
    if p is None or r is None:
        return Cell("—")
    d = (p - r) * scale
    css = "up" if d > 1e-9 else "down" if d < -1e-9 else "flat"
    return Cell(f"{d:+.{digits}f}{unit}", css=css)


def pp_delta(policy: Any, reference: Any) -> Cell:
    """The difference of two 0-1 rates in percentage points."""
    return delta(policy, reference, scale=100.0, digits=1, unit=" pp")


# --------------------------------------------------------------------------------------------------
# Key numbers, experiments, held-out preference
# --------------------------------------------------------------------------------------------------


def key_number_rows(metrics: Mapping[str, Any], dimensions: Sequence[str]) -> list[tuple[Cell, ...]]:
    """(metric, policy, reference, Δ): each dimension's mean score, the mean score, words, failures."""
    policy, reference = metrics.get("policy") or {}, metrics.get("reference") or {}
    ps, rs = policy.get("scores") or {}, reference.get("scores") or {}
    rows = [
        (Cell(label(d)), Cell(fmt(ps.get(d))), Cell(fmt(rs.get(d))), delta(ps.get(d), rs.get(d)))
        for d in dimensions
    ]
    rows.append(
        (
            Cell("mean score", bold=True),
            Cell(fmt(policy.get("mean_score")), bold=True),
            Cell(fmt(reference.get("mean_score")), bold=True),
            delta(policy.get("mean_score"), reference.get("mean_score")),
        )
    )
    rows.append(
        (Cell("average words"), Cell(fmt(policy.get("avg_words"), 1)), Cell(fmt(reference.get("avg_words"), 1)), _BLANK)
    )
    rows.append(
        (
            Cell("judge failures"),
            Cell(fmt(policy.get("judge_failures"), 0)),
            Cell(fmt(reference.get("judge_failures"), 0)),
            _BLANK,
        )
    )
    return rows


def key_win_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Cell]]:
    """(what, value): the win rate against the reference with its interval, its outcomes, the prompts."""
    wr = metrics.get("win_rate_vs_reference") or {}
    ci = (
        f" [{fmt(wr.get('ci95_low'), 3)}, {fmt(wr.get('ci95_high'), 3)}]"
        if number(wr.get("ci95_low")) is not None
        else " (no interval recorded)"
    )
    counts = ", ".join(f"{fmt(wr.get(k), 0)} {k}" for k in ("wins", "ties", "losses"))
    return [
        ("win rate vs reference (95% CI)", Cell(fmt(wr.get("win_rate"), 3), bold=True, after=ci)),
        ("length-controlled win rate", Cell(fmt(wr.get("length_controlled_win_rate"), 3))),
        ("outcomes", Cell(counts)),
        ("held-out prompts", Cell(fmt(metrics.get("n_prompts"), 0))),
    ]


def experiment_rows(
    points: Sequence[Mapping[str, Any]], flags: Sequence[bool], dimensions: Sequence[str]
) -> list[tuple[str, list[str], bool]]:
    """(name, a score per dimension, Pareto-optimal) of each point of the Pareto chart."""
    return [
        (str(point["name"]), [fmt(point.get(d)) for d in dimensions], optimal)
        for point, optimal in zip(points, flags, strict=True)
    ]


def preference_rows(section: Mapping[str, Any], dimensions: Sequence[str]) -> list[tuple[Cell, ...]]:
    """Reference vs policy held-out preference accuracy and margin (metrics.json ``heldout_preference``):
    (prompt, accuracy reference, accuracy policy, Δ, margin reference, margin policy)."""
    policy, reference = section.get("policy") or {}, section.get("reference") or {}
    return [
        (
            Cell(name),
            Cell(pct(reference.get(acc))),
            Cell(pct(policy.get(acc))),
            pp_delta(policy.get(acc), reference.get(acc)),
            Cell(fmt(reference.get(margin), 3)),
            Cell(fmt(policy.get(margin), 3)),
        )
        for name, acc, margin in preference_names(dimensions)
    ]


# --------------------------------------------------------------------------------------------------
# Benchmarks (the optional sections of metrics.json, evaluate.benchmarks)
# --------------------------------------------------------------------------------------------------


def _of(row: Mapping[str, Any], part: str, whole: str) -> str:
    """``part of whole`` counts (``—`` when the model has no result)."""
    if not row:
        return "—"
    return f"{fmt(row.get(part), 0)} of {fmt(row.get(whole), 0)}"


def _win_cell(row: Mapping[str, Any], bold: bool = False) -> Cell:
    """``53.1% [50.0, 57.8]``: the win rate with its 95% interval when there is one."""
    text = pct(row.get("win_rate"))
    low, high = number(row.get("ci95_low")), number(row.get("ci95_high"))
    if text != "—" and low is not None and high is not None:
        return Cell(text, bold=bold, ci=f"[{100 * low:.1f}, {100 * high:.1f}]")
    return Cell(text, bold=bold)


def _outcomes(row: Mapping[str, Any]) -> str:
    counts = [number(row.get(k)) for k in ("wins", "ties", "losses")]
    if not row or any(c is None for c in counts):
        return "—"
    return " / ".join(f"{int(c)}" for c in counts if c is not None)


def _ifbench_rows(results: Mapping[str, Any]) -> list[Row]:
    p, r = models(results)
    rows: list[Row] = []
    for key, name in (
        ("prompt_level_strict_acc", "prompt-level strict accuracy"),
        ("prompt_level_loose_acc", "prompt-level loose accuracy"),
        ("instruction_level_strict_acc", "instruction-level strict accuracy"),
        ("instruction_level_loose_acc", "instruction-level loose accuracy"),
    ):
        bold = key == "prompt_level_strict_acc"
        rows.append(
            Row(
                Cell(name, bold=bold),
                Cell(pct(p.get(key)), bold=bold),
                Cell(pct(r.get(key)), bold=bold),
                pp_delta(p.get(key), r.get(key)),
            )
        )
    rows.append(
        Row(
            Cell("prompts scored"),
            Cell(_of(p, "n_prompts_scored", "n_prompts")),
            Cell(_of(r, "n_prompts_scored", "n_prompts")),
            _BLANK,
        )
    )
    rows.append(
        Row(Cell("unverifiable instructions"), Cell(fmt(p.get("n_unverifiable"), 0)),
            Cell(fmt(r.get("n_unverifiable"), 0)), _BLANK)
    )
    return rows


def _mt_bench_rows(results: Mapping[str, Any]) -> list[Row]:
    p, r = models(results)
    rows: list[Row] = [
        Row(
            Cell("overall (1-10)", bold=True),
            Cell(fmt(p.get("overall")), bold=True),
            Cell(fmt(r.get("overall")), bold=True),
            delta(p.get("overall"), r.get("overall")),
        ),
    ]
    for turn in ("turn_1", "turn_2"):
        rows.append(Row(Cell(label(turn)), Cell(fmt(p.get(turn))), Cell(fmt(r.get(turn))),
                        delta(p.get(turn), r.get(turn))))
    p_cats, r_cats = p.get("per_category") or {}, r.get("per_category") or {}
    categories = [*p_cats, *(c for c in r_cats if c not in p_cats)]
    for category in categories:
        pc, rc = p_cats.get(category) or {}, r_cats.get(category) or {}
        rows.append(
            Row(
                Cell(str(category)),
                Cell(fmt(pc.get("score"))),
                Cell(fmt(rc.get("score"))),
                delta(pc.get("score"), rc.get("score")),
                sub=True,
            )
        )
    failures = [_of(m, "failures", "n_ratings") for m in (p, r)]
    rows.append(Row(Cell("judge failures"), Cell(failures[0]), Cell(failures[1]), _BLANK))
    return rows


_RATE_NAMES = {
    "score": "score (weighted battles)",
    "win_rate": "win rate [95% CI]",
    "length_controlled_win_rate": "length-controlled win rate",
}


def _rate_rows(p: Mapping[str, Any], r: Mapping[str, Any], *, arena: bool, against_reference: bool) -> list[Row]:
    """The headline first: Arena-Hard's battle score, AlpacaEval's length-controlled win rate."""
    rates = (
        ["score", "win_rate", "length_controlled_win_rate"]
        if arena
        else ["length_controlled_win_rate", "win_rate"]
    )
    rows: list[Row] = []
    for index, key in enumerate(rates):
        bold = index == 0
        cells = [_win_cell(m, bold) if key == "win_rate" else Cell(pct(m.get(key)), bold=bold) for m in (p, r)]
        if against_reference:
            cells[1] = _BASELINE
        rows.append(Row(Cell(_RATE_NAMES[key], bold=bold), cells[0], cells[1], pp_delta(p.get(key), r.get(key))))
    return rows


def _count_rows(p: Mapping[str, Any], r: Mapping[str, Any], *, against_reference: bool) -> list[Row]:
    """Outcomes, average words (the baseline's in the reference column when it is the baseline), failures."""
    rows = [Row(Cell("wins / ties / losses"), Cell(_outcomes(p)),
                _BASELINE if against_reference else Cell(_outcomes(r)), _BLANK)]
    reference_words = r.get("avg_words") if r else None
    if against_reference:
        reference_words = p.get("baseline_avg_words")
    rows.append(
        Row(
            Cell("average words"),
            Cell(fmt(p.get("avg_words"), 1)),
            Cell(fmt(reference_words, 1)),
            delta(p.get("avg_words"), reference_words, digits=1),
        )
    )
    if not against_reference:
        rows.append(Row(Cell("baseline's average words"), Cell(fmt(p.get("baseline_avg_words"), 1)),
                        Cell(fmt(r.get("baseline_avg_words"), 1)), _BLANK))
    rows.append(
        Row(
            Cell("judge failures"),
            Cell(_of(p, "failures", "n")),
            Cell("—" if against_reference else _of(r, "failures", "n")),
            _BLANK,
        )
    )
    return rows


def _pairwise_rows(results: Mapping[str, Any], *, arena: bool) -> list[Row]:
    """Arena-Hard's or AlpacaEval's rows. When Arena-Hard's baseline is the reference model
    itself, the reference column says ``baseline`` and its words are the baseline's."""
    p, r = models(results)
    against_reference = arena and results.get("baseline") == "reference" and not r
    return [
        *_rate_rows(p, r, arena=arena, against_reference=against_reference),
        *_count_rows(p, r, against_reference=against_reference),
    ]


def _baseline_text(key: str, results: Mapping[str, Any]) -> str:
    baseline = results.get("baseline")
    if key not in ("arena_hard", "alpaca_eval") or baseline is None:
        return ""
    if baseline == "reference":
        return "vs the reference model"
    return f"vs {baseline}"


def benchmark_groups(metrics: Mapping[str, Any]) -> tuple[list[BenchmarkGroup], list[str]]:
    """The Benchmarks table: one group of rows per benchmark section in ``metrics`` (none: an empty
    list), and ``name: judge`` of those that name their judge."""
    builders = {
        "ifbench": _ifbench_rows,
        "mt_bench": _mt_bench_rows,
        "arena_hard": lambda s: _pairwise_rows(s, arena=True),
        "alpaca_eval": lambda s: _pairwise_rows(s, arena=False),
    }
    groups, judges = [], []
    for key, name in BENCHMARKS.items():
        results = section(metrics, key)
        if results is None:
            continue
        groups.append(BenchmarkGroup(key, name, _baseline_text(key, results), builders[key](results)))
        if results.get("judge"):
            judges.append(f"{name}: {results['judge']}")
    return groups, judges


# --------------------------------------------------------------------------------------------------
# Controllability
# --------------------------------------------------------------------------------------------------


def _p_value(value: Any) -> str:
    found = number(value)
    if found is None:
        return "—"
    return "< 0.001" if found < 0.001 else f"{found:.3f}"


def controllability_rows(summary: Mapping[str, Any]) -> list[ControllabilityRow]:
    """Spearman's ρ per dimension (or why it is undefined), its p-value, the number of scored
    responses and the judge failures."""
    dimensions = summary.get("dimensions")
    dimensions = dimensions if isinstance(dimensions, Mapping) else {}
    rows = []
    for dimension, result in dimensions.items():
        result = result if isinstance(result, Mapping) else {}
        rho = number(result.get("spearman"))
        rows.append(
            ControllabilityRow(
                dimension=label(str(dimension)),
                rho="" if rho is None else f"{rho:+.3f}",
                p_value=_p_value(result.get("p_value")),
                reason=str(result.get("undefined_reason") or "not defined"),
                n=fmt(result.get("n"), 0),
                failures=fmt(result.get("failures"), 0),
            )
        )
    return rows


def controllability_facts(summary: Mapping[str, Any]) -> list[str]:
    """How the check was run: the conditioning, the levels asked for, the number of prompts."""
    levels = summary.get("levels")
    levels = levels if isinstance(levels, Sequence) and not isinstance(levels, str) else []
    facts = []
    if summary.get("style"):
        facts.append(f"conditioning: {summary['style']}")
    if levels:
        facts.append(f"levels {', '.join(str(level) for level in levels)}")
    if number(summary.get("n_prompts")) is not None:
        facts.append(f"{fmt(summary.get('n_prompts'), 0)} prompts")
    return facts
