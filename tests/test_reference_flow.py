"""Oracles (docs/testing.md#transport-and-spectral-oracles, docs/testing.md#flow-level-oracles) for the flow-level GM
operations reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmflow.reference import flow as fl
from gmflow.reference.algebra import gm_to_sample
from gmflow.reference.density import gm_logprob, gm_to_mean
from gmflow.reference.transport import hartley2
from gmflow.types import GaussianMixture, IsoGaussian

F64 = torch.float64
T = 1000.0


def make_gm(batch=(2,), K=3, C=2, H=3, W=4, seed=0, spread=1.0, logstd=-0.5, per_component=False, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(*batch, K, C, H, W, generator=g, dtype=F64)
    if per_component:
        logstds = logstd + 0.3 * torch.randn(*batch, K, 1, H, W, generator=g, dtype=F64)
    else:
        logstds = logstd + 0.2 * torch.randn(*batch, 1, 1, 1, 1, generator=g, dtype=F64)
    logweights = torch.log_softmax(torch.randn(*batch, K, 1, H, W, generator=g, dtype=F64), dim=-4)
    return GaussianMixture(means.to(dtype), logstds.to(dtype), logweights.to(dtype))


def bcast(t, ndim=4):
    """(B,) times -> (B, 1, 1, 1)."""
    return t.reshape(-1, *([1] * (ndim - 1)))


# ----------------------------------------------------------------------------------------
# docs/ops.md#forward-process forward process


def test_sample_forward_diffusion():
    x0 = torch.randn(3, 2, 4, 4, dtype=F64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.0, 250.0, 1000.0], dtype=F64)
    x_t, alpha, sigma = fl.sample_forward_diffusion(x0, t, noise)
    s = bcast(t / T)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * noise)
    torch.testing.assert_close(alpha + sigma, torch.ones_like(sigma))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[2], noise[2])
    x_scalar, _, _ = fl.sample_forward_diffusion(x0, 250.0, noise)
    torch.testing.assert_close(x_scalar[1], x_t[1])


@settings(deadline=None, max_examples=30)
@given(t_src=st.floats(0.0, 990.0), frac=st.floats(0.0, 1.0))
def test_forward_transition_composes_with_forward_diffusion(t_src, frac):
    t_tgt = t_src + frac * (T - t_src)
    x0 = torch.randn(1, 2, 2, 2, dtype=F64)
    g = fl.forward_transition(x0, t_src, t_tgt)
    a_s, s_s, a_t, s_t = 1 - t_src / T, t_src / T, 1 - t_tgt / T, t_tgt / T
    a = a_t / a_s  # the x0 coefficient alpha_s becomes alpha_t
    torch.testing.assert_close(g.mean, a * x0)
    torch.testing.assert_close(a**2 * s_s**2 + g.var, torch.full_like(g.var, s_t**2))  # total noise sigma_t^2
    assert g.var.shape == (1, 1, 1, 1)


def test_forward_transition_edge_cases_and_sampling():
    x = torch.randn(2, 3, 2, 2, dtype=F64)
    g = fl.forward_transition(x, 0.0, 600.0)
    torch.testing.assert_close(g.mean, 0.4 * x)
    torch.testing.assert_close(g.var, torch.full((2, 1, 1, 1), 0.36, dtype=F64))
    backwards = fl.forward_transition(x, 600.0, 300.0)  # invalid direction: var clamped at 0
    assert torch.all(backwards.var == 0)
    noise = torch.randn_like(x)
    torch.testing.assert_close(fl.sample_forward_transition(x, noise, 0.0, 600.0), 0.4 * x + 0.6 * noise)
    # marginal check: x_low ~ forward(x0, t_low) then the transition gives forward(x0, t_high)
    n = 100_000
    x0 = torch.full((n, 1, 1, 1), 0.8, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    x_low = fl.sample_forward_diffusion(x0, 300.0, torch.randn(x0.shape, generator=gen, dtype=F64))[0]
    x_high = fl.sample_forward_transition(x_low, torch.randn(x0.shape, generator=gen, dtype=F64), 300.0, 700.0)
    assert abs(x_high.mean().item() - 0.3 * 0.8) < 5 * 0.7 / math.sqrt(n)
    assert abs(x_high.std().item() - 0.7) < 5 * 0.7 / math.sqrt(2 * n)


# ----------------------------------------------------------------------------------------
# docs/ops.md#u_to_x_0 u_to_x_0 (docs/testing.md#flow-level-oracles)


def test_u_to_x_0_identities():
    gm_u = make_gm(seed=1)
    x_t = torch.randn(2, 2, 3, 4, dtype=F64)
    t = torch.tensor([300.0, 800.0], dtype=F64)
    s = bcast(t / T)
    gm_x0 = fl.u_to_x_0(gm_u, x_t, t)
    torch.testing.assert_close(gm_x0.means, x_t.unsqueeze(1) - s.unsqueeze(1) * gm_u.means)
    torch.testing.assert_close(gm_x0.logstds, gm_u.logstds + torch.log(s).unsqueeze(1))
    assert gm_x0.logweights is gm_u.logweights
    # re-noising the x0 means with the same sigma recovers the u means
    torch.testing.assert_close((x_t.unsqueeze(1) - gm_x0.means) / s.unsqueeze(1), gm_u.means)
    # explicit sigma, (B,) or (B, 1, 1, 1), is the same as t / T
    for sigma in (t / T, s):
        same = fl.u_to_x_0(gm_u, x_t, sigma=sigma)
        torch.testing.assert_close(same.means, gm_x0.means)
        torch.testing.assert_close(same.logstds, gm_x0.logstds)
    u = torch.randn_like(x_t)
    torch.testing.assert_close(fl.u_to_x_0(u, x_t, t), x_t - s * u)
    iso = IsoGaussian(torch.randn_like(x_t), torch.rand(2, 1, 3, 4, dtype=F64) + 0.1)
    iso_x0 = fl.u_to_x_0(iso, x_t, t)
    torch.testing.assert_close(iso_x0.mean, x_t - s * iso.mean)
    torch.testing.assert_close(iso_x0.var, iso.var * s**2)


def test_u_to_x_0_is_a_change_of_variables():
    gm_u = make_gm(seed=2)
    x_t = torch.randn(2, 2, 3, 4, dtype=F64)
    sigma = 0.37
    gm_x0 = fl.u_to_x_0(gm_u, x_t, sigma=sigma)
    x0 = torch.randn(2, 5, 2, 3, 4, dtype=F64)
    u = (x_t.unsqueeze(1) - x0) / sigma
    C = 2
    torch.testing.assert_close(gm_logprob(*gm_x0, x0), gm_logprob(*gm_u, u) - C * math.log(sigma))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="sigma"):
        fl.u_to_x_0(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    gm = make_gm(C=2)
    wrong = torch.zeros(2, 3, 3, 4, dtype=F64)
    right = torch.zeros(2, 2, 3, 4, dtype=F64)
    with pytest.raises(ValueError, match="x_t"):
        fl.u_to_x_0(gm, wrong, 500.0)
    with pytest.raises(ValueError, match="x_high"):
        fl.reverse_transition(gm, wrong, 100.0, 500.0)
    with pytest.raises(ValueError, match="x_t_src"):
        fl.gm_posterior_mean(gm, right, wrong, 100.0, 500.0)
    with pytest.raises(ValueError, match="x_t_tgt"):
        fl.denoising_gm_convert_to_mean(gm, wrong, right, 100.0, 500.0)
    with pytest.raises(ValueError, match="prediction_type"):
        fl.reverse_transition(gm, right, 100.0, 500.0, prediction_type="v")
    with pytest.raises(ValueError, match="power_spectrum"):
        fl.gm_spectral_sample(gm, torch.zeros(2, 3, 3, 4, dtype=F64))


# ----------------------------------------------------------------------------------------
# docs/ops.md#reverse_transition reverse transition (docs/testing.md#flow-level-oracles)


@settings(deadline=None, max_examples=50)
@given(t_high=st.floats(1.0, 1000.0), frac=st.floats(0.0, 1.0))
def test_reverse_transition_coefficient_identities(t_high, frac):
    t_low = frac * t_high
    ref = torch.zeros(1, 1, 1, 1, dtype=F64)
    co = fl.reverse_transition_coefficients(t_low, t_high, ref)
    a, s, a_l, s_l = 1 - t_high / T, t_high / T, 1 - t_low / T, t_low / T
    assert abs(co.c1.item() * a + co.c2.item() - a_l) < 1e-12
    assert abs(co.c1.item() ** 2 * s**2 + co.c3.item() - s_l**2) < 1e-12


def test_reverse_transition_edge_cases():
    ref = torch.zeros(1, 1, 1, 1, dtype=F64)
    co = fl.reverse_transition_coefficients(0.0, 400.0, ref)
    assert (co.c1.item(), co.c2.item(), co.c3.item()) == (0.0, 1.0, 0.0)
    co = fl.reverse_transition_coefficients(300.0, T, ref)
    assert co.c1.item() == 0.0
    torch.testing.assert_close(co.c2, torch.full_like(co.c2, 0.7))
    torch.testing.assert_close(co.c3, torch.full_like(co.c3, 0.09))


def test_reverse_transition_to_time_zero_is_the_x0_gm():
    gm_u = make_gm(seed=3)
    x_high = torch.randn(2, 2, 3, 4, dtype=F64)
    t_high = torch.tensor([200.0, 900.0], dtype=F64)
    out = fl.reverse_transition(gm_u, x_high, 0.0, t_high)
    gm_x0 = fl.u_to_x_0(gm_u, x_high, t_high)
    torch.testing.assert_close(out.means, gm_x0.means)
    s = bcast(t_high / T, 5)
    torch.testing.assert_close(out.variances, (s * gm_u.logstds.exp()) ** 2 + 1e-6)
    assert out.logweights is gm_u.logweights


def test_reverse_transition_u_and_x0_predictions_agree():
    gm_u = make_gm(seed=4, per_component=True)
    x_high = torch.randn(2, 2, 3, 4, dtype=F64)
    t_high, t_low = torch.tensor([500.0, 800.0], dtype=F64), torch.tensor([100.0, 790.0], dtype=F64)
    from_u = fl.reverse_transition(gm_u, x_high, t_low, t_high, prediction_type="u")
    from_x0 = fl.reverse_transition(fl.u_to_x_0(gm_u, x_high, t_high), x_high, t_low, t_high, prediction_type="x0")
    for a, b in zip(from_u, from_x0):
        torch.testing.assert_close(a, b)
    u = torch.randn_like(x_high)
    gen = lambda: torch.Generator().manual_seed(9)
    s_u = fl.reverse_transition(u, x_high, t_low, t_high, prediction_type="u", generator=gen())
    s_x0 = fl.reverse_transition(
        fl.u_to_x_0(u, x_high, t_high), x_high, t_low, t_high, prediction_type="x0", generator=gen()
    )
    torch.testing.assert_close(s_u, s_x0)


def test_ancestral_step_has_the_forward_marginal():
    n = 100_000
    gen = torch.Generator().manual_seed(1)
    x0 = torch.full((n, 1, 1, 1), 0.6, dtype=F64)
    t_high, t_low = 700.0, 400.0
    x_high = fl.sample_forward_diffusion(x0, t_high, torch.randn(x0.shape, generator=gen, dtype=F64))[0]
    x_low = fl.reverse_transition(x0, x_high, t_low, t_high, prediction_type="x0", generator=gen)
    assert abs(x_low.mean().item() - 0.6 * 0.6) < 5 * 0.4 / math.sqrt(n)
    assert abs(x_low.std().item() - 0.4) < 5 * 0.4 / math.sqrt(2 * n)


def test_gm_reverse_transition_is_the_law_of_the_sampled_step():
    n = 100_000
    gm_u = make_gm(batch=(1,), K=1, C=1, H=1, W=1, seed=5, logstd=-0.2)
    x_high = torch.full((1, 1, 1, 1), 0.3, dtype=F64)
    t_low, t_high = 350.0, 650.0
    gm_low = fl.reverse_transition(gm_u, x_high, t_low, t_high)
    gen = torch.Generator().manual_seed(2)
    u = gm_to_sample(gm_u, n_samples=n, generator=gen)[0]  # (N, 1, 1, 1)
    x_low = fl.reverse_transition(u, x_high.expand(n, 1, 1, 1), t_low, t_high, generator=gen)
    mean, std = gm_low.means.item(), gm_low.logstds.exp().item()
    assert abs(x_low.mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(x_low.std().item() - std) < 5 * std / math.sqrt(2 * n)


def test_reverse_transition_gradients_flow_to_means_and_logstds():
    gm_u = make_gm(seed=6)
    means = gm_u.means.clone().requires_grad_(True)
    logstds = gm_u.logstds.clone().requires_grad_(True)
    out = fl.reverse_transition(
        GaussianMixture(means, logstds, gm_u.logweights), torch.randn(2, 2, 3, 4, dtype=F64), 300.0, 600.0
    )
    target = torch.randn(2, 1, 2, 3, 4, dtype=F64)
    gm_logprob(*out, target).sum().backward()
    for leaf in (means, logstds):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_posterior_mean posterior mean (docs/testing.md#flow-level-oracles)


def exact_posterior(data: GaussianMixture, x, sigma):
    """x0-posterior of an iso-GM data law given ``x = alpha x0 + sigma eps`` (per-component stds allowed)."""
    alpha = 1 - sigma
    C = data.means.shape[-3]
    tau2 = data.variances
    var = 1 / (1 / tau2 + alpha**2 / sigma**2)
    means = var * (data.means / tau2 + alpha * x.unsqueeze(-4) / sigma**2)
    marg_var = alpha**2 * tau2 + sigma**2
    loglik = -0.5 * ((x.unsqueeze(-4) - alpha * data.means) ** 2).sum(-3, keepdim=True) / marg_var
    loglik = loglik - 0.5 * C * torch.log(marg_var)
    logweights = torch.log_softmax(data.logweights + loglik, dim=-4)
    return GaussianMixture(means, 0.5 * torch.log(var), logweights)


def exact_posterior_mean(data, x, sigma):
    post = exact_posterior(data, x, sigma)
    return (post.logweights.exp() * post.means).sum(-4)


@pytest.mark.parametrize("per_component", [False, True])
@pytest.mark.parametrize("form", ["G", "L"])
def test_posterior_mean_reproduces_exact_posterior_of_a_gm_data_law(per_component, form):
    data = make_gm(seed=7, per_component=per_component, logstd=-1.0)
    gen = torch.Generator().manual_seed(3)
    s_src, s_tgt = 0.8, 0.35
    x_src = torch.randn(2, 2, 3, 4, generator=gen, dtype=F64)
    x_tgt = torch.randn(2, 2, 3, 4, generator=gen, dtype=F64)
    post_src = exact_posterior(data, x_src, s_src)
    assert post_src.logstds.shape == ((2, 3, 1, 3, 4) if per_component else (2, 1, 1, 1, 1))
    if form == "L":
        out = fl.gm_posterior_mean(post_src, x_tgt, x_src, s_tgt * T, s_src * T)
    else:
        out = fl.denoising_gm_convert_to_mean(post_src, x_tgt, x_src, s_tgt * T, s_src * T)
    torch.testing.assert_close(out, exact_posterior_mean(data, x_tgt, s_tgt), atol=1e-10, rtol=1e-10)


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 10_000), t_src=st.floats(100.0, 990.0), frac=st.floats(0.05, 0.95))
def test_posterior_mean_forms_agree(seed, t_src, frac):
    gm = make_gm(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x_src, x_t = torch.randn(2, 2, 2, 3, 4, generator=g, dtype=F64)
    t = frac * t_src
    a = fl.gm_posterior_mean(gm, x_t, x_src, t, t_src)
    b = fl.denoising_gm_convert_to_mean(gm, x_t, x_src, t, t_src)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_posterior_mean_at_source_time_is_gm_mean():
    gm = make_gm(seed=8)
    x = torch.randn(2, 2, 3, 4, dtype=F64)
    t = torch.tensor([300.0, 700.0], dtype=F64)
    out = fl.gm_posterior_mean(gm, x, x, t, t)
    torch.testing.assert_close(out, gm_to_mean(gm.means, gm.logweights), atol=1e-15, rtol=0)


def test_k1_posterior_mean_is_the_linear_gaussian_posterior():
    m0, tau2 = 0.4, 0.3
    s_src, s_t = 0.9, 0.2
    a_src, a_t = 1 - s_src, 1 - s_t
    x_src = torch.randn(1, 3, 2, 2, dtype=F64)
    x_t = torch.randn(1, 3, 2, 2, dtype=F64)
    gain = lambda a, s: tau2 * a / (a**2 * tau2 + s**2)
    post_mean = m0 + gain(a_src, s_src) * (x_src - a_src * m0)
    post_var = tau2 * s_src**2 / (a_src**2 * tau2 + s_src**2)
    gm = GaussianMixture(
        post_mean.unsqueeze(1),
        torch.full((1, 1, 1, 1, 1), 0.5 * math.log(post_var), dtype=F64),
        torch.zeros(1, 1, 1, 2, 2, dtype=F64),
    )
    expected = m0 + gain(a_t, s_t) * (x_t - a_t * m0)
    for fn in (fl.gm_posterior_mean, fl.denoising_gm_convert_to_mean):
        torch.testing.assert_close(fn(gm, x_t, x_src, s_t * T, s_src * T), expected, atol=1e-12, rtol=0)


def test_posterior_mean_u_prediction_and_explicit_sigmas():
    gm_u = make_gm(seed=9)
    x_src, x_t = torch.randn(2, 2, 2, 3, 4, dtype=F64)
    t, t_src = torch.tensor([100.0, 400.0], dtype=F64), torch.tensor([500.0, 600.0], dtype=F64)
    gm_x0 = fl.u_to_x_0(gm_u, x_src, t_src)
    for fn in (fl.gm_posterior_mean, fl.denoising_gm_convert_to_mean):
        ref = fn(gm_x0, x_t, x_src, t, t_src)
        torch.testing.assert_close(fn(gm_u, x_t, x_src, t, t_src, prediction_type="u"), ref)
    torch.testing.assert_close(
        fl.gm_posterior_mean(gm_x0, x_t, x_src, sigma_t_src=t_src / T, sigma_t=bcast(t / T)),
        fl.gm_posterior_mean(gm_x0, x_t, x_src, t, t_src),
    )
    with pytest.raises(ValueError, match="prediction_type"):
        fl.gm_posterior_mean(gm_x0, x_t, x_src, t, t_src, prediction_type="eps")


# ----------------------------------------------------------------------------------------
# docs/sampling.md#spectral-sampling spectral sampling (docs/testing.md#transport-and-spectral-oracles)


@pytest.mark.parametrize("hw", [(4, 6), (5, 6), (1, 2), (3, 8)])
def test_hartley_of_constructed_field_is_the_spectral_draw(hw):
    S = torch.randn(2, 3, 2, *hw, dtype=F64)
    g = fl.inverse_hartley2(S)
    assert g.shape == S.shape and g.dtype == F64
    torch.testing.assert_close(hartley2(g), S, atol=1e-12, rtol=0)


def test_odd_width_is_rejected():
    with pytest.raises(ValueError, match="even"):
        fl.spectral_gaussian_field(torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="even"):
        fl.inverse_hartley2(torch.zeros(1, 2, 4, 5))
    gm = make_gm(H=4, W=5)
    with pytest.raises(ValueError, match="even"):
        fl.gm_spectral_sample(gm, torch.zeros(2, 2, 4, 5, dtype=F64))


def test_flat_spectrum_gives_iid_standard_normal_pixels():
    n = 4000
    g, S = fl.spectral_gaussian_field(torch.zeros(1, 2, 4, 6, dtype=F64), n, torch.Generator().manual_seed(4))
    assert g.shape == S.shape == (1, n, 2, 4, 6)
    flat = g[0].reshape(n, -1)  # (N, C*H*W)
    tol = 5 / math.sqrt(n)
    assert flat.mean(0).abs().max() < tol * 1.5  # max over 48 pixels
    assert (flat.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n) * 1.5
    corr = torch.corrcoef(flat.T) - torch.eye(flat.shape[1], dtype=F64)
    assert corr.abs().max() < tol * 1.5


def test_normalised_spectrum_preserves_average_variance_and_correlates_pixels():
    H, W = 8, 8
    k = torch.minimum(torch.arange(H), H - torch.arange(H)).to(F64)
    r2 = k[:, None] ** 2 + k[None, :] ** 2
    P = -r2 / 2.0
    P = P - torch.log(torch.exp(P).mean())  # normalise: mean e^P = 1
    P = P.expand(1, 1, H, W)
    n = 4000
    g, S = fl.spectral_gaussian_field(P, n, torch.Generator().manual_seed(5))
    # orthonormal transform: per-sample mean square is preserved exactly
    torch.testing.assert_close(g.square().mean((-2, -1)), S.square().mean((-2, -1)), atol=1e-12, rtol=0)
    assert abs(g.square().mean().item() - 1) < 0.05
    # low-pass spectrum: neighbouring pixels are strongly correlated
    corr = torch.corrcoef(torch.stack([g[0, :, 0, 3, 3], g[0, :, 0, 3, 4]]))[0, 1]
    assert corr > 0.5


def test_gm_sample_with_flat_spectrum_has_gm_marginals():
    n = 4000
    gm = make_gm(batch=(1,), K=3, C=2, H=2, W=2, seed=10, logstd=-0.8)
    samples, S = fl.gm_spectral_sample(
        gm, torch.zeros(1, 2, 2, 2, dtype=F64), n_samples=n, generator=torch.Generator().manual_seed(6)
    )
    assert samples.shape == S.shape == (1, n, 2, 2, 2)
    mean = samples[0].mean(0)
    se = samples[0].std(0) / math.sqrt(n)
    assert torch.all((mean - gm_to_mean(gm.means, gm.logweights)[0]).abs() < 5 * se)


def test_gm_sample_without_spectrum_is_ancestral_sampling():
    gm = make_gm(seed=11)
    a, none = fl.gm_spectral_sample(gm, n_samples=3, generator=torch.Generator().manual_seed(7))
    assert none is None
    assert torch.equal(a, gm_to_sample(gm, n_samples=3, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("with_spectrum", [False, True])
def test_sampling_is_seeded_and_leaves_the_global_rng_alone(with_spectrum):
    gm = make_gm(seed=12)
    P = torch.randn(2, 2, 3, 4, dtype=F64) if with_spectrum else None
    state = torch.get_rng_state()
    a = fl.gm_spectral_sample(gm, P, 2, torch.Generator().manual_seed(8))[0]
    b = fl.gm_spectral_sample(gm, P, 2, torch.Generator().manual_seed(8))[0]
    c = fl.gm_spectral_sample(gm, P, 2, torch.Generator().manual_seed(9))[0]
    d = fl.reverse_transition(
        torch.zeros(2, 2, 3, 4), torch.zeros(2, 2, 3, 4), 10.0, 20.0, generator=torch.Generator().manual_seed(8)
    )
    e = fl.reverse_transition(
        torch.zeros(2, 2, 3, 4), torch.zeros(2, 2, 3, 4), 10.0, 20.0, generator=torch.Generator().manual_seed(8)
    )
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(d, e)


def test_gm_to_model_output():
    gm = make_gm(seed=13)
    torch.testing.assert_close(fl.gm_to_model_output(gm, "mean"), gm_to_mean(gm.means, gm.logweights))
    P = torch.zeros(2, 2, 3, 4, dtype=F64)
    out = fl.gm_to_model_output(gm, "sample", P, torch.Generator().manual_seed(10))
    assert out.shape == (2, 2, 3, 4)
    assert torch.equal(out, fl.gm_spectral_sample(gm, P, 1, torch.Generator().manual_seed(10))[0][:, 0])
    with pytest.raises(ValueError, match="output_mode"):
        fl.gm_to_model_output(gm, "median")


# ----------------------------------------------------------------------------------------
# mutation, dtypes


def test_no_input_is_mutated():
    gm = make_gm(seed=14)
    x, x_src = torch.randn(2, 2, 2, 3, 4, dtype=F64)
    iso = IsoGaussian(torch.randn(2, 2, 3, 4, dtype=F64), torch.rand(2, 1, 3, 4, dtype=F64) + 0.1)
    t = torch.tensor([300.0, 600.0], dtype=F64)
    P = torch.randn(2, 2, 3, 4, dtype=F64)
    tensors = [*gm, x, x_src, *iso, t, P]
    snap = [(v.clone(), v._version) for v in tensors]
    gen = torch.Generator().manual_seed(0)
    fl.sample_forward_diffusion(x, t, x_src)
    fl.forward_transition(x, t / 2, t)
    fl.sample_forward_transition(x, x_src, t / 2, t)
    fl.u_to_x_0(gm, x, t)
    fl.u_to_x_0(iso, x, t)
    fl.u_to_x_0(x_src, x, t)
    fl.reverse_transition(gm, x, t / 2, t)
    fl.reverse_transition(x_src, x, t / 2, t, generator=gen)
    fl.gm_posterior_mean(gm, x, x_src, t / 2, t, prediction_type="u")
    fl.denoising_gm_convert_to_mean(gm, x, x_src, t / 2, t)
    fl.gm_spectral_sample(gm, P, 2, gen)
    fl.gm_to_model_output(gm, "sample", generator=gen)
    fl.spectral_gaussian_field(P, 2, gen)
    fl.inverse_hartley2(P)
    for v, (copy, version) in zip(tensors, snap):
        assert v._version == version and torch.equal(v, copy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_inputs(dtype):
    gm = make_gm(seed=15, dtype=dtype)
    x, x_src = torch.randn(2, 2, 2, 3, 4).to(dtype)
    t = torch.tensor([300.0, 600.0])
    P = torch.zeros(2, 2, 3, 4, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    outputs = [
        fl.sample_forward_diffusion(x, t, x_src)[0],
        *fl.forward_transition(x, t / 2, t),
        fl.sample_forward_transition(x, x_src, t / 2, t),
        *fl.u_to_x_0(gm, x, t),
        *fl.reverse_transition(gm, x, t / 2, t),
        fl.reverse_transition(x_src, x, t / 2, t, generator=gen),
        fl.gm_posterior_mean(gm, x, x_src, t / 2, t),
        fl.denoising_gm_convert_to_mean(gm, x, x_src, t / 2, t),
        fl.gm_spectral_sample(gm, P, 2, gen)[0],
        fl.gm_to_model_output(gm, "sample", generator=gen),
        fl.inverse_hartley2(P),
    ]
    for out in outputs:
        assert out.dtype == dtype and torch.isfinite(out).all()
    ref = fl.gm_posterior_mean(gm.map(lambda v: v.double()), x.double(), x_src.double(), t / 2, t)
    np.testing.assert_allclose(outputs[-4].double().numpy(), ref.numpy(), atol=0.05, rtol=0.02)


def test_missing_times_name_the_arguments():
    gm = make_gm()
    x = torch.zeros(2, 2, 3, 4, dtype=F64)
    with pytest.raises(ValueError, match="t_src or sigma_t_src"):
        fl.gm_posterior_mean(gm, x, x, t=100.0)
    with pytest.raises(ValueError, match="t_tgt or sigma_tgt"):
        fl.denoising_gm_convert_to_mean(gm, x, x, t_src=100.0)
