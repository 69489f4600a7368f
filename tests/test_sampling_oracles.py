"""Oracles of the sampling-path ops through the typed API (gmflow.ops), independent of the
reference implementation (docs/testing.md; docs/ops.md#gm1d_inverse_cdf, docs/sampling.md#spectral-sampling):
inverse-CDF accuracy and its implicit gradient, KR round trips, the K = 1 affine transport,
Monte-Carlo moments of pushed-forward samples, the exact posterior mean of a GM data law,
seeded determinism, and results independent of the thread count."""

from __future__ import annotations

import math

import pytest
import torch

import gmflow
from conftest import NATIVE_CPU
from gmflow import GaussianMixture, IsoGaussian, ops
from gmflow.types import GaussianMixture1D

F64 = torch.float64


def make_gm(batch=(2,), K=4, C=3, H=2, W=3, seed=0, spread=0.8, logstd=-1.2, dtype=F64, per_component=False):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(*batch, K, C, H, W, generator=g, dtype=F64)
    shape = (*batch, K, 1, H, W) if per_component else (*batch, 1, 1, 1, 1)
    logstds = logstd + 0.3 * torch.rand(shape, generator=g, dtype=F64)
    logweights = torch.log_softmax(torch.randn(*batch, K, 1, H, W, generator=g, dtype=F64), dim=-4)
    return GaussianMixture(means.to(dtype), logstds.to(dtype), logweights.to(dtype))


def gm1d(gm):
    return GaussianMixture1D(gm.means[..., 0, :, :], gm.logstds[..., 0, :, :, :], gm.logweights[..., 0, :, :])


# ------------------------------------------------------------------------------------------------
# docs/ops.md#gm1d_inverse_cdf inverse CDF


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-11), (torch.float32, 2e-6)])
def test_cdf_of_inverse_cdf_is_the_target(dtype, tol):
    gm = make_gm(K=5, seed=1, dtype=dtype)
    c = torch.linspace(-1 + 1e-4, 1 - 1e-4, 41, dtype=dtype).reshape(1, 41, 1, 1).expand(2, 41, 2, 3)
    x = ops.gm1d_inverse_cdf(gm1d(gm), c, n_steps=32)
    _, cdf = ops.gm1d_pdf_cdf(gm1d(gm.to(F64)), x.to(F64))
    assert (cdf - c.to(F64)).abs().max() < tol


def test_k1_zero_steps_is_the_gaussian_quantile():
    gm = make_gm(K=1, seed=2)
    g = torch.randn(2, 3, 2, 3, dtype=F64)
    c = torch.erf(g / math.sqrt(2))
    x = ops.gm1d_inverse_cdf(gm1d(gm), c, n_steps=0)
    expected = gm.means[..., 0, :, :] + g * gm.logstds[..., 0, :, :, :].exp()
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)


def _solve(m, s, w, c):
    return ops.gm1d_inverse_cdf(GaussianMixture1D(m, s, w), c, n_steps=60)


def test_implicit_gradient_matches_finite_differences_of_converged_solves():
    gm = gm1d(make_gm(batch=(1,), K=3, H=1, W=2, seed=3, spread=0.5, logstd=-0.7))
    c = torch.tensor([[[[-0.6, 0.3]], [[0.05, 0.8]]]], dtype=F64)  # (1, N=2, 1, 2)
    inputs = [t.clone().requires_grad_() for t in (*gm, c)]
    x = _solve(*inputs)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    grads = torch.autograd.grad((x * weights).sum(), inputs)
    h = 1e-6
    for i, (t, grad) in enumerate(zip(inputs, grads)):
        flat = t.detach().reshape(-1)
        for j in range(flat.numel()):
            plus, minus = [u.detach().clone() for u in inputs], [u.detach().clone() for u in inputs]
            plus[i].view(-1)[j] += h
            minus[i].view(-1)[j] -= h
            fd = ((_solve(*plus) - _solve(*minus)) * weights).sum() / (2 * h)
            assert abs(fd.item() - grad.view(-1)[j].item()) < 1e-6, (i, j, fd.item(), grad.view(-1)[j].item())


# ------------------------------------------------------------------------------------------------
# docs/ops.md#knothe-rosenblatt-transport Knothe-Rosenblatt transport


@pytest.mark.parametrize("axis_aligned", [True, False])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 2e-4)])
def test_round_trip_gm_to_gaussian_to_gm(axis_aligned, dtype, tol):
    gm = make_gm(seed=4, spread=0.6, logstd=-1.9, dtype=dtype)
    x = ops.gm_to_sample(gm, n_samples=64, generator=torch.Generator().manual_seed(0))
    V = ops.gm_kr_rotation(gm, axis_aligned)
    g = ops.gm_samples_to_gaussian_samples(gm, x, axis_aligned=axis_aligned, rotation=V)
    back = ops.gaussian_samples_to_gm_samples(gm, g, n_steps=16, axis_aligned=axis_aligned, rotation=V)
    # float32 erfinv saturates at |g| ~ 5.3: compare away from the clamp
    keep = (g.abs() < 4.5).all(dim=-3, keepdim=True).expand_as(x)
    torch.testing.assert_close(back[keep], x[keep], atol=tol, rtol=0)


def test_round_trip_gaussian_to_gm_to_gaussian():
    gm = make_gm(seed=5, spread=0.5, logstd=-1.5)
    g = torch.randn(2, 32, 3, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64).clamp(-4, 4)
    x = ops.gaussian_samples_to_gm_samples(gm, g, n_steps=24)
    torch.testing.assert_close(ops.gm_samples_to_gaussian_samples(gm, x), g, atol=1e-8, rtol=0)


@pytest.mark.parametrize("axis_aligned", [True, False])
def test_k1_transport_is_the_affine_map(axis_aligned):
    gm = make_gm(K=1, seed=6)
    g = torch.randn(2, 5, 3, 2, 3, dtype=F64)
    V = ops.gm_kr_rotation(gm, axis_aligned)
    x = ops.gaussian_samples_to_gm_samples(gm, g, n_steps=0, axis_aligned=axis_aligned, rotation=V)
    if axis_aligned:  # g is in the rotated basis: back to channels
        g_channels = (g.movedim(-3, -1).unsqueeze(-2) @ V.transpose(-1, -2).unsqueeze(-5)).squeeze(-2).movedim(-1, -3)
    else:
        g_channels = g
    torch.testing.assert_close(x, gm.means + gm.logstds.exp() * g_channels, rtol=1e-12, atol=1e-12)


def mc_ok(x, expected, n, k=5.0):
    """|MC estimate - expected| within k standard errors, elementwise."""
    se = x.std(0) / math.sqrt(n)
    return bool(torch.all((x.mean(0) - expected).abs() <= k * se + 1e-12))


@pytest.mark.parametrize("n_axes", [None, 2])
def test_pushed_forward_normals_have_the_gm_moments(n_axes):
    """N(0, I) -> KR inverse -> samples whose mean and covariance match gm_to_gaussian (float32 kernel)."""
    gm = make_gm(batch=(1,), K=3, C=3, H=1, W=2, seed=7, spread=0.9, logstd=-1.0, dtype=torch.float32)
    n = 40000
    g = torch.randn(1, n, 3, 1, 2, generator=torch.Generator().manual_seed(2))
    x = ops.gaussian_samples_to_gm_samples(gm, g, n_axes=n_axes, generator=torch.Generator().manual_seed(3))
    gauss = ops.gm_to_gaussian(gm.to(F64))[0]
    xs = x.double()[0].permute(0, 2, 3, 1)  # (n, H, W, C)
    assert mc_ok(xs, gauss.mean[0], n)
    d = xs - xs.mean(0)
    prods = d.unsqueeze(-1) * d.unsqueeze(-2)
    assert mc_ok(prods, gauss.cov[0], n)


def test_pushed_forward_gm_samples_are_standard_normal():
    gm = make_gm(batch=(1,), K=3, C=2, H=1, W=2, seed=8, spread=0.9, logstd=-1.0, dtype=torch.float32)
    n = 40000
    x = ops.gm_to_sample(gm, n_samples=n, generator=torch.Generator().manual_seed(4))
    g = ops.gm_samples_to_gaussian_samples(gm, x).double()[0].permute(0, 2, 3, 1)
    assert mc_ok(g, torch.zeros(1, 2, 2, dtype=F64), n)
    prods = g.unsqueeze(-1) * g.unsqueeze(-2)
    assert mc_ok(prods, torch.eye(2, dtype=F64).expand(1, 2, 2, 2), n)


def test_ancestral_samples_have_the_gm_moments():
    gm = make_gm(batch=(1,), K=4, C=2, H=2, W=1, seed=9, per_component=True, dtype=torch.float32)
    n = 40000
    x = ops.gm_to_sample(gm, n_samples=n, generator=torch.Generator().manual_seed(5)).double()[0].permute(0, 2, 3, 1)
    gauss = ops.gm_to_gaussian(gm.to(F64))[0]
    assert mc_ok(x, gauss.mean[0], n)
    d = x - x.mean(0)
    assert mc_ok(d.unsqueeze(-1) * d.unsqueeze(-2), gauss.cov[0], n)


# ------------------------------------------------------------------------------------------------
# docs/ops.md#gm_posterior_mean posterior mean, docs/ops.md#gm_mul_iso_gaussian product


def _exact_posterior(prior: GaussianMixture, x, sigma):
    """Exact posterior GM of x0 given x_t = (1 - sigma) x0 + sigma eps under an iso-GM prior, and its mean."""
    alpha = 1 - sigma
    v = prior.variances
    prec = 1 / v + alpha**2 / sigma**2
    means = (prior.means / v + alpha * x.unsqueeze(-4) / sigma**2) / prec
    total = sigma**2 + alpha**2 * v
    logits = prior.logweights - 0.5 * (x.unsqueeze(-4) - alpha * prior.means).square().sum(-3, keepdim=True) / total
    logits = logits - 0.5 * prior.means.shape[-3] * torch.log(total)
    logweights = torch.log_softmax(logits, dim=-4)
    post = GaussianMixture(means, -0.5 * torch.log(prec), logweights)
    return post, (logweights.exp() * means).sum(-4)


@pytest.mark.parametrize("per_component", [False, True])
def test_posterior_mean_of_an_exact_gm_posterior_is_the_closed_form(per_component):
    prior = make_gm(batch=(3,), K=4, C=2, H=2, W=2, seed=10, per_component=per_component)
    x_src = torch.randn(3, 2, 2, 2, dtype=F64)
    x_tgt = torch.randn(3, 2, 2, 2, dtype=F64)
    s_src, s_tgt = 0.7, 0.35
    post_src, _ = _exact_posterior(prior, x_src, s_src)
    _, expected = _exact_posterior(prior, x_tgt, s_tgt)
    out = ops.gm_posterior_mean(post_src, x_src, x_tgt, sigma_src=s_src, sigma_tgt=s_tgt)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_posterior_mean_at_the_source_time_is_the_gm_mean():
    gm = make_gm(dtype=torch.float32, seed=11)
    x = torch.randn(2, 3, 2, 3)
    out = ops.gm_posterior_mean(gm, x, x, t_src=600.0, t_tgt=600.0)
    torch.testing.assert_close(out, ops.gm_to_mean(gm), rtol=1e-5, atol=1e-5)


def test_gm_mul_iso_gaussian_k1_and_zero_power():
    gm = make_gm(K=1, seed=12)
    gauss = IsoGaussian(torch.randn(2, 3, 2, 3, dtype=F64), torch.rand(2, 1, 1, 1, dtype=F64) + 0.2)
    out = ops.gm_mul_iso_gaussian(gm, gauss, 1.0, 0.7)
    iso = ops.iso_gaussian_mul_iso_gaussian(IsoGaussian(gm.means[:, 0], gm.variances[:, 0, 0].unsqueeze(-3)),
                                            gauss, 1.0, 0.7)
    torch.testing.assert_close(out.means[:, 0], iso.mean)
    torch.testing.assert_close((2 * out.logstds[:, 0]).exp().expand_as(iso.var), iso.var)
    same = ops.gm_mul_iso_gaussian(make_gm(seed=13), gauss, 1.0, 0.0)
    ref_gm = make_gm(seed=13)
    torch.testing.assert_close(same.means, ref_gm.means)
    torch.testing.assert_close(same.logweights, ref_gm.logweights)


# ------------------------------------------------------------------------------------------------
# docs/sampling.md#spectral-sampling sampling: seeded, reproducible, leaves the global RNG alone; thread-count
# independent


@pytest.mark.parametrize("with_spectrum", [False, True])
def test_sampling_is_seeded_and_leaves_the_global_rng(with_spectrum):
    gm = make_gm(batch=(2,), K=3, C=2, H=4, W=4, dtype=torch.float32, seed=14)
    P = torch.log_softmax(torch.randn(2, 2, 16), -1).reshape(2, 2, 4, 4) + math.log(16) if with_spectrum else None
    state = torch.random.get_rng_state()
    a = ops.gm_spectral_sample(gm, P, n_samples=3, generator=torch.Generator().manual_seed(7))
    b = ops.gm_spectral_sample(gm, P, n_samples=3, generator=torch.Generator().manual_seed(7))
    c = ops.gm_spectral_sample(gm, P, n_samples=3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    g = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x = ops.gaussian_samples_to_gm_samples(gm, g, n_axes=1, generator=torch.Generator().manual_seed(9))
    y = ops.gaussian_samples_to_gm_samples(gm, g, n_axes=1, generator=torch.Generator().manual_seed(9))
    z = ops.gaussian_samples_to_gm_samples(gm, g, n_axes=1, generator=torch.Generator().manual_seed(10))
    assert torch.equal(x, y) and not torch.equal(x, z)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.skipif(not NATIVE_CPU, reason="native CPU kernels")
def test_results_do_not_depend_on_the_thread_count():
    """The Newton solver's early exit and lane compaction are exact: same bits for any split."""
    gm = make_gm(batch=(3,), K=6, C=3, H=9, W=13, dtype=torch.float32, seed=15, logstd=-2.0)
    g = torch.randn(3, 2, 3, 9, 13, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append((ops.gaussian_samples_to_gm_samples(gm, g, n_steps=16),
                         ops.gm1d_inverse_cdf(gm1d(gm), torch.tanh(g[:, :, 0]), n_steps=16)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*outs):
        assert torch.equal(a, b)
