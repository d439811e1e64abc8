"""Control-tag prompts for MOSLIM and the reward callables TRL calls."""

from __future__ import annotations

import pytest
import torch

from moalign.control_tags import ControlTagError
from moalign.rewards import UNCONTROLLED, RewardStats
from moalign.rewards.control import (
    MappedReward,
    ScalarisedReward,
    control_prompts,
    expected_intensity,
    target_classes,
)

DIMS = ["correctness", "verbosity", "harmlessness"]
CLASSES = [5, 3, 2]


def test_control_prompts_are_seeded_and_parse_back() -> None:
    prompts = [(f"p{i}", f"Question {i}?") for i in range(40)]
    first = control_prompts(prompts, DIMS, CLASSES, seed=3)
    assert first == control_prompts(prompts, DIMS, CLASSES, seed=3)
    assert first != control_prompts(prompts, DIMS, CLASSES, seed=4)
    targets, stripped = target_classes([r["prompt"] for r in first], DIMS, CLASSES)
    assert stripped == [text for _, text in prompts]
    for row, entry in zip(targets.tolist(), first, strict=True):
        assert entry["targets"]  # never an uncontrolled prompt
        for head, d in enumerate(DIMS):
            expected = entry["targets"].get(d)
            assert row[head] == (UNCONTROLLED if expected is None else expected - 1)
            if expected is not None:
                assert 1 <= expected <= CLASSES[head]
    # over 40 prompts every dimension is controlled somewhere and left free somewhere
    assert all((targets[:, h] == UNCONTROLLED).any() and (targets[:, h] != UNCONTROLLED).any() for h in range(3))


def test_tags_ask_only_for_the_intensities_the_reward_model_was_taught() -> None:
    stats = RewardStats(DIMS, CLASSES)
    # no training response scored correctness 2-4, and none was scored on harmlessness at all
    stats.count_labels(torch.tensor([[0, 0, -100], [4, 2, -100], [4, 1, -100]]))
    assert stats.supported_intensities() == [[1, 5], [1, 2, 3], []]
    rows = control_prompts([(f"p{i}", "Q?") for i in range(60)], DIMS, CLASSES, seed=0,
                           intensities=stats.supported_intensities())
    asked = {d: {r["targets"][d] for r in rows if d in r["targets"]} for d in DIMS}
    assert asked == {"correctness": {1, 5}, "verbosity": {1, 2, 3}, "harmlessness": set()}
    assert RewardStats.from_dict(stats.to_dict()).supported_intensities() == [[1, 5], [1, 2, 3], []]
    # statistics saved before the counts existed allow every intensity
    legacy = stats.to_dict()
    for head in legacy["heads"].values():
        del head["label_counts"]
    assert RewardStats.from_dict(legacy).supported_intensities() == [[1, 2, 3, 4, 5], [1, 2, 3], [1, 2]]


def test_target_classes_errors_name_the_prompt() -> None:
    with pytest.raises(ControlTagError, match=r"prompt 1: <harmlessness 3> asks for more than .* 2 intensities"):
        target_classes(["<correctness 2>\nQ", "<harmlessness 3>\nQ"], DIMS, CLASSES)
    with pytest.raises(ControlTagError, match="prompt 0: .*helpfulness"):
        target_classes(["<helpfulness 2>\nQ"], DIMS, CLASSES)
    targets, stripped = target_classes(["No tags here."], DIMS, CLASSES)
    assert targets.tolist() == [[UNCONTROLLED] * 3] and stripped == ["No tags here."]


def _stats() -> RewardStats:
    stats = RewardStats(DIMS, CLASSES)
    # per head, two rows whose probabilities give mean and std by hand
    stats.update([
        torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.2, 0.2, 0.6]]),
        torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.5, 0.4]]),
        torch.tensor([[0.5, 0.5], [0.1, 0.9]]),
    ])
    return stats


def test_mapped_reward_strips_tags_and_applies_eq_11(monkeypatch) -> None:
    seen = {}

    def fake_probabilities(self, prompts, completions):
        seen["prompts"], seen["completions"] = list(prompts), list(completions)
        return [torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.8]]), torch.tensor([[0.3, 0.3, 0.4]]),
                torch.tensor([[0.5, 0.5]])]

    monkeypatch.setattr(MappedReward, "_probabilities", fake_probabilities)
    reward = MappedReward(model=None, tokenizer=None, stats=_stats())
    # conversational, as TRL passes a chat dataset
    prompts = [[{"role": "user", "content": "<correctness 5><verbosity 2>\nWhat is 2+2?"}]]
    completions = [[{"role": "assistant", "content": "4"}]]
    values = reward(prompts=prompts, completions=completions, trainer_state=None, id=["x"])
    assert seen == {"prompts": ["What is 2+2?"], "completions": ["4"]}
    # correctness class 4: mean 0.4, std 0.2 -> (0.8-0.4)/0.2 = 2; verbosity class 1: mean 0.4,
    # std 0.1 -> (0.3-0.4)/0.1 = -1; harmlessness uncontrolled; k = 3 -> (2 - 1) / 3
    assert values == pytest.approx([1 / 3], abs=1e-5)
    assert reward.__name__ == "moslim_mapped_reward"


def test_scalarised_reward_weights_expected_intensities(monkeypatch) -> None:
    probs = [torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
    monkeypatch.setattr(ScalarisedReward, "_probabilities", lambda self, p, c: probs)
    reward = ScalarisedReward(None, None, DIMS, CLASSES, weights=[2.0, 1.0, 1.0])
    # expected intensities 5, 1, 1.5; weights normalised 0.5, 0.25, 0.25
    assert reward(prompts=["Q"], completions=["A"]) == pytest.approx([0.5 * 5 + 0.25 * 1 + 0.25 * 1.5])
    single = ScalarisedReward(None, None, DIMS, CLASSES, weights=[0.0, 1.0, 0.0])
    assert single(prompts=["Q"], completions=["A"]) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="2 weights for 3 reward heads"):
        ScalarisedReward(None, None, DIMS, CLASSES, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="positive sum"):
        ScalarisedReward(None, None, DIMS, CLASSES, weights=[0.0, 0.0, 0.0])


def test_expected_intensity() -> None:
    assert expected_intensity(torch.tensor([[0.5, 0.5], [0.0, 1.0]])).tolist() == [1.5, 2.0]
