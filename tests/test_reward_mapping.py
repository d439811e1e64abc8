"""MOSLIM Eq. 11 and the running statistics, against values computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from moalign.rewards import MIN_STD, UNCONTROLLED, RewardStats, map_reward


def test_map_reward_hand_values_divide_by_all_dimensions() -> None:
    target = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.6, 0.5]])
    mean = torch.tensor([[0.5, 0.4, 0.3], [0.5, 0.4, 0.3]])
    std = torch.tensor([[0.2, 0.1, 0.4], [0.2, 0.1, 0.4]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # row 0: ((0.9-0.5)/0.2 + (0.2-0.4)/0.1) / 3 = (2 - 2) / 3 = 0
    # row 1: ((0.1-0.5)/0.2) / 3 = -2/3  (k = 3 dimensions, though only one is controlled)
    assert map_reward(target, mean, std, mask).tolist() == pytest.approx([0.0, -2 / 3], abs=1e-6)


def test_map_reward_ignores_masked_entries_even_when_undefined() -> None:
    target = torch.tensor([[0.8, float("nan")]])
    mean = torch.tensor([[0.6, float("nan")]])
    std = torch.tensor([[0.1, 0.0]])
    mask = torch.tensor([[1.0, 0.0]])
    assert map_reward(target, mean, std, mask).tolist() == pytest.approx([1.0])  # (0.2/0.1)/2


@pytest.mark.parametrize(
    ("std", "mask", "message"),
    [
        (torch.tensor([[0.0, 0.1]]), torch.tensor([[1.0, 1.0]]), "row 0, head 0"),
        (torch.tensor([[0.1, float("inf")]]), torch.tensor([[1.0, 1.0]]), "row 0, head 1"),
        (torch.tensor([[0.1, 0.1]]), torch.tensor([[1.0, 0.5]]), "only 0 and 1"),
    ],
)
def test_map_reward_refuses_what_would_be_nan(std, mask, message) -> None:
    with pytest.raises(ValueError, match=message):
        map_reward(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.4, 0.4]]), std, mask)


def test_map_reward_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match=r"\(batch, k\)"):
        map_reward(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 2), torch.ones(2, 3))


def _probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_running_statistics_match_the_whole_data_however_batched() -> None:
    generator = torch.Generator().manual_seed(0)
    head_a = torch.softmax(torch.randn(50, 5, generator=generator), dim=1)
    head_b = torch.softmax(torch.randn(50, 2, generator=generator), dim=1)
    whole = RewardStats(["a", "b"], [5, 2])
    whole.update([head_a, head_b])
    batched = RewardStats(["a", "b"], [5, 2])
    for start, stop in ((0, 7), (7, 8), (8, 31), (31, 50)):
        batched.update([head_a[start:stop], head_b[start:stop]])
    for head, data in enumerate((head_a, head_b)):
        expected_mean = data.double().mean(dim=0)
        expected_std = data.double().std(dim=0, unbiased=False)
        for stats in (whole, batched):
            assert torch.allclose(stats.mean[head], expected_mean, atol=1e-9)
            assert torch.allclose(stats.std(head), expected_std.clamp_min(MIN_STD), atol=1e-9)
    assert batched.count == 50


def test_rewards_from_probabilities_and_targets_by_hand() -> None:
    stats = RewardStats(["helpfulness", "harmless"], [3, 2])
    # helpfulness head: class 2 probabilities 0.2 and 0.6 -> mean 0.4, population std 0.2
    # harmless head: class 1 probabilities 0.5 and 0.9 -> mean 0.7, std 0.2
    stats.update([_probs([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]), _probs([[0.5, 0.5], [0.1, 0.9]])])
    probs = [_probs([[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]), _probs([[0.3, 0.7], [0.2, 0.8]])]
    targets = torch.tensor([[2, 1], [2, UNCONTROLLED]])
    # row 0: ((0.8-0.4)/0.2 + (0.7-0.7)/0.2) / 2 = 1.0; row 1: ((0.4-0.4)/0.2) / 2 = 0
    assert stats.rewards(probs, targets).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_targets_outside_a_head_name_the_row_and_dimension() -> None:
    stats = RewardStats(["helpfulness", "harmless"], [3, 2])
    stats.update([_probs([[0.5, 0.3, 0.2]]), _probs([[0.5, 0.5]])])
    with pytest.raises(ValueError, match=r"row 1: target class 2 for harmless, which has classes 0-1"):
        stats.lookup(torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(ValueError, match=r"targets must be \(batch, 2\)"):
        stats.lookup(torch.tensor([[0, 1, 1]]))


def test_a_constant_probability_gets_the_floor_not_zero() -> None:
    stats = RewardStats(["a"], [2])
    stats.update([_probs([[0.5, 0.5], [0.5, 0.5]])])
    assert stats.std(0).tolist() == [MIN_STD, MIN_STD]
    reward = stats.rewards([_probs([[0.6, 0.4]])], torch.tensor([[0]]))
    assert math.isfinite(float(reward[0])) and float(reward[0]) == pytest.approx(0.1 / MIN_STD, rel=1e-4)


def test_statistics_round_trip_and_bad_files(tmp_path) -> None:
    # "b" before "a": the file's sorted keys must not reorder the heads
    stats = RewardStats(["b", "a"], [2, 3])
    stats.update([_probs([[0.3, 0.7], [0.6, 0.4]]), _probs([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])])
    stats.save(tmp_path)
    loaded = RewardStats.load(tmp_path)
    assert loaded.dimensions == ["b", "a"] and loaded.n_classes == [2, 3] and loaded.count == 2
    for head in range(2):
        assert torch.equal(loaded.mean[head], stats.mean[head])
        assert torch.allclose(loaded.std(head), stats.std(head))
    payload = json.loads((tmp_path / "reward_stats.json").read_text())
    payload["heads"]["a"]["mean"] = [0.1]
    (tmp_path / "reward_stats.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="head a: 1 means for 3 classes"):
        RewardStats.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="train_reward stage"):
        RewardStats.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="never called"):
        RewardStats(["a"], [2]).std(0)
