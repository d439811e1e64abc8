"""The bookkeeping every training run shares: the offline preference methods (``preference.py``), the
online ones (``online.py``), moalign's PPO (``ppo.py``) and the reward model (``rewards/training.py``).

* A checkpoint folder is *claimed* by a run's fingerprint: checkpoints written under another
  fingerprint (other data or settings) are deleted, never resumed.
* A run of several phases (SPO's rounds, CPO's SFT then DPO, Rewarded Soups' ingredients) saves each
  finished phase's weights, so a rerun after a crash skips the phases it already finished.
* Log entries carry their phase and a step counted across phases, both in the returned history and
  as they are forwarded live (to MLflow, by the train_policy component).
* LoRA adapters as ``train.lora`` describes them, and the final policy as a plain HF folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from moalign.launch import is_main_process, main_process_first
from moalign.models import from_pretrained

logger = logging.getLogger(__name__)

FINISHED_LOG = "train_log.json"
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

    The Trainer writes ``trainer_state.json`` after the weights, optimizer and random states, so a
    checkpoint whose state file is missing or unreadable was cut short by a kill: it is removed with
    a warning and the one before it is used. (``get_last_checkpoint`` would pick it, and a truncated
    safetensors file would then fail every rerun.)
    """
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
