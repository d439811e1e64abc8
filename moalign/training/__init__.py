"""Policy training. :func:`train` is the one entry point for every ``train.method``: the stage
command, the Prefect flow and a notebook call it alike.

Kept free of heavy imports: ``moalign.config`` reads :mod:`moalign.training.methods` at load time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path


def run_fingerprint(config, rows: Sequence, model_dir, reward_dir=None) -> str:
    """Identity of a training run: its checkpoints and MLflow run are resumed only by the same
    fingerprint (same pairs, settings, seed and starting model; for online methods, the same reward
    model, since a retrained one makes another run)."""
    import hashlib

    from moalign.training.preference import run_fingerprint as offline_fingerprint

    fingerprint = offline_fingerprint(rows, model_dir, train=config.train, dimensions=config.dimensions,
                                      dtype=config.model.dtype, seed=config.train_seed)
    if config.method.online and reward_dir is not None:
        stats = Path(reward_dir) / "reward_stats.json"
        content = stats.read_bytes() if stats.is_file() else b""
        fingerprint = hashlib.sha256(fingerprint.encode() + content).hexdigest()[:16]
    return fingerprint


def train(
    config,
    rows: Sequence,
    model_dir,
    out_dir,
    checkpoint_dir,
    *,
    eval_rows: Sequence = (),
    reference_dir=None,
    reward_dir=None,
) -> list[dict]:
    """Train ``config.train.method`` from ``model_dir`` on ``rows`` and save the policy in ``out_dir``,
    tracked live in an MLflow run (``register.*``) that a rerun after a crash resumes with the
    checkpoints. Beside the policy: its MLflow run id and its training budget. Returns the log history.

    Offline methods use ``reference_dir`` (the reference_logps stage's cache, optional) and score
    ``eval_rows`` as held-out diagnostics; online methods need ``reward_dir`` (the train_reward stage).
    """
    from moalign import registry
    from moalign.data.schema import write_json
    from moalign.training.online import train_online, training_prompts
    from moalign.training.preference import train_policy
    from moalign.training.reference import load_reference
    from moalign.training.runs import BUDGET_FILE, training_budget

    online = config.method.online
    if online and reward_dir is None:
        raise ValueError(f"train.method {config.train.method} trains against the reward model: pass the "
                         "train_reward stage's folder (models/reward)")
    section = config.register_
    experiment_id = registry.configure(section.tracking_uri, section.experiment)
    fingerprint = run_fingerprint(config, rows, model_dir, reward_dir)
    # the per-step diagnostics go to MLflow live; the register stage later adds the evaluation and
    # the model to this same run
    run_id = registry.start_training_run(
        experiment_id, f"{config.train.method}-{config.model.source}", config.model_dump(by_alias=True),
        fingerprint=fingerprint, tags={"method": config.train.method, "base_model": config.model.source},
    )
    on_log = registry.StepMetricLogger(run_id)
    try:
        if online:
            history = train_online(
                rows, model_dir, reward_dir, out_dir, checkpoint_dir, train=config.train,
                dimensions=config.dimensions.names, n_classes=config.reward_classes, dtype=config.model.dtype,
                seed=config.train_seed, fingerprint=fingerprint, on_log=on_log,
            )
        else:
            reference = load_reference(reference_dir, max_length=config.train.max_length) if reference_dir else None
            history = train_policy(
                rows, model_dir, out_dir, checkpoint_dir, train=config.train, dimensions=config.dimensions,
                dtype=config.model.dtype, seed=config.train_seed, reference_cache=reference, on_log=on_log,
                eval_rows=eval_rows, fingerprint=fingerprint,
            )
    except BaseException:
        # not FINISHED: a rerun resumes the checkpoint and continues this run
        registry.finish_training_run(run_id, [], status="FAILED")
        raise
    registry.finish_training_run(run_id, history)
    logging.getLogger(__name__).info("MLflow run %s", run_id)
    out_dir = Path(out_dir)
    write_json(out_dir / registry.RUN_FILE, {"run_id": run_id, "experiment": section.experiment})
    # offline methods train on pairs, online ones on distinct prompts
    examples = len(training_prompts(rows, config.train.online.max_prompts)) if online else len(rows)
    write_json(out_dir / BUDGET_FILE, training_budget(history, examples))
    return history
