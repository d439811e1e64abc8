"""Stage evaluate: the trained policy against the reference, on held-out prompts and benchmarks.

The held-out prompts are the embedded task's eval split, or with ``data.source: file`` the prompts
of the validated eval pairs (``--eval-pairs``). ``evaluate.benchmarks`` adds IFBench (verified by
code), MT-bench (rated 1-10), Arena-Hard (pairwise against a baseline) and AlpacaEval 2 (your local
file); a control-tag policy is also asked for each intensity of each dimension (controllability).
Answers are journaled per batch in ``--generations``, judge calls cached: a killed run resumes.

Writes ``responses.jsonl`` (one row per held-out prompt) and one JSONL per benchmark beside it,
the DVC metrics file, and prints a short table.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    tasks: Path = typer.Option(..., help="Prompt pool (data/task/prompts.jsonl); its eval split is used."),
    eval_pairs: Path = typer.Option(
        None, help="Validated eval pairs (data/validated/eval.jsonl): held-out preference accuracy and margin "
        "per dimension of both models, and the prompts to answer when data.source is 'file'."
    ),
    policy: Path = typer.Option(..., help="Trained policy (models/policy)."),
    reference: Path = typer.Option(..., help="Reference policy (models/base)."),
    out: Path = typer.Option(..., help="Per-prompt responses and scores (eval/responses.jsonl)."),
    metrics: Path = typer.Option(..., help="DVC metrics file (metrics.json)."),
    benchmarks: Path = typer.Option(Path("data/benchmarks"), help="Shipped benchmark prompts (evaluate.benchmarks)."),
    generations: Path = typer.Option(
        Path("cache/generations"), help="Journal of generated answers, so a killed evaluation resumes."
    ),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    setup_logging("evaluate")
    from moalign.data.schema import write_json, write_jsonl
    from moalign.evaluation.run import (
        generate_answers, judge_answers, plan_evaluation, preference_accuracy, training_budget_of,
        training_reward_of,
    )
    from moalign.judges import open_judges

    held_out = held_out_prompts(config, tasks, eval_pairs)[: config.evaluate.n_prompts]
    if not held_out:
        raise typer.BadParameter("no held-out prompts to evaluate on (the eval split is empty)")
    plan = plan_evaluation(config, held_out, benchmarks)
    models = {"policy": (policy, "the train_policy stage"), "reference": (reference, "the prepare_model stage")}
    answers = generate_answers(config, plan, models, generations)
    with open_judges(config.judge, config.dimensions.names) as judges:
        rows, results = judge_answers(config, plan, answers, judges, out.parent)
    if eval_pairs is not None:
        from moalign.data.schema import PreferenceRow, read_jsonl

        results["heldout_preference"] = preference_accuracy(config, read_jsonl(eval_pairs, PreferenceRow), models)
    results["training_budget"] = training_budget_of(policy)
    results["training_reward"] = training_reward_of(policy, config.train)
    write_jsonl(out, rows)
    write_json(metrics, results)
    print_table(results, config.dimensions.names)


def held_out_prompts(config, tasks: Path, eval_pairs: Path | None):
    from moalign.data.schema import PreferenceRow, TaskPrompt, read_jsonl

    if config.data.source != "file":
        return [t for t in read_jsonl(tasks, TaskPrompt) if t.split == "eval"]
    if eval_pairs is None:
        raise typer.BadParameter("data.source is 'file': pass --eval-pairs data/validated/eval.jsonl")
    prompts, seen = [], set()
    for row in read_jsonl(eval_pairs, PreferenceRow):
        if row.prompt_id not in seen:  # one evaluation per prompt, however many pairs it has
            seen.add(row.prompt_id)
            prompts.append(TaskPrompt(id=row.prompt_id, split="eval", category=row.source, prompt=row.prompt))
    return prompts


def _cell(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _win_rate_cell(report: dict) -> str:
    if report.get("win_rate") is None:
        return f"— ({report.get('failures', 0)} judge failures)"
    return f"{report['win_rate']:.3f} [{report['ci95_low']:.3f}, {report['ci95_high']:.3f}]"


def print_table(results: dict, dimensions) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Held-out evaluation ({results['n_prompts']} prompts)")
    table.add_column("metric")
    table.add_column("policy", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("Δ [95% CI]", justify="right")
    changes = results.get("score_changes", {})
    for d in dimensions:
        table.add_row(d, _cell(results["policy"]["scores"][d]), _cell(results["reference"]["scores"][d]),
                      _change_cell(changes.get(d)))
    table.add_row("mean score", _cell(results["policy"]["mean_score"]), _cell(results["reference"]["mean_score"]),
                  _change_cell(changes.get("mean_score")))
    table.add_row("avg words", _cell(results["policy"]["avg_words"], 1), _cell(results["reference"]["avg_words"], 1))
    wr = results["win_rate_vs_reference"]
    table.add_row("win rate vs reference", _win_rate_cell(wr), f"W{wr['wins']} T{wr['ties']} L{wr['losses']}")
    table.add_row("length-controlled win rate", _cell(wr["length_controlled_win_rate"], 3), "")
    if "ifbench" in results:
        for level in ("prompt", "instruction"):
            key = f"{level}_level_strict_acc"
            table.add_row(f"IFBench {level}-level (strict)", _cell(results["ifbench"]["policy"].get(key)),
                          _cell(results["ifbench"]["reference"].get(key)))
    if "mt_bench" in results:
        mt = results["mt_bench"]
        table.add_row("MT-bench (1-10)", _cell(mt["policy"]["overall"]), _cell(mt["reference"]["overall"]))
    for name, title in (("arena_hard", "Arena-Hard win rate"), ("alpaca_eval", "AlpacaEval LC win rate")):
        if name in results:
            section = results[name]
            cells = []
            for model in ("policy", "reference"):
                report = section.get(model)
                if report is None:
                    cells.append("(baseline)")
                elif name == "alpaca_eval":
                    cells.append(_cell(report["length_controlled_win_rate"], 3))
                else:
                    cells.append(_win_rate_cell(report))
            table.add_row(title, *cells)
    if "controllability" in results:
        for d, entry in results["controllability"]["dimensions"].items():
            table.add_row(f"controllability ρ ({d})", _cell(entry["spearman"]), "")
    preference = results.get("heldout_preference")
    if preference:
        for name, key in [("plain prompt", "rewards/accuracies"), *((d, f"{d}/accuracy") for d in dimensions)]:
            table.add_row(f"held-out pair accuracy ({name})", _cell(preference["policy"].get(key)),
                          _cell(preference["reference"].get(key)))
    Console(stderr=True).print(table)
    budget = results.get("training_budget")
    if budget:
        Console(stderr=True).print(
            f"training budget: {budget['examples']} examples, {budget['steps']} steps, "
            f"{budget['tokens'] or '—'} tokens, {budget['seconds'] or '—'} s"
        )
    trend = results.get("training_reward")
    for phase, fit in (trend or {}).get("phases", {}).items():
        interval = "—" if fit["ci95"] is None else f"{fit['slope']:+.4f} per step [{fit['ci95'][0]:+.4f}, {fit['ci95'][1]:+.4f}]"
        Console(stderr=True).print(f"training reward ({trend['key']}, {phase}): {fit['first']:.3f} → {fit['last']:.3f} "
                                   f"over {fit['steps']} logged steps, slope {interval}", markup=False)


def _change_cell(change) -> str:
    if not change or change.get("delta") is None:
        return ""
    return f"{change['delta']:+.2f} [{change['ci95_low']:+.2f}, {change['ci95_high']:+.2f}]"


if __name__ == "__main__":
    app()
