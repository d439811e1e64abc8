"""The bookkeeping every training run shares: the offline preference methods (``preference.py``), the
online ones (``online.py``), moalign's PPO (``ppo.py``) and the reward model (``rewards/training.py``).

* A checkpoint folder is *claimed* by a run's fingerprint: checkpoints written under another
  fingerprint (other data or settings) are deleted, never resumed.
* A run of several phases (SPO's rounds, CPO's SFT then DPO, Rewarded Soups' ingredients) saves each
  finished phase's weights, so a rerun after a crash skips the phases it already finished.
* Log entries carry their phase and a step counted across phases, both in the returned history and
  as they are forwarded live (to MLflow, by the train_policy component).
* LoRA adapters as ``train.lora`` describes them, and the final policy as a plain HF folder.
* A ``transformers.Trainer`` checkpoint appears whole or not at all (:class:`AtomicCheckpointsMixin`).
* An epoch's batch order is drawn from (seed, epoch), so a run resumed mid-way through its second
  epoch trains on the batches the uninterrupted run did (the epoch-seeded samplers).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from moalign.launch import is_main_process, main_process_first
from moalign.models import from_pretrained

logger = logging.getLogger(__name__)

FINISHED_LOG = "train_log.json"
PARTIAL = ".partial"  # suffix of a checkpoint folder being written (numbered_checkpoints skips it)
BUDGET_FILE = "budget.json"  # beside the saved policy: what its training spent (training_budget)


def fingerprint(payload) -> str:
    """A short hash of a JSON-serialisable description of a run: equal payloads, equal fingerprints."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_checkpoints(directory, run_fingerprint: str, *, stamp: str = "fingerprint.txt", owned: str = "*") -> None:
    """Make ``directory`` hold checkpoints of the run ``run_fingerprint`` only.

    When its ``stamp`` file names another run (or is missing from a folder that exists), the entries
    matching the glob ``owned`` are deleted first: everything by default, or only the run's own
    files where the folder is shared (moalign's PPO writes ``checkpoint-*`` into a folder that the
    online training's own stamp also claims). With several processes the main one claims the folder
    while the others wait, so that none of them looks for a checkpoint to resume before it is done.
    """
    directory = Path(directory)
    marker = directory / stamp
    with main_process_first():
        if not is_main_process():
            return
        if directory.exists() and (not marker.exists() or marker.read_text() != run_fingerprint):
            stale = list(directory.glob(owned))
            if stale:
                logger.warning("%s holds checkpoints of another run: removing %d entries", directory, len(stale))
            for path in stale:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        directory.mkdir(parents=True, exist_ok=True)
        marker.write_text(run_fingerprint)


def numbered_checkpoints(directory) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``directory``, oldest step first (empty when it is missing)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resumable_checkpoint(directory) -> str | None:
    """The newest complete ``checkpoint-<step>`` of a ``transformers.Trainer`` in ``directory``, for
    ``trainer.train(resume_from_checkpoint=...)``; None when there is none.

    A ``checkpoint-<step>.partial`` folder left by a kill while saving (:class:`AtomicCheckpointsMixin`)
    is removed with a warning. So is a ``checkpoint-<step>`` whose ``trainer_state.json`` (written
    last) is missing or unreadable, one saved without the mixin and cut short: the one before it is
    used. (``get_last_checkpoint`` would pick it, and a truncated safetensors file would then fail
    every rerun.)
    """
    if is_main_process():
        for leftover in sorted(Path(directory).glob(f"{PREFIX_CHECKPOINT_DIR}-*{PARTIAL}")):
            logger.warning("%s is a checkpoint whose saving was cut short (a kill while saving?): removing it",
                           leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    for path in reversed(numbered_checkpoints(directory)):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            logger.warning("%s is incomplete (no readable trainer_state.json, a kill while saving?): removing it "
                           "and resuming from the checkpoint before it", path)
            if is_main_process():
                shutil.rmtree(path, ignore_errors=True)
    return None


class AtomicCheckpointsMixin:
    """For a ``transformers.Trainer`` subclass (listed before it): each checkpoint is written into
    ``checkpoint-<step>.partial/checkpoint-<step>`` and renamed to ``checkpoint-<step>`` once whole,
    so a kill while saving leaves no ``checkpoint-<step>`` to resume, only a folder that
    :func:`resumable_checkpoint` removes.

    The Trainer's own ``_save_checkpoint`` still does the work: only the folder it saves into
    (``_get_output_dir``, while saving) differs. Its rotation then sees the staging folder alone, so
    the old checkpoints are rotated here after the rename, with the same ``save_total_limit`` and
    the best checkpoint kept. With several processes every one writes its own files (its random
    states, its shard under FSDP or DeepSpeed); after all have, the process that writes the
    trainer state (``args.should_save``) renames.
    """

    _staging: bool = False
    state: Any
    args: Any
    accelerator: Any

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)  # type: ignore[misc]
        if not self._staging:
            return run_dir
        return os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}{PARTIAL}")

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging = True
        try:
            staging = os.path.join(self._get_output_dir(trial), name)
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._staging = False
        final = os.path.join(run_dir, name)
        state, args = self.state, self.args
        # the Trainer names the best checkpoint where it found it, in staging when it is this one
        if state.best_model_checkpoint == staging:
            state.best_model_checkpoint = final
            if args.should_save:
                state.save_to_json(os.path.join(staging, "trainer_state.json"))
        self.accelerator.wait_for_everyone()  # every process has written its files into staging
        if not args.should_save:
            return
        if os.path.isdir(final):  # a checkpoint of this step from an earlier run: this one replaces it
            shutil.rmtree(final)
        os.replace(staging, final)
        shutil.rmtree(os.path.dirname(staging))
        rotate_checkpoints(output_dir=run_dir, save_total_limit=args.save_total_limit,
                           best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)


@functools.cache
def with_atomic_checkpoints(trainer_class: type) -> type:
    """``trainer_class`` with :class:`AtomicCheckpointsMixin` (for trainers defined elsewhere, TRL's)."""
    return type(f"Atomic{trainer_class.__name__}", (AtomicCheckpointsMixin, trainer_class), {})


# ------------------------------------------------------------------------------------------------
# random streams: a run resumed in epoch e draws that epoch's batch order as the uninterrupted run did


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """The Trainer's ``group_by_length`` order (pairs of similar length batched together), shuffled
    by a generator seeded with (seed, epoch) instead of the global random stream.

    The Trainer draws an epoch's order when the epoch starts but restores the checkpoint's random
    states only after it has skipped the batches already trained: a run resumed in its second epoch
    or later would otherwise draw that epoch's order from a different stream than the run it resumes.
    (The random sampler has accelerate's seedable one; this sampler had no such counterpart.)
    """

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer (through accelerate) each epoch
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class EpochSeededSampler(torch.utils.data.Sampler):
    """A shuffling sampler with ``seed`` and ``generator`` (TRL's ``RepeatSampler``, RLOO's) whose
    order in epoch e is drawn from ``seed + e``, as the Trainer's ``set_epoch`` starts the epoch.

    Left alone, the sampler seeds its generator once and draws epoch after epoch from it, while a
    Trainer resumed in epoch e does not replay the epochs before: it would get epoch 0's order, and
    the resumed run would train on other batches than the run that was never killed. Epoch 0 keeps
    the sampler's own order."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        if getattr(self.sampler, "shuffle", False) and self.sampler.seed is not None:
            self.sampler.generator.manual_seed(self.sampler.seed + epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


@functools.cache
def epoch_seeded(trainer_class: type) -> type:
    """``trainer_class`` (TRL's ``RLOOTrainer``) with its train sampler in an :class:`EpochSeededSampler`."""

    def _get_train_sampler(self, dataset=None):
        return EpochSeededSampler(trainer_class._get_train_sampler(self, dataset))

    return type(f"EpochSeeded{trainer_class.__name__}", (trainer_class,), {"_get_train_sampler": _get_train_sampler})


class ForwardLogs(TrainerCallback):
    """Hands each log entry to ``on_log`` with its phase and a step counted across phases."""

    def __init__(self, on_log: Callable[[dict], None], phase: str, step_offset: int):
        self.forward, self.phase, self.step_offset = on_log, phase, step_offset

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.entry({**logs, "step": state.global_step})

    def entry(self, logs: dict) -> None:
        """Forward one entry whose ``step`` counts within the phase (also for loops without callbacks)."""
        self.forward({**logs, "phase": self.phase, "step": self.step_offset + logs["step"]})


def last_step(history: list[dict]) -> int:
    """The step of the newest entry of a history whose steps count across phases (0 when empty)."""
    return max((entry["step"] for entry in history), default=0)


def training_budget(history: list[dict], examples: int) -> dict:
    """What a run spent, to report beside its result: ``examples`` (pairs or prompts) trained on,
    optimizer ``steps``, ``tokens`` (non-padding tokens of every training forward, where the trainer
    counts them) and ``seconds`` of training (the trainers' own ``train_runtime``), each phase's
    largest value (both are cumulative within a phase) summed over phases."""

    def over_phases(key: str, kind):
        largest: dict[str, float] = {}
        for entry in history:
            if key in entry:
                phase = str(entry.get("phase"))
                largest[phase] = max(largest.get(phase, 0.0), float(entry[key]))
        return kind(sum(largest.values())) if largest else None

    seconds = over_phases("train_runtime", float)
    return {
        "examples": examples,
        "steps": last_step(history),
        "tokens": over_phases("num_input_tokens_seen", int),
        "seconds": None if seconds is None else round(seconds, 1),
    }


def reward_trend(history: list[dict], key: str) -> dict[str, dict] | None:
    """Per phase, the least-squares slope of the logged ``key`` (an online run's mean reward) over
    steps, with its 95 % interval: ``{phase: {"slope", "ci95": [low, high], "steps", "first", "last"}}``.

    The interval is the t-interval of the OLS slope (``scipy.stats.linregress``): it treats each step's
    mean as the trend plus independent noise, which holds while every step samples fresh prompts and
    completions. A slope whose interval lies above 0 says the reward rose, not a visual guess from a
    noisy curve. Phases with fewer than 3 logged steps get no interval (None); no entry with ``key``
    gives None. Where the history has per-prompt rewards (``prompt_rewards`` entries, from
    :class:`moalign.training.online.PromptRewardLog`), the phase also gets ``within_prompt``:
    :func:`within_prompt_trend` on them.
    """
    from scipy import stats

    series: dict[str, tuple[list[float], list[float]]] = {}
    per_prompt: dict[str, list[tuple[str, float, float]]] = {}
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
            steps, values = series.setdefault(str(entry.get("phase")), ([], []))
            steps.append(float(entry["step"]))
            values.append(float(entry[key]))
        for prompt, reward in (entry.get("prompt_rewards") or {}).items():
            per_prompt.setdefault(str(entry.get("phase")), []).append((prompt, float(entry["step"]), reward))
    if not series:
        return None
    trends = {}
    for phase, (steps, values) in series.items():
        trend = {"steps": len(steps), "first": values[0], "last": values[-1], "slope": None, "ci95": None}
        if len(steps) >= 3 and len(set(steps)) > 1:
            fit = stats.linregress(steps, values)
            half = float(stats.t.ppf(0.975, len(steps) - 2)) * fit.stderr
            trend.update(slope=float(fit.slope), ci95=[float(fit.slope - half), float(fit.slope + half)])
        if phase in per_prompt:
            trend["within_prompt"] = within_prompt_trend(per_prompt[phase])
        trends[phase] = trend
    return trends


def within_prompt_trend(observations: list[tuple[str, float, float]]) -> dict:
    """The reward's slope over steps with a fixed effect per prompt, from ``(prompt, step, mean
    reward)`` observations: ``{"slope", "ci95", "observations", "prompts"}``.

    Each prompt is compared with itself at other steps (step and reward centred within the prompt,
    then one OLS slope), so how hard the prompts a step drew were, the largest part of a step
    mean's noise when a step scores a few prompts, drops out. The prompts of one step share that
    step's policy, so their errors may move together: the interval is cluster-robust by step (the
    sandwich estimator with the usual small-sample factors, t with steps - 1 degrees of freedom).
    Hand-written because the estimator is these few lines; statsmodels would be a dependency for one
    regression. Prompts seen once tell nothing about a trend and are left out; ``slope`` and
    ``ci95`` are None with fewer than 3 steps or prompts seen at one step only.
    """
    from scipy import stats

    groups: dict[str, list[tuple[float, float]]] = {}
    for prompt, step, reward in observations:
        if math.isfinite(reward):
            groups.setdefault(prompt, []).append((step, reward))
    repeated = [points for points in groups.values() if len(points) >= 2]
    rows = []  # (centred step, centred reward, step)
    for points in repeated:
        mean_step = sum(step for step, _ in points) / len(points)
        mean_reward = sum(reward for _, reward in points) / len(points)
        rows += [(step - mean_step, reward - mean_reward, step) for step, reward in points]
    result = {"slope": None, "ci95": None, "observations": len(rows), "prompts": len(repeated)}
    sxx = sum(x * x for x, _, _ in rows)
    n, k = len(rows), len(repeated) + 1
    if sxx == 0 or n <= k:
        return result
    slope = sum(x * y for x, y, _ in rows) / sxx
    score_by_step: dict[float, float] = {}
    for x, y, step in rows:
        score_by_step[step] = score_by_step.get(step, 0.0) + x * (y - slope * x)
    clusters = len(score_by_step)
    if clusters < 3:
        return result
    variance = (sum(v * v for v in score_by_step.values()) / sxx**2
                * clusters / (clusters - 1) * (n - 1) / (n - k))
    half = float(stats.t.ppf(0.975, clusters - 1)) * math.sqrt(variance)
    return {**result, "slope": slope, "ci95": [slope - half, slope + half]}


def run_phase(
    name: str,
    phase_dir: Path,
    history: list[dict],
    train: Callable[[ForwardLogs | None], tuple[object, list[dict]]],
    *,
    on_log: Callable[[dict], None] | None,
    keep: bool,
    dtype,
    device=None,
):
    """Run one phase of a training run and return its trained model; its log entries are appended to
    ``history``, tagged with ``name`` and with steps continuing after the last entry there.

    ``train(forward)`` does the work and returns ``(model, log history)``; ``forward`` (None without
    ``on_log``) passes entries on live. With ``keep`` the finished phase's weights and log are saved
    under ``phase_dir/final``, and a rerun loads them instead of training again.
    """
    from transformers import AutoModelForCausalLM

    done = Path(phase_dir) / "final"
    # the log is written after the weights: its presence means the phase was saved whole
    if keep and (done / FINISHED_LOG).exists():
        logger.info("phase %s finished in an earlier run: loading %s", name, done)
        model = from_pretrained(AutoModelForCausalLM, done, dtype=dtype)
        history.extend(json.loads((done / FINISHED_LOG).read_text()))
        return model.to(device) if device is not None else model
    step_offset = last_step(history)
    model, entries = train(ForwardLogs(on_log, name, step_offset) if on_log is not None else None)
    entries = [{**entry, "phase": name, "step": step_offset + entry.get("step", 0)} for entry in entries]
    if keep and is_main_process():
        model.save_pretrained(done, safe_serialization=True)
        (done / FINISHED_LOG).write_text(json.dumps(entries))
    history.extend(entries)
    return model


def _top_layers(model, top: int | None) -> list[int] | None:
    if top is None:
        return None
    total = model.config.num_hidden_layers
    return list(range(max(0, total - top), total))


def lora_config(model, lora):
    """The peft adapters ``train.lora`` describes (moalign.config.LoraParams) for ``model``."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        # adapters on the top layers only: backward then stops there, which on a CPU roughly
        # halves the step time; None adapts every layer
        layers_to_transform=_top_layers(model, lora.top_layers),
    )


def attach_lora(model, lora):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, lora))


def save_policy(model, tokenizer, out_dir, history: list[dict]) -> None:
    """The trained policy as a plain HF directory, with its log history in ``train_log.json``; written
    by the main process only when several train."""
    if not is_main_process():
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / FINISHED_LOG).write_text(json.dumps(history, indent=1))
