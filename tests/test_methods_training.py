"""Every method of train.method trains through the one trainer; bad numbers stop it loudly."""

import dataclasses
import logging
import shutil

import pytest
import torch

from moalign.config import Params, ParamsError, parse_params
from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.training import methods as methods_module
from moalign.training.methods import LOSSES, METHODS, get_method
from moalign.training.phases import plan_phases
from moalign.training.preference import NonFiniteLossError, train_policy

DIMS = ["correctness", "verbosity"]


def rows(n: int = 4) -> list[PreferenceRow]:
    return [
        PreferenceRow(
            id=f"p{i}", source="test", prompt_id=f"q{i}", split="train", prompt=f"What is {i} + 2?",
            chosen=ScoredResponse(text=str(i + 2), scores={"correctness": 5, "verbosity": 4}),
            rejected=ScoredResponse(text=f"It is {i + 3}, I am sure.", scores={"correctness": 1, "verbosity": 2}),
        )
        for i in range(n)
    ]


def params(method: str, **train) -> Params:
    return Params.model_validate({
        "dimensions": {"names": DIMS},
        "train": {"method": method, "batch_size": 2, "epochs": 1, "save_steps": 50, "warmup_ratio": 0.0, **train},
    })


@pytest.mark.parametrize("method", sorted(name for name, method in METHODS.items() if not method.online))
def test_each_method_trains_and_logs_finite_metrics(method, tiny_model_dir, tmp_path):
    config = params(method)
    phases = plan_phases(rows(), config.train, config.dimensions)
    history = train_policy(rows(), tiny_model_dir, tmp_path / "out", tmp_path / "ckpt",
                           train=config.train, dimensions=config.dimensions)
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2 * len(phases)  # 4 pairs, batch 2, one epoch per phase
    assert [s["phase"] for s in steps] == [p.name for p in phases for _ in range(2)]
    for step in steps:
        assert all(torch.isfinite(torch.tensor(float(v))) for k, v in step.items() if isinstance(v, float))
        assert "rewards/margins" in step
        assert (f"{DIMS[0]}/weight" in step) == (method == "amopo")
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_schedules_of_multi_phase_methods():
    spo = plan_phases(rows(), params("spo").train, params("spo").dimensions)
    assert [p.name for p in spo] == ["spo-correctness", "spo-verbosity"]
    assert all(p.method.needs_reference and p.margin_from_previous for p in spo)
    cpo = plan_phases(rows(), params("controllable_cpo").train, params("controllable_cpo").dimensions)
    assert [p.method.name for p in cpo] == ["sft", "dpo"]
    assert cpo[0].prompts(rows()[0]) == ["<correctness: 5> <verbosity: 4>\nWhat is 0 + 2?"]


def test_reference_methods_see_a_fixed_reference(tiny_model_dir, tmp_path):
    # at step 1 the policy equals the reference: DPO's implicit rewards are exactly zero
    config = params("dpo")
    history = train_policy(rows(2), tiny_model_dir, tmp_path / "out", tmp_path / "ckpt",
                           train=config.train, dimensions=config.dimensions)
    first = history[0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigma(0)


def test_nan_loss_stops_training_naming_step_and_pairs(tiny_model_dir, tmp_path, monkeypatch):
    broken = dataclasses.replace(LOSSES["simpo"], loss=lambda logps, p: logps.chosen[:, 0] * float("nan"))
    monkeypatch.setitem(methods_module.LOSSES, "simpo", broken)
    config = params("simpo")
    with pytest.raises(NonFiniteLossError, match=r"step 1 on pairs \['p"):
        train_policy(rows(2), tiny_model_dir, tmp_path / "out", tmp_path / "ckpt",
                     train=config.train, dimensions=config.dimensions)


def test_unknown_method_and_bad_weights_are_named():
    with pytest.raises(ValueError, match="allowed: amopo"):
        get_method("ppo-but-typo")
    with pytest.raises(ParamsError, match="train.method"):
        parse_params({"train": {"method": "kto"}})
    with pytest.raises(ParamsError, match="fixed_weights"):
        parse_params({"train": {"weights": "fixed", "fixed_weights": [1.0]}})
    with pytest.raises(ParamsError, match="dimensions.names"):
        parse_params({"dimensions": {"names": []}})


@pytest.mark.parametrize("weights, extra", [("fixed", {"fixed_weights": [1.0, 3.0]}), ("authors_code", {})])
def test_amopo_weighting_options(weights, extra, tiny_model_dir, tmp_path):
    config = params("amopo", weights=weights, **extra)
    history = train_policy(rows(2), tiny_model_dir, tmp_path / "out", tmp_path / "ckpt",
                           train=config.train, dimensions=config.dimensions)
    step = history[0]
    if weights == "fixed":
        assert step["correctness/weight"] == pytest.approx(0.25) and step["verbosity/weight"] == pytest.approx(0.75)
    else:  # one softmax over batch x (K + 1 prompts): a pair's weights sum to 1/B on average
        names = [*DIMS, "all_dimensions"]
        assert sum(step[f"{d}/weight"] for d in names) == pytest.approx(0.5, abs=1e-5)


def test_authors_code_adds_one_all_dimensions_prompt_built_from_the_original():
    from moalign.training.phases import pair_prompts

    template = "Focus on {dimension} (target score {score}/5).\n{prompt}"
    pair = rows(1)[0]  # scores: correctness 5, verbosity 4
    prompts = pair_prompts(pair, LOSSES["amopo"], DIMS, template, all_dimensions=True)
    assert prompts[-1] == "Focus on correctness and verbosity (target score 4/5).\nWhat is 0 + 2?"
    assert len(prompts) == len(DIMS) + 1 and all(p.count("Focus on") == 1 for p in prompts)


def test_modpo_orients_pairs_by_its_primary_dimension_and_validates_weights():
    from moalign.training.phases import orient_by_dimension

    pair = rows(1)[0].model_copy(update={
        "chosen": ScoredResponse(text="a", scores={"correctness": 2, "verbosity": 5}),
        "rejected": ScoredResponse(text="b", scores={"correctness": 4, "verbosity": 1}),
    })
    oriented, counts = orient_by_dimension([pair], "correctness")
    assert oriented[0].chosen.text == "b" and counts == {"flipped": 1, "tied": 0}
    assert orient_by_dimension([pair], "verbosity")[0][0].chosen.text == "a"
    config = parse_params({"dimensions": {"names": DIMS}, "train": {"method": "modpo", "modpo_primary": "verbosity"}})
    assert config.train.modpo_primary_index == 1
    with pytest.raises(ParamsError, match="modpo_primary"):
        parse_params({"dimensions": {"names": DIMS}, "train": {"modpo_primary": "style"}})
    with pytest.raises(ParamsError, match="w_0"):
        parse_params({"dimensions": {"names": DIMS}, "train": {"modpo_weights": [0.0, 1.0]}})


def test_killed_run_resumes_to_the_same_weights(tiny_model_dir, tmp_path, caplog):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:  # checkpoint-2 is on disk, step 3 never happens
                raise KeyboardInterrupt("simulated kill")

    config = params("amopo", epochs=2, save_steps=2)  # 4 steps, gaussian weights use the RNG
    data = rows(4)
    kwargs = dict(train=config.train, dimensions=config.dimensions)
    train_policy(data, tiny_model_dir, tmp_path / "straight", tmp_path / "ckpt-a", **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train_policy(data, tiny_model_dir, tmp_path / "resumed", tmp_path / "ckpt-b", callbacks=[Crash()], **kwargs)
    assert (tmp_path / "ckpt-b" / "checkpoint-2").exists() and not (tmp_path / "resumed").exists()
    # a kill while saving checkpoint-3: weights cut short, no trainer_state.json yet
    shutil.copytree(tmp_path / "ckpt-b" / "checkpoint-2", tmp_path / "ckpt-b" / "checkpoint-3")
    (tmp_path / "ckpt-b" / "checkpoint-3" / "trainer_state.json").unlink()
    for weights in (tmp_path / "ckpt-b" / "checkpoint-3").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])

    class Count(TrainerCallback):
        steps: list[int] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.steps.append(state.global_step + 1)

    counter = Count()
    with caplog.at_level(logging.WARNING, logger="moalign.training.runs"):
        history = train_policy(data, tiny_model_dir, tmp_path / "resumed", tmp_path / "ckpt-b", callbacks=[counter],
                               **kwargs)
    assert "checkpoint-3 is incomplete" in caplog.text
    assert counter.steps == [3, 4], "the rerun must continue from checkpoint-2, not start over"
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:  # bit for bit
        assert torch.equal(resumed[name], straight[name]), name


def test_amopo_weight_draws_do_not_depend_on_the_global_random_stream(tiny_model_dir, tmp_path):
    """Eq. 10's Gaussian draw is keyed by step: anything else taking random numbers (a resume that
    restores the global stream elsewhere, a callback, a data loader) leaves the training unchanged."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class TakeRandomNumbers(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            torch.rand(17)

    config = params("amopo", epochs=1, save_steps=100)
    kwargs = dict(train=config.train, dimensions=config.dimensions)
    train_policy(rows(4), tiny_model_dir, tmp_path / "plain", tmp_path / "ckpt-a", **kwargs)
    train_policy(rows(4), tiny_model_dir, tmp_path / "other", tmp_path / "ckpt-b", callbacks=[TakeRandomNumbers()],
                 **kwargs)
    plain, other = (load_file(tmp_path / run / "model.safetensors") for run in ("plain", "other"))
    assert all(torch.equal(plain[name], other[name]) for name in plain)


def test_spo_margin_is_the_previous_rounds_implicit_reward_margin():
    from moalign.training.preference import _previous_margin

    pair = rows(1)[0]
    keys = (pair.id, pair.chosen.text), (pair.id, pair.rejected.text)
    # r(y_w) = 0.5 * (-5 - -6) = 0.5 ; r(y_l) = 0.5 * (-7 - -6) = -0.5 ; margin = 1.0
    current, previous = dict(zip(keys, (-5.0, -7.0), strict=True)), dict(zip(keys, (-6.0, -6.0), strict=True))
    assert _previous_margin(pair, current, previous, beta=0.5) == pytest.approx(1.0)
    assert _previous_margin(pair, current, {}, beta=0.5) == 0.0  # round 1 has no previous round


def test_batch_4_equals_batch_1_with_4_accumulation_steps(tiny_model_dir, tmp_path):
    # the same four pairs make one optimizer step either way: the loss and the gradient must agree
    # (comparing the updated weights is ill-conditioned under Adam, whose first step is ~lr*sign(g))
    logged = []
    for batch, accumulation in ((4, 1), (1, 4)):
        config = params("simpo", batch_size=batch, gradient_accumulation_steps=accumulation, lora={"enabled": False})
        history = train_policy(rows(4), tiny_model_dir, tmp_path / f"b{batch}", tmp_path / f"ckpt{batch}",
                               train=config.train, dimensions=config.dimensions)
        steps = [h for h in history if "loss" in h]
        assert len(steps) == 1
        logged.append(steps[0])
    assert logged[1]["loss"] == pytest.approx(logged[0]["loss"], rel=1e-5)
    assert logged[1]["grad_norm"] == pytest.approx(logged[0]["grad_norm"], rel=1e-4)


def test_policy_inputs_hash_the_reward_model_for_online_methods_only(tmp_path):
    from moalign.training import policy_inputs, run_fingerprint

    reward = tmp_path / "reward"
    reward.mkdir()
    (reward / "config.json").write_text("{}")
    (reward / "model.safetensors").write_bytes(b"weights v1")
    assert policy_inputs(params("amopo"), None)["reward_model"] is None  # nothing to read, nothing to hash
    online = params("moslim_rloo")
    first = policy_inputs(online, reward)
    assert first["reward_model"] and first["reward_code"]
    before = run_fingerprint(online, rows(), "base", reward)
    (reward / "model.safetensors").write_bytes(b"weights v2, retrained")
    assert policy_inputs(online, reward)["reward_model"] != first["reward_model"]
    assert run_fingerprint(online, rows(), "base", reward) != before  # a new reward model makes a new run
    with pytest.raises(ValueError, match="models/reward"):
        policy_inputs(online, tmp_path / "missing")
