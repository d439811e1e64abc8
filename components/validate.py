"""Stage validate: the Great Expectations gate between annotation and training.

Every annotated pair is either valid (written to ``train.jsonl`` / ``eval.jsonl`` by its split) or
quarantined (``quarantine.jsonl``, each line with the expectations it failed); none is dropped. The
stage fails, after writing everything, when the quarantined share exceeds
``validate.max_quarantine_fraction``. GX Data Docs (HTML) go to ``<out>/docs``.

The input is decoded with ``errors="replace"``: a line that is not valid UTF-8 is read with U+FFFD
in place of its bad bytes and quarantined by ``text_is_clean``, instead of stopping the stage.

Label noise: with ``validate.label_noise > 0`` chosen and rejected are swapped on that share of the
valid *train* pairs (``random.Random(seed)``), after the gate; eval stays clean. ``label_noise.json``
(fraction, seed, how many and which ids were flipped) is written on every run, ``flipped: 0`` when off.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    pairs: Path = typer.Option(..., help="Annotated pairs (data/annotated/pairs.jsonl)."),
    tokenizer: Path = typer.Option(..., help="Model directory whose tokenizer measures lengths (models/base)."),
    out: Path = typer.Option(..., help="Output folder (data/validated)."),
    metrics: Path = typer.Option(..., help="Summary counts for dvc metrics (metrics/validate.json)."),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("validate")
    from moalign.models import require_model_dir
    from moalign.validation import QuarantineLimitExceeded, ValidationInputError, validate_stage

    require_model_dir(tokenizer, made_by="the prepare_model stage (dvc repro prepare_model)")
    try:
        report = validate_stage(config, pairs, tokenizer, out, metrics)
    except ValidationInputError as error:
        raise typer.BadParameter(str(error)) from None
    except QuarantineLimitExceeded as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    log.info("%d valid, %d quarantined", len(report.valid), len(report.quarantined))


if __name__ == "__main__":
    app()
