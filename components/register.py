"""Stage register: the pipeline's result in MLflow, and a new registered model version.

Continues the training's MLflow run (``models/policy/mlflow_run.json``; a new run when the store
does not hold it) and logs params.yaml (flattened), any per-step training metrics the run lacks,
the evaluation and validation metrics, the per-prompt evaluation file, and the policy with the
transformers flavor; tags the version with the git commit and the DVC hash of the data, and points
the ``challenger`` alias at it. With ``register.promote: auto`` the promotion gate then decides
whether it becomes ``champion`` (moalign.promotion); with ``manual``, ``moalign promote`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    policy: Path = typer.Option(..., help="Trained policy directory (models/policy)."),
    metrics: Path = typer.Option(..., help="Evaluation metrics (metrics.json)."),
    validation_metrics: Path = typer.Option(..., help="Validation counts (metrics/validate.json)."),
    evaluation: Path = typer.Option(
        None, help="Per-prompt evaluation rows (eval/responses.jsonl), logged beside the metrics so a reviewer "
        "can read the answers in MLflow."
    ),
    data_dvc: Path = typer.Option(Path("data.dvc"), help="DVC file of the seed data, for the data hash tag."),
    out: Path = typer.Option(..., help="Where the registered version is recorded (registry/model_version.json)."),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("register")
    from moalign import promotion, registry, tracking
    from moalign.data.schema import write_json
    from moalign.models import require_model_dir

    require_model_dir(policy, made_by="the train_policy stage (dvc repro train_policy)")
    section = config.register_
    tracking.configure(section.tracking_uri, section.experiment)
    train_log = policy / "train_log.json"
    run_file = policy / tracking.RUN_FILE
    version = registry.log_and_register(
        run_name=f"{config.train.method}-{config.model.source}",
        params=config.model_dump(by_alias=True),
        step_metrics=json.loads(train_log.read_text()) if train_log.exists() else [],
        final_metrics={"eval": json.loads(metrics.read_text()), "validate": json.loads(validation_metrics.read_text())},
        artifacts=[metrics, validation_metrics, *([evaluation] if evaluation else [])],
        model_dir=policy,
        model_name=section.model_name,
        tags={"method": config.train.method, "base_model": config.model.source},
        data_hash=registry.dvc_tracked_hash(data_dvc),
        run_id=json.loads(run_file.read_text())["run_id"] if run_file.exists() else None,
    )
    write_json(out, {"name": version.name, "version": version.version, "run_id": version.run_id,
                     "model_uri": version.model_uri})
    log.info("registered %s version %s (alias challenger)", version.name, version.version)
    if section.promote == "auto":
        decision = promotion.promote(section.tracking_uri, version.name, version.version,
                                     max_regression=section.max_regression)
        log.info("promotion gate: %s (%s)", decision.decision, "; ".join(decision.reasons))


if __name__ == "__main__":
    app()
