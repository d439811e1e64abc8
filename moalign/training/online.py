"""Online policy optimisation against the multi-head reward model: MOSLIM and its baselines.

``train.method`` picks the recipe, ``train.online`` its settings:

* ``moslim_rloo``, ``moslim_online_dpo``, ``moslim_ppo``: MOSLIM. Every training prompt gets control
  tags for a random subset of the dimensions (:func:`moalign.rewards.control.control_prompts`,
  seeded), and the reward is Eq. 11 on the reward model's heads
  (:class:`~moalign.rewards.control.MappedReward`). RLOO is TRL's ``RLOOTrainer``, Online-DPO TRL's
  experimental ``OnlineDPOTrainer`` (both take reward callables). PPO is moalign's own
  (:mod:`moalign.training.ppo`): TRL 1.16 no longer has a PPO trainer.
* ``morlhf``: MORLHF, one policy on the linear scalarisation of the heads' expected intensities with
  fixed weights (``train.online.morlhf_weights``), prompts untagged.
* ``rewarded_soups``: Rewarded Soups, one policy per dimension (weight 1 on that head), then the
  policies' weights averaged with ``train.online.soup_weights``. With LoRA each policy's adapter is
  merged into full weights before averaging: averaging the A and B matrices separately would not
  average the updates B·A.

Both baselines run ``train.online.baseline_algorithm`` (RLOO by default; the MOSLIM paper's
baselines used PPO). Checkpoints resume like the offline methods; the final policy is a plain
(merged) model directory, so evaluation and registration treat every method alike.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from moalign.data.schema import PreferenceRow
from moalign.launch import is_main_process
from moalign.models import from_pretrained
from moalign.training.methods import algorithm_of
from moalign.training.runs import (
    attach_lora,
    claim_checkpoints,
    epoch_seeded,
    fingerprint,
    last_step,
    lora_config,
    resumable_checkpoint,
    run_phase,
    save_policy,
)

logger = logging.getLogger(__name__)

#: where each algorithm's trainer logs a step's mean reward-model score (before the KL penalty)
REWARD_LOG_KEYS = {"rloo": "reward", "online_dpo": "objective/scores", "ppo": "score_mean"}
PROMPT_REWARDS = "prompt_rewards.jsonl"  # in a phase's checkpoint folder: PromptRewardLog's records


class PromptRewardLog:
    """A reward callable that also records, for every scored batch, each prompt's mean reward and the
    optimizer step it trains, appended to ``path`` (JSON lines).

    A step's logged mean reward mixes the trend with which prompts the step happened to draw; with
    each prompt's rewards over the run, :func:`moalign.training.runs.reward_trend` can separate the two.
    The step is the trainer's (``trainer_state``, as TRL passes it), or ``step`` (moalign's PPO).
    Every construction starts a new ``attempt``: a resumed run rescores the steps after its
    checkpoint, and the reader keeps each step's newest attempt.
    """

    def __init__(self, reward: Callable[..., Sequence[float]], path: Path):
        self.reward, self.path = reward, Path(path)
        self.__name__ = getattr(reward, "__name__", "reward")  # TRL logs rewards under this name
        text = self.path.read_text() if self.path.is_file() else ""
        self.attempt = 1 + max((record["attempt"] for record in _records(text)), default=0)
        if text and not text.endswith("\n"):
            with self.path.open("a") as handle:  # end a line torn by a crash, or the next record joins it
                handle.write("\n")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        from moalign.rewards.control import chat_text

        rewards = list(self.reward(prompts=prompts, completions=completions, **kwargs))
        state = kwargs.get("trainer_state")
        step = state.global_step + 1 if state is not None else kwargs.get("step")
        if step is not None:
            by_prompt: dict[str, list[float]] = defaultdict(list)
            for prompt, reward in zip(prompts, rewards, strict=True):
                if reward is not None and math.isfinite(reward):
                    by_prompt[prompt_key(chat_text(prompt))].append(float(reward))
            record = {"attempt": self.attempt, "step": int(step),
                      "rewards": {key: sum(values) / len(values) for key, values in by_prompt.items()}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        return rewards


def prompt_key(text: str) -> str:
    return fingerprint(text)


def _records(text: str) -> list[dict]:
    # a crash mid-write leaves at most a torn last line: it is the one record that is skipped
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def prompt_reward_entries(path: Path, phase: str, step_offset: int) -> list[dict]:
    """History entries ``{"phase", "step", "prompt_rewards": {prompt key: mean reward}}`` from a
    :class:`PromptRewardLog` file: per step the newest attempt's records, merged."""
    newest: dict[int, tuple[int, dict[str, list[float]]]] = {}
    path = Path(path)
    for record in _records(path.read_text() if path.is_file() else ""):
        attempt, merged = newest.get(record["step"], (0, {}))
        if record["attempt"] > attempt:
            attempt, merged = record["attempt"], {}
        if record["attempt"] == attempt:
            for key, value in record["rewards"].items():
                merged.setdefault(key, []).append(value)
            newest[record["step"]] = (attempt, merged)
    return [{"phase": phase, "step": step_offset + step,
             "prompt_rewards": {key: sum(v) / len(v) for key, v in rewards.items()}}
            for step, (_, rewards) in sorted(newest.items())]


def training_prompts(rows: Sequence[PreferenceRow], max_prompts: int | None) -> list[tuple[str, str]]:
    """The distinct (prompt id, prompt) of the train pairs, in first-seen order, at most ``max_prompts``."""
    seen: dict[str, str] = {}
    for row in rows:
        seen.setdefault(row.prompt_id, row.prompt)
    return list(seen.items())[:max_prompts]


def tag_intensities(stats, asked: Mapping[str, Sequence[int]] | None) -> list[list[int]]:
    """Per reward head, the intensities MOSLIM's control tags ask for: those in ``asked``
    (``train.online.tag_intensities``) or else every one some training response had. The heads never
    learned an intensity no response had, so asking for one is an error, and by default it is left out."""
    asked = asked or {}
    supported = stats.supported_intensities()
    result = []
    for dimension, n, taught in zip(stats.dimensions, stats.n_classes, supported, strict=True):
        if dimension not in asked:
            if len(taught) < n:
                logger.warning("%s: no training response has intensity %s; tags do not ask for it", dimension,
                               ", ".join(str(i) for i in range(1, n + 1) if i not in taught))
            result.append(taught)
            continue
        untaught = [level for level in asked[dimension] if level not in taught]
        if untaught:
            raise ValueError(f"train.online.tag_intensities.{dimension} asks for {untaught}, which no training "
                             f"response of the reward model had (it had {taught})")
        result.append(sorted(set(asked[dimension])))
    return result


def uniform(weights: Sequence[float] | None, k: int) -> list[float]:
    return [1.0 / k] * k if weights is None else [w / sum(weights) for w in weights]


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict:
    """Rewarded Soups' interpolation: ``sum_i weights_i * theta_i`` per floating-point tensor (weights
    on the simplex); integer buffers must agree and are taken as they are."""
    if not state_dicts or len(state_dicts) != len(weights):
        raise ValueError(f"{len(state_dicts)} state dicts for {len(weights)} weights")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"soup weights must be non-negative and sum to 1, got {list(weights)}")
    keys = set(state_dicts[0])
    for index, state in enumerate(state_dicts[1:], start=1):
        if set(state) != keys:
            raise ValueError(f"policy {index} has other parameters than policy 0: not the same architecture")
    soup = {}
    for key, first in state_dicts[0].items():
        if first.is_floating_point():
            total = torch.zeros_like(first, dtype=torch.float32)
            for weight, state in zip(weights, state_dicts, strict=True):
                total += weight * state[key].to(torch.float32)
            soup[key] = total.to(first.dtype)
        else:
            if any(not torch.equal(first, state[key]) for state in state_dicts[1:]):
                raise ValueError(f"integer tensor {key} differs between the policies")
            soup[key] = first.clone()
    return soup


def cook_soup(model, policies: Sequence[dict[str, torch.Tensor]], soup_weights, dimensions: Sequence[str], *,
              step: int) -> dict:
    """Load the weighted average of ``policies`` into ``model``; returns the history entry that records it."""
    weights = uniform(soup_weights, len(dimensions))
    model.load_state_dict(average_state_dicts(policies, weights))
    return {"phase": "soup", "step": step, **{f"soup_weight/{d}": w for d, w in zip(dimensions, weights, strict=True)}}


def load_reward(reward_dir, dimensions: Sequence[str], n_classes: Sequence[int], dtype: torch.dtype, *,
                max_length: int, batch_size: int = 16):
    """The reward model, its tokenizer and its running statistics; heads checked against the config."""
    from transformers import AutoTokenizer

    from moalign.models import pick_device
    from moalign.rewards.mapping import RewardStats
    from moalign.rewards.model import MultiHeadRewardModel

    model = MultiHeadRewardModel.load(reward_dir, dimensions, n_classes, dtype=dtype, device=pick_device())
    model.requires_grad_(False)
    return model, from_pretrained(AutoTokenizer, reward_dir), RewardStats.load(reward_dir)


def reward_phases(method: str, prompts: Sequence[tuple[str, str]], reward_dir, online, *, dimensions: Sequence[str],
                  n_classes: Sequence[int], dtype: torch.dtype, max_length: int, seed: int):
    """The prompts ``method`` trains on (tagged for MOSLIM) and its phases as (name, reward callable):
    one phase, or one per dimension for a soup."""
    from moalign.rewards.control import MappedReward, ScalarisedReward, control_prompts
    from moalign.training.methods import get_method

    reward_model, reward_tokenizer, stats = load_reward(reward_dir, dimensions, n_classes, dtype, max_length=max_length)
    options = {"max_length": max_length}
    k = len(dimensions)
    recipe = get_method(method).reward
    if recipe == "mapped":
        intensities = tag_intensities(stats, online.tag_intensities)
        texts = [row["prompt"] for row in control_prompts(prompts, dimensions, n_classes, seed, intensities)]
        return texts, [(method, MappedReward(reward_model, reward_tokenizer, stats, **options))]
    texts = [text for _, text in prompts]
    if recipe == "scalarised":
        weights = uniform(online.morlhf_weights, k)
        return texts, [(method, ScalarisedReward(reward_model, reward_tokenizer, dimensions, n_classes, weights,
                                                 **options))]
    if recipe == "soup":
        return texts, [
            (f"soup-{d}", ScalarisedReward(reward_model, reward_tokenizer, dimensions, n_classes,
                                           [1.0 if j == i else 0.0 for j in range(k)], **options))
            for i, d in enumerate(dimensions)
        ]
    raise ValueError(f"{method!r} is not an online method")


def _dataset(prompts: Sequence[str]):
    from datasets import Dataset

    # conversational rows: the trainers apply the policy's chat template, as evaluation does
    return Dataset.from_list([{"prompt": [{"role": "user", "content": text}]} for text in prompts])


def _common_args(train, online, output_dir: Path, dtype: torch.dtype, seed: int) -> dict:
    return {
        "output_dir": str(output_dir), "learning_rate": train.learning_rate, "num_train_epochs": train.epochs,
        "gradient_accumulation_steps": train.gradient_accumulation_steps, "logging_steps": train.logging_steps,
        "save_strategy": "steps", "save_steps": train.save_steps, "save_total_limit": 2, "report_to": [],
        "seed": seed, "temperature": online.temperature, "warmup_steps": train.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        # fp32 unless the model is loaded in half precision: bf16 matmuls are ~20x slower on CPUs
        "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16,
    }


def _run_trl(algorithm: str, model, tokenizer, prompts, reward, output_dir: Path, *, train, seed, callbacks):
    from moalign.training.runs import with_atomic_checkpoints

    online = train.online
    common = _common_args(train, online, output_dir, model.dtype, seed)
    peft = lora_config(model, train.lora) if train.lora.enabled else None
    if algorithm == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        args = RLOOConfig(
            **common, per_device_train_batch_size=train.batch_size * online.num_generations,
            num_generations=online.num_generations, max_completion_length=online.max_completion_length,
            beta=online.kl_beta,
        )
        trainer = with_atomic_checkpoints(epoch_seeded(RLOOTrainer))(
            model=model, reward_funcs=reward, args=args, train_dataset=_dataset(prompts), processing_class=tokenizer,
            peft_config=peft, callbacks=list(callbacks))
    elif algorithm == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        args = OnlineDPOConfig(
            **common, per_device_train_batch_size=train.batch_size, max_new_tokens=online.max_completion_length,
            beta=online.kl_beta,
        )
        trainer = with_atomic_checkpoints(OnlineDPOTrainer)(
            model=model, reward_funcs=[reward], args=args, train_dataset=_dataset(prompts), processing_class=tokenizer,
            peft_config=peft, callbacks=list(callbacks))
    else:
        raise ValueError(f"unknown online algorithm {algorithm!r}")
    trainer.train(resume_from_checkpoint=resumable_checkpoint(output_dir))
    final = trainer.model.merge_and_unload() if peft is not None else trainer.model
    return final, trainer.state.log_history


def _run_ppo(model, tokenizer, prompts, reward, output_dir: Path, *, train, seed, on_log):
    from transformers import set_seed

    from moalign.training.ppo import PPOSettings, train_ppo

    online = train.online
    # the adapters' random start depends on the seed alone, as in TRL's trainers: not on what an
    # earlier phase drew, which a rerun that loads that phase's saved weights does not draw again
    set_seed(seed)
    policy = attach_lora(model, train.lora) if train.lora.enabled else model
    settings = PPOSettings(
        learning_rate=train.learning_rate, epochs=train.epochs, batch_size=train.batch_size,
        ppo_epochs=online.ppo_epochs, clip_range=online.clip_range, value_clip_range=online.clip_range,
        vf_coef=online.vf_coef, kl_beta=online.kl_beta, max_new_tokens=online.max_completion_length,
        temperature=online.temperature, seed=seed, logging_steps=train.logging_steps, save_steps=train.save_steps,
    )
    history = train_ppo(policy, tokenizer, list(prompts), reward, settings, output_dir, on_log=on_log)
    final = policy.merge_and_unload() if train.lora.enabled else policy
    return final, history


def train_online(
    rows: Sequence[PreferenceRow],
    model_dir,
    reward_dir,
    out_dir,
    checkpoint_dir,
    *,
    train,  # moalign.config.TrainParams
    dimensions: Sequence[str],
    n_classes: Sequence[int],
    dtype: str = "auto",
    seed: int = 0,
    fingerprint: str,
    on_log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``train.method`` online and save a plain (merged) model directory in ``out_dir``; returns
    the log history, each entry tagged with its phase and a step counted across phases."""
    from transformers import set_seed

    from moalign.models import load_model_and_tokenizer, resolve_dtype

    set_seed(seed)
    method, online = train.method, train.online
    algorithm = algorithm_of(method, online)
    checkpoint_dir = Path(checkpoint_dir)
    claim_checkpoints(checkpoint_dir, fingerprint)
    prompts = training_prompts(rows, online.max_prompts)
    if not prompts:
        raise ValueError("no training prompts: the train pairs are empty")
    texts, phases = reward_phases(method, prompts, reward_dir, online, dimensions=dimensions, n_classes=n_classes,
                                  dtype=resolve_dtype(dtype), max_length=train.max_length, seed=seed)
    logger.info("%s: %s on %d prompts, %d phase(s)", method, algorithm, len(texts), len(phases))

    history: list[dict] = []
    policies: list[dict[str, torch.Tensor]] = []
    tokenizer = None
    for name, reward in phases:
        phase_dir = checkpoint_dir if len(phases) == 1 else checkpoint_dir / name

        step_offset = last_step(history)
        recorded = PromptRewardLog(reward, phase_dir / PROMPT_REWARDS) if is_main_process() else reward

        def run(forward, reward=recorded, phase_dir=phase_dir):
            nonlocal tokenizer
            # every phase starts from the starting policy: soup ingredients are independent fine-tunes
            model, tokenizer = load_model_and_tokenizer(model_dir, dtype)
            if algorithm == "ppo":
                # moalign's PPO hands over plain log entries, not Trainer callbacks
                return _run_ppo(model, tokenizer, texts, reward, phase_dir, train=train, seed=seed,
                                on_log=forward.entry if forward is not None else None)
            return _run_trl(algorithm, model, tokenizer, texts, reward, phase_dir, train=train, seed=seed,
                            callbacks=[forward] if forward is not None else [])

        # a soup keeps every ingredient: a rerun reloads the finished ones instead of training them again
        model = run_phase(name, phase_dir, history, run, on_log=on_log, keep=len(phases) > 1,
                          dtype=resolve_dtype(dtype))
        history.extend(prompt_reward_entries(phase_dir / PROMPT_REWARDS, name, step_offset))
        if len(phases) > 1:
            policies.append({key: value.detach().cpu() for key, value in model.state_dict().items()})

    if tokenizer is None:
        model, tokenizer = load_model_and_tokenizer(model_dir, dtype)
    if len(policies) > 1:
        history.append(cook_soup(model, policies, online.soup_weights, dimensions, step=last_step(history)))
    save_policy(model, tokenizer, out_dir, history)
    return history
