"""A killed online training resumes to the very weights of a run that was never killed.

Each test trains through :func:`moalign.training.online.train_online` twice: once straight through,
once killed inside a phase (between two of its checkpoints, or before its first) and rerun. The rerun
must end at the same weights bit for bit, with the same log (per-prompt rewards included): every
random stream a step draws from (sampling, the order of prompts and minibatches, dropout, LoRA's
initialisation) is either restored from the checkpoint or keyed by the step, epoch or phase. The kill
is a ``KeyboardInterrupt`` from the live log hook, which the trainers call after a step's update and
before that step's checkpoint is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from moalign.config import Params
from moalign.data.schema import PreferenceRow, ScoredResponse

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
DIMS = ["correctness", "harmlessness"]
CLASSES = [5, 2]
#: keys of the trainers' closing summary that measure the attempt, not the training
_ATTEMPT_KEYS = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
                 "total_flos"}


class Killed(KeyboardInterrupt):
    """The simulated kill: like a real one, nothing in the training catches it."""


@pytest.fixture(scope="module")
def reward_dir(untrained_reward_dir) -> Path:
    return untrained_reward_dir(DIMS, CLASSES)


def _rows(n: int) -> list[PreferenceRow]:
    return [
        PreferenceRow(id=f"r{i}", source="t", prompt_id=f"q{i}", split="train", prompt=f"Question {i}?",
                      chosen=ScoredResponse(text="Yes.", scores=dict.fromkeys(DIMS, 2)),
                      rejected=ScoredResponse(text="No.", scores=dict.fromkeys(DIMS, 1)))
        for i in range(n)
    ]


def _train(method: str, *, prompts: int = 2, epochs: int = 3, **online):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["dimensions"]["names"] = DIMS
    raw["reward"]["classes"] = {"harmlessness": 2}
    raw["register"]["max_regression"] = {}
    # two prompts a step, a checkpoint after each; lora_dropout and a warmup make the dropout stream
    # and the schedule's position part of what must be restored
    raw["train"].update(method=method, batch_size=2, epochs=epochs, save_steps=1, logging_steps=1,
                        learning_rate=1e-3, warmup_ratio=0.5)
    raw["train"]["lora"].update(dropout=0.1)
    raw["train"]["online"].update(max_prompts=prompts, num_generations=2, max_completion_length=4, **online)
    return Params.model_validate(raw)


def _run(config, tiny_model_dir, reward_dir, out: Path, *, kill_in: str | None = None, kill_at: int = 2):
    """``train_online`` into ``out``; with ``kill_in``, killed at phase ``kill_in``'s ``kill_at``-th step log."""
    from moalign.training.online import train_online

    steps: dict[str, int] = {}

    def on_log(entry: dict) -> None:
        if "loss" in entry:
            steps[entry["phase"]] = steps.get(entry["phase"], 0) + 1
            if entry["phase"] == kill_in and steps[entry["phase"]] == kill_at:
                raise Killed(f"simulated kill in {kill_in} after step {kill_at}")

    return train_online(_rows(config.train.online.max_prompts), tiny_model_dir, reward_dir, out / "policy", out / "ckpt", train=config.train,
                        dimensions=DIMS, n_classes=config.reward_classes, dtype="float32", seed=0,
                        fingerprint="f", on_log=on_log)


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in _ATTEMPT_KEYS} for entry in history]


def _killed_run_matches_a_straight_one(config, tiny_model_dir, reward_dir, tmp_path: Path, phase: str,
                                      kill_at: int = 2) -> None:
    """Kill ``phase`` after its step ``kill_at`` (a checkpoint after each step but the killed one),
    rerun, and compare with a run never killed."""
    from safetensors.torch import load_file

    train = config.train
    steps = math.ceil(train.epochs * train.online.max_prompts / train.batch_size)  # a phase's

    straight = _run(config, tiny_model_dir, reward_dir, tmp_path / "straight")
    with pytest.raises(Killed):
        _run(config, tiny_model_dir, reward_dir, tmp_path / "killed", kill_in=phase, kill_at=kill_at)
    phase_dir = tmp_path / "killed" / "ckpt" / (phase if phase.startswith("soup-") else "")
    assert sorted(path.name for path in phase_dir.glob("checkpoint-*")) == [
        f"checkpoint-{step}" for step in range(1, kill_at)][-2:], "the kill must fall inside the phase"
    assert not (tmp_path / "killed" / "policy").exists()
    resumed = _run(config, tiny_model_dir, reward_dir, tmp_path / "killed")

    # the killed step was scored twice, once per attempt: the history keeps the newest and loses none
    records = [json.loads(line) for line in (phase_dir / "prompt_rewards.jsonl").read_text().splitlines()]
    assert [(r["attempt"], r["step"]) for r in records] == [
        *((1, step) for step in range(1, kill_at + 1)), *((2, step) for step in range(kill_at, steps + 1))]
    assert _comparable(resumed) == _comparable(straight)

    a = load_file(tmp_path / "straight" / "policy" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "policy" / "model.safetensors")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[name], start[name]) for name in a), "the policy never moved: nothing was tested"
    for name in a:  # bit for bit
        assert torch.equal(a[name], b[name]), name


def test_killed_ppo_resumes_to_the_same_weights(tiny_model_dir, reward_dir, tmp_path):
    _killed_run_matches_a_straight_one(_train("moslim_ppo"), tiny_model_dir, reward_dir, tmp_path, "moslim_ppo")


def test_killed_rloo_resumes_to_the_same_weights(tiny_model_dir, reward_dir, tmp_path):
    # two steps an epoch, resumed from step 3 in the second epoch: the prompt order must be epoch 2's
    config = _train("moslim_rloo", prompts=4, epochs=2)
    _killed_run_matches_a_straight_one(config, tiny_model_dir, reward_dir, tmp_path, "moslim_rloo", kill_at=4)


def test_killed_online_dpo_resumes_to_the_same_weights(tiny_model_dir, reward_dir, tmp_path):
    config = _train("moslim_online_dpo", prompts=4, epochs=2)  # resumed in the second epoch, as RLOO
    _killed_run_matches_a_straight_one(config, tiny_model_dir, reward_dir, tmp_path, "moslim_online_dpo", kill_at=4)


def test_rewarded_soups_killed_before_the_second_ingredients_first_checkpoint(tiny_model_dir, reward_dir, tmp_path):
    # the rerun trains the second ingredient from its start: its LoRA adapters must start where the
    # straight run's did, though no earlier ingredient drew random numbers before it this time
    config = _train("rewarded_soups", soup_weights=[1, 3], baseline_algorithm="ppo")
    _killed_run_matches_a_straight_one(config, tiny_model_dir, reward_dir, tmp_path, "soup-harmlessness", kill_at=1)
    # the first ingredient was finished before the kill: the rerun loaded it rather than training it again
    first = [json.loads(line) for line in
             (tmp_path / "killed" / "ckpt" / "soup-correctness" / "prompt_rewards.jsonl").read_text().splitlines()]
    assert {r["attempt"] for r in first} == {1}


@pytest.mark.slow  # two RLOO ingredients, three times: about 35 s
def test_rewarded_soups_killed_inside_its_second_ingredient_resumes_to_the_same_soup(tiny_model_dir, reward_dir,
                                                                                      tmp_path):
    config = _train("rewarded_soups", soup_weights=[1, 3])
    _killed_run_matches_a_straight_one(config, tiny_model_dir, reward_dir, tmp_path, "soup-harmlessness")
