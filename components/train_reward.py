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
    log = setup_logging("train_reward")
    from transformers import AutoTokenizer

    from moalign.data.schema import ScoredCandidate, read_jsonl, write_json
    from moalign.models import resolve_dtype
    from moalign.rewards.mapping import RewardStats
    from moalign.rewards.model import MultiHeadRewardModel, score_texts
    from moalign.rewards.training import reward_examples, split_candidates, train_reward_model

    dims, classes, section = list(config.dimensions.names), config.reward_classes, config.reward
    train, held_out = (reward_examples(part, dims, classes)
                       for part in split_candidates(read_jsonl(candidates, ScoredCandidate)))
    if not train:
        raise typer.BadParameter(f"{candidates} holds no train-split response: nothing to train the reward model on")
    log.info("%d training responses, %d eval; heads %s", len(train), len(held_out),
             ", ".join(f"{d}({n})" for d, n in zip(dims, classes)))
    reward_model = MultiHeadRewardModel.from_backbone(model, dims, classes, dtype=resolve_dtype(config.model.dtype),
                                                      seed=config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model)
    results = train_reward_model(
        reward_model, tokenizer, train, held_out, output_dir=checkpoints, learning_rate=section.learning_rate,
        epochs=section.epochs, batch_size=section.batch_size, max_length=section.max_length, seed=config.seed,
        save_steps=section.save_steps, top_layers=section.top_layers,
    )
    # Eq. 11's statistics: how probable each head finds each intensity over the training responses
    stats = RewardStats(dims, classes)
    stats.count_labels([e["labels"] for e in train])
    stats.update(score_texts(reward_model, tokenizer, [e["prompt"] for e in train], [e["response"] for e in train],
                             batch_size=section.batch_size, max_length=section.max_length))
    reward_model.save(out, tokenizer=tokenizer)
    stats.save(out)
    write_json(metrics, results)
    for split in ("train", "eval"):
        for d, entry in results[split].items():
            if entry["n"]:
                floor = entry["majority_baseline"]
                log.info("%s %s: accuracy %.3f (always the majority class: %s), ECE %.3f (n=%d)", split, d,
                         entry["accuracy"], "—" if floor is None else f"{floor:.3f}", entry["ece"], entry["n"])
            else:
                log.info("%s %s: no example has this dimension scored", split, d)
    if register:
        from moalign import registry

        registry.configure(config.register_.tracking_uri, config.register_.experiment)
        version = registry.log_and_register(
            run_name=f"reward-{config.model.source}", params=config.model_dump(by_alias=True), step_metrics=[],
            final_metrics={"reward": results}, artifacts=[metrics], model_dir=out, model_name=section.model_name,
            tags={"kind": "reward_model", "heads": ",".join(f"{d}:{n}" for d, n in zip(dims, classes))},
            task=registry.REWARD_MODEL_TASK,
        )
        log.info("registered %s version %s", version.name, version.version)


if __name__ == "__main__":
    app()
