import json
import math
from types import SimpleNamespace

import pytest
import torch

from moalign.models import load_model_and_tokenizer
from moalign.training import ppo
from moalign.training.ppo import (
    PPOSettings,
    completion_logprobs,
    gae_advantages,
    kl_penalised_rewards,
    policy_loss,
    sample_completions,
    train_ppo,
    value_loss,
    whiten,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


PROMPTS = ["Name a colour.", "Count to three.", [{"role": "user", "content": "Say hi."}], "What is 2 + 2?"]


def short_is_good(prompts, completions, **_):
    """A known reward: shorter completions score higher."""
    assert len(prompts) == len(completions)
    return [-len(c) / 10 for c in completions]


def tiny(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir, "float32")


# ------------------------------------------------------------------------------------------------
# the maths, by hand


def test_kl_penalised_rewards_put_the_score_on_each_rows_last_real_token():
    scores = torch.tensor([1.0, 2.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 7.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, kl_beta=0.1)
    expected = torch.tensor([[-0.05, 0.0, 1.1], [0.0, 1.9, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_gae_advantages_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2's last position is padding

    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 1: A2 = 1 - 0.7; A1 = (0.7 - 0.6) + 0.95 A2; A0 = (0.6 - 0.5) + 0.95 A1
    # row 2: the padding's value (5) and reward (9) must not leak: V beyond the last token is 0
    torch.testing.assert_close(advantages, torch.tensor([[0.46575, 0.385, 0.3], [1.27, 0.6, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.96575, 0.985, 1.0], [1.47, 1.0, 0.0]]))

    advantages, returns = gae_advantages(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=0.95)
    # A2 = 0.3; A1 = (0.9 * 0.7 - 0.6) + 0.855 A2 = 0.2865; A0 = (0.9 * 0.6 - 0.5) + 0.855 A1
    torch.testing.assert_close(advantages, torch.tensor([[0.2849575, 0.2865, 0.3]]))
    torch.testing.assert_close(returns, advantages + values[:1])


def test_whiten_normalises_over_real_tokens_only():
    generator = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(4, 6, generator=generator)
    mask = torch.ones(4, 6)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    x = torch.where(mask.bool(), x, torch.full_like(x, 1e6))  # padding garbage must not count
    real = mask.bool()

    white = whiten(x, mask)
    assert white[real].mean().abs() < 1e-5
    assert white[real].var(unbiased=False).sqrt() == pytest.approx(1.0, abs=1e-4)
    assert (white[~real] == 0).all()

    kept = whiten(x, mask, shift_mean=False)
    assert kept[real].mean() == pytest.approx(x[real].mean().item(), abs=1e-4)
    assert kept[real].std(unbiased=False) == pytest.approx(1.0, abs=1e-4)


def test_policy_loss_by_hand():
    ln = math.log
    logprobs = torch.tensor([[0.0, ln(1.5), ln(0.5), ln(1.5), 5.0]])
    old = torch.zeros(1, 5)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # per token, max(-A r, -A clip(r)): ratio 1 -> -1; 1.5 with A=1 -> clipped -1.2;
    # 0.5 with A=-1 -> clipped 0.8; 1.5 with A=-1 -> unclipped 1.5 (the clip would help: ignored)
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8 + 1.5) / 4)
    assert clipfrac.item() == pytest.approx(2 / 4)


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.5, 1.0, 50.0]])
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss = value_loss(values, old, returns, mask, clip_range=0.2)
    # token 0: clipped value 0.7 is further from 2 -> 1.3^2; token 1: 0.25; token 2: unclipped 1.0
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.25 + 1.0) / 3)


# ------------------------------------------------------------------------------------------------
# the loop on the tiny model


def test_train_ppo_runs_logs_and_checkpoints(tiny_model_dir, tmp_path):
    policy, tokenizer = tiny(tiny_model_dir)
    start = {name: p.detach().clone() for name, p in policy.named_parameters()}
    prompts = [f"Question {i}: say something" for i in range(8)]
    settings = PPOSettings(learning_rate=1e-3, epochs=2, batch_size=4, max_new_tokens=8, save_steps=100)
    logged = []
    history = train_ppo(policy, tokenizer, prompts, short_is_good, settings, tmp_path / "ppo", on_log=logged.append)

    assert [entry["step"] for entry in history] == [1, 2, 3, 4]
    assert logged == history
    for entry in history:
        for key in ("loss", "policy_loss", "value_loss", "clipfrac", "kl", "score_mean", "reward_mean"):
            assert math.isfinite(entry[key]), (key, entry)
        assert entry["kl"] > -1.0
        assert 1 <= entry["completion_length"] <= 8
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the reference's own
    assert history[-1]["epoch"] == pytest.approx(2.0)
    assert any(not torch.equal(start[name], p) for name, p in policy.named_parameters())
    checkpoint = tmp_path / "ppo" / "checkpoint-4"  # the last round is always saved
    for name in ("model.safetensors", "value_head.safetensors", "optimizer.pt", "state.json", "../ppo_fingerprint.txt"):
        assert (checkpoint / name).exists(), name


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_round_moves_the_policy_towards_the_better_completions(tiny_model_dir, tmp_path, monkeypatch, sign):
    """The learning signal: after one round, the best-scored sample gained log-probability relative
    to the worst one, whichever way the reward points (a random tiny model cannot show a reliable
    multi-round reward trend: at a low temperature it collapses onto a few tokens whatever the
    reward, at temperature 1 it almost never samples the same token twice)."""
    policy, tokenizer = tiny(tiny_model_dir)
    start, _ = tiny(tiny_model_dir)
    rollouts = []

    def recording(*args, **kwargs):
        rollouts.append(sample_completions(*args, **kwargs))
        return rollouts[-1]

    monkeypatch.setattr(ppo, "sample_completions", recording)
    scores = []

    def reward(prompts, completions, **_):
        scores.extend(sign * len(c) for c in completions)
        return scores[-len(completions):]

    settings = PPOSettings(learning_rate=1e-3, epochs=0.5, batch_size=4, ppo_epochs=4, max_new_tokens=8)
    train_ppo(policy, tokenizer, PROMPTS * 2, reward, settings, tmp_path / "ppo")
    (rollout,) = rollouts
    assert len(set(scores)) > 1, scores

    with torch.no_grad():
        args = (rollout.input_ids, rollout.attention_mask, rollout.prompt_width)
        after = (completion_logprobs(policy, *args)[0] * rollout.mask).sum(-1)
        before = (completion_logprobs(start, *args)[0] * rollout.mask).sum(-1)
    gain = after - before
    best, worst = max(range(4), key=scores.__getitem__), min(range(4), key=scores.__getitem__)
    assert gain[best] > 0 > gain[worst], (scores, gain.tolist())


def test_reference_copy_stays_frozen(tiny_model_dir, tmp_path):
    policy, tokenizer = tiny(tiny_model_dir)
    reference, _ = tiny(tiny_model_dir)
    before = {name: p.detach().clone() for name, p in reference.named_parameters()}
    settings = PPOSettings(learning_rate=1e-3, epochs=0.5, batch_size=2, max_new_tokens=4)
    train_ppo(policy, tokenizer, PROMPTS, short_is_good, settings, tmp_path / "ppo", reference=reference)
    assert all(torch.equal(before[name], p) for name, p in reference.named_parameters())
    assert any(not torch.equal(before[name], p) for name, p in policy.named_parameters())


def test_resume_continues_from_the_newest_checkpoint(tiny_model_dir, tmp_path):
    settings = PPOSettings(learning_rate=1e-3, epochs=1, batch_size=2, max_new_tokens=4, save_steps=1)
    calls = []

    def reward(prompts, completions, **_):
        calls.append(list(completions))
        return short_is_good(prompts, completions)

    out = tmp_path / "ppo"
    policy, tokenizer = tiny(tiny_model_dir)
    first = train_ppo(policy, tokenizer, PROMPTS, reward, settings, out)
    assert [e["step"] for e in first] == [1, 2] and len(calls) == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    # a longer run with the same settings continues: rounds 1-2 are not run again
    longer = PPOSettings(**{**settings.__dict__, "epochs": 2})
    logged = []
    policy, tokenizer = tiny(tiny_model_dir)  # a fresh start model, as a rerun of the stage would load
    resumed = train_ppo(policy, tokenizer, PROMPTS, reward, longer, out, on_log=logged.append)
    assert len(calls) == 4
    assert [e["step"] for e in resumed] == [1, 2, 3, 4]
    assert resumed[:2] == first
    assert [e["step"] for e in logged] == [3, 4]
    state = json.loads((out / "checkpoint-4" / "state.json").read_text())
    assert state["round"] == 4 and state["history"] == resumed
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]  # limit 2

    # exactly as if it had never stopped
    policy, tokenizer = tiny(tiny_model_dir)
    straight = train_ppo(policy, tokenizer, PROMPTS, short_is_good, longer, tmp_path / "straight")
    assert len(straight) == len(resumed)
    for a, b in zip(straight, resumed, strict=True):
        assert a == pytest.approx(b)

    # another setting: the old checkpoints are not this run's, so it starts afresh
    calls.clear()
    changed = PPOSettings(**{**longer.__dict__, "learning_rate": 2e-3, "epochs": 0.5})
    policy, tokenizer = tiny(tiny_model_dir)
    fresh = train_ppo(policy, tokenizer, PROMPTS, reward, changed, out)
    assert [e["step"] for e in fresh] == [1] and len(calls) == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


@pytest.mark.parametrize("bad", [float("nan"), None])
def test_a_missing_score_names_the_completion(tiny_model_dir, tmp_path, bad):
    policy, tokenizer = tiny(tiny_model_dir)
    settings = PPOSettings(epochs=0.5, batch_size=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="completion 1"):
        train_ppo(policy, tokenizer, PROMPTS, lambda prompts, completions, **_: [0.0, bad], settings, tmp_path / "ppo")


def test_lora_policy_uses_its_base_as_reference(tiny_model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny(tiny_model_dir)
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    disabled = []
    original = policy.disable_adapter
    monkeypatch.setattr(policy, "disable_adapter", lambda: disabled.append(1) or original())
    no_copy = SimpleNamespace(deepcopy=lambda *a: pytest.fail("a peft policy needs no frozen copy"))
    monkeypatch.setattr(ppo, "copy", no_copy)

    settings = PPOSettings(learning_rate=1e-2, epochs=0.5, batch_size=2, max_new_tokens=4)
    history = train_ppo(policy, tokenizer, PROMPTS, short_is_good, settings, tmp_path / "ppo")

    assert len(history) == 1 and disabled == [1]
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # LoRA starts as a no-op
    assert all(torch.equal(base[n], p) for n, p in policy.named_parameters() if "lora_" not in n)
    assert any(not torch.equal(lora[n], p) for n, p in policy.named_parameters() if "lora_" in n)
    checkpoint = tmp_path / "ppo" / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").exists()
    assert not (checkpoint / "model.safetensors").exists()
