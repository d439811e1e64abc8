"""Per-dimension weights alpha_k for AMoPO (pure functions, no gradient through the weights).

``gaussian_weights`` is Eq. (10) of the AMoPO paper: for each dimension k, the mean mu_k and the
variance sigma_k^2 of the per-token probabilities p_{k,t} = pi(y_t | x_k*, y_<t) over the tokens of
the pair (Algorithm 1, line 8: the chosen and rejected tokens of that dimension pooled, p_d = p_d^w +
p_d^l), one draw alpha_k ~ N(mu_k, sigma_k^2), then a softmax over the K dimensions so that
alpha_k > 0 and sum_k alpha_k = 1.

``authors_code_weights`` is what the authors' released code (Javkonline/AMoPO) computes instead:
separate draws for the chosen and the rejected response, added, and one softmax over the whole
batch x K vector (see its docstring and ``docs/losses.md``).

``fixed_weights`` is the paper's ablation (Table 3, "fixed weight"): configured weights normalised
to sum to one, the same for every pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def token_probability_moments(
    token_logps: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) variance of per-token probabilities, Eq. (10).

    token_logps: (..., T) log pi(y_t | x_k*, y_<t), any value where ``mask`` is 0.
    mask:        (..., T) 1 for a response token, 0 for prompt or padding.
    Returns mu, var with the shape of the leading dims. Variance divides by T, as in the paper.
    """
    mask = mask.to(token_logps.dtype)
    count = mask.sum(-1).clamp_min(1.0)
    probs = token_logps.exp() * mask
    mu = probs.sum(-1) / count
    var = (((token_logps.exp() - mu.unsqueeze(-1)) ** 2) * mask).sum(-1) / count
    return mu, var


def gaussian_noise(
    shape: Sequence[int], generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The (batch, K) standard-normal draws of :func:`gaussian_weights`, on the CPU: drawn for the
    whole batch at once, a step that scores its pairs a few at a time slices the same numbers."""
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device="cpu")


@torch.no_grad()
def gaussian_weights(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """AMoPO adaptive weights, Eq. (10) + softmax.

    token_logps, mask: (batch, K, T) per-token log-probabilities of the pair's response tokens under
    each dimension prompt x_k*, chosen and rejected tokens concatenated along T (the pooled p_d).
    noise: (batch, K) draws of :func:`gaussian_noise`; None draws them from ``generator``.
    Returns (batch, K) weights on the simplex, detached from the graph.
    """
    mu, var = token_probability_moments(token_logps, mask)
    if noise is None:
        noise = gaussian_noise(mu.shape, generator, mu.dtype)
    if noise.shape != mu.shape:
        raise ValueError(f"noise must have shape (batch, K) = {tuple(mu.shape)}, got {tuple(noise.shape)}")
    draw = mu + var.sqrt() * noise.to(device=mu.device, dtype=mu.dtype)
    return torch.softmax(draw, dim=-1)


@torch.no_grad()
def _authors_code_side_draw(
    token_logps: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One side's draw N(mean, std^2) of its token probabilities, per (pair, dimension).

    std is the sample standard deviation (divides by n - 1, ``torch.std``'s default, as the released
    code); with one token it is taken as 0 (there the released code's ``torch.std`` is NaN and
    ``torch.normal`` raises), and a side with no response token contributes 0 (as the released code).
    """
    keep = mask.bool()
    count = keep.sum(-1).to(token_logps.dtype)
    zero = torch.zeros((), dtype=token_logps.dtype, device=token_logps.device)
    probs = torch.where(keep, token_logps.exp(), zero)  # padding values never reach the sums
    mean = probs.sum(-1) / count.clamp_min(1.0)
    sq_dev = torch.where(keep, (probs - mean.unsqueeze(-1)) ** 2, zero).sum(-1)
    std = (sq_dev / (count - 1.0).clamp_min(1.0)).sqrt()
    std = torch.where(count > 1, std, torch.zeros_like(std))
    draw = mean + std * noise
    return torch.where(count > 0, draw, torch.zeros_like(draw))


@torch.no_grad()
def authors_code_weights(
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """AMoPO weights as the authors' released code computes them (not the paper's Eq. 10).

    chosen_token_logps, chosen_mask, rejected_token_logps, rejected_mask: (batch, K, T) per-token
    log-probabilities log pi(y_t | x_k*, y_<t) and response-token masks of each side under each
    dimension prompt (the two sides may have different T).

    For every pair b and dimension k, on each side separately: mean m and sample standard deviation
    sd (n - 1 divisor) of the token *probabilities*, one draw m + sd * z with its own z ~ N(0, 1);
    then d[b, k] = draw_chosen + draw_rejected, and ONE softmax over the flattened batch x K vector,
    reshaped back to (batch, K). So the weights sum to 1 over the whole batch, not per pair.
    Returns (batch, K), no gradient. Noise: chosen (batch, K) first, then rejected, from
    ``generator`` on the CPU.

    Source: Javkonline/AMoPO ``src/llamafactory/train/amopo/trainer_multi_obj.py::
    CustomMOTrainer.get_batch_loss_metrics`` (per-token probabilities from ``trainer_utils.py::
    get_all_tokens_batch_logps``). Differences from the paper (Eq. 10, Algorithm 1): the paper pools
    the two sides into one draw per dimension, uses the n divisor, and softmaxes over the K
    dimensions of each pair. Differences from the released code kept out on purpose: it drops tokens
    whose probability underflows to exactly 0 (here the mask alone decides), it replaces NaN/inf
    draws by 0 (finite inputs give none here), it uses the global RNG, and it multiplies the weights
    into K x batch per-dimension losses and takes their ``mean()`` (i.e. divides the weighted sum by
    K x batch), while moalign's ``amopo_loss`` sums over K and the trainer averages over pairs (a
    factor K larger). Its extra all-dimensions ("no_object") prompt, scored as one more of the K
    prompts, and its accumulating prompt prefixes are the trainer's business, not this function's.
    """
    shapes = {
        "chosen_token_logps": chosen_token_logps,
        "chosen_mask": chosen_mask,
        "rejected_token_logps": rejected_token_logps,
        "rejected_mask": rejected_mask,
    }
    for name, tensor in shapes.items():
        if tensor.dim() != 3:
            raise ValueError(f"{name} must have shape (batch, K, T), got {tuple(tensor.shape)}")
    if chosen_mask.shape != chosen_token_logps.shape:
        raise ValueError(
            f"chosen_mask has shape {tuple(chosen_mask.shape)} but chosen_token_logps has "
            f"{tuple(chosen_token_logps.shape)}"
        )
    if rejected_mask.shape != rejected_token_logps.shape:
        raise ValueError(
            f"rejected_mask has shape {tuple(rejected_mask.shape)} but rejected_token_logps has "
            f"{tuple(rejected_token_logps.shape)}"
        )
    if chosen_token_logps.shape[:2] != rejected_token_logps.shape[:2]:
        raise ValueError(
            f"chosen and rejected must share (batch, K), got {tuple(chosen_token_logps.shape[:2])} "
            f"and {tuple(rejected_token_logps.shape[:2])}"
        )
    batch, k = chosen_token_logps.shape[:2]
    dtype = chosen_token_logps.dtype
    noise_chosen = torch.randn((batch, k), generator=generator, dtype=dtype, device="cpu")
    noise_rejected = torch.randn((batch, k), generator=generator, dtype=dtype, device="cpu")
    device = chosen_token_logps.device
    chosen_draw = _authors_code_side_draw(chosen_token_logps, chosen_mask, noise_chosen.to(device))
    rejected_draw = _authors_code_side_draw(
        rejected_token_logps.to(dtype), rejected_mask, noise_rejected.to(device)
    )
    combined = chosen_draw + rejected_draw  # (batch, K)
    return torch.softmax(combined.reshape(-1), dim=0).reshape(batch, k)


def fixed_weights(num_dimensions: int, weights: Sequence[float] | None = None) -> torch.Tensor:
    """The fixed-weight ablation: ``weights`` normalised to sum to 1 (uniform when None). Shape (K,)."""
    if weights is None:
        return torch.full((num_dimensions,), 1.0 / num_dimensions)
    if len(weights) != num_dimensions:
        raise ValueError(f"expected {num_dimensions} weights, got {len(weights)}")
    tensor = torch.tensor([float(w) for w in weights])
    if (tensor < 0).any() or tensor.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    return tensor / tensor.sum()
