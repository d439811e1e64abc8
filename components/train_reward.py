"""Stage train_reward: MOSLIM's multi-head classification reward model, and its running statistics.

One backbone (the starting model, ``models/base``) with a classification head per dimension in
``dimensions.names``; each head learns the intensity class of its dimension's judge score
(``reward.classes``: 2-5 classes per dimension, MOSLIM's data types). Every distinct scored response
(annotate's ``candidates.jsonl``: paired or not) is one example, train and eval by its prompt's split. After training, the heads' probabilities over the training
responses give the per-(head, intensity) mean and standard deviation that MOSLIM's reward mapping
standardises with (Eq. 11, ``reward_stats.json`` beside the model).

Writes the model folder (``--out``), per-head accuracy and calibration error on train and eval
(``--metrics``), logs them to MLflow and registers the model as ``reward.model_name`` (a pyfunc that
scores prompt/response rows). A killed training resumes from ``--checkpoints``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    candidates: Path = typer.Option(
        ..., help="Every scored response (data/annotated/candidates.jsonl); eval-split prompts' responses "
        "measure the heads."
    ),
    model: Path = typer.Option(..., help="Backbone to start from (models/base)."),
    out: Path = typer.Option(..., help="Reward model folder (models/reward)."),
    metrics: Path = typer.Option(..., help="Per-head accuracy and calibration (metrics/reward.json)."),
    checkpoints: Path = typer.Option(Path("checkpoints/train_reward"), help="Resumable checkpoints."),
    register: bool = typer.Option(True, help="Log to MLflow and register the model (register.tracking_uri)."),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    setup_logging("train_reward")
    from moalign.launch import relaunch

    if (launched := relaunch(config.compute, "components.train_reward", gathers_shards=False)) is not None:
        raise typer.Exit(launched)  # compute.num_processes > 1: that many processes trained, under accelerate
    from moalign.rewards.model import RewardModelError
    from moalign.rewards.training import train_reward_stage

    try:
        train_reward_stage(config, candidates, model, out, metrics, checkpoints, register=register)
    except RewardModelError as error:
        raise typer.BadParameter(str(error)) from None


if __name__ == "__main__":
    app()
