"""Preference-optimisation objectives as pure functions.

Every function takes log-probabilities that were already computed and returns the *per-example*
loss, shape (batch,); the trainer averages. Notation of ``METHODS.md``: s(y) is the summed log-prob
of the completion tokens, a(y) = s(y) / |y| the length-normalised one, h(y) = s_theta(y) - s_ref(y)
the log-ratio against a reference model, sigma the logistic function.

Every loss is written with ``logsigmoid`` (never ``log(sigmoid(.))``) and, for ORPO, a two-branch
log(1 - e^x), so finite inputs give finite losses. Shapes are checked and a mismatch raises a
``ValueError`` that names the argument. ``docs/losses.md`` gives the sources and the decisions.

Which ``train.method`` uses which loss is :data:`moalign.training.methods.METHODS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# shape checks


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_batch_vectors(**tensors: torch.Tensor) -> int:
    """All arguments must be 1-D tensors of one common length (the batch). Returns that length."""
    batch = None
    first_name = None
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (batch,), got {type(tensor).__name__}")
        if tensor.dim() != 1:
            raise ValueError(f"{name} must have shape (batch,), got {_shape(tensor)}")
        if batch is None:
            batch, first_name = tensor.shape[0], name
        elif tensor.shape[0] != batch:
            raise ValueError(
                f"{name} has shape {_shape(tensor)} but {first_name} has shape ({batch},): "
                "every per-example input must have the same batch size"
            )
    return int(batch or 0)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


# --------------------------------------------------------------------------------------------
# reference-free, length-averaged objectives


def _simpo_elementwise(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    return -F.logsigmoid(beta * (chosen - rejected) - gamma)


def simpo_loss(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float, gamma: float
) -> torch.Tensor:
    """SimPO (Meng et al. 2024; Eq. 4 of the AMoPO paper).

    L = -log sigma(beta * a(y_w) - beta * a(y_l) - gamma)

    chosen_logps, rejected_logps: (batch,) length-averaged log-probabilities a(y); no reference.
    gamma is the absolute target margin (TRL's ``simpo_gamma``), not the SimPO repo's gamma/beta
    ratio. TRL (``trl/experimental/cpo/cpo_trainer.py::CPOTrainer.cpo_loss``, ``loss_type="simpo"``)
    computes beta * ((a_w - a_l) - simpo_gamma / beta), the same number; with ``cpo_alpha=0`` it adds
    no NLL term, so this function equals TRL's SimPO per example.
    """
    _check_batch_vectors(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    return _simpo_elementwise(chosen_logps, rejected_logps, beta, gamma)


def amopo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """AMoPO (the AMoPO paper, Eq. 9), with the target margin gamma of its hyper-parameters.

    L = -sum_k alpha_k log sigma(beta * a(y_w | x_k*) - beta * a(y_l | x_k*) - gamma)

    chosen_logps, rejected_logps: (batch, K) length-averaged log-probabilities a(y | x_k*) of the
        chosen and rejected response under each dimension prompt x_k* = f(x, d_k); no reference.
    weights: (batch, K) or (K,) alpha on the simplex (``moalign.weights``); treated as constants.
    Returns (batch,). With K = 1 and alpha = 1 this is exactly :func:`simpo_loss`.
    Source: arXiv 2506.07165, Eq. (9) and Appendix B (beta = 0.8, gamma = 2.0).
    """
    if chosen_logps.shape != rejected_logps.shape or chosen_logps.dim() != 2:
        raise ValueError(
            f"expected chosen/rejected log-probs of equal shape (batch, K), got "
            f"{_shape(chosen_logps)} and {_shape(rejected_logps)}"
        )
    if weights.shape not in (chosen_logps.shape, chosen_logps.shape[1:]):
        raise ValueError(
            f"weights must have shape (batch, K) = {_shape(chosen_logps)} or (K,) = "
            f"{_shape(chosen_logps)[1:]}, got {_shape(weights)}"
        )
    per_dimension = _simpo_elementwise(chosen_logps, rejected_logps, beta, gamma)  # (batch, K)
    return (weights.detach().expand_as(per_dimension) * per_dimension).sum(-1)


_MINUS_LN2 = -0.6931471805599453


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, branching at -ln 2 (as TRL's ORPO and Maechler 2012).

    Each branch only ever sees inputs on its own side of -ln 2, so the branch that ``torch.where``
    discards cannot produce an inf whose zero-weighted gradient would turn into NaN (TRL's one-line
    form gives NaN gradients for x within float eps of 0). Values are the same as TRL's.
    """
    low = x < _MINUS_LN2
    low_side = torch.where(low, x, torch.full_like(x, _MINUS_LN2))
    high_side = torch.where(low, torch.full_like(x, _MINUS_LN2), x)
    return torch.where(low, torch.log1p(-torch.exp(low_side)), torch.log(-torch.expm1(high_side)))


def orpo_loss(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_nll: torch.Tensor, lam: float
) -> torch.Tensor:
    """ORPO (Hong et al. 2024), the odds-ratio preference loss plus the chosen NLL.

    log_odds = (a_w - a_l) - [log(1 - e^{a_w}) - log(1 - e^{a_l})]
    L = NLL(y_w) - lam * log sigma(log_odds)

    chosen_logps, rejected_logps: (batch,) length-averaged log-probabilities a(y) (ORPO's odds use
        the per-token geometric-mean probability e^{a(y)}); no reference model.
    chosen_nll: (batch,) the NLL term of the chosen response, computed by the caller. TRL and the
        ORPO repo use the token-mean cross-entropy over prompt + response, pooled over the batch;
        passing that scalar broadcast to (batch,) reproduces TRL's batch loss exactly.
    lam: the weight of the odds-ratio term. It is TRL's ``ORPOConfig.beta`` (TRL returns
        ``beta * logsigmoid(log_odds)`` and its loss is ``nll - mean(that)``), the paper's lambda.

    log(1 - e^x) uses TRL's two-branch form. A log-prob >= 0 (probability 1, e.g. after rounding)
    would give log(0); such values are clamped to -tiny, which keeps the loss finite and changes
    nothing for any strictly negative input. Low-precision inputs are computed in float32 (as TRL).
    Source: TRL ``trl/experimental/orpo/orpo_trainer.py::ORPOTrainer.odds_ratio_loss`` and
    ``get_batch_loss_metrics`` (``loss = policy_nll_loss - losses.mean()``); xfactlab/orpo.
    """
    _check_batch_vectors(chosen_logps=chosen_logps, rejected_logps=rejected_logps, chosen_nll=chosen_nll)
    dtype = torch.promote_types(chosen_logps.dtype, torch.float32)
    chosen, rejected = chosen_logps.to(dtype), rejected_logps.to(dtype)
    ceiling = -torch.finfo(dtype).tiny
    chosen, rejected = chosen.clamp(max=ceiling), rejected.clamp(max=ceiling)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return chosen_nll.to(dtype) - lam * F.logsigmoid(log_odds)


def contrastive_cpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    beta: float,
    alpha: float,
) -> torch.Tensor:
    """Contrastive Preference Optimization (Xu et al. 2024, "Contrastive Preference Optimization").

    L = -log sigma(beta * [s(y_w) - s(y_l)]) + alpha * NLL(y_w)

    chosen_logps, rejected_logps: (batch,) summed log-probabilities s(y); no reference model (CPO
        drops DPO's reference, the beta -> 0 reading of DPO's bound).
    chosen_nll: (batch,) the NLL regulariser of the chosen response, computed by the caller. TRL
        uses the token-mean cross-entropy of the chosen completions pooled over the batch; passing
        that scalar broadcast to (batch,) reproduces TRL's batch loss exactly.
    alpha: TRL's ``cpo_alpha`` (not its AlphaPO ``alpha``, which must stay 0 here).
    Source: TRL ``trl/experimental/cpo/cpo_trainer.py``: ``cpo_loss`` (``loss_type="sigmoid"``,
    ``label_smoothing=0``) and ``get_batch_loss_metrics`` (``loss = losses.mean() + cpo_alpha * nll``).
    """
    _check_batch_vectors(chosen_logps=chosen_logps, rejected_logps=rejected_logps, chosen_nll=chosen_nll)
    return -F.logsigmoid(beta * (chosen_logps - rejected_logps)) + alpha * chosen_nll


# --------------------------------------------------------------------------------------------
# objectives with a reference model (summed log-probabilities)


def _log_ratios(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023), sigmoid loss.

    h(y) = s_theta(y) - s_ref(y);  L = -log sigma(beta * [h(y_w) - h(y_l)])

    All four inputs: (batch,) summed log-probabilities s(y) of the policy and the frozen reference.
    Argument order and arithmetic follow TRL 1.16 ``trl/trainer/dpo_trainer.py::DPOTrainer._compute_loss``
    (``f_divergence_type="reverse_kl"``, ``loss_type="sigmoid"``); eric-mitchell/direct-preference-
    optimization ``preference_loss``.
    """
    _check_batch_vectors(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen_ratio, rejected_ratio = _log_ratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


def cal_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Cal-DPO (Xiao et al. 2024, NeurIPS), as in the authors' released code.

    h(y) = s_theta(y) - s_ref(y)
    L = -log sigma(h(y_w) - h(y_l)) + 1/2 [(h(y_w) - 1/(2 beta))^2 + (h(y_l) + 1/(2 beta))^2]

    No beta inside the Bradley-Terry term; the chosen log-ratio is pulled to +1/(2 beta) and the
    rejected one to -1/(2 beta). (The AMoPO paper's Table 4 prints both targets with a minus sign and
    no 1/2: a typo, see docs/losses.md.) All four inputs: (batch,) summed log-probabilities.
    The released code adds the *batch-mean* squared errors (``F.mse_loss``) to each example; here
    each example carries its own squared errors, so the per-example values differ but the batch
    mean, the quantity that is optimised, is identical.
    Source: tengxiao1/Cal-DPO ``scripts/dpo_trainer.py::DPOTrainer.dpo_loss``, ``loss_type="Cal-DPO"``.
    """
    _check_batch_vectors(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    _check_positive("beta", beta)
    chosen_ratio, rejected_ratio = _log_ratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    target = 1.0 / (2.0 * beta)
    contrastive = -F.logsigmoid(chosen_ratio - rejected_ratio)
    calibration = (chosen_ratio - target) ** 2 + (rejected_ratio + target) ** 2
    return contrastive + 0.5 * calibration


def modpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_margin_rewards: torch.Tensor,
    rejected_margin_rewards: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """MODPO (Zhou et al. 2024), the margin-reward DPO loss for the objective being optimised.

    r(y) = (1 / w_0) * (beta * [s_theta(y) - s_ref(y)] - w_rest . r_rest(y))
    L = -log sigma(r(y_w) - r(y_l))

    chosen_logps ... ref_rejected_logps: (batch,) summed log-probabilities; the reference is the SFT
        model.
    chosen_margin_rewards, rejected_margin_rewards: (batch, K-1) rewards r_rest(y) of the *other*
        objectives (an explicit reward model, or the implicit reward beta (s_dpo - s_sft) of a DPO
        model trained on that objective); treated as constants (detached).
    weights: (K,) with weights[0] = w_0 for the objective being optimised and weights[1:] = w_rest
        for the margin objectives. w is *not* normalised to sum to 1 and the margin is subtracted,
        exactly as the released code. w_0 must be non-zero.
    Source: ZHZisZZ/modpo ``src/trainer/modpo_trainer.py::MODPOTrainer.modpo_loss`` (sigmoid).
    """
    batch = _check_batch_vectors(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    if weights.dim() != 1 or weights.shape[0] < 1:
        raise ValueError(f"weights must have shape (K,) with K >= 1, got {_shape(weights)}")
    expected = (batch, weights.shape[0] - 1)
    for name, margin in (
        ("chosen_margin_rewards", chosen_margin_rewards),
        ("rejected_margin_rewards", rejected_margin_rewards),
    ):
        if _shape(margin) != expected:
            raise ValueError(
                f"{name} must have shape (batch, K-1) = {expected} for weights of shape "
                f"{_shape(weights)}, got {_shape(margin)}"
            )
    w = weights.detach().to(chosen_logps.dtype)
    if w[0] == 0:
        raise ValueError("weights[0] (w_0, the weight of the optimised objective) must be non-zero")
    w_rest = w[1:]
    chosen_margin = chosen_margin_rewards.detach().to(chosen_logps.dtype) @ w_rest
    rejected_margin = rejected_margin_rewards.detach().to(chosen_logps.dtype) @ w_rest
    chosen_ratio, rejected_ratio = _log_ratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_reward = (beta * chosen_ratio - chosen_margin) / w[0]
    rejected_reward = (beta * rejected_ratio - rejected_margin) / w[0]
    return -F.logsigmoid(chosen_reward - rejected_reward)


def spo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    prev_margin: torch.Tensor,
    beta: float,
    lam: float,
) -> torch.Tensor:
    """SPO (Lou et al. 2024, arXiv 2405.12739), round n. UNVERIFIED RECONSTRUCTION: no public code.

    h(y) = s_theta(y) - s_{n-1}(y)          (the reference is the previous round's policy pi_{n-1})
    L = -log sigma(beta * [h(y_w) - h(y_l)] - lam * prev_margin)

    prev_margin: (batch,) r_{n-1}(y_w) - r_{n-1}(y_l), the previous round's implicit-reward margin
        (e.g. beta_{n-1} [log pi_{n-1}/pi_{n-2}](y_w) - same for y_l), computed by the caller and
        treated as a constant (detached).
    All log-probabilities: (batch,) summed.
    Why this form: round n maximises E[R_n] - beta KL(pi || pi_{n-1}) while keeping the earlier
    dimension's reward (Lagrange multiplier lam); the optimum pi_n ∝ pi_{n-1} exp((R_n + lam
    R_{n-1}) / beta) gives R_n = beta h - lam R_{n-1} + const, whose Bradley-Terry likelihood is the
    loss above (the margin is subtracted, as in MODPO). The paper's exact multi-round form, its
    scaling of lam and its choice of R_{n-1} could not be checked; with lam = 0 this is DPO against
    pi_{n-1}. See docs/losses.md.
    """
    _check_batch_vectors(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        prev_margin=prev_margin,
    )
    chosen_ratio, rejected_ratio = _log_ratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio) - lam * prev_margin.detach())
