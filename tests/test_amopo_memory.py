"""AMoPO's low-memory step (train.amopo_memory: low) computes today's one-forward step: same gradients,
same logged diagnostics, one gradient all-reduce per optimizer step."""

import contextlib

import pytest
import torch
from transformers import TrainerCallback

from moalign import weights as weights_module
from moalign.config import ParamsError, parse_params
from moalign.data.schema import PreferenceRow, ScoredResponse
from moalign.training.preference import offline_fingerprint, train_policy

DIMS = ["correctness", "verbosity"]


def rows(n: int) -> list[PreferenceRow]:
    # responses of different lengths, so the pairs of a chunk pad to less than the whole batch does
    return [
        PreferenceRow(
            id=f"p{i}", source="test", prompt_id=f"q{i}", split="train", prompt=f"What is {i} + 2?" + " Be brief." * i,
            chosen=ScoredResponse(text=str(i + 2), scores={"correctness": 5, "verbosity": 4}),
            rejected=ScoredResponse(text=f"It is {i + 3}, I am {'very ' * i}sure.", scores={"correctness": 1, "verbosity": 2}),
        )
        for i in range(n)
    ]


class GradientRecorder(TrainerCallback):
    """Every parameter's gradient as the optimizer gets it: clipped to norm 1, so the step's logged
    grad_norm (taken before the clipping) is compared too."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


@pytest.fixture
def spread_draws(monkeypatch):
    """The tiny random model gives every token a probability near 1/V, so Eq. 10's draws hardly move
    the weights off 1/K and a wrong noise would go unseen: widen both draws (the same on both paths)."""
    moments, side_draw = weights_module.token_probability_moments, weights_module._authors_code_side_draw
    monkeypatch.setattr(weights_module, "token_probability_moments", lambda *a: (lambda m, v: (m, v + 1.0))(*moments(*a)))
    monkeypatch.setattr(weights_module, "_authors_code_side_draw", lambda t, m, noise: side_draw(t, m, noise) + noise)


def one_step(model_dir, out, memory: str, *, pairs=4, batch=4, accumulation=1, **train) -> tuple[dict, dict]:
    """The gradients of one optimizer step and its log entry."""
    params = parse_params({
        "dimensions": {"names": DIMS},
        "train": {"method": "amopo", "batch_size": batch, "gradient_accumulation_steps": accumulation, "epochs": 1,
                  "save_steps": 50, "warmup_ratio": 0.0, "amopo_memory": memory, **train},
    })
    recorder = GradientRecorder()
    history = train_policy(rows(pairs), model_dir, out / memory / "policy", out / memory / "checkpoints",
                           train=params.train, dimensions=params.dimensions, callbacks=[recorder])
    (logged,) = [entry for entry in history if "loss" in entry]
    (gradients,) = recorder.steps
    return gradients, logged


def assert_same_step(fast, low, names):
    (fast_gradients, fast_logged), (low_gradients, low_logged) = fast, low
    assert fast_gradients.keys() == low_gradients.keys() and fast_gradients
    for name in fast_gradients:
        torch.testing.assert_close(low_gradients[name], fast_gradients[name], rtol=1e-5, atol=1e-5, msg=name)
    logged = ["loss", "grad_norm", "rewards/margins", "logps/chosen",
              *(f"{d}/{what}" for d in names for what in ("weight", "margin"))]
    for key in logged:
        assert low_logged[key] == pytest.approx(fast_logged[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("weights", ["gaussian", "fixed", "authors_code"])
def test_low_memory_step_has_the_one_forward_steps_gradients(weights, lora, tiny_model_dir, tmp_path, spread_draws,
                                                             one_torch_thread):
    # 4 pairs x 2 dimensions: two forwards of 2 pairs (authors_code, 3 prompts a pair: four of 1)
    extra = {"fixed_weights": [1.0, 3.0]} if weights == "fixed" else {}
    settings = dict(weights=weights, lora={"enabled": lora}, **extra)
    fast = one_step(tiny_model_dir, tmp_path, "fast", **settings)
    low = one_step(tiny_model_dir, tmp_path, "low", **settings)
    names = [*DIMS, "all_dimensions"] if weights == "authors_code" else DIMS
    assert_same_step(fast, low, names)
    if weights == "gaussian":  # the widened draw makes the weights depend on the noise (else |w - 1/2| ~ 1e-8)
        assert abs(fast[1]["correctness/weight"] - 0.5) > 1e-3


def test_low_memory_step_with_uneven_chunks_and_accumulation(tiny_model_dir, tmp_path, spread_draws, one_torch_thread):
    # 6 pairs, 3 a micro-batch, 2 micro-batches an optimizer step: forwards of 2 + 1 pairs each
    settings = dict(pairs=6, batch=3, accumulation=2, lora={"enabled": False})
    assert_same_step(one_step(tiny_model_dir, tmp_path, "fast", **settings),
                     one_step(tiny_model_dir, tmp_path, "low", **settings), DIMS)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_gradients_are_all_reduced_once_per_optimizer_step(accumulation, tiny_model_dir, tmp_path, monkeypatch,
                                                           one_torch_thread):
    """Under DDP a backward outside ``no_sync`` all-reduces every gradient: the low-memory step's
    chunks (two per micro-batch here) must leave that to the last one."""
    from accelerate import Accelerator

    backward, depth, synced = Accelerator.backward, [0], []

    @contextlib.contextmanager
    def no_sync(self, model):
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    def recording_backward(self, loss, **kwargs):
        synced.append(depth[0] == 0)
        return backward(self, loss, **kwargs)

    monkeypatch.setattr(Accelerator, "no_sync", no_sync)
    monkeypatch.setattr(Accelerator, "backward", recording_backward)
    one_step(tiny_model_dir, tmp_path, "low", batch=4 // accumulation, accumulation=accumulation,
             lora={"enabled": False})
    assert len(synced) == 2 * accumulation  # two forwards (and backwards) a micro-batch
    assert synced[-1] and synced.count(True) == 1


def test_amopo_memory_is_validated_and_not_part_of_the_runs_identity():
    with pytest.raises(ParamsError, match="train.amopo_memory"):
        parse_params({"train": {"amopo_memory": "tiny"}})
    fast, low = (parse_params({"train": {"amopo_memory": memory}}) for memory in ("fast", "low"))
    # a run that ran out of memory under fast resumes its checkpoints under low
    assert offline_fingerprint(rows(2), "m", train=fast.train, dimensions=fast.dimensions, dtype="auto", seed=0) == \
        offline_fingerprint(rows(2), "m", train=low.train, dimensions=low.dimensions, dtype="auto", seed=0)


def test_a_slice_of_pairs_is_collated_as_if_alone(tiny_model_dir):
    from transformers import AutoTokenizer

    from moalign.training.batching import PairCollator, pair_slice, tokenize_pair

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    features = [tokenize_pair(row, tokenizer, [f"{d}: {row.prompt}" for d in DIMS], 64) for row in rows(3)]
    for i, feature in enumerate(features):
        feature["ref_chosen_logps"] = -float(i)
    collate = PairCollator(tokenizer.pad_token_id)
    whole = collate(features)
    for start, stop in ((0, 1), (1, 3), (2, 3)):
        part, alone = pair_slice(whole, start, stop), collate(features[start:stop])
        assert part.keys() == alone.keys()
        for key, value in alone.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(part[key], value), key
            else:
                assert part[key] == value, key
