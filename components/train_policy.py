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

RUN_FILE = "mlflow_run.json"  # the training's MLflow run id, for the register stage


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
    from moalign import registry
    from moalign.data.schema import PreferenceRow, read_jsonl, write_json
    from moalign.config import ONLINE_METHODS
    from moalign.models import require_model_dir
    from moalign.training.preference import run_fingerprint, train_policy
    from moalign.training.reference import load_reference
    from moalign.training.online import training_prompts
    from moalign.training.runs import BUDGET_FILE, training_budget

    require_model_dir(model, made_by="the prepare_model stage (dvc repro prepare_model)")
    rows = read_jsonl(pairs, PreferenceRow)
    if not rows:
        raise typer.BadParameter(f"{pairs} holds no pairs: nothing to train on (see the validate stage's quarantine)")
    log.info("%s: %d train pairs, dimensions %s", config.train.method, len(rows), ", ".join(config.dimensions.names))
    section = config.register_
    experiment_id = registry.configure(section.tracking_uri, section.experiment)
    seed = config.train_seed
    fingerprint = run_fingerprint(
        rows, model, train=config.train, dimensions=config.dimensions, dtype=config.model.dtype, seed=seed
    )
    if config.train.method in ONLINE_METHODS and reward_model is not None:
        import hashlib

        # a retrained reward model is another run: never resume checkpoints made against the old one
        stats = reward_model / "reward_stats.json"
        content = stats.read_bytes() if stats.is_file() else b""
        fingerprint = hashlib.sha256(fingerprint.encode() + content).hexdigest()[:16]
    # the per-step diagnostics (loss, K weights and margins, accuracies) go to MLflow live; the
    # register stage later adds the evaluation and the model to this same run
    run_id = registry.start_training_run(
        experiment_id, f"{config.train.method}-{config.model.source}", config.model_dump(by_alias=True),
        fingerprint=fingerprint, tags={"method": config.train.method, "base_model": config.model.source},
    )
    try:
        if config.train.method in ONLINE_METHODS:
            from moalign.training.online import train_online

            if reward_model is None:
                raise typer.BadParameter(f"train.method {config.train.method} needs --reward-model models/reward")
            history = train_online(
                rows, model, reward_model, out, checkpoints, train=config.train,
                dimensions=config.dimensions.names, n_classes=config.reward_classes, dtype=config.model.dtype,
                seed=seed, fingerprint=fingerprint, on_log=registry.StepMetricLogger(run_id),
            )
        else:
            eval_rows = read_jsonl(eval_pairs, PreferenceRow) if eval_pairs else []
            history = train_policy(
                rows, model, out, checkpoints,
                train=config.train, dimensions=config.dimensions, dtype=config.model.dtype, seed=seed,
                reference_cache=load_reference(reference, max_length=config.train.max_length) if reference else None,
                on_log=registry.StepMetricLogger(run_id),
                eval_rows=eval_rows,
            )
    except BaseException:
        # not FINISHED: a rerun resumes the checkpoint and continues this run
        registry.finish_training_run(run_id, [], status="FAILED")
        raise
    registry.finish_training_run(run_id, history)
    write_json(out / RUN_FILE, {"run_id": run_id, "experiment": section.experiment})
    # offline methods train on pairs, online ones on distinct prompts
    online = config.train.method in ONLINE_METHODS
    examples = len(training_prompts(rows, config.train.online.max_prompts)) if online else len(rows)
    write_json(out / BUDGET_FILE, training_budget(history, examples))
    write_json(curves, [entry for entry in history if "loss" in entry])
    log.info("MLflow run %s", run_id)

if __name__ == "__main__":
    app()
