"""The baseline objectives: hand-worked values, parity with TRL 1.16's own code, stability, shapes,
and the AMoPO authors'-code weights.

TRL parity drives TRL's code, not a copy of it:
- DPO: ``trl/trainer/dpo_trainer.py::DPOTrainer._compute_loss`` (the loss is inline there) is run
  on a fake ``self`` and a fake model whose ``log_probs`` already hold the summed log-probabilities,
  with precomputed reference log-probabilities (``precompute_ref_logps=True``).
- SimPO and contrastive CPO: ``trl/experimental/cpo/cpo_trainer.py::CPOTrainer.cpo_loss`` per example
  and ``CPOTrainer.get_batch_loss_metrics`` for the batch loss (with ``concatenated_forward`` faked).
- ORPO: ``trl/experimental/orpo/orpo_trainer.py::ORPOTrainer.odds_ratio_loss`` and
  ``ORPOTrainer.get_batch_loss_metrics`` in the same way.
"""

import math
import types
from collections import defaultdict

import pytest
import torch

from moalign.losses import (
    amopo_loss,
    cal_dpo_loss,
    contrastive_cpo_loss,
    dpo_loss,
    modpo_loss,
    orpo_loss,
    simpo_loss,
    spo_loss,
)
from moalign.weights import authors_code_weights, gaussian_weights


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# hand-worked values


def test_dpo_hand_value_and_reference_matters():
    # h_w = -10 - (-11) = 1 ; h_l = -12 - (-11) = -1 ; beta * (h_w - h_l) = 0.2 * 2 = 0.4
    # loss = -log sigma(0.4) = log(1 + e^-0.4) = 0.513015...
    loss = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.2)
    assert loss.item() == pytest.approx(softplus(-0.4), abs=1e-6)
    assert loss.item() == pytest.approx(0.5130152523999526, abs=1e-6)
    # same policy, other reference: h_w = -10 + 8 = -2 ; h_l = -12 + 14 = 2 ; 0.2 * (-4) = -0.8
    # loss = log(1 + e^0.8) = 1.171101...
    other = dpo_loss(t(-10.0), t(-12.0), t(-8.0), t(-14.0), beta=0.2)
    assert other.item() == pytest.approx(softplus(0.8), abs=1e-6)


def test_orpo_hand_value():
    # a_w = log 0.5 -> odds 0.5 / 0.5 = 1 ; a_l = log 0.25 -> odds 0.25 / 0.75 = 1/3
    # log odds ratio = log 3 ; -log sigma(log 3) = -log(3/4) = log(4/3)
    # loss = NLL + lam * log(4/3) = 0.7 + 0.1 * 0.287682 = 0.728768
    loss = orpo_loss(t(math.log(0.5)), t(math.log(0.25)), t(0.7), lam=0.1)
    assert loss.item() == pytest.approx(0.7 + 0.1 * math.log(4 / 3), abs=1e-6)


def test_cal_dpo_hand_values_and_target_signs():
    # beta = 0.5 -> targets +1/(2 beta) = +1 (chosen) and -1 (rejected)
    # h_w = -10 - (-11) = 1, h_l = -12 - (-11) = -1: both on target, calibration 0
    # loss = -log sigma(1 - (-1)) = log(1 + e^-2) = 0.126928 (no beta in the BT term)
    on_target = cal_dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.5)
    assert on_target.item() == pytest.approx(softplus(-2.0), abs=1e-6)
    # reference equal to the policy: h_w = h_l = 0
    # loss = log 2 + 1/2 * [(0 - 1)^2 + (0 + 1)^2] = 0.693147 + 1 = 1.693147
    at_reference = cal_dpo_loss(t(-10.0), t(-12.0), t(-10.0), t(-12.0), beta=0.5)
    assert at_reference.item() == pytest.approx(math.log(2) + 1.0, abs=1e-6)
    # the AMoPO Table 4 reading (both targets +1/(2 beta) inside (h - 1/(2 beta))^2, no 1/2) would
    # charge this pair (1 - 1)^2 + (-1 - 1)^2 = 4; the released code (rejected target -1) charges 0
    table4_reading = softplus(-2.0) + (1 - 1) ** 2 + (-1 - 1) ** 2
    assert on_target.item() == pytest.approx(table4_reading - 4.0, abs=1e-6)


def test_contrastive_cpo_hand_value():
    # beta * (s_w - s_l) = 0.1 * (-20 + 25) = 0.5 ; -log sigma(0.5) = log(1 + e^-0.5) = 0.474077
    # + alpha * NLL = 1.0 * 1.5 -> 1.974077
    loss = contrastive_cpo_loss(t(-20.0), t(-25.0), t(1.5), beta=0.1, alpha=1.0)
    assert loss.item() == pytest.approx(softplus(-0.5) + 1.5, abs=1e-6)


def test_simpo_hand_value_gamma_is_absolute():
    # beta (a_w - a_l) - gamma = 2.0 * (-1.0 + 1.5) - 0.5 = 0.5 ; loss = log(1 + e^-0.5) = 0.474077
    loss = simpo_loss(t(-1.0), t(-1.5), beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(softplus(-0.5), abs=1e-6)


def test_modpo_hand_value():
    # w = (w_0, w_1) = (0.5, 0.5), beta = 0.2 ; h_w = 1, h_l = -1 ; r_1(y_w) = 2, r_1(y_l) = 1
    # r(y_w) = (0.2 * 1 - 0.5 * 2) / 0.5 = -1.6 ; r(y_l) = (0.2 * -1 - 0.5 * 1) / 0.5 = -1.4
    # loss = -log sigma(-1.6 + 1.4) = log(1 + e^0.2) = 0.798139
    loss = modpo_loss(
        t(-10.0), t(-12.0), t(-11.0), t(-11.0), t(2.0).reshape(1, 1), t(1.0).reshape(1, 1), t(0.5, 0.5), beta=0.2
    )
    assert loss.item() == pytest.approx(softplus(0.2), abs=1e-6)


def test_modpo_weights_are_not_normalised_and_margin_is_subtracted():
    # K = 3, w = (2, 1, 3) (sum 6, kept as is); h_w - h_l = 0.5 - 0.25 = 0.25 ; beta = 0.4
    # margin rewards: chosen (1, -1), rejected (0, 0) -> w_rest . (r_w - r_l) = 1*1 + 3*(-1) = -2
    # r_w - r_l = (0.4 * 0.25 - (-2)) / 2 = (0.1 + 2) / 2 = 1.05 ; loss = log(1 + e^-1.05)
    loss = modpo_loss(
        t(-3.5), t(-4.75), t(-4.0), t(-5.0), t(1.0, -1.0).reshape(1, 2), t(0.0, 0.0).reshape(1, 2),
        t(2.0, 1.0, 3.0), beta=0.4,
    )
    assert loss.item() == pytest.approx(softplus(-1.05), abs=1e-6)


def test_modpo_with_one_objective_is_dpo_with_beta_over_w0():
    torch.manual_seed(0)
    c, r, rc, rr = (torch.randn(6) * 5 for _ in range(4))
    got = modpo_loss(c, r, rc, rr, torch.zeros(6, 0), torch.zeros(6, 0), t(0.5), beta=0.2)
    torch.testing.assert_close(got, dpo_loss(c, r, rc, rr, beta=0.4))


def test_spo_hand_value_and_reduces_to_dpo():
    # h_w = 1, h_l = -1 (against pi_{n-1}) ; beta * 2 = 0.2 ; lam * prev_margin = 0.5 * 2 = 1
    # loss = -log sigma(0.2 - 1.0) = log(1 + e^0.8) = 1.171101
    loss = spo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), t(2.0), beta=0.1, lam=0.5)
    assert loss.item() == pytest.approx(softplus(0.8), abs=1e-6)
    torch.manual_seed(1)
    c, r, rc, rr, m = (torch.randn(5) * 3 for _ in range(5))
    torch.testing.assert_close(spo_loss(c, r, rc, rr, m, beta=0.1, lam=0.0), dpo_loss(c, r, rc, rr, beta=0.1))


def test_every_loss_returns_per_example_losses():
    b = 4
    s = -torch.rand(b) * 20 - 1
    a = -torch.rand(b) * 2 - 0.1
    outs = {
        "amopo": amopo_loss(
            a.reshape(b, 1).repeat(1, 3), (a - 0.3).reshape(b, 1).repeat(1, 3), torch.full((3,), 1 / 3), 0.8, 2.0
        ),
        "simpo": simpo_loss(a, a - 0.3, 0.8, 2.0),
        "dpo": dpo_loss(s, s - 1, s + 0.5, s - 0.5, 0.2),
        "orpo": orpo_loss(a, a - 0.3, torch.ones(b), 0.1),
        "cal_dpo": cal_dpo_loss(s, s - 1, s + 0.5, s - 0.5, 0.2),
        "contrastive_cpo": contrastive_cpo_loss(s, s - 1, torch.ones(b), 0.1, 1.0),
        "modpo": modpo_loss(s, s - 1, s + 0.5, s - 0.5, torch.ones(b, 1), torch.zeros(b, 1), t(0.5, 0.5), 0.2),
        "spo": spo_loss(s, s - 1, s + 0.5, s - 0.5, torch.ones(b), 0.2, 0.5),
    }
    for name, out in outs.items():
        assert out.shape == (b,), name
        assert torch.isfinite(out).all(), name


def test_the_method_registry_names_every_method_once_and_its_losses_exist():
    from moalign.training.methods import LOSSES, METHODS

    assert list(METHODS) == [
        "amopo", "simpo", "dpo", "cal_dpo", "orpo", "contrastive_cpo", "modpo", "spo", "controllable_cpo", "sft",
        "moslim_rloo", "moslim_online_dpo", "moslim_ppo", "morlhf", "rewarded_soups",
    ]
    for method in METHODS.values():
        # an offline method trains through losses, an online one through an RL algorithm
        assert bool(method.phases) != method.online, method.name
        assert set(method.phases) <= set(LOSSES), method.name
    assert [m.name for m in METHODS.values() if m.needs_reference] == ["dpo", "cal_dpo", "modpo", "spo",
                                                                      "controllable_cpo"]
    assert {m.name: m.control_tags for m in METHODS.values() if m.control_tags} == {
        "controllable_cpo": "cpo", "moslim_rloo": "moslim", "moslim_online_dpo": "moslim", "moslim_ppo": "moslim"}


# ----------------------------------------------------------------------------------------------
# parity with TRL 1.16


@pytest.fixture(scope="module")
def trl_trainers():
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    return types.SimpleNamespace(DPO=DPOTrainer, CPO=CPOTrainer, ORPO=ORPOTrainer)


def _fake_accelerator():
    return types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


def _trl_dpo_batch_loss(dpo_trainer, chosen, rejected, ref_chosen, ref_rejected, beta):
    """Run DPOTrainer._compute_loss on fixed summed log-probabilities; returns TRL's batch loss."""
    n = chosen.shape[0]
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False),
        accelerator=_fake_accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=beta,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    # completion_mask of width 2 -> one shifted completion position, holding the summed log-prob
    log_probs = torch.cat([chosen, rejected]).reshape(2 * n, 1)

    def fake_model(**kwargs):
        zeros = torch.zeros_like(log_probs)
        return types.SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    inputs = {
        "input_ids": torch.zeros(2 * n, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, 2, dtype=torch.long),
        "completion_mask": torch.ones(2 * n, 2, dtype=torch.long),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return dpo_trainer._compute_loss(fake, fake_model, inputs, return_outputs=False)


def test_dpo_matches_trl_dpo_trainer(trl_trainers):
    torch.manual_seed(11)
    c, r, rc, rr = (-torch.rand(8, dtype=torch.float64) * 60 for _ in range(4))
    ours = dpo_loss(c, r, rc, rr, beta=0.2)
    # per example: one pair per call (TRL returns the batch mean only)
    per_example = torch.stack(
        [
            _trl_dpo_batch_loss(trl_trainers.DPO, c[i : i + 1], r[i : i + 1], rc[i : i + 1], rr[i : i + 1], 0.2)
            for i in range(8)
        ]
    )
    torch.testing.assert_close(ours, per_example.to(ours.dtype), rtol=0, atol=1e-6)
    batch = _trl_dpo_batch_loss(trl_trainers.DPO, c, r, rc, rr, 0.2)
    assert abs(ours.mean().item() - batch.item()) < 1e-6


def _fake_cpo(cpo_trainer, loss_type, beta, cpo_alpha, simpo_gamma=0.5):
    fake = types.SimpleNamespace(
        alpha=0.0,  # AlphaPO off
        beta=beta,
        label_smoothing=0.0,
        loss_type=loss_type,
        simpo_gamma=simpo_gamma,
        cpo_alpha=cpo_alpha,
        aux_loss_enabled=False,
        accelerator=_fake_accelerator(),
    )
    fake.cpo_loss = types.MethodType(cpo_trainer.cpo_loss, fake)
    return fake


def _drive_batch_loss(trainer_cls, fake, chosen, rejected, nll):
    logits = torch.zeros(chosen.shape[0], 1, 1)
    fake.concatenated_forward = lambda model, batch: (chosen, rejected, logits, logits, nll)
    loss, _ = trainer_cls.get_batch_loss_metrics(fake, None, {})
    return loss


def test_simpo_matches_trl_cpo_simpo(trl_trainers):
    torch.manual_seed(12)
    c, r = (-torch.rand(8, dtype=torch.float64) * 3 for _ in range(2))  # averaged log-probs a(y)
    beta, gamma = 0.8, 2.0
    fake = _fake_cpo(trl_trainers.CPO, "simpo", beta, cpo_alpha=0.0, simpo_gamma=gamma)
    trl_losses, _, _ = fake.cpo_loss(c, r)
    ours = simpo_loss(c, r, beta, gamma)
    torch.testing.assert_close(ours, trl_losses, rtol=0, atol=1e-6)
    # batch loss with cpo_alpha = 0: TRL's nll is the constant 0
    batch = _drive_batch_loss(trl_trainers.CPO, fake, c, r, torch.tensor(0.0))
    assert abs(ours.mean().item() - batch.item()) < 1e-6


def test_contrastive_cpo_matches_trl_cpo_sigmoid(trl_trainers):
    torch.manual_seed(13)
    c, r = (-torch.rand(8, dtype=torch.float64) * 80 for _ in range(2))  # summed log-probs s(y)
    beta, alpha = 0.1, 1.0
    fake = _fake_cpo(trl_trainers.CPO, "sigmoid", beta, cpo_alpha=alpha)
    trl_losses, _, _ = fake.cpo_loss(c, r)
    no_nll = contrastive_cpo_loss(c, r, torch.zeros(8, dtype=torch.float64), beta, 0.0)
    torch.testing.assert_close(no_nll, trl_losses, rtol=0, atol=1e-6)
    # TRL's NLL is one token-pooled scalar for the batch; broadcast it to every example
    nll = torch.tensor(1.37, dtype=torch.float64)
    ours = contrastive_cpo_loss(c, r, nll.expand(8), beta, alpha)
    batch = _drive_batch_loss(trl_trainers.CPO, fake, c, r, nll)
    assert abs(ours.mean().item() - batch.item()) < 1e-6


def test_orpo_matches_trl_orpo(trl_trainers):
    torch.manual_seed(14)
    c = -torch.rand(8) * 3
    r = -torch.rand(8) * 3
    c[0], r[1] = -1e-5, -0.69  # near 0 and around the -ln 2 branch point
    lam = 0.1
    fake = types.SimpleNamespace(beta=lam, aux_loss_enabled=False, accelerator=_fake_accelerator())
    fake.odds_ratio_loss = types.MethodType(trl_trainers.ORPO.odds_ratio_loss, fake)
    trl_ratio_term, *_ = fake.odds_ratio_loss(c, r)  # = lam * log sigma(log_odds)
    ours_no_nll = orpo_loss(c, r, torch.zeros(8), lam)
    torch.testing.assert_close(ours_no_nll, -trl_ratio_term, rtol=0, atol=1e-6)
    nll = torch.tensor(2.25)
    ours = orpo_loss(c, r, nll.expand(8), lam)
    batch = _drive_batch_loss(trl_trainers.ORPO, fake, c, r, nll)
    assert abs(ours.mean().item() - batch.item()) < 1e-6


# ----------------------------------------------------------------------------------------------
# stability


def _finite_with_grad(fn, *tensors):
    leaves = [x.clone().requires_grad_(True) for x in tensors]
    out = fn(*leaves)
    assert torch.isfinite(out).all(), out
    out.sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), leaf.grad
    return out


def test_large_magnitude_summed_logps_are_finite():
    big, small = t(-1e4, -1.0, -1e4), t(-1.0, -1e4, -5e3)
    ref_big, ref_small = t(0.0, -1e4, -1.0), t(-1e4, 0.0, -1.0)
    dpo = _finite_with_grad(lambda a, b, c, d: dpo_loss(a, b, c, d, 0.2), big, small, ref_big, ref_small)
    assert dpo[0].item() == pytest.approx(0.2 * (1e4 - 1 + 1e4), rel=1e-5)  # softplus(x) ~ x
    _finite_with_grad(lambda a, b, c, d: cal_dpo_loss(a, b, c, d, 0.2), big, small, ref_big, ref_small)
    _finite_with_grad(lambda a, b: contrastive_cpo_loss(a, b, torch.ones(3), 0.1, 1.0), big, small)
    _finite_with_grad(lambda a, b: simpo_loss(a, b, 0.8, 2.0), big, small)
    _finite_with_grad(
        lambda a, b, c, d: modpo_loss(a, b, c, d, torch.full((3, 1), 1e3), torch.full((3, 1), -1e3), t(0.5, 0.5), 0.2),
        big, small, ref_big, ref_small,
    )
    _finite_with_grad(
        lambda a, b, c, d: spo_loss(a, b, c, d, t(1e4, -1e4, 0.0), 0.2, 1.0), big, small, ref_big, ref_small
    )
    _finite_with_grad(
        lambda a, b: amopo_loss(a, b, torch.full((3,), 1 / 3), 0.8, 2.0), big.reshape(1, 3), small.reshape(1, 3)
    )


def test_orpo_is_finite_near_zero_and_very_negative():
    chosen = t(-1e-12, 0.0, 0.0, -1e4, -1e-30, -0.6931472)
    rejected = t(0.0, -1e-12, 0.0, -1e-7, -1e4, -0.6931471)
    out = _finite_with_grad(lambda a, b: orpo_loss(a, b, torch.ones(6), 0.1), chosen, rejected)
    # identical (clamped) inputs: log odds 0 -> NLL + lam * log 2
    assert out[2].item() == pytest.approx(1.0 + 0.1 * math.log(2), abs=1e-6)
    # half precision in, finite float32 out
    half = orpo_loss(chosen.half(), rejected.half(), torch.ones(6).half(), 0.1)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


# ----------------------------------------------------------------------------------------------
# shape validation


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="chosen_logps"):
        simpo_loss(torch.zeros(3, 2), torch.zeros(3, 2), 0.8, 2.0)
    with pytest.raises(ValueError, match="chosen_nll"):
        orpo_loss(torch.zeros(3) - 1, torch.zeros(3) - 1, torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="chosen_nll"):
        contrastive_cpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3, 1), 0.1, 1.0)
    with pytest.raises(ValueError, match="prev_margin"):
        spo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(1), 0.1, 0.5)
    with pytest.raises(ValueError, match="rejected_margin_rewards"):
        modpo_loss(*(torch.zeros(3) for _ in range(4)), torch.zeros(3, 1), torch.zeros(3, 2), t(0.5, 0.5), 0.1)
    with pytest.raises(ValueError, match="weights"):
        modpo_loss(*(torch.zeros(3) for _ in range(4)), torch.zeros(3, 1), torch.zeros(3, 1), torch.ones(2, 1), 0.1)
    with pytest.raises(ValueError, match="non-zero"):
        modpo_loss(*(torch.zeros(3) for _ in range(4)), torch.zeros(3, 1), torch.zeros(3, 1), t(0.0, 1.0), 0.1)
    with pytest.raises(ValueError, match="beta"):
        cal_dpo_loss(*(torch.zeros(3) for _ in range(4)), 0.0)
    with pytest.raises(ValueError, match="weights"):
        amopo_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3), 0.8, 2.0)


# ----------------------------------------------------------------------------------------------
# the AMoPO authors'-code weights


def _logp(*probs):
    return torch.log(torch.tensor(probs))


def test_authors_code_weights_zero_variance_hand_value():
    # chosen: dim 0 tokens p = 0.5, 0.5 ; dim 1 p = 0.4, 0.4   (no spread: the draw is the mean)
    # rejected: dim 0 p = 0.2, 0.2 ; dim 1 p = 0.1, 0.1
    # d = (0.5 + 0.2, 0.4 + 0.1) = (0.7, 0.5) ; softmax -> 1 / (1 + e^-0.2) = 0.549834
    chosen = torch.stack([_logp(0.5, 0.5), _logp(0.4, 0.4)]).unsqueeze(0)  # (1, 2, 2)
    rejected = torch.stack([_logp(0.2, 0.2), _logp(0.1, 0.1)]).unsqueeze(0)
    ones = torch.ones_like(chosen)
    w = authors_code_weights(chosen, ones, rejected, ones)
    assert w.shape == (1, 2)
    assert w[0, 0].item() == pytest.approx(1 / (1 + math.exp(-0.2)), abs=1e-6)


def test_authors_code_weights_separate_draws_with_sample_std():
    # chosen dim 0: p = 0.2, 0.6 (a third, masked token p = 0.9 ignored): mean 0.4,
    #   sample std sqrt((0.04 + 0.04) / (2 - 1)) = sqrt(0.08)
    # rejected dim 0: p = 0.3 (one token): std taken as 0 -> draw 0.3
    # dim 1: chosen and rejected have no response token -> contribute 0
    chosen = torch.stack([_logp(0.2, 0.6, 0.9), _logp(0.5, 0.5, 0.5)]).unsqueeze(0)
    chosen_mask = torch.tensor([[[1, 1, 0], [0, 0, 0]]])
    rejected = torch.stack([_logp(0.3, 0.7), _logp(0.5, 0.5)]).unsqueeze(0)
    rejected_mask = torch.tensor([[[1, 0], [0, 0]]])
    gen = torch.Generator().manual_seed(3)
    z_chosen = torch.randn((1, 2), generator=gen)  # drawn first, then the rejected noise
    d0 = 0.4 + math.sqrt(0.08) * z_chosen[0, 0].item() + 0.3
    expected = torch.softmax(torch.tensor([d0, 0.0]), dim=0).reshape(1, 2)
    w = authors_code_weights(chosen, chosen_mask, rejected, rejected_mask, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(w, expected)


def test_authors_code_weights_one_softmax_over_batch_and_dimensions():
    torch.manual_seed(5)
    b, k = 4, 3
    chosen = torch.log(torch.rand(b, k, 7).clamp_min(0.01)).requires_grad_(True)
    rejected = torch.log(torch.rand(b, k, 5).clamp_min(0.01))
    cm, rm = torch.ones(b, k, 7), torch.ones(b, k, 5)
    w = authors_code_weights(chosen, cm, rejected, rm, generator=torch.Generator().manual_seed(9))
    assert w.shape == (b, k)
    assert not w.requires_grad and w.grad_fn is None
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)  # over the whole batch x K vector
    assert not torch.allclose(w.sum(-1), torch.ones(b))  # not per row
    again = authors_code_weights(chosen, cm, rejected, rm, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(w, again)  # seeded: deterministic
    other = authors_code_weights(chosen, cm, rejected, rm, generator=torch.Generator().manual_seed(10))
    assert not torch.allclose(w, other)
    # differs from the paper's weights (pooled sides, per-row softmax), even with the same seed
    pooled = gaussian_weights(
        torch.cat([chosen, rejected], -1), torch.cat([cm, rm], -1), generator=torch.Generator().manual_seed(9)
    )
    torch.testing.assert_close(pooled.sum(-1), torch.ones(b))
    assert not torch.allclose(w, pooled)


def test_authors_code_weights_validate_shapes():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="chosen_mask"):
        authors_code_weights(x, torch.ones(2, 3, 5), x, torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="rejected_token_logps"):
        authors_code_weights(x, torch.ones(2, 3, 4), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="share"):
        authors_code_weights(x, torch.ones(2, 3, 4), torch.zeros(2, 2, 4), torch.ones(2, 2, 4))
