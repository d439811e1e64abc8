"""The AMoPO math against values worked out by hand (see the comments for each number)."""

import math

import pytest
import torch

from moalign.losses import amopo_loss, simpo_loss
from moalign.weights import fixed_weights, gaussian_noise, gaussian_weights, token_probability_moments


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_simpo_loss_hand_value():
    # beta * (a_w - a_l) - gamma = 0.8 * (-0.5 + 1.5) - 2.0 = -1.2 ; -log sigma(-1.2) = log(1 + e^1.2)
    loss = simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), beta=0.8, gamma=2.0)
    assert loss.item() == pytest.approx(1.4632824673380311, abs=1e-6)


def test_amopo_loss_hand_value():
    # dimension 1: 0.8 * (-1 + 2) - 2 = -1.2 -> log(1 + e^1.2) = 1.463282...
    # dimension 2: 0.8 * (-2 + 1) - 2 = -2.8 -> log(1 + e^2.8) = 2.859033...
    # weighted: 0.25 * 1.463282 + 0.75 * 2.859033 = 2.510095
    chosen = torch.tensor([[-1.0, -2.0]])
    rejected = torch.tensor([[-2.0, -1.0]])
    loss = amopo_loss(chosen, rejected, torch.tensor([[0.25, 0.75]]), beta=0.8, gamma=2.0)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.25 * softplus(1.2) + 0.75 * softplus(2.8), abs=1e-6)
    assert loss.item() == pytest.approx(2.510095236550486, abs=1e-6)


def test_amopo_with_one_dimension_is_simpo():
    chosen, rejected = torch.randn(5, 1), torch.randn(5, 1)
    expected = simpo_loss(chosen[:, 0], rejected[:, 0], beta=0.8, gamma=2.0)
    got = amopo_loss(chosen, rejected, torch.ones(5, 1), beta=0.8, gamma=2.0)
    torch.testing.assert_close(got, expected)


def test_amopo_accepts_shared_weights_and_rejects_bad_shapes():
    chosen, rejected = torch.zeros(3, 2), torch.zeros(3, 2)
    assert amopo_loss(chosen, rejected, torch.tensor([0.5, 0.5]), 0.8, 2.0).shape == (3,)
    with pytest.raises(ValueError, match="batch, K"):
        amopo_loss(torch.zeros(3), torch.zeros(3), torch.tensor([1.0]), 0.8, 2.0)


def test_no_gradient_flows_through_the_weights():
    chosen = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    weights = torch.tensor([[0.3, 0.7]], requires_grad=True)
    amopo_loss(chosen, torch.tensor([[-2.0, -1.0]]), weights, 0.8, 2.0).sum().backward()
    assert chosen.grad is not None and weights.grad is None


def test_moments_of_token_probabilities_ignore_masked_tokens():
    # probabilities 0.2 and 0.6 (masked third token = 0.9 must be ignored): mean 0.4, variance 0.04
    logps = torch.log(torch.tensor([[0.2, 0.6, 0.9]]))
    mask = torch.tensor([[1, 1, 0]])
    mu, var = token_probability_moments(logps, mask)
    assert mu.item() == pytest.approx(0.4)
    assert var.item() == pytest.approx(0.04)


def test_gaussian_weights_with_zero_variance_are_softmax_of_the_means():
    # dimension 1 tokens all p=0.5, dimension 2 all p=0.4: no spread, so alpha = softmax(0.5, 0.4)
    # softmax: 1 / (1 + e^-0.1) = 0.524979
    logps = torch.log(torch.tensor([[[0.5, 0.5], [0.4, 0.4]]]))
    weights = gaussian_weights(logps, torch.ones_like(logps))
    assert weights[0, 0].item() == pytest.approx(0.52497918747894, abs=1e-6)
    assert weights.sum().item() == pytest.approx(1.0)


def test_gaussian_weights_draw_is_mu_plus_sigma_times_noise():
    logps = torch.log(torch.tensor([[[0.5, 0.5], [0.2, 0.6]]]))  # mu = (0.5, 0.4), sigma = (0, 0.2)
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(7))
    expected = torch.softmax(torch.tensor([[0.5, 0.4 + 0.2 * noise[0, 1].item()]]), dim=-1)
    weights = gaussian_weights(logps, torch.ones_like(logps), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(weights, expected)
    assert not weights.requires_grad


def test_gaussian_weights_vary_between_draws_when_tokens_spread():
    logps = torch.log(torch.rand(4, 3, 10).clamp_min(0.01))
    first = gaussian_weights(logps, torch.ones_like(logps), generator=torch.Generator().manual_seed(1))
    second = gaussian_weights(logps, torch.ones_like(logps), generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(first.sum(-1), torch.ones(4))


def test_gaussian_weights_of_some_pairs_take_their_rows_of_the_batchs_noise():
    # a step that scores its pairs a few at a time draws the batch's noise once and slices it
    logps = torch.log(torch.rand(4, 3, 10).clamp_min(0.01))
    whole = gaussian_weights(logps, torch.ones_like(logps), generator=torch.Generator().manual_seed(5))
    noise = gaussian_noise((4, 3), torch.Generator().manual_seed(5))
    parts = [gaussian_weights(logps[i:j], torch.ones_like(logps[i:j]), noise=noise[i:j]) for i, j in ((0, 1), (1, 4))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"noise must have shape \(batch, K\) = \(1, 3\)"):
        gaussian_weights(logps[:1], torch.ones_like(logps[:1]), noise=noise)


def test_fixed_weights_normalise_and_validate():
    torch.testing.assert_close(fixed_weights(2, [1.0, 3.0]), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(fixed_weights(4), torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="expected 3 weights"):
        fixed_weights(3, [1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        fixed_weights(2, [1.0, -1.0])
