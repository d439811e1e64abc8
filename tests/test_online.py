"""Online policy optimisation against the reward model: MOSLIM (RLOO, Online-DPO), MORLHF and
Rewarded Soups on the tiny model, and the soup's weight averaging by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from moalign.config import Params
from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.training.online import average_state_dicts, training_prompts, uniform

ROOT = Path(__file__).resolve().parents[1]
DIMS = ["correctness", "instruction_following", "verbosity", "harmlessness"]
CLASSES = [5, 5, 5, 2]


def _rows(n: int = 4) -> list[PreferenceRow]:
    return [
        PreferenceRow(id=f"r{i}", source="t", prompt_id=f"q{i % 3}", split="train", prompt=f"Question {i % 3}?",
                      chosen=ScoredResponse(text="Yes.", scores=dict.fromkeys(DIMS, 4)),
                      rejected=ScoredResponse(text="No.", scores=dict.fromkeys(DIMS, 2)))
        for i in range(n)
    ]


def test_training_prompts_are_distinct_and_capped() -> None:
    assert training_prompts(_rows(6), None) == [("q0", "Question 0?"), ("q1", "Question 1?"), ("q2", "Question 2?")]
    assert training_prompts(_rows(6), 2) == [("q0", "Question 0?"), ("q1", "Question 1?")]


def test_average_state_dicts_by_hand() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([3])}
    soup = average_state_dicts([a, b], [0.25, 0.75])
    assert soup["w"].tolist() == [2.5, 5.0] and soup["n"].tolist() == [3]
    with pytest.raises(ValueError, match="sum to 1"):
        average_state_dicts([a, b], [0.5, 0.6])
    with pytest.raises(ValueError, match="integer tensor n differs"):
        average_state_dicts([a, {"w": b["w"], "n": torch.tensor([4])}], [0.5, 0.5])
    with pytest.raises(ValueError, match="other parameters"):
        average_state_dicts([a, {"w": b["w"]}], [0.5, 0.5])
    assert uniform(None, 4) == [0.25] * 4 and uniform([1, 3], 2) == [0.25, 0.75]


def test_epoch_seeded_sampler_orders_an_epoch_by_its_number_alone() -> None:
    from trl.trainer.utils import RepeatSampler

    from moalign.training.runs import EpochSeededSampler

    def trl_sampler():
        return RepeatSampler(range(8), mini_repeat_count=2, batch_size=4, seed=3)

    def last_order(epochs):
        sampler = EpochSeededSampler(trl_sampler())
        for epoch in epochs:
            sampler.set_epoch(epoch)
            order = list(sampler)
        return order

    straight = last_order([0, 1, 2])
    assert last_order([2]) == straight  # a run resumed in epoch 2 draws what an unbroken one did
    assert last_order([0]) == list(trl_sampler())  # epoch 0: TRL's own order
    assert last_order([1]) != last_order([0]) and sorted(straight) == sorted(list(trl_sampler()))
    assert len(EpochSeededSampler(trl_sampler())) == 16


@pytest.fixture(scope="module")
def reward_dir(untrained_reward_dir) -> Path:
    """An untrained reward model with statistics: enough to give the policy a reward signal."""
    return untrained_reward_dir(DIMS, CLASSES)


def _train(method: str, **online):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["reward"]["classes"] = {"harmlessness": 2}
    # no warmup: with one or two steps the learning rate would stay at 0
    raw["train"].update(method=method, batch_size=2, epochs=1, save_steps=50, learning_rate=1e-3, warmup_ratio=0.0)
    raw["train"]["online"].update(max_prompts=2, num_generations=2, max_completion_length=6, **online)
    return Params.model_validate(raw)


@pytest.mark.parametrize(
    ("method", "online"),
    [
        ("moslim_rloo", {}),
        pytest.param("moslim_ppo", {}, marks=pytest.mark.slow),  # tests/test_ppo.py covers the algorithm
        pytest.param("moslim_online_dpo", {}, marks=pytest.mark.slow),
        pytest.param("morlhf", {"morlhf_weights": [1, 0, 0, 1], "baseline_algorithm": "online_dpo"},
                     marks=pytest.mark.slow),
    ],
)
def test_online_methods_train_and_save_a_plain_model(method, online, tmp_path, tiny_model_dir, reward_dir) -> None:
    from transformers import AutoModelForCausalLM

    from moalign.training.online import train_online

    config = _train(method, **online)
    seen = []
    history = train_online(
        _rows(), tiny_model_dir, reward_dir, tmp_path / "policy", tmp_path / "ckpt", train=config.train,
        dimensions=DIMS, n_classes=config.reward_classes, dtype="float32", seed=0, fingerprint="f",
        on_log=seen.append,
    )
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses and all(math.isfinite(v) for v in losses)
    assert seen and all(e["phase"] == method for e in seen)
    assert any(key.startswith("rewards/") or key in ("reward", "score_mean") for e in history for key in e)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")  # merged: a plain directory
    assert not any("lora" in name for name, _ in model.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(value, base[name]) for name, value in model.state_dict().items())
    assert json.loads((tmp_path / "policy" / "train_log.json").read_text()) == history


@pytest.mark.slow  # four trainings; the default run keeps the averaging by hand above
def test_rewarded_soups_averages_one_policy_per_dimension(tmp_path, tiny_model_dir, reward_dir) -> None:
    from safetensors.torch import load_file

    from moalign.training.online import train_online

    config = _train("rewarded_soups", soup_weights=[1, 1, 1, 1])
    history = train_online(
        _rows(), tiny_model_dir, reward_dir, tmp_path / "policy", tmp_path / "ckpt", train=config.train,
        dimensions=DIMS, n_classes=config.reward_classes, dtype="float32", seed=0, fingerprint="f",
    )
    assert {e["phase"] for e in history} == {f"soup-{d}" for d in DIMS} | {"soup"}
    ingredients = [load_file(tmp_path / "ckpt" / f"soup-{d}" / "final" / "model.safetensors") for d in DIMS]
    soup = load_file(tmp_path / "policy" / "model.safetensors")
    key = next(k for k in soup if "q_proj" in k and soup[k].is_floating_point())
    expected = sum(state[key] for state in ingredients) / 4
    assert torch.allclose(soup[key], expected, atol=1e-6)
    assert not torch.equal(ingredients[0][key], ingredients[1][key])  # each ingredient was trained apart


def test_online_method_without_reward_model_is_a_clear_error(tmp_path, tiny_model_dir) -> None:
    from moalign.training.online import train_online

    config = _train("moslim_rloo")
    with pytest.raises(FileNotFoundError, match="train_reward"):
        train_online(_rows(), tiny_model_dir, tmp_path / "missing", tmp_path / "p", tmp_path / "c",
                     train=config.train, dimensions=DIMS, n_classes=config.reward_classes, dtype="float32",
                     seed=0, fingerprint="f")


def test_reward_heads_that_differ_from_the_config_are_named(tmp_path, tiny_model_dir, reward_dir) -> None:
    from moalign.rewards.model import RewardModelError
    from moalign.training.online import train_online

    config = _train("moslim_rloo")
    with pytest.raises(RewardModelError, match=r"harmlessness\(2\).*harmlessness\(5\)"):
        train_online(_rows(), tiny_model_dir, reward_dir, tmp_path / "p", tmp_path / "c", train=config.train,
                     dimensions=DIMS, n_classes=[5, 5, 5, 5], dtype="float32", seed=0, fingerprint="f")


def test_tag_intensities_are_the_taught_ones_or_those_asked_for(caplog) -> None:
    from moalign.rewards import RewardStats
    from moalign.training.online import tag_intensities

    stats = RewardStats(["correctness", "harmlessness"], [5, 2])
    stats.count_labels(torch.tensor([[0, 0], [4, 1], [2, 1]]))
    with caplog.at_level("WARNING"):
        assert tag_intensities(stats, None) == [[1, 3, 5], [1, 2]]
    assert "correctness: no training response has intensity 2, 4" in caplog.text
    assert tag_intensities(stats, {"correctness": [5, 5], "harmlessness": []}) == [[5], []]
    with pytest.raises(ValueError, match=r"tag_intensities.correctness asks for \[4\], which no training"):
        tag_intensities(stats, {"correctness": [4, 5]})


@pytest.mark.parametrize(("asked", "message"), [
    ({"helpfulness": [1]}, "names 'helpfulness'"),
    ({"harmlessness": [3]}, r"harmlessness \[3\]: intensities are 1-2"),
    ({d: [] for d in ["correctness", "instruction_following", "verbosity", "harmlessness"]}, "no dimension"),
])
def test_tag_intensities_are_checked_when_params_load(asked, message) -> None:
    from pydantic import ValidationError

    raw = {"reward": {"classes": {"harmlessness": 2}}, "train": {"online": {"tag_intensities": asked}}}
    with pytest.raises(ValidationError, match=message):
        Params.model_validate(raw)
