"""Stage annotate: preference pairs with a score per dimension, from the embedded task or your file.

``data.source: embedded`` samples on-policy candidates from the starting policy for the embedded
task's prompts, scores them with the judge and pairs best against worst. ``data.source: file``
loads your pairs (``data.format``) and has the judge score only the dimensions the file lacks.

Writes ``pairs.jsonl`` (preference rows, train and eval prompts), ``candidates.jsonl`` (every scored
response, paired or not: the reward model's data), ``stats.json`` (counts, including prompts that
yielded no pair and why, and under ``judge_failed`` the judge calls that failed after their retries:
items left unscored, calls by kind, the endpoint) and, for a file, ``judged.jsonl`` (each judge
call's dimensions and scores).
Judge calls are cached (``judge.cache_path``) and sampled candidates journaled (``--journal``): a
killed or over-budget run resumes without repeating either, and samples what an uninterrupted run
would have.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, named_errors, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    tasks: Path = typer.Option(..., help="Prompt pool of the embedded task (data/task/prompts.jsonl)."),
    model: Path = typer.Option(..., help="Policy that samples the embedded task's candidates (models/base)."),
    out: Path = typer.Option(..., help="Output folder (data/annotated)."),
    journal: Path = typer.Option(
        Path("cache/generations/annotate.jsonl"), help="Sampled candidates, appended batch by batch: a rerun "
        "samples only the batches it lacks."
    ),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("annotate")
    from moalign.annotation import AnnotationInputError, annotate_stage, describe_judge_failures
    from moalign.judges.llm import BudgetExhausted, JudgeConfigError
    from moalign.judges.server import JudgeServerError

    try:
        with named_errors(JudgeConfigError, JudgeServerError, AnnotationInputError):
            stats = annotate_stage(config, tasks, model, out, journal)
    except BudgetExhausted as error:
        typer.secho(f"{error}. Every answer so far is cached in {config.judge.cache_path}: rerun to go on.",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(3) from None
    log.info("%d pairs; skipped: %s", stats["pairs"], stats.get("skipped") or "none")
    failures = describe_judge_failures(stats)
    if failures:
        log.warning("%s (stats.json: judge_failed)", failures)


if __name__ == "__main__":
    app()
