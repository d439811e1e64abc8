"""A compact PPO for policy optimisation on a (mapped) reward: MOSLIM's Eq. 12.

MOSLIM (Eq. 12) maximises E[r(x, y) - beta * log(pi(y|x) / pi_ref(y|x))] with PPO. TRL used to ship a
``PPOTrainer`` for this, but removed it entirely (huggingface/trl PR #7020, September 2026; the TRL
installed here has no PPO at all), so moalign carries its own, kept small on purpose:

* pure tensor functions for the maths (:func:`kl_penalised_rewards`, :func:`gae_advantages`,
  :func:`whiten`, :func:`policy_loss`, :func:`value_loss`), each testable by hand;
* one loop (:func:`train_ppo`) around them: sample completions, score them with a reward callable,
  compute old/reference log-probabilities and values, then a few clipped-surrogate passes.

Design, in the classic RLHF-PPO shape (Ziegler et al. 2019; Stiennon et al. 2020; TRL's old PPO):
the sequence score is a reward at the completion's last token, every token also pays
``-kl_beta * (log pi - log pi_ref)``; the critic is a linear :class:`ValueHead` on the policy's last
hidden states (it shares the policy's body); advantages are GAE, whitened per rollout batch.

Tensor layout throughout: B rows, T completion positions, ``mask`` (B, T) float, 1 on a row's real
completion tokens (the first end-of-sequence token included), 0 on the padding after it.
``values[:, t]`` is the critic's estimate of the state in which completion token t is chosen, and
``rewards[:, t]`` the reward for choosing it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from moalign.generation import Prompt, chat_prompt, stop_token_ids
from moalign.training.runs import claim_checkpoints, fingerprint, numbered_checkpoints

logger = logging.getLogger(__name__)



# ------------------------------------------------------------------------------------------------
# the maths: pure functions on (B, T) tensors


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_beta: float
) -> torch.Tensor:
    """Per-token rewards (B, T): ``-kl_beta * (logprobs - ref_logprobs)`` on every real token, plus
    the sequence score on each row's last real token; 0 on padding."""
    rewards = -kl_beta * (logprobs - ref_logprobs) * mask
    last = (mask.sum(-1).long() - 1).clamp_min(0)  # a row's mask is a prefix of ones
    has_tokens = (mask.sum(-1) > 0).to(rewards.dtype)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype) * has_tokens
    return rewards


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, computed backwards over the completion.

    delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 beyond a row's last real token, and
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = advantages + values),
    both 0 on padding.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * m
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t] * m, advantage
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``x`` normalised to mean 0 and variance 1 over the masked positions (the mean is kept when
    ``shift_mean`` is false); padding positions are 0."""
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (to minimise) and the fraction of tokens where the clip is active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return loss, clipfrac.detach()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """0.5 * the larger of the unclipped and clipped squared errors, masked mean; the clipped value
    moves at most ``clip_range`` from the rollout's value."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    errors = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(errors, mask)


# ------------------------------------------------------------------------------------------------
# settings and the critic


@dataclass(frozen=True)
class PPOSettings:
    learning_rate: float = 1e-5  # AdamW, constant
    epochs: float = 1.0  # passes over the prompts; rounds = ceil(epochs * prompts / batch_size)
    batch_size: int = 8  # prompts per round (one completion each)
    ppo_epochs: int = 2  # optimisation passes over each round's rollouts
    mini_batch_size: int | None = None  # rollouts per optimiser step; None = batch_size
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    kl_beta: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    max_new_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0
    logging_steps: int = 1  # rounds per history entry (averaged over them)
    save_steps: int = 50  # rounds between checkpoints (the last round is always saved)
    save_total_limit: int | None = 2  # newest checkpoints kept; None or 0 keeps all
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0

    def __post_init__(self):
        if self.batch_size < 1 or self.ppo_epochs < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size, ppo_epochs and max_new_tokens must be at least 1")
        if self.mini_batch_size is not None and not 1 <= self.mini_batch_size <= self.batch_size:
            raise ValueError("mini_batch_size must be between 1 and batch_size")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive (PPO samples)")


#: settings that change nothing in a run's trajectory: a run differing only in these resumes
_NOT_FINGERPRINTED = ("epochs", "logging_steps", "save_steps", "save_total_limit")


class ValueHead(nn.Module):
    """The critic: a linear map of the policy's last hidden state to a value, zero-initialised (so
    every first estimate is 0). Kept in fp32 and saved beside the policy."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden_states.to(self.linear.weight.dtype)).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# rollouts


@dataclass
class Rollout:
    """Sampled completions: ``input_ids``/``attention_mask`` (B, P + T) are the left-padded prompts
    followed by the completions; ``mask`` (B, T) marks the real completion tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    mask: torch.Tensor
    texts: list[str]


@torch.no_grad()
def sample_completions(policy, tokenizer, prompts: Sequence[Prompt], settings: PPOSettings) -> Rollout:
    """One sampled completion per prompt (chat template, left padding); a completion ends at its
    first end-of-sequence token, which counts as one of its tokens."""
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = padding_side
    device = next(policy.parameters()).device
    encoded = encoded.to(device)
    output = policy.generate(
        input_ids=encoded.input_ids,
        attention_mask=encoded.attention_mask,
        do_sample=True,
        temperature=settings.temperature,
        top_k=0,  # the plain softmax(logits / T), which the log-probabilities below assume
        top_p=1.0,
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompt_width = encoded.input_ids.shape[1]
    completion = output[:, prompt_width:]
    is_eos = torch.isin(completion, torch.tensor(stop_token_ids(policy, tokenizer), device=device)).long()
    mask = ((is_eos.cumsum(-1) - is_eos) == 0).float()  # no end-of-sequence before this token
    completion = torch.where(mask.bool(), completion, torch.full_like(completion, tokenizer.pad_token_id))
    lengths = mask.sum(-1).long().tolist()
    real = [row[:n].tolist() for row, n in zip(completion, lengths, strict=True)]
    decoded = tokenizer.batch_decode(real, skip_special_tokens=True)
    return Rollout(
        input_ids=torch.cat([encoded.input_ids, completion], dim=1),
        attention_mask=torch.cat([encoded.attention_mask, mask.long()], dim=1),
        prompt_width=prompt_width,
        mask=mask,
        texts=[text.strip() for text in decoded],
    )


def completion_logprobs(
    model, rollout_ids, attention_mask, prompt_width: int, temperature: float = 1.0, value_head=None
):
    """Per-token log-probabilities (B, T) of the completion tokens under ``model`` (logits divided by
    ``temperature``, the sampling distribution), and the values (B, T) when a ``value_head`` is given."""
    span = rollout_ids.shape[1] - prompt_width
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    output = model(
        input_ids=rollout_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=span + 1,
        output_hidden_states=value_head is not None,
    )
    logits = output.logits[:, :-1].float() / temperature  # position t predicts completion token t
    labels = rollout_ids[:, prompt_width:]
    logprobs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    if value_head is None:
        return logprobs, None
    hidden = output.hidden_states[-1][:, prompt_width - 1 : -1]  # the states the tokens are chosen in
    return logprobs, value_head(hidden)


def score_completions(reward_fn: Callable[..., Sequence[float]], prompts, completions: list[str],
                      **kwargs) -> torch.Tensor:
    """``reward_fn(prompts=..., completions=..., **kwargs)`` (TRL's reward-callable convention), checked."""
    scores = reward_fn(prompts=list(prompts), completions=list(completions), **kwargs)
    scores = list(scores) if scores is not None else []
    if len(scores) != len(completions):
        raise ValueError(f"reward_fn returned {len(scores)} scores for {len(completions)} completions")
    checked = []
    for index, score in enumerate(scores):
        value = float("nan") if score is None else float(score)
        if not math.isfinite(value):
            raise ValueError(
                f"reward_fn gave {score!r} for completion {index} ({completions[index][:80]!r}); "
                "every completion needs a finite score"
            )
        checked.append(value)
    return torch.tensor(checked, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# checkpoints


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def run_fingerprint(settings: PPOSettings, prompts: Sequence[Prompt]) -> str:
    """What decides whether an output_dir's checkpoints belong to this run (epochs excluded: a
    longer run continues a shorter one)."""
    trajectory = {k: v for k, v in asdict(settings).items() if k not in _NOT_FINGERPRINTED}
    return fingerprint({"settings": trajectory, "prompts": list(prompts)})


def _checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (state.json is written last), oldest first."""
    return [path for path in numbered_checkpoints(output_dir) if (path / "state.json").exists()]


def _save_checkpoint(output_dir: Path, round_index: int, policy, value_head, optimizer, state: dict, limit) -> None:
    from safetensors.torch import save_file

    final = output_dir / f"checkpoint-{round_index}"
    partial = output_dir / f"checkpoint-{round_index}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    policy.save_pretrained(partial, safe_serialization=True)
    head = {k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()}
    save_file(head, partial / "value_head.safetensors")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    if limit:
        for old in _checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old)


def _load_policy_weights(policy, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    if _is_peft(policy):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(policy, load_file(checkpoint / "adapter_model.safetensors"))
        return
    index = checkpoint / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.exists():  # a sharded save
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state = {}
    for name in files:
        state.update(load_file(checkpoint / name))
    result = policy.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{checkpoint}: weights that the policy does not have: {result.unexpected_keys[:5]}")


def _load_checkpoint(checkpoint: Path, policy, value_head, optimizer) -> dict:
    from safetensors.torch import load_file

    _load_policy_weights(policy, checkpoint)
    value_head.load_state_dict(load_file(checkpoint / "value_head.safetensors"))
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    return json.loads((checkpoint / "state.json").read_text())


# ------------------------------------------------------------------------------------------------
# the loop


def _round_prompts(num_prompts: int, batch_size: int, round_index: int, seed: int) -> list[int]:
    """The prompt indices of a round: consecutive slices of a stream of per-epoch shuffles (epoch e
    shuffled with seed + e), so every round is full and any round can be recomputed on resume."""
    indices, orders = [], {}
    for position in range(round_index * batch_size, (round_index + 1) * batch_size):
        epoch = position // num_prompts
        if epoch not in orders:
            orders[epoch] = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        indices.append(orders[epoch][position % num_prompts])
    return indices


def _reference_context(policy, reference):
    if reference is None and _is_peft(policy):
        return policy.disable_adapter()
    return nullcontext()


def _average(entries: list[dict]) -> dict:
    return {key: sum(e[key] for e in entries) / len(entries) for key in entries[0]}


def train_ppo(
    policy,
    tokenizer,
    prompts: Sequence[Prompt],
    reward_fn: Callable[..., Sequence[float]],
    settings: PPOSettings,
    output_dir: str | os.PathLike[str],
    *,
    reference=None,
    on_log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Optimise ``policy`` (a transformers causal LM, or a peft model with LoRA adapters) with PPO on
    ``reward_fn(prompts=..., completions=..., step=...) -> list[float]`` (TRL's convention: accept
    ``**kwargs``), in place; return the log history.

    The KL reference is ``reference`` if given; else, for a peft policy, the policy with its adapters
    disabled; else a frozen copy of the policy as it enters. Each round samples one completion for
    each of ``batch_size`` prompts and makes ``ppo_epochs`` passes over them. Checkpoints go to
    ``output_dir/checkpoint-<round>`` every ``save_steps`` rounds and after the last; a rerun with the
    same settings (``epochs`` aside) and prompts resumes from the newest one.
    """
    if not prompts:
        raise ValueError("train_ppo needs at least one prompt")
    output_dir = Path(output_dir)
    run_id = run_fingerprint(settings, prompts)
    # the folder may be shared with the caller's own stamp (the online training's): only PPO's
    # checkpoints belong to this run
    claim_checkpoints(output_dir, run_id, stamp="ppo_fingerprint.txt", owned="checkpoint-*")

    if reference is None and not _is_peft(policy):
        reference = copy.deepcopy(policy)  # the policy as it enters: the starting model
    if reference is not None:
        reference.eval()
        reference.requires_grad_(False)
    policy.eval()  # no dropout: rollout and update see the same distribution
    device = next(policy.parameters()).device
    config = policy.config.get_text_config() if hasattr(policy.config, "get_text_config") else policy.config
    value_head = ValueHead(config.hidden_size).to(device)
    trainable = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)

    history: list[dict] = []
    pending: list[dict] = []  # per-round stats not yet averaged into a history entry
    start = 0
    checkpoints = _checkpoints(output_dir)
    if checkpoints:
        state = _load_checkpoint(checkpoints[-1], policy, value_head, optimizer)
        start, history, pending = state["round"], state["history"], state["pending"]
        logger.info("resuming PPO from %s (round %d)", checkpoints[-1], start)

    total_rounds = math.ceil(settings.epochs * len(prompts) / settings.batch_size - 1e-9)
    mini_batch = settings.mini_batch_size or settings.batch_size
    for round_index in range(start, total_rounds):
        chosen = _round_prompts(len(prompts), settings.batch_size, round_index, settings.seed)
        batch_prompts = [prompts[i] for i in chosen]
        torch.manual_seed(settings.seed * 1_000_003 + round_index)  # each round's samples are reproducible
        rollout = sample_completions(policy, tokenizer, batch_prompts, settings)
        scores = score_completions(reward_fn, batch_prompts, rollout.texts, step=round_index + 1).to(device)
        ids, attention, width, mask = rollout.input_ids, rollout.attention_mask, rollout.prompt_width, rollout.mask

        with torch.no_grad():
            old_logprobs, old_values = completion_logprobs(
                policy, ids, attention, width, settings.temperature, value_head
            )
            with _reference_context(policy, reference):
                ref_model = reference if reference is not None else policy  # a peft policy, adapters off
                ref_logprobs, _ = completion_logprobs(ref_model, ids, attention, width, settings.temperature)
            old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
            rewards = kl_penalised_rewards(scores, old_logprobs, ref_logprobs, mask, settings.kl_beta)
            advantages, returns = gae_advantages(rewards, old_values * mask, mask, settings.gamma, settings.lam)
            if settings.whiten_advantages:
                advantages = whiten(advantages, mask)

        updates = []
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + round_index)
        for _ in range(settings.ppo_epochs):
            order = torch.randperm(len(batch_prompts), generator=generator).to(device)
            for begin in range(0, len(batch_prompts), mini_batch):
                rows = order[begin : begin + mini_batch]
                logprobs, values = completion_logprobs(
                    policy, ids[rows], attention[rows], width, settings.temperature, value_head
                )
                m = mask[rows]
                p_loss, clipfrac = policy_loss(logprobs, old_logprobs[rows], advantages[rows], m, settings.clip_range)
                v_loss = value_loss(values, old_values[rows], returns[rows], m, settings.value_clip_range)
                loss = p_loss + settings.vf_coef * v_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"PPO loss is {loss.item()} in round {round_index + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                optimizer.step()
                updates.append([loss.item(), p_loss.item(), v_loss.item(), clipfrac.item()])

        means = torch.tensor(updates).mean(0).tolist()
        pending.append({
            "loss": means[0],
            "policy_loss": means[1],
            "value_loss": means[2],
            "clipfrac": means[3],
            "kl": ((old_logprobs - ref_logprobs) * mask).sum(-1).mean().item(),
            "score_mean": scores.mean().item(),
            "reward_mean": rewards.sum(-1).mean().item(),
            "completion_length": mask.sum(-1).mean().item(),
        })
        step = round_index + 1
        if step % settings.logging_steps == 0 or step == total_rounds:
            entry = {"step": step, "epoch": step * settings.batch_size / len(prompts), **_average(pending)}
            pending = []
            history.append(entry)
            logger.info("ppo %s", entry)
            if on_log is not None:
                on_log(entry)
        if step % settings.save_steps == 0 or step == total_rounds:
            state = {"round": step, "history": history, "pending": pending, "fingerprint": run_id}
            _save_checkpoint(output_dir, step, policy, value_head, optimizer, state, settings.save_total_limit)
    return history
