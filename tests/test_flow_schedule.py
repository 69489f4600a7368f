"""Schedule, timestep sampler and the transition/spectral losses (docs/training.md#the-gmflow-objective,
docs/sampling.md#time-grid; docs/testing.md#flow-level-oracles, docs/testing.md#timestep-sampler-oracle)."""

from __future__ import annotations

import math

import pytest
import torch

from gmflow import GaussianMixture, ops
from gmflow.flow import (
    TimestepSampler,
    flow_sigmas,
    gm_nll_loss,
    spectral_loss,
    transition_loss,
    transition_pair,
    unwarp_shift,
    warp_shift,
)


pytestmark = pytest.mark.usefixtures("one_thread")


T = 1000.0
F64 = torch.float64


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("M", [1, 2, 7, 32])
def test_flow_sigmas(shift, M):
    s = flow_sigmas(M, shift)
    assert s.shape == (M + 1,) and s.dtype == torch.float32
    assert s[0] == 1.0 and s[-1] == 0.0
    assert bool((s[1:] < s[:-1]).all())
    raw = 1 - torch.arange(M, dtype=F64) / M
    torch.testing.assert_close(s[:-1].double(), shift * raw / (1 + (shift - 1) * raw), rtol=1e-6, atol=1e-7)


def test_flow_sigmas_rejects_bad_input():
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="shift"):
        flow_sigmas(4, shift=0.0)


def test_warp_unwarp_inverse():
    r = torch.linspace(0, 1, 101, dtype=F64)
    for shift in (0.3, 1.0, 3.0, 10.0):
        torch.testing.assert_close(unwarp_shift(warp_shift(r, shift), shift), r)
    assert warp_shift(0.5, 3.0) == pytest.approx(0.75)


def test_timestep_sampler_uniform():
    g = torch.Generator().manual_seed(0)
    t = TimestepSampler().sample(200_000, generator=g)
    assert t.shape == (200_000,)
    assert float(t.min()) > 0 and float(t.max()) <= T
    assert float(t.mean()) == pytest.approx(T / 2, abs=5 * T / math.sqrt(12 * 200_000))
    # uniform: each decile holds 10 %
    hist = torch.histc(t, bins=10, min=0, max=T) / len(t)
    torch.testing.assert_close(hist, torch.full((10,), 0.1), atol=0.005, rtol=0)


def test_timestep_sampler_logit_normal_and_shift():
    g = torch.Generator().manual_seed(1)
    t = TimestepSampler(logit_normal=True).sample(100_001, generator=g)
    assert float(t.median()) == pytest.approx(T / 2, abs=10)
    g = torch.Generator().manual_seed(1)
    shifted = TimestepSampler(shift=3.0).sample(100_000, generator=g)
    g = torch.Generator().manual_seed(1)
    raw = TimestepSampler().sample(100_000, generator=g) / T
    torch.testing.assert_close(shifted / T, 3 * raw / (1 + 2 * raw))


def test_timestep_sampler_is_seeded():
    a = TimestepSampler().sample(10, generator=torch.Generator().manual_seed(5))
    b = TimestepSampler().sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------
# transition loss


def test_transition_pair_times_and_marginals():
    n = 200_000
    x0 = torch.full((n, 2, 1, 1), 0.7, dtype=F64)
    g = torch.Generator().manual_seed(0)
    x_low, x_high, t_low, t_high = transition_pair(x0, 0.9, generator=g)
    assert float(t_high.min()) >= 1e-4 and float(t_high.max()) <= T
    torch.testing.assert_close(t_low, (0.1 * t_high).clamp_min(0))
    # marginals: x_s ~ N(alpha_s x0, sigma_s^2) for both times; check the standardised residuals
    for x, t in ((x_low, t_low), (x_high, t_high)):
        s = (t / T).reshape(-1, 1, 1, 1)
        z = (x - (1 - s) * x0) / s.clamp_min(1e-12)
        keep = (t / T > 1e-3).reshape(-1)
        z = z[keep]
        assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    # x_low and x_high are correlated as the forward transition prescribes: cov = a sigma_l^2
    s_l, s_h = (t_low / T).reshape(-1, 1, 1, 1), (t_high / T).reshape(-1, 1, 1, 1)
    a = (1 - s_h) / (1 - s_l)
    resid = x_high - a * x_low
    expected_var = s_h.square() - (a * s_l).square()
    z = resid / expected_var.sqrt()
    assert abs(float(z.std()) - 1) < 0.01


def test_transition_pair_rejects_bad_ratio():
    with pytest.raises(ValueError, match="trans_ratio"):
        transition_pair(torch.zeros(2, 2, 1, 1), 0.0)
    with pytest.raises(ValueError, match="trans_ratio"):
        transition_pair(torch.zeros(2, 2, 1, 1), 1.5)


def test_gm_nll_loss_k1_is_gaussian_nll():
    g = torch.Generator().manual_seed(0)
    B, C, H, W = 4, 3, 2, 2
    mean = torch.randn(B, 1, C, H, W, generator=g, dtype=F64)
    logstd = 0.3 * torch.randn(B, 1, 1, 1, 1, generator=g, dtype=F64)
    y = torch.randn(B, C, H, W, generator=g, dtype=F64)
    gm = GaussianMixture(mean, logstd, torch.zeros(B, 1, 1, H, W, dtype=F64))
    z = (y - mean[:, 0]) * torch.exp(-logstd[:, 0])
    per_pixel = (0.5 * z.square().sum(1) + C * logstd[:, 0, 0] + 0.5 * C * math.log(2 * math.pi)) / C
    expected = 2.5 * per_pixel.flatten(1).mean(1).mean()
    torch.testing.assert_close(gm_nll_loss(gm, y, scale=2.5), expected)


def test_transition_loss_full_ratio_is_x0_nll():
    """trans_ratio = 1 (t_low = 0): the loss is the x0-NLL with variance (sigma s_u)^2 + 1e-6."""
    g = torch.Generator().manual_seed(0)
    B, K = 64, 3
    head = torch.randn(B, K, 2, 1, 1, generator=g, dtype=F64)
    logw = torch.log_softmax(torch.randn(B, K, 1, 1, 1, generator=g, dtype=F64), dim=1)

    def model(x, t):
        return GaussianMixture(head, torch.full((B, 1, 1, 1, 1), -0.5, dtype=F64), logw)

    x0 = torch.randn(B, 2, 1, 1, generator=g, dtype=F64)
    out = transition_loss(model, x0, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.t_low, torch.zeros_like(out.t_low))
    torch.testing.assert_close(out.x_low, x0)
    gm_x0 = ops.u_to_x_0(out.gm_u, out.x_high, out.t_high)
    var = torch.exp(2 * gm_x0.logstds) + 1e-6
    expected = gm_nll_loss(GaussianMixture(gm_x0.means, 0.5 * torch.log(var), gm_x0.logweights), x0)
    torch.testing.assert_close(out.loss, expected)


def test_transition_loss_backward():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(3, 2 * 4 + 4 + 1)

    def model(x, t):
        h = lin(torch.cat([x.flatten(1), t.reshape(-1, 1) / T], dim=1))
        return GaussianMixture(h[:, :8].reshape(-1, 4, 2, 1, 1), h[:, 8:9].reshape(-1, 1, 1, 1, 1),
                               torch.log_softmax(h[:, 9:], dim=1).reshape(-1, 4, 1, 1, 1))

    out = transition_loss(model, torch.randn(32, 2, 1, 1, generator=g), 0.9, generator=g)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lin.parameters())


# ----------------------------------------------------------------------------------------
# spectral loss


def _spectral_case():
    g = torch.Generator().manual_seed(0)
    B, K, C, H, W = 3, 2, 2, 4, 4
    gm_u = GaussianMixture(torch.randn(B, K, C, H, W, generator=g), torch.full((B, 1, 1, 1, 1), -0.3),
                           torch.log_softmax(torch.randn(B, K, 1, H, W, generator=g), dim=1))
    x0 = torch.randn(B, C, H, W, generator=g)
    t = torch.tensor([200.0, 500.0, 900.0])
    noise = torch.randn(B, C, H, W, generator=g)
    x_t = ops.sample_forward_diffusion(x0, t, noise)[0]
    return gm_u, x0, x_t, t


def test_spectral_loss_value_and_gradient():
    gm_u, x0, x_t, t = _spectral_case()
    P = torch.zeros(3, 2, 4, 4).normal_(0, 0.3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    weight = 4.0
    loss = spectral_loss(gm_u, x0, x_t, t, lambda g: P, weight=weight)
    u = (x_t - x0) / (t.reshape(-1, 1, 1, 1) / T)
    z = ops.gm_samples_to_gaussian_samples(gm_u, u.unsqueeze(1)).squeeze(1)
    S = ops.hartley2(z)
    expected = 0.5 * weight * (S.square() * (torch.exp(-P) - 1) + P).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(P.grad, 0.5 * weight * (1 - S.square() * torch.exp(-P.detach())) / P.numel())


def test_spectral_loss_optimum_is_power():
    """Minimising over P gives e^P = S^2 (per coefficient), the Gaussian NLL optimum."""
    gm_u, x0, x_t, t = _spectral_case()
    P = torch.zeros(3, 2, 4, 4, requires_grad=True)
    opt = torch.optim.Adam([P], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        spectral_loss(gm_u, x0, x_t, t, lambda g: P).backward()
        opt.step()
    u = (x_t - x0) / (t.reshape(-1, 1, 1, 1) / T)
    S = ops.hartley2(ops.gm_samples_to_gaussian_samples(gm_u, u.unsqueeze(1)).squeeze(1))
    torch.testing.assert_close(P.detach().exp(), S.square(), rtol=0.05, atol=2e-3)
