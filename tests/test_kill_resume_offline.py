"""A killed offline training resumes to the very weights of a run that was never killed.

Each case trains twice: straight through, and killed inside a phase then rerun. The rerun must end
at the same weights bit for bit, with the same losses: every random stream a step draws from
(minibatch order, LoRA dropout, LoRA's initialisation in a later phase) is restored from the
checkpoint or seeded where the phase starts. The kill is a ``KeyboardInterrupt`` raised as a step
begins, which nothing in the training catches. A kill while a checkpoint is being written must leave
no checkpoint to resume, only a ``.partial`` folder that the rerun removes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.test_methods_training import params, rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class Killed(KeyboardInterrupt):
    """The simulated kill."""


class KillAt(TrainerCallback):
    """Kills the run as step ``step`` of the Trainer writing into a folder named ``folder`` begins
    (the phase's checkpoint folder: ``phase-<i>-<name>`` in a multi-phase run)."""

    def __init__(self, folder: str, step: int):
        self.folder, self.step = folder, step

    def on_step_begin(self, args, state, control, **kwargs):
        if Path(args.output_dir).name == self.folder and state.global_step + 1 == self.step:
            raise Killed(f"simulated kill in {self.folder} at step {self.step}")


class Steps(TrainerCallback):
    """The (folder, step) of every step a run begins."""

    def __init__(self):
        self.begun: list[tuple[str, int]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.begun.append((Path(args.output_dir).name, state.global_step + 1))


def _losses(history: list[dict]) -> list[tuple]:
    return [(entry["phase"], entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:  # bit for bit
        assert torch.equal(first[name], second[name]), name


# ------------------------------------------------------------------------------------------------
# the preference methods


def _policy(method: str, tiny_model_dir, out: Path, callbacks=(), epochs: int = 1) -> list[dict]:
    from moalign.training.preference import train_policy

    # four pairs one at a time: four steps an epoch, a checkpoint every second step; LoRA dropout
    # makes the global random stream part of what a resumed step must find as it was
    config = params(method, batch_size=1, epochs=epochs, save_steps=2, lora={"dropout": 0.1})
    return train_policy(rows(4), tiny_model_dir, out / "policy", out / "ckpt", train=config.train,
                        dimensions=config.dimensions, callbacks=callbacks)


@pytest.mark.parametrize("method, folder, step, epochs", [
    ("spo", "phase-1-spo-verbosity", 3, 1),  # round 2, resumed from its checkpoint-2
    ("spo", "phase-1-spo-verbosity", 1, 1),  # round 2 before its first checkpoint: started afresh
    ("controllable_cpo", "phase-1-cpo-dpo", 3, 1),  # the DPO phase after SFT
    ("modpo", "ckpt", 7, 2),  # inside the second epoch, whose order is drawn before the skip
    ("cal_dpo", "ckpt", 3, 1),
])
def test_a_method_killed_mid_phase_resumes_to_the_same_weights(method, folder, step, epochs, tiny_model_dir,
                                                                tmp_path):
    straight = _policy(method, tiny_model_dir, tmp_path / "straight", epochs=epochs)
    with pytest.raises(Killed):
        _policy(method, tiny_model_dir, tmp_path / "killed", [KillAt(folder, step)], epochs=epochs)
    assert not (tmp_path / "killed" / "policy").exists()
    steps = Steps()
    resumed = _policy(method, tiny_model_dir, tmp_path / "killed", [steps], epochs=epochs)
    # the rerun trains only what the kill left undone: the killed phase from its last checkpoint on
    restart = (step - 1) // 2 * 2 + 1
    assert steps.begun == [(folder, s) for s in range(restart, 4 * epochs + 1)]
    assert _losses(resumed) == _losses(straight)
    _assert_same_weights(load_file(tmp_path / "straight" / "policy" / "model.safetensors"),
                         load_file(tmp_path / "killed" / "policy" / "model.safetensors"))


def test_a_kill_while_saving_leaves_no_checkpoint_and_the_rerun_resumes_from_the_one_before(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    from moalign.training.preference import PreferenceTrainer, train_policy

    config = params("simpo", batch_size=1, save_steps=1)  # a checkpoint after each of the 4 steps
    kwargs = dict(train=config.train, dimensions=config.dimensions)
    train_policy(rows(4), tiny_model_dir, tmp_path / "straight", tmp_path / "ckpt-a", **kwargs)

    save_rng_state = PreferenceTrainer._save_rng_state

    def killed_at_step_3(self, output_dir):
        if self.state.global_step == 3:  # the weights and the optimizer are written, the rest is not
            raise Killed("simulated kill while saving checkpoint-3")
        save_rng_state(self, output_dir)

    monkeypatch.setattr(PreferenceTrainer, "_save_rng_state", killed_at_step_3)
    with pytest.raises(Killed):
        train_policy(rows(4), tiny_model_dir, tmp_path / "resumed", tmp_path / "ckpt-b", **kwargs)
    monkeypatch.undo()
    folder = tmp_path / "ckpt-b"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2",
                                                                    "checkpoint-3.partial"]
    assert list((folder / "checkpoint-3.partial" / "checkpoint-3").glob("*.safetensors"))  # the weights were

    steps = Steps()
    with caplog.at_level(logging.WARNING, logger="moalign.training.runs"):
        train_policy(rows(4), tiny_model_dir, tmp_path / "resumed", folder, callbacks=[steps], **kwargs)
    assert "checkpoint-3.partial is a checkpoint whose saving was cut short" in caplog.text
    assert steps.begun == [("ckpt-b", 3), ("ckpt-b", 4)], "the rerun must continue from checkpoint-2"
    # the partial folder is gone and rotation (save_total_limit 2) still counts the renamed ones
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    _assert_same_weights(load_file(tmp_path / "straight" / "model.safetensors"),
                         load_file(tmp_path / "resumed" / "model.safetensors"))


# ------------------------------------------------------------------------------------------------
# the reward model


def _reward(tiny_model_dir, out: Path, callbacks=()):
    from transformers import AutoTokenizer

    from moalign.rewards.model import MultiHeadRewardModel
    from moalign.rewards.training import train_reward_model

    examples = [{"id": f"e{i}", "prompt": "How was it?", "response": f"It was {'good' if i % 2 else 'bad'} {i}.",
                 "labels": [4 if i % 2 else 0, i % 2]} for i in range(8)]
    model = MultiHeadRewardModel.from_backbone(tiny_model_dir, ["sentiment", "negativity"], [5, 2], seed=0)
    metrics = train_reward_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), examples, examples[:2],
                                 output_dir=out, learning_rate=1e-3, epochs=2, batch_size=2, max_length=32, seed=0,
                                 save_steps=2, callbacks=list(callbacks))
    return model, metrics


def test_the_reward_model_killed_mid_epoch_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    straight, straight_metrics = _reward(tiny_model_dir, tmp_path / "straight")
    # 8 responses two at a time, 2 epochs: killed at step 7 of 8, inside the second epoch after checkpoint-6
    with pytest.raises(Killed):
        _reward(tiny_model_dir, tmp_path / "killed", [KillAt("killed", 7)])
    steps = Steps()
    resumed, resumed_metrics = _reward(tiny_model_dir, tmp_path / "killed", [steps])
    assert steps.begun == [("killed", 7), ("killed", 8)]
    assert resumed_metrics == straight_metrics
    _assert_same_weights(straight.state_dict(), resumed.state_dict())


# ------------------------------------------------------------------------------------------------
# a real SIGKILL: no exception unwinds, no finally block runs, files stay as the kill found them

_SIGKILLED_WHILE_SAVING = """
import os, signal, sys
import torch
from moalign.training.preference import PreferenceTrainer, train_policy
from tests.test_methods_training import params, rows

torch.set_num_threads(1)
out, checkpoints, model_dir = sys.argv[1:4]
save_rng_state = PreferenceTrainer._save_rng_state

def save_or_die(self, output_dir):
    if self.state.global_step == 3:  # checkpoint-3's weights and optimizer are on disk, its state is not
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)

PreferenceTrainer._save_rng_state = save_or_die
config = params("amopo", batch_size=1, save_steps=1, lora={"dropout": 0.1})
train_policy(rows(4), model_dir, out, checkpoints, train=config.train, dimensions=config.dimensions)
"""


def test_amopo_sigkilled_while_saving_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from moalign.training.preference import train_policy

    config = params("amopo", batch_size=1, save_steps=1, lora={"dropout": 0.1})  # gaussian weight draws
    kwargs = dict(train=config.train, dimensions=config.dimensions)
    train_policy(rows(4), tiny_model_dir, tmp_path / "straight", tmp_path / "ckpt-a", **kwargs)

    folder = tmp_path / "ckpt-b"
    killed = subprocess.run(
        [sys.executable, "-c", _SIGKILLED_WHILE_SAVING, str(tmp_path / "resumed"), str(folder), str(tiny_model_dir)],
        cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2",
                                                                    "checkpoint-3.partial"]
    steps = Steps()
    train_policy(rows(4), tiny_model_dir, tmp_path / "resumed", folder, callbacks=[steps], **kwargs)
    assert steps.begun == [("ckpt-b", 3), ("ckpt-b", 4)], "the rerun must continue from checkpoint-2"
    _assert_same_weights(load_file(tmp_path / "straight" / "model.safetensors"),
                         load_file(tmp_path / "resumed" / "model.safetensors"))
