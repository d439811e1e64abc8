"""Every method ``train.method`` can name, and what each one needs: the one registry of methods.

:data:`METHODS` holds one :class:`Method` per name: offline (trained on pairs, one or more
:class:`Loss` phases) or online (trained against the reward model, with an RL algorithm), the
control-tag style its policy reads, and whether its phases run once per dimension (SPO) or on
score-conditioned prompts (controllable CPO). The config validates ``train.method`` here, the
training stage picks offline or online here, and evaluation asks here whether a policy reads tags.

A :class:`Loss` is a pure loss from :mod:`moalign.losses` plus three facts the trainer acts on:
which prompts a pair is scored under (the plain prompt, or AMoPO's K dimension prompts), whether
its log-probabilities are summed s(y) or length-averaged a(y), and whether it needs a frozen
reference model. The trainer computes exactly that and nothing else.

The module does not import torch: ``params.yaml`` is validated against :data:`METHODS` by every
stage, including those that never load a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class _Losses:
    """:mod:`moalign.losses` (and with it torch), imported when a loss is first computed."""

    def __getattr__(self, name: str):
        from moalign import losses as module

        return getattr(module, name)


losses = _Losses()


@dataclass(frozen=True)
class PairLogps:
    """Log-probabilities of one batch, (B, P) with P the prompts a pair is scored under."""

    chosen: torch.Tensor  # s(y_w) or a(y_w), per the method's convention
    rejected: torch.Tensor
    chosen_nll: torch.Tensor  # (B, P) mean token NLL of the chosen response (ORPO, contrastive CPO)
    ref_chosen: torch.Tensor | None = None  # (B, P) s_ref(y_w), for reference methods
    ref_rejected: torch.Tensor | None = None
    weights: torch.Tensor | None = None  # (B, P) AMoPO alpha
    chosen_scores: torch.Tensor | None = None  # (B, K) annotated per-dimension scores (MODPO margins)
    rejected_scores: torch.Tensor | None = None
    prev_margin: torch.Tensor | None = None  # (B,) SPO: the previous round's implicit-reward margin


@dataclass(frozen=True)
class Loss:
    """The objective of one Trainer phase."""

    name: str
    loss: Callable  # (PairLogps, TrainParams) -> (B,) per-example loss
    average_logps: bool
    needs_reference: bool = False
    dimension_prompts: bool = False  # score under f(x, d_k) for every dimension (AMoPO)
    orient_by_primary: bool = False  # chosen/rejected re-ordered by train.modpo_primary's scores
    reads: tuple[str, ...] = ()  # the train.* settings its loss depends on (moalign compare shows only these)


def _first(t: torch.Tensor) -> torch.Tensor:
    """Single-prompt methods: (B, 1) -> (B,)."""
    return t[:, 0]


def _against_reference(loss: str) -> Callable:
    """Adapter for the losses of the form loss(s_w, s_l, s_ref_w, s_ref_l, beta) (DPO, Cal-DPO), named
    so that building the registry imports nothing."""
    return lambda lp, p: getattr(losses, loss)(
        _first(lp.chosen), _first(lp.rejected), _first(lp.ref_chosen), _first(lp.ref_rejected), p.beta
    )


def _modpo(lp: PairLogps, p) -> torch.Tensor:
    """MODPO on the primary dimension (``train.modpo_primary``), the others as margin rewards.

    The margin rewards are the annotated scores mapped from 1-5 to [0, 1] (an explicit reward per
    dimension, as MODPO allows); ``train.modpo_weights`` follows ``dimensions.names``.
    """
    import torch

    k = lp.chosen_scores.shape[1]
    primary = p.modpo_primary_index
    order = [primary] + [i for i in range(k) if i != primary]
    weights = torch.tensor(p.modpo_weights if p.modpo_weights is not None else [1.0 / k] * k)[order]
    rewards_w = (lp.chosen_scores[:, order[1:]] - 1.0) / 4.0
    rewards_l = (lp.rejected_scores[:, order[1:]] - 1.0) / 4.0
    return losses.modpo_loss(
        _first(lp.chosen), _first(lp.rejected), _first(lp.ref_chosen), _first(lp.ref_rejected),
        rewards_w, rewards_l, weights.to(lp.chosen.device), p.beta,
    )


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "amopo",
            lambda lp, p: losses.amopo_loss(lp.chosen, lp.rejected, lp.weights, p.beta, p.gamma),
            average_logps=True,
            dimension_prompts=True,
            reads=("beta", "gamma", "weights", "fixed_weights"),
        ),
        Loss(
            "simpo",
            lambda lp, p: losses.simpo_loss(_first(lp.chosen), _first(lp.rejected), p.beta, p.gamma),
            average_logps=True,
            reads=("beta", "gamma"),
        ),
        Loss("dpo", _against_reference("dpo_loss"), average_logps=False, needs_reference=True, reads=("beta",)),
        Loss("cal_dpo", _against_reference("cal_dpo_loss"), average_logps=False, needs_reference=True, reads=("beta",)),
        Loss("modpo", _modpo, average_logps=False, needs_reference=True, orient_by_primary=True,
             reads=("beta", "modpo_primary", "modpo_weights")),
        # supervised fine-tuning on the chosen responses: controllable CPO's first stage, and a
        # baseline of its own
        Loss("sft", lambda lp, p: _first(lp.chosen_nll), average_logps=True),
        Loss(
            "spo",
            lambda lp, p: losses.spo_loss(
                _first(lp.chosen), _first(lp.rejected), _first(lp.ref_chosen), _first(lp.ref_rejected),
                lp.prev_margin, p.beta, p.spo_lambda,
            ),
            average_logps=False,
            needs_reference=True,
            reads=("beta", "spo_lambda"),
        ),
        Loss(
            "orpo",
            lambda lp, p: losses.orpo_loss(
                _first(lp.chosen), _first(lp.rejected), _first(lp.chosen_nll), p.orpo_lambda
            ),
            average_logps=True,
            reads=("orpo_lambda",),
        ),
        Loss(
            "contrastive_cpo",
            lambda lp, p: losses.contrastive_cpo_loss(
                _first(lp.chosen), _first(lp.rejected), _first(lp.chosen_nll), p.beta, p.cpo_alpha
            ),
            average_logps=False,
            reads=("beta", "cpo_alpha"),
        ),
    )
}


@dataclass(frozen=True)
class Method:
    """One value of ``train.method``: how it trains and what it needs."""

    name: str
    phases: tuple[str, ...] = ()  # offline: the LOSSES of its Trainer phases, in order
    online: bool = False  # trained against the reward model on sampled completions (training/online.py)
    algorithm: str | None = None  # online: rloo | online_dpo | ppo; None = train.online.baseline_algorithm
    # online: "mapped" (MOSLIM's Eq. 11 on tagged prompts), "scalarised" (one policy, fixed weights
    # over the heads) or "soup" (one policy per head, weights averaged)
    reward: str | None = None
    control_tags: str | None = None  # the tag style its policy reads before the prompt (moalign.control_tags)
    per_dimension: bool = False  # SPO: its phase runs once per dimension, pairs oriented by that one
    score_conditioned: bool = False  # controllable CPO: the chosen response's scores as tags before x

    @property
    def needs_reference(self) -> bool:
        """Scores the pairs under the starting model (the reference_logps stage caches them)."""
        return any(LOSSES[phase].needs_reference for phase in self.phases)

    @property
    def train_params(self) -> tuple[str, ...]:
        """The method-specific train.* settings its losses read; online methods read train.online.*."""
        return tuple(dict.fromkeys(key for phase in self.phases for key in LOSSES[phase].reads))


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("amopo", ("amopo",)),
        Method("simpo", ("simpo",)),
        Method("dpo", ("dpo",)),
        Method("cal_dpo", ("cal_dpo",)),
        Method("orpo", ("orpo",)),
        Method("contrastive_cpo", ("contrastive_cpo",)),
        Method("modpo", ("modpo",)),
        Method("spo", ("spo",), per_dimension=True),
        Method("controllable_cpo", ("sft", "dpo"), control_tags="cpo", score_conditioned=True),
        Method("sft", ("sft",)),
        Method("moslim_rloo", online=True, algorithm="rloo", control_tags="moslim", reward="mapped"),
        Method("moslim_online_dpo", online=True, algorithm="online_dpo", control_tags="moslim", reward="mapped"),
        Method("moslim_ppo", online=True, algorithm="ppo", control_tags="moslim", reward="mapped"),
        Method("morlhf", online=True, reward="scalarised"),
        Method("rewarded_soups", online=True, reward="soup"),
    )
}


def get_method(name: str) -> Method:
    """The registry entry of ``train.method``; an unknown name is an error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown train.method {name!r}; allowed: {', '.join(METHODS)}") from None


def algorithm_of(method: str, online) -> str | None:
    """The RL algorithm ``method`` trains with: its own, or ``train.online.baseline_algorithm`` (the
    ``online`` section) for MORLHF and Rewarded Soups; None for an offline method."""
    entry = get_method(method)
    return (entry.algorithm or online.baseline_algorithm) if entry.online else None
