"""The evaluation's summary table, as the evaluate stage prints it (rich)."""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _win_rate_cell(report: dict) -> str:
    if report.get("win_rate") is None:
        return f"— ({report.get('failures', 0)} judge failures)"
    return f"{report['win_rate']:.3f} [{report['ci95_low']:.3f}, {report['ci95_high']:.3f}]"


def print_summary(results: dict, dimensions: Sequence[str]) -> None:
    """metrics.json's headline numbers as a table on stderr (the win rate first), then the training's
    budget and reward trend."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Held-out evaluation ({results['n_prompts']} prompts)")
    table.add_column("metric")
    table.add_column("policy", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("Δ [95% CI]", justify="right")
    wr = results["win_rate_vs_reference"]
    table.add_row("win rate vs reference", _win_rate_cell(wr), f"W{wr['wins']} T{wr['ties']} L{wr['losses']}")
    table.add_row("length-controlled win rate", _cell(wr["length_controlled_win_rate"], 3), "")
    changes = results.get("score_changes", {})
    for d in dimensions:
        table.add_row(d, _cell(results["policy"]["scores"][d]), _cell(results["reference"]["scores"][d]),
                      _change_cell(changes.get(d)))
    table.add_row("mean score", _cell(results["policy"]["mean_score"]), _cell(results["reference"]["mean_score"]),
                  _change_cell(changes.get("mean_score")))
    table.add_row("avg words", _cell(results["policy"]["avg_words"], 1), _cell(results["reference"]["avg_words"], 1))
    for row in _benchmark_rows(results, dimensions):
        table.add_row(*row)
    console = Console(stderr=True)
    console.print(table)
    budget = results.get("training_budget")
    if budget:
        console.print(f"training budget: {budget['examples']} examples, {budget['steps']} steps, "
                      f"{budget['tokens'] or '—'} tokens, {budget['seconds'] or '—'} s")
    trend = results.get("training_reward")
    for phase, fit in (trend or {}).get("phases", {}).items():
        interval = "—" if fit["ci95"] is None else f"{fit['slope']:+.4f} per step [{fit['ci95'][0]:+.4f}, {fit['ci95'][1]:+.4f}]"
        console.print(f"training reward ({trend['key']}, {phase}): {fit['first']:.3f} → {fit['last']:.3f} "
                      f"over {fit['steps']} logged steps, slope {interval}", markup=False)
        within = fit.get("within_prompt") or {}
        if within.get("ci95"):
            console.print(f"  within prompt ({within['prompts']} prompts scored more than once): slope "
                          f"{within['slope']:+.4f} per step [{within['ci95'][0]:+.4f}, {within['ci95'][1]:+.4f}]",
                          markup=False)


def _benchmark_rows(results: dict, dimensions: Sequence[str]) -> list[tuple[str, ...]]:
    """(metric, policy, reference) rows of the optional suites and the held-out pair diagnostics."""
    rows: list[tuple[str, ...]] = []
    if "ifbench" in results:
        for level in ("prompt", "instruction"):
            key = f"{level}_level_strict_acc"
            rows.append((f"IFBench {level}-level (strict)", _cell(results["ifbench"]["policy"].get(key)),
                         _cell(results["ifbench"]["reference"].get(key))))
    if "mt_bench" in results:
        mt = results["mt_bench"]
        rows.append(("MT-bench (1-10)", _cell(mt["policy"]["overall"]), _cell(mt["reference"]["overall"])))
    for name, title in (("arena_hard", "Arena-Hard win rate"), ("alpaca_eval", "AlpacaEval LC win rate")):
        if name in results:
            cells = []
            for model in ("policy", "reference"):
                report = results[name].get(model)
                if report is None:
                    cells.append("(baseline)")
                elif name == "alpaca_eval":
                    cells.append(_cell(report["length_controlled_win_rate"], 3))
                else:
                    cells.append(_win_rate_cell(report))
            rows.append((title, *cells))
    for d, entry in results.get("controllability", {}).get("dimensions", {}).items():
        rows.append((f"controllability ρ ({d})", _cell(entry["spearman"]), ""))
    preference = results.get("heldout_preference")
    if preference:
        for name, key in [("plain prompt", "rewards/accuracies"), *((d, f"{d}/accuracy") for d in dimensions)]:
            rows.append((f"held-out pair accuracy ({name})", _cell(preference["policy"].get(key)),
                         _cell(preference["reference"].get(key))))
    return rows


def _change_cell(change) -> str:
    if not change or change.get("delta") is None:
        return ""
    return f"{change['delta']:+.2f} [{change['ci95_low']:+.2f}, {change['ci95_high']:+.2f}]"
