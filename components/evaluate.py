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

from components._stage import PARAMS_OPTION, named_errors, setup_logging, stage_params

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
    from moalign.control_tags import ControlTagError
    from moalign.evaluation.ifbench.loading import IFBenchFormatError
    from moalign.evaluation.run import EvaluationInputError, evaluate_stage
    from moalign.evaluation.summary import print_summary
    from moalign.models import ModelDirError

    with named_errors(EvaluationInputError, IFBenchFormatError, ControlTagError, ModelDirError):
        results = evaluate_stage(config, tasks, eval_pairs, policy, reference, out, metrics, benchmarks, generations)
    print_summary(results, config.dimensions.names)


if __name__ == "__main__":
    app()
