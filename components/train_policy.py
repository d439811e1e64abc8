"""Stage train_policy: preference optimisation of the starting policy on the validated train pairs.

The objective is ``train.method`` in params.yaml (AMoPO by default). Writes a plain HF model
directory (LoRA merged) with ``train_log.json`` and ``mlflow_run.json``, and
``plots/train_curves.json`` for ``dvc plots``. Per-step metrics go to an MLflow run as they are made.
Checkpoints go to a folder outside DVC's outputs so a killed run resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    pairs: Path = typer.Option(..., help="Validated train pairs (data/validated/train.jsonl)."),
    eval_pairs: Path = typer.Option(
        None, help="Validated eval pairs (data/validated/eval.jsonl): held-out preference accuracy and margin "
        "per dimension before training, every train.eval_steps and at the end (offline methods)."
    ),
    model: Path = typer.Option(..., help="Starting policy (models/base)."),
    out: Path = typer.Option(..., help="Output model directory (models/policy)."),
    curves: Path = typer.Option(..., help="Per-step training metrics for dvc plots."),
    reference: Path = typer.Option(
        None, help="Cached reference scores (data/reference, the reference_logps stage); computed here when omitted."
    ),
    reward_model: Path = typer.Option(
        None, help="Reward model (models/reward, the train_reward stage): used by the online methods "
        "(moslim_*, morlhf, rewarded_soups)."
    ),
    checkpoints: Path = typer.Option(Path("checkpoints/train_policy"), help="Resumable checkpoints."),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("train_policy")
    from moalign.launch import is_main_process, relaunch

    if (launched := relaunch(config.compute, "components.train_policy")) is not None:
        raise typer.Exit(launched)  # compute.num_processes > 1: that many processes trained, under accelerate
    from moalign.data.schema import PreferenceRow, read_jsonl, write_json
    from moalign.models import require_model_dir
    from moalign.training import train

    require_model_dir(model, made_by="the prepare_model stage (dvc repro prepare_model)")
    rows = read_jsonl(pairs, PreferenceRow)
    if not rows:
        raise typer.BadParameter(f"{pairs} holds no pairs: nothing to train on (see the validate stage's quarantine)")
    log.info("%s: %d train pairs, dimensions %s", config.train.method, len(rows), ", ".join(config.dimensions.names))
    history = train(
        config, rows, model, out, checkpoints, eval_rows=read_jsonl(eval_pairs, PreferenceRow) if eval_pairs else (),
        reference_dir=reference, reward_dir=reward_model,
    )
    if is_main_process():
        write_json(curves, [entry for entry in history if "loss" in entry])


if __name__ == "__main__":
    app()
