"""Control-tag prompts for MOSLIM's policy optimisation, and the rewards TRL's trainers call.

MOSLIM trains one policy for every combination of preferences: each training prompt carries control
tags (``<correctness 4><verbosity 2>``, the ``moslim`` style of :mod:`moalign.control_tags`) asking
for an intensity on some of the dimensions, and the reward is Eq. 11 on the reward model's heads
(:func:`moalign.rewards.mapping.map_reward`): how much more probable than usual the head finds the
requested intensity. :func:`control_prompts` draws the tags, seeded; :class:`MappedReward` is the
reward callable for TRL's RLOO and Online-DPO trainers.

The baselines score the same reward model without tags: :class:`ScalarisedReward` is MORLHF's linear
scalarisation (fixed weights over the heads' expected intensities); with one weight at 1 it is the
single-dimension reward each Rewarded Soups policy is trained on.

TRL calls a reward function with keyword arguments ``prompts`` and ``completions`` (plain strings, or
chat messages for a conversational dataset) plus every dataset column; it must return one float per
completion and accept other keywords.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from moalign.control_tags import ControlTagError, parse_tags, tag_prompt
from moalign.rewards.mapping import UNCONTROLLED, RewardStats

STYLE = "moslim"


def sample_targets(
    rng: random.Random, dimensions: Sequence[str], intensities: Sequence[Sequence[int]]
) -> dict[str, int]:
    """A random non-empty set of controlled dimensions, each with a random intensity among its
    ``intensities``: the policy must learn every combination, including prompts that control a
    single dimension. A dimension with no intensity to ask for is never controlled."""
    controllable = [i for i in range(len(dimensions)) if intensities[i]]
    if not controllable:
        raise ValueError("no dimension has an intensity to ask for")
    size = rng.randint(1, len(controllable))
    chosen = sorted(rng.sample(controllable, size))
    return {dimensions[i]: rng.choice(list(intensities[i])) for i in chosen}


def control_prompts(
    prompts: Sequence[tuple[str, str]],
    dimensions: Sequence[str],
    n_classes: Sequence[int],
    seed: int,
    intensities: Sequence[Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """One tagged prompt per (id, text), targets drawn with ``seed`` among each head's ``intensities``
    (all 1..n_classes by default; the reward statistics' supported ones in training): rows of
    ``id``, ``prompt`` (the tagged text), ``targets`` ({dimension: intensity})."""
    rng = random.Random(seed)
    allowed = intensities if intensities is not None else [range(1, n + 1) for n in n_classes]
    rows = []
    for prompt_id, text in prompts:
        targets = sample_targets(rng, dimensions, allowed)
        rows.append({"id": prompt_id, "prompt": tag_prompt(text, targets, dimensions, style=STYLE,
                                                           levels=(1, max(n_classes))),
                     "targets": targets})
    return rows


def target_classes(
    prompts: Sequence[str], dimensions: Sequence[str], n_classes: Sequence[int]
) -> tuple[torch.Tensor, list[str]]:
    """The requested class per head, (batch, k) with :data:`UNCONTROLLED` where a prompt names no
    intensity, and the prompts without their tags. An intensity above a head's classes raises
    :class:`~moalign.control_tags.ControlTagError` naming the prompt and the dimension."""
    targets = torch.full((len(prompts), len(dimensions)), UNCONTROLLED, dtype=torch.long)
    stripped = []
    for row, prompt in enumerate(prompts):
        try:
            requested, text = parse_tags(prompt, dimensions, levels=(1, max(n_classes)))
        except ControlTagError as error:
            raise ControlTagError(f"prompt {row}: {error}") from None
        for dimension, level in requested.items():
            head = list(dimensions).index(dimension)
            if level > n_classes[head]:
                raise ControlTagError(
                    f"prompt {row}: <{dimension} {level}> asks for more than the reward head's "
                    f"{n_classes[head]} intensities"
                )
            targets[row, head] = level - 1
        stripped.append(text)
    return targets, stripped


def chat_text(item: Any) -> str:
    """A prompt or completion as text: TRL passes strings, or chat messages when the dataset is
    conversational (the prompt's last user turn; the completion's content)."""
    if isinstance(item, str):
        return item
    messages = [m for m in item if isinstance(m, Mapping)]
    users = [m for m in messages if m.get("role") == "user"]
    chosen = users[-1] if users else messages[-1]
    return str(chosen.get("content", ""))


class _RewardModelReward:
    """Scores completions with the multi-head reward model; subclasses turn the heads' probabilities
    into one float per completion."""

    __name__ = "reward"  # TRL logs each reward function under its __name__

    def __init__(self, model, tokenizer, dimensions: Sequence[str], n_classes: Sequence[int], *,
                 batch_size: int = 16, max_length: int = 512):
        self.model, self.tokenizer = model, tokenizer
        self.dimensions, self.n_classes = list(dimensions), list(n_classes)
        self.batch_size, self.max_length = batch_size, max_length

    def _probabilities(self, prompts: Sequence[str], completions: Sequence[str]) -> list[torch.Tensor]:
        from moalign.rewards.model import score_texts

        return score_texts(self.model, self.tokenizer, prompts, completions,
                           batch_size=self.batch_size, max_length=self.max_length)


class MappedReward(_RewardModelReward):
    """MOSLIM's reward: Eq. 11 on the requested intensities of each prompt's control tags."""

    __name__ = "moslim_mapped_reward"

    def __init__(self, model, tokenizer, stats: RewardStats, **options):
        super().__init__(model, tokenizer, stats.dimensions, stats.n_classes, **options)
        self.stats = stats

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        targets, stripped = target_classes([chat_text(p) for p in prompts], self.dimensions, self.n_classes)
        # the reward model was trained on untagged prompts: it judges the answer to the task itself
        probs = self._probabilities(stripped, [chat_text(c) for c in completions])
        return [float(r) for r in self.stats.rewards(probs, targets)]


def expected_intensity(probs: torch.Tensor) -> torch.Tensor:
    """The head's expected intensity (1..n) per row of a (batch, n) probability tensor."""
    levels = torch.arange(1, probs.shape[1] + 1, dtype=probs.dtype, device=probs.device)
    return probs @ levels


class ScalarisedReward(_RewardModelReward):
    """MORLHF's reward: ``sum_i w_i E_i[intensity] / sum_i w_i`` over the heads, prompts untagged.
    One weight at 1 and the rest 0 is a single-dimension reward (a Rewarded Soups ingredient)."""

    __name__ = "scalarised_reward"

    def __init__(self, model, tokenizer, dimensions, n_classes, weights: Sequence[float], **options):
        super().__init__(model, tokenizer, dimensions, n_classes, **options)
        if len(weights) != len(self.dimensions):
            raise ValueError(f"{len(weights)} weights for {len(self.dimensions)} reward heads")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
        self.weights = torch.tensor([w / sum(weights) for w in weights], dtype=torch.float32)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        probs = self._probabilities([chat_text(p) for p in prompts], [chat_text(c) for c in completions])
        per_head = torch.stack([expected_intensity(p.float().cpu()) for p in probs], dim=1)
        return [float(r) for r in per_head @ self.weights]
