"""Training on several processes (``compute.*``, moalign/launch.py): the command a stage reruns itself
with, the checks on the settings, and the acceptance: two processes on gloo train exactly as one
process does over the same global batch (same loss, same gradients, same weights).

Run as a module (``python -m tests.test_multiprocess MODEL OUT BATCH``) it is the training that the
acceptance test launches on two processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from moalign import launch
from moalign.config import ParamsError, parse_params
from moalign.data.schema import PreferenceRow, ScoredResponse

ROOT = Path(__file__).resolve().parents[1]
DIMS = ["correctness", "verbosity"]
GLOBAL_BATCH = 4


class Compute:
    def __init__(self, num_processes: int, accelerate_config: str | None = None):
        self.num_processes, self.accelerate_config = num_processes, accelerate_config


@pytest.fixture
def outside_any_launch(monkeypatch):
    for marker in ("LOCAL_RANK", "ACCELERATE_MIXED_PRECISION", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(marker, raising=False)
    monkeypatch.chdir(ROOT)


def test_a_stage_reruns_itself_under_accelerate_launch(outside_any_launch, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append((command, env)) or 3)
    assert launch.relaunch(Compute(1), "components.train_policy", ["--out", "x"]) is None
    assert launch.relaunch(Compute(2), "components.train_policy", ["--out", "x"]) == 3  # its exit code
    (command, env), = calls
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[3:] == ["--config_file", launch.DEFAULT_CONFIG, "--num_processes", "2",
                           "--module", "components.train_policy", "--out", "x"]
    if not torch.cuda.is_available():
        assert env["ACCELERATE_USE_CPU"] == "true"  # else accelerate would start two unconnected processes


def test_a_stage_that_cannot_gather_shards_runs_with_ddp(outside_any_launch, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append(command) or 0)
    fsdp = Compute(2, "configs/accelerate/fsdp.yaml")
    launch.relaunch(fsdp, "components.train_policy", [])
    launch.relaunch(fsdp, "components.train_reward", [], gathers_shards=False)
    assert [command[command.index("--config_file") + 1] for command in calls] == [
        "configs/accelerate/fsdp.yaml", launch.DEFAULT_CONFIG]


def test_inside_a_launch_the_stage_trains_here(outside_any_launch, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(launch, "distributed_state", lambda: None)
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("relaunched from inside a launch"))
    assert launch.relaunch(Compute(2), "components.train_policy", []) is None
    assert not launch.is_main_process()


def test_shipped_accelerate_configs_load_in_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}
    for name, kind in expected.items():
        path = ROOT / "configs" / "accelerate" / f"{name}.yaml"
        assert str(load_config_from_file(str(path)).distributed_type).endswith(kind)
        assert launch.distributed_type(path) == kind


@pytest.mark.parametrize("raw, message", [
    ({"compute": {"num_processes": 0}}, "compute.num_processes"),
    ({"compute": {"accelerate_config": "configs/accelerate/nope.yaml"}}, "compute.accelerate_config: no such file"),
    ({"compute": {"num_processes": 2, "accelerate_config": "params.yaml"}}, "not an accelerate config"),
    ({"compute": {"num_processes": 2}, "train": {"method": "moslim_ppo"}}, "moalign's PPO"),
    ({"compute": {"num_processes": 2, "accelerate_config": "configs/accelerate/fsdp.yaml"}},
     "set train.lora.enabled to false"),
    ({"compute": {"num_processes": 2, "accelerate_config": "configs/accelerate/deepspeed_zero3.yaml"},
      "train": {"method": "spo", "lora": {"enabled": False}}}, "train.method spo is not one"),
])
def test_compute_settings_fail_naming_the_key(outside_any_launch, raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_compute_defaults_to_one_process(outside_any_launch):
    assert parse_params({}).compute.num_processes == 1
    sharded = {"num_processes": 2, "accelerate_config": "configs/accelerate/fsdp.yaml"}
    assert parse_params({"compute": sharded, "train": {"lora": {"enabled": False}}}).compute.num_processes == 2


# ------------------------------------------------------------------------------------------------
# the acceptance: 2 processes (gloo) == 1 process over the same global batch


def pair(i: int) -> PreferenceRow:
    return PreferenceRow(
        id=f"p{i}", source="test", prompt_id=f"q{i}", split="train", prompt=f"What is {i} + 2?",
        chosen=ScoredResponse(text=str(i + 2), scores={"correctness": 5, "verbosity": 4}),
        rejected=ScoredResponse(text=f"It is {i + 3}, I am {'quite ' * i}sure of it.",
                                scores={"correctness": 1, "verbosity": 2}),
    )


class GradientRecorder(TrainerCallback):
    """Every parameter's gradient as the optimizer gets it: after DDP's all-reduce and the clipping."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def train_and_record(model_dir, out: Path, batch_size: int) -> dict:
    """Two optimizer steps of AMoPO on the same 4 pairs, ``batch_size`` pairs per process."""
    from moalign.training.preference import train_policy

    params = parse_params({
        "dimensions": {"names": DIMS},
        # fixed weights: the Gaussian draw of Eq. 10 takes each process's own random numbers (docs/distributed.md)
        "train": {"method": "amopo", "weights": "fixed", "batch_size": batch_size, "epochs": 2, "learning_rate": 1e-3,
                  "warmup_ratio": 0.0, "save_steps": 2, "lora": {"enabled": False}},
    })
    recorder = GradientRecorder()
    history = train_policy([pair(i) for i in range(GLOBAL_BATCH)], model_dir, out / "policy", out / "checkpoints",
                           train=params.train, dimensions=params.dimensions, callbacks=[recorder])
    return {"history": history, "gradients": recorder.steps}


def test_two_processes_on_gloo_train_as_one_over_the_same_global_batch(tiny_model_dir, tmp_path, one_torch_thread):
    from safetensors.torch import load_file

    one = train_and_record(tiny_model_dir, tmp_path / "one", batch_size=GLOBAL_BATCH)
    command = launch.launch_argv("tests.test_multiprocess", [str(tiny_model_dir), str(tmp_path / "two"), "2"],
                                 num_processes=2)
    done = subprocess.run(command, cwd=ROOT, env={**launch.launch_env(), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    two = torch.load(tmp_path / "two" / "result.pt")

    steps = [[entry for entry in run["history"] if "loss" in entry] for run in (one, two)]
    assert len(steps[0]) == len(steps[1]) == 2
    for alone, shared in zip(*steps, strict=True):
        assert shared["loss"] == pytest.approx(alone["loss"], abs=1e-5)  # the mean over both processes' pairs
        assert shared["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-5)
    assert len(one["gradients"]) == len(two["gradients"]) == 2
    for alone, shared in zip(one["gradients"], two["gradients"], strict=True):
        assert alone.keys() == shared.keys()
        for name in alone:
            torch.testing.assert_close(shared[name], alone[name], rtol=1e-4, atol=1e-6)
    # Adam moves a weight by about lr * g / (|g| + 1e-8): where g is rounding noise around 0 (summed in
    # another order on two processes) its sign is a coin toss, so such a weight may end up to
    # 2 x lr x steps away. Weights whose gradient is signal at every step must agree closely.
    lr, n_steps = 1e-3, len(one["gradients"])
    weights = [load_file(tmp_path / run / "policy" / "model.safetensors") for run in ("one", "two")]
    parameters = {name.removeprefix("model."): name for name in one["gradients"][0]}
    compared = 0
    for name in weights[0]:
        gradient_name = parameters.get(name.removeprefix("model."))
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=2 * lr * n_steps)
        if gradient_name is None:
            continue
        signal = torch.stack([step[gradient_name].abs() > 1e-6 for step in one["gradients"]]).all(0)
        assert signal.any()
        torch.testing.assert_close(weights[1][name][signal], weights[0][name][signal], rtol=0, atol=1e-5)
        compared += 1
    assert compared == len(parameters), "every trained weight is compared"


if __name__ == "__main__":
    model, out, per_process = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    record = train_and_record(model, out, per_process)
    if launch.is_main_process():
        torch.save(record, out / "result.pt")
