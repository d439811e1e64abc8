"""Policy training. :func:`train` is the one entry point for every ``train.method``: the stage
command, the Prefect flow and a notebook call it alike.

Kept free of heavy imports: ``moalign.config`` reads :mod:`moalign.training.methods` at load time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

logger = logging.getLogger(__name__)


def policy_inputs(config, reward_dir) -> dict:
    """What ``train.method`` reads besides its pairs and starting model, as content hashes: the
    reward model and its code for the online methods, nothing for the offline ones. The
    policy_inputs stage writes this, and train_policy depends on it instead of on ``models/reward``,
    so DVC reruns an offline method only when something it reads changes."""
    from moalign.models import model_fingerprint
    from moalign.training.runs import fingerprint

    if not config.method.online:
        return {"method": config.train.method, "reward_model": None, "reward_code": None}
    if reward_dir is None or not Path(reward_dir).is_dir():
        raise ValueError(f"train.method {config.train.method} trains against the reward model: pass the "
                         "train_reward stage's folder (models/reward)")
    code = sorted(Path(__file__).parents[1].joinpath("rewards").glob("*.py"))
    return {"method": config.train.method, "reward_model": model_fingerprint(reward_dir),
            "reward_code": fingerprint({path.name: path.read_text() for path in code})}


def run_fingerprint(config, rows: Sequence, model_dir, reward_dir=None) -> str:
    """Identity of a training run: its checkpoints and MLflow run are resumed only by the same
    fingerprint (same pairs, settings, seed, starting model, :func:`policy_inputs` and process count:
    ``train.batch_size`` is per process, so another count is another global batch)."""
    from moalign.training.preference import offline_fingerprint
    from moalign.training.runs import fingerprint

    offline = offline_fingerprint(rows, model_dir, train=config.train, dimensions=config.dimensions,
                                  dtype=config.model.dtype, seed=config.train_seed)
    # one process adds nothing, so single-process runs keep the fingerprints they had
    extra = {"processes": config.compute.num_processes} if config.compute.num_processes > 1 else {}
    if config.method.online:
        extra |= policy_inputs(config, reward_dir)
    return fingerprint({"offline": offline, **extra}) if extra else offline


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
    from moalign import tracking
    from moalign.data.schema import write_json
    from moalign.launch import is_main_process
    from moalign.training.online import training_prompts
    from moalign.training.runs import BUDGET_FILE, training_budget

    section = config.register_
    fingerprint = run_fingerprint(config, rows, model_dir, reward_dir)
    run = partial(_run_method, config, rows, model_dir, out_dir, checkpoint_dir, fingerprint=fingerprint,
                  eval_rows=eval_rows, reference_dir=reference_dir, reward_dir=reward_dir)
    if not is_main_process():  # of several processes, the main one tracks the run and writes the files
        return run(on_log=None)
    experiment_id = tracking.configure(section.tracking_uri, section.experiment)
    # the per-step diagnostics go to MLflow live; the register stage later adds the evaluation and
    # the model to this same run
    run_id = tracking.start_training_run(
        experiment_id, f"{config.train.method}-{config.model.source}", config.model_dump(by_alias=True),
        fingerprint=fingerprint, tags={"method": config.train.method, "base_model": config.model.source},
    )
    try:
        history = run(on_log=tracking.StepMetricLogger(run_id))
    except BaseException:
        # not FINISHED: a rerun resumes the checkpoint and continues this run
        tracking.finish_training_run(run_id, [], status="FAILED")
        raise
    tracking.finish_training_run(run_id, history)
    logger.info("MLflow run %s", run_id)
    out_dir = Path(out_dir)
    write_json(out_dir / tracking.RUN_FILE, {"run_id": run_id, "experiment": section.experiment})
    # offline methods train on pairs, online ones on distinct prompts
    online = config.method.online
    examples = len(training_prompts(rows, config.train.online.max_prompts)) if online else len(rows)
    write_json(out_dir / BUDGET_FILE, training_budget(history, examples))
    return history


def _run_method(config, rows, model_dir, out_dir, checkpoint_dir, *, fingerprint, on_log, eval_rows,
                reference_dir, reward_dir) -> list[dict]:
    from moalign.training.online import train_online
    from moalign.training.preference import train_policy
    from moalign.training.reference import load_reference

    if config.method.online:
        return train_online(
            rows, model_dir, reward_dir, out_dir, checkpoint_dir, train=config.train,
            dimensions=config.dimensions.names, n_classes=config.reward_classes, dtype=config.model.dtype,
            seed=config.train_seed, fingerprint=fingerprint, on_log=on_log,
        )
    reference = load_reference(reference_dir, max_length=config.train.max_length) if reference_dir else None
    return train_policy(
        rows, model_dir, out_dir, checkpoint_dir, train=config.train, dimensions=config.dimensions,
        dtype=config.model.dtype, seed=config.train_seed, reference_cache=reference, on_log=on_log,
        eval_rows=eval_rows, fingerprint=fingerprint,
    )
