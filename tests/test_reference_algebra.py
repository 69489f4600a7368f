"""Oracles (docs/testing.md#algebra-oracles) for the pure-PyTorch GM / Gaussian algebra reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gmflow.reference import algebra as alg
from gmflow.reference import divergence
from gmflow.reference.density import gm_logprob, gm_to_mean
from gmflow.types import Gaussian, GaussianMixture, GaussianMixtureCov, IsoGaussian

F64 = torch.float64


# ----------------------------------------------------------------------------------------
# helpers


def make_gm(batch=(2,), K=3, C=2, H=3, W=2, dtype=F64, seed=0, spread=1.0, logstd=-0.5, per_component=False):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(*batch, K, C, H, W, generator=g, dtype=F64)
    if per_component:
        logstds = logstd + 0.3 * torch.randn(*batch, K, 1, H, W, generator=g, dtype=F64)
    else:
        logstds = logstd + 0.3 * torch.randn(*batch, 1, 1, 1, 1, generator=g, dtype=F64)
    logweights = torch.log_softmax(torch.randn(*batch, K, 1, H, W, generator=g, dtype=F64), dim=-4)
    return GaussianMixture(means.to(dtype), logstds.to(dtype), logweights.to(dtype))


def make_spd(*shape, C, seed=0, jitter=0.3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, C, C, generator=g, dtype=F64) * 0.6
    return a @ a.transpose(-1, -2) + jitter * torch.eye(C, dtype=F64)


def snapshot(*containers):
    """Values and autograd version counters of every tensor (to detect in-place writes)."""
    return [(t, t.clone(), t._version) for c in containers for t in (c if isinstance(c, tuple) else (c,))]


def assert_unchanged(snap):
    for t, copy, version in snap:
        assert t._version == version, "input tensor was modified in place"
        assert torch.equal(t, copy)


def np_iso_gm_pdf(x, means, variances, weights):
    """x (M, C); means (K, C); variances (K,); weights (K,) -> density (M,)."""
    C = x.shape[1]
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    comp = weights * np.exp(-0.5 * d2 / variances) / (2 * np.pi * variances) ** (C / 2)
    return comp.sum(1)


def np_full_gm_pdf(x, means, covs, weights):
    return sum(w * stats.multivariate_normal(m, c).pdf(x) for m, c, w in zip(means, covs, weights))


def grid(C, half_width=8.0, n1=801, n2=301):
    if C == 1:
        xs = np.linspace(-half_width, half_width, n1)
        return xs[:, None], xs[1] - xs[0]
    xs = np.linspace(-half_width, half_width, n2)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    return np.stack([X.ravel(), Y.ravel()], 1), (xs[1] - xs[0]) ** 2


def pixel_gm(gm: GaussianMixture, b=0, h=0, w=0):
    """numpy (means (K, C), variances (K,), weights (K,)) of one pixel."""
    K = gm.means.shape[-4]
    means = gm.means[b, :, :, h, w].numpy()
    ls = gm.logstds[b, :, 0, min(h, gm.logstds.shape[-2] - 1), min(w, gm.logstds.shape[-1] - 1)].numpy()
    variances = np.broadcast_to(np.exp(2 * ls), (K,))
    weights = np.exp(gm.logweights[b, :, 0, h, w].numpy())
    return means, variances, weights


def assert_density_of_product(analytic, product, cell):
    """``analytic`` is the normalised version of the unnormalised ``product`` (both on a grid).

    Checked as proportionality where the density is not negligible (immune to grid truncation)
    plus unit mass on the grid.
    """
    mask = analytic > 1e-8 * analytic.max()
    ratio = product[mask] / analytic[mask]
    assert np.ptp(ratio) <= 1e-9 * ratio.mean(), (ratio.min(), ratio.max())
    assert abs(analytic.sum() * cell - 1) < 1e-7


# ----------------------------------------------------------------------------------------
# psd_inverse


def test_psd_inverse_inverts_spd_batches():
    x = make_spd(3, 2, C=4)
    inv = alg.psd_inverse(x)
    torch.testing.assert_close(inv @ x, torch.eye(4, dtype=F64).expand(3, 2, 4, 4), atol=1e-10, rtol=0)
    torch.testing.assert_close(inv, torch.linalg.inv(x), atol=1e-10, rtol=1e-10)


def test_psd_inverse_raises_on_indefinite():
    x = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    with pytest.raises(torch.linalg.LinAlgError):
        alg.psd_inverse(x)


# ----------------------------------------------------------------------------------------
# docs/testing.md#algebra-oracles K = 1 reductions


def test_k1_gm_to_gaussian_is_the_component():
    gm = make_gm(K=1, C=3)
    gaussian, diffs, within = alg.gm_to_gaussian(gm)
    torch.testing.assert_close(gaussian.mean, gm.means[:, 0].movedim(-3, -1))
    s2 = torch.exp(2 * gm.logstds).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(gaussian.cov, s2 * torch.eye(3, dtype=F64).expand(2, 3, 2, 3, 3))
    assert torch.count_nonzero(diffs) == 0
    assert within.shape == (2, 1, 1, 1, 3, 3)


@pytest.mark.parametrize("powers", [(1.0, 1.0), (1.0, 0.4), (2.0, 1.0), (1.0, -0.5)])
def test_k1_gm_mul_iso_gaussian_equals_iso_product(powers):
    a, b = powers
    gm = make_gm(K=1, C=3, logstd=-1.0)
    g = torch.Generator().manual_seed(1)
    gaussian = IsoGaussian(torch.randn(2, 3, 3, 2, generator=g, dtype=F64), torch.full((2, 1, 1, 1), 1.5, dtype=F64))
    out = alg.gm_mul_iso_gaussian(gm, gaussian, a, b)
    ref = alg.iso_gaussian_mul_iso_gaussian(IsoGaussian(gm.means[:, 0], gm.variances[:, 0]), gaussian, 1.0, b / a)
    torch.testing.assert_close(out.means[:, 0], ref.mean)
    torch.testing.assert_close(torch.exp(2 * out.logstds[:, 0]).expand_as(ref.var), ref.var)
    assert torch.count_nonzero(out.logweights) == 0


def test_k1_gm_cov_logprob_equals_iso_gaussian_logprob():
    gm = make_gm(K=1, C=3)
    x = torch.randn(2, 4, 3, 3, 2, dtype=F64)
    C = 3
    covs = gm.variances.reshape(2, 1, 1, 1, 1, 1) * torch.eye(C, dtype=F64)
    cov_gm = GaussianMixtureCov(gm.means.movedim(-3, -1), covs.expand(2, 1, 3, 2, C, C), gm.logweights.squeeze(-3))
    iso = IsoGaussian(gm.means[:, 0], gm.variances[:, 0])
    torch.testing.assert_close(alg.gm_cov_logprob(cov_gm, x), alg.iso_gaussian_logprob(iso, x))
    torch.testing.assert_close(alg.gm_cov_logprob(cov_gm, x), gm_logprob(*gm, x))


def test_k1_gm_mul_gm_equals_gaussian_product():
    gm1 = make_gm(K=1, seed=1)
    gm2 = make_gm(K=1, seed=2)
    out = alg.gm_mul_gm(gm1, gm2)
    ref = alg.iso_gaussian_mul_iso_gaussian(
        IsoGaussian(gm1.means[:, 0], gm1.variances[:, 0]), IsoGaussian(gm2.means[:, 0], gm2.variances[:, 0])
    )
    torch.testing.assert_close(out.means[:, 0], ref.mean)
    torch.testing.assert_close(out.variances[:, 0].expand_as(ref.var), ref.var)


def test_iso_gaussian_logprob_matches_scipy():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
    var = torch.rand(2, 1, 2, 2, generator=g, dtype=F64) + 0.2
    x = torch.randn(2, 5, 3, 2, 2, generator=g, dtype=F64)
    out = alg.iso_gaussian_logprob(IsoGaussian(mean, var), x)
    ref = stats.norm.logpdf(x.numpy(), mean[:, None].numpy(), np.sqrt(var[:, None].numpy())).sum(2)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# docs/testing.md#algebra-oracles Monte-Carlo moments of ancestral sampling


def mc_check_mean(samples, expected, n):
    """samples (..., N, C) vs expected (..., C) within 5 standard errors."""
    mean = samples.mean(-2)
    se = samples.std(-2) / math.sqrt(n)
    assert torch.all((mean - expected).abs() <= 5 * se + 1e-12), (mean, expected)


def mc_check_cov(samples, expected_cov, n):
    """samples (N, C); covariance entries within 5 standard errors."""
    d = samples - samples.mean(0)
    prods = d[:, :, None] * d[:, None, :]
    cov = prods.mean(0)
    se = prods.std(0) / math.sqrt(n)
    assert torch.all((cov - expected_cov).abs() <= 5 * se + 1e-12), (cov, expected_cov)


@pytest.mark.parametrize("per_component", [False, True])
def test_gm_to_sample_moments_match(per_component):
    n = 100_000
    gm = make_gm(batch=(1,), K=3, C=2, H=1, W=1, seed=4, per_component=per_component)
    gen = torch.Generator().manual_seed(0)
    x = alg.gm_to_sample(gm, n_samples=n, generator=gen)
    assert x.shape == (1, n, 2, 1, 1)
    flat = x[0, :, :, 0, 0]  # (N, C)
    mc_check_mean(flat, gm_to_mean(gm.means, gm.logweights)[0, :, 0, 0], n)
    gaussian = alg.gm_to_gaussian(gm)[0]
    mc_check_cov(flat, gaussian.cov[0, 0, 0], n)
    # the iso moment match is the channel-mean of the MC variance
    from gmflow.reference.density import gm_to_iso_gaussian

    iso_var = gm_to_iso_gaussian(*gm)[1][0, 0, 0, 0]
    torch.testing.assert_close(flat.var(0).mean(), iso_var, rtol=0.02, atol=0)


def test_gm_to_sample_power_and_cov_sharpen():
    n = 100_000
    gm = make_gm(batch=(1,), K=3, C=2, H=1, W=1, seed=5)
    p = 2.0
    x = alg.gm_to_sample(gm, gm_power=p, n_samples=n, cov_sharpen=True, generator=torch.Generator().manual_seed(1))
    sharpened = GaussianMixture(gm.means, gm.logstds - 0.5 * math.log(p), torch.log_softmax(p * gm.logweights, -4))
    flat = x[0, :, :, 0, 0]
    mc_check_mean(flat, gm_to_mean(gm.means, gm.logweights, p)[0, :, 0, 0], n)
    mc_check_cov(flat, alg.gm_to_gaussian(sharpened)[0].cov[0, 0, 0], n)


@pytest.mark.parametrize("shared_cov", [False, True])
def test_covs_layout_sampling_and_moments(shared_cov):
    n = 100_000
    K, C = 3, 2
    g = torch.Generator().manual_seed(6)
    means = torch.randn(1, K, 1, 1, C, generator=g, dtype=F64)
    covs = make_spd(1, 1 if shared_cov else K, 1, 1, C=C, seed=7)
    logweights = torch.log_softmax(torch.randn(1, K, 1, 1, generator=g, dtype=F64), dim=-3)
    gm = GaussianMixtureCov(means, covs, logweights)
    x = alg.gm_to_sample(gm, n_samples=n, generator=torch.Generator().manual_seed(2))
    assert x.shape == (1, n, C, 1, 1)
    flat = x[0, :, :, 0, 0]
    # independent moments: numpy over the component list
    w = np.exp(logweights[0, :, 0, 0].numpy())
    mu = means[0, :, 0, 0].numpy()
    cs = np.broadcast_to(covs[0, :, 0, 0].numpy(), (K, C, C))
    m = (w[:, None] * mu).sum(0)
    cov = sum(wk * (ck + np.outer(mk - m, mk - m)) for wk, mk, ck in zip(w, mu, cs))
    gaussian = alg.gm_to_gaussian(gm)[0]
    np.testing.assert_allclose(gaussian.mean[0, 0, 0].numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(gaussian.cov[0, 0, 0].numpy(), cov, rtol=1e-12)
    mc_check_mean(flat, torch.from_numpy(m), n)
    mc_check_cov(flat, torch.from_numpy(cov), n)


def test_gm_to_gaussian_matches_numpy_per_pixel_and_cov_scale():
    gm = make_gm(K=4, C=3, per_component=True, seed=8)
    gaussian, diffs, within = alg.gm_to_gaussian(gm, cov_scale=2.5)
    for b, h, w in [(0, 0, 0), (1, 2, 1)]:
        mu, var, wts = pixel_gm(gm, b, h, w)
        m = (wts[:, None] * mu).sum(0)
        cov = sum(wk * (vk * np.eye(3) + np.outer(mk - m, mk - m)) for wk, mk, vk in zip(wts, mu, var))
        np.testing.assert_allclose(gaussian.mean[b, h, w].numpy(), m, rtol=1e-12)
        np.testing.assert_allclose(gaussian.cov[b, h, w].numpy(), 2.5 * cov, rtol=1e-12)
        np.testing.assert_allclose(diffs[b, :, h, w].numpy(), mu - m, atol=1e-14)
        np.testing.assert_allclose(within[b, 0, h, w].numpy(), (wts * var).sum() * np.eye(3), rtol=1e-12)


# ----------------------------------------------------------------------------------------
# docs/testing.md#algebra-oracles identities of gm_mul_iso_gaussian


@settings(deadline=None, max_examples=25)
@given(
    seed=st.integers(0, 10_000),
    gm_power=st.sampled_from([0.5, 1.0, 2.0]),
    logvar_g=st.floats(-2.0, 2.0),
    per_component=st.booleans(),
)
def test_gm_mul_iso_gaussian_zero_power_is_identity(seed, gm_power, logvar_g, per_component):
    gm = make_gm(seed=seed, per_component=per_component)
    mean_g = torch.randn(2, 2, 3, 2, dtype=F64)
    out = alg.gm_mul_iso_gaussian(
        gm, IsoGaussian(mean_g, torch.full((2, 1, 1, 1), math.exp(logvar_g), dtype=F64)), gm_power, 0.0
    )
    torch.testing.assert_close(out.means, gm.means, atol=1e-13, rtol=0)
    torch.testing.assert_close(out.logweights, gm.logweights, atol=1e-13, rtol=0)
    torch.testing.assert_close(out.logstds, gm.logstds, atol=1e-13, rtol=0)


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 10_000), logvar_g=st.floats(-1.0, 2.0), per_pixel_var=st.booleans())
def test_gm_mul_iso_gaussian_plus_then_minus_is_identity(seed, logvar_g, per_pixel_var):
    gm = make_gm(seed=seed)
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1, 3, 2) if per_pixel_var else (2, 1, 1, 1)
    var_g = math.exp(logvar_g) * (0.5 + torch.rand(*shape, generator=g, dtype=F64))
    gaussian = IsoGaussian(torch.randn(2, 2, 3, 2, generator=g, dtype=F64), var_g)
    there = alg.gm_mul_iso_gaussian(gm, gaussian, 1.0, 1.0)
    back = alg.gm_mul_iso_gaussian(there, gaussian, 1.0, -1.0)
    torch.testing.assert_close(back.means, gm.means, atol=1e-10, rtol=0)
    torch.testing.assert_close(back.logweights, gm.logweights, atol=1e-10, rtol=0)
    torch.testing.assert_close(back.logstds, gm.logstds.expand_as(back.logstds), atol=1e-10, rtol=0)
    if per_pixel_var:
        assert there.logstds.shape == (2, 3, 1, 3, 2)  # per-pixel std -> per-component layout


def test_gm_mul_iso_gaussian_very_broad_gaussian_is_nearly_identity():
    gm = make_gm(seed=9)
    gaussian = IsoGaussian(torch.zeros(2, 2, 3, 2, dtype=F64), torch.full((2, 1, 1, 1), 1e10, dtype=F64))
    out = alg.gm_mul_iso_gaussian(gm, gaussian)
    torch.testing.assert_close(out.means, gm.means, atol=1e-8, rtol=0)
    torch.testing.assert_close(out.logweights, gm.logweights, atol=1e-8, rtol=0)
    torch.testing.assert_close(out.logstds, gm.logstds, atol=1e-8, rtol=0)


# ----------------------------------------------------------------------------------------
# docs/testing.md#algebra-oracles grid oracles of products (float64)


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("powers", [(1.0, 1.0), (2.0, 1.0), (1.0, 3.0), (1.0, -0.3)])
@pytest.mark.parametrize("per_component", [False, True])
def test_gm_mul_iso_gaussian_grid(C, powers, per_component):
    a, b = powers
    r = b / a
    gm = make_gm(batch=(1,), K=3, C=C, H=1, W=1, seed=10 + C, logstd=-0.3, per_component=per_component)
    mean_g = torch.tensor([0.7, -0.4][:C], dtype=F64).reshape(1, C, 1, 1)
    gaussian = IsoGaussian(mean_g, torch.full((1, 1, 1, 1), 1.3, dtype=F64))
    out = alg.gm_mul_iso_gaussian(gm, gaussian, a, b)
    x, cell = grid(C)
    mu, var, w = pixel_gm(gm)
    g_pdf = stats.multivariate_normal(mean_g.flatten().numpy(), 1.3 * np.eye(C)).pdf(x).reshape(-1)
    product = np_iso_gm_pdf(x, mu, var, w) * g_pdf**r
    assert_density_of_product(np_iso_gm_pdf(x, *pixel_gm(out)), product, cell)


@pytest.mark.parametrize("powers", [(1.0, 1.0), (1.0, -1.0), (0.5, 2.0)])
def test_iso_gaussian_mul_iso_gaussian_grid(powers):
    p1, p2 = powers
    g1 = IsoGaussian(torch.tensor([0.3], dtype=F64).reshape(1, 1, 1), torch.tensor(0.5, dtype=F64).reshape(1, 1, 1))
    g2 = IsoGaussian(torch.tensor([-0.8], dtype=F64).reshape(1, 1, 1), torch.tensor(1.7, dtype=F64).reshape(1, 1, 1))
    out = alg.iso_gaussian_mul_iso_gaussian(g1, g2, p1, p2)
    x, cell = grid(1)
    n1 = stats.norm.pdf(x[:, 0], 0.3, math.sqrt(0.5))
    n2 = stats.norm.pdf(x[:, 0], -0.8, math.sqrt(1.7))
    analytic = stats.norm.pdf(x[:, 0], out.mean.item(), math.sqrt(out.var.item()))
    assert_density_of_product(analytic, n1**p1 * n2**p2, cell)


def test_iso_gaussian_ratio_clamps_improper_to_broad():
    g1 = IsoGaussian(torch.zeros(1, 1, 1, dtype=F64), torch.full((1, 1, 1), 2.0, dtype=F64))
    g2 = IsoGaussian(torch.ones(1, 1, 1, dtype=F64), torch.full((1, 1, 1), 1.0, dtype=F64))
    out = alg.iso_gaussian_mul_iso_gaussian(g1, g2, 1.0, -1.0)  # v1 > v2: improper ratio
    torch.testing.assert_close(out.var, torch.full((1, 1, 1), 2.0 / 1e-6, dtype=F64))


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("per_component", [False, True])
def test_gm_mul_gm_grid(C, per_component):
    gm1 = make_gm(batch=(1,), K=2, C=C, H=1, W=1, seed=20, logstd=-0.2, per_component=per_component)
    gm2 = make_gm(batch=(1,), K=3, C=C, H=1, W=1, seed=21, logstd=0.1)
    out = alg.gm_mul_gm(gm1, gm2)
    assert out.means.shape == (1, 6, C, 1, 1)
    x, cell = grid(C)
    product = np_iso_gm_pdf(x, *pixel_gm(gm1)) * np_iso_gm_pdf(x, *pixel_gm(gm2))
    assert_density_of_product(np_iso_gm_pdf(x, *pixel_gm(out)), product, cell)


def test_gm_mul_gm_swapping_arguments_permutes_components():
    gm1 = make_gm(K=2, seed=22)
    gm2 = make_gm(K=3, seed=23)
    ab = alg.gm_mul_gm(gm1, gm2)
    ba = alg.gm_mul_gm(gm2, gm1)
    perm = torch.tensor([j * 2 + i for i in range(2) for j in range(3)])  # (i, j) -> j K1 + i
    torch.testing.assert_close(ab.means, ba.means[:, perm])
    torch.testing.assert_close(ab.logweights, ba.logweights[:, perm])
    torch.testing.assert_close(ab.logstds, ba.logstds)


@pytest.mark.parametrize("powers", [(1.0, 1.0), (2.0, 1.0), (1.0, -0.1)])
def test_gm_mul_gaussian_grid_full_covariance(powers):
    a, b = powers
    gm = make_gm(batch=(1,), K=3, C=2, H=1, W=1, seed=30, logstd=-0.3)
    cov_g = torch.tensor([[1.2, 0.5], [0.5, 0.8]], dtype=F64).reshape(1, 1, 1, 2, 2)
    mean_g = torch.tensor([0.4, -0.3], dtype=F64).reshape(1, 1, 1, 2)
    out = alg.gm_mul_gaussian(gm, Gaussian(mean_g, cov_g), a, b)
    assert out.means.shape == (1, 3, 1, 1, 2) and out.covs.shape == (1, 1, 1, 1, 2, 2)
    x, cell = grid(2)
    g_pdf = stats.multivariate_normal(mean_g.flatten().numpy(), cov_g[0, 0, 0].numpy()).pdf(x)
    product = np_iso_gm_pdf(x, *pixel_gm(gm)) * g_pdf ** (b / a)
    K = 3
    analytic = np_full_gm_pdf(
        x,
        out.means[0, :, 0, 0].numpy(),
        np.broadcast_to(out.covs[0, :, 0, 0].numpy(), (K, 2, 2)),
        np.exp(out.logweights[0, :, 0, 0].numpy()),
    )
    assert_density_of_product(analytic, product, cell)
    # the same density through gm_cov_logprob
    lp = alg.gm_cov_logprob(out, torch.from_numpy(x[:50]).reshape(1, 50, 2, 1, 1))
    np.testing.assert_allclose(lp.flatten().exp().numpy(), analytic[:50], rtol=1e-10)


def test_gm_mul_gaussian_with_isotropic_covariance_equals_gm_mul_iso_gaussian():
    gm = make_gm(K=3, C=3, seed=31)
    mean_g = torch.randn(2, 3, 3, 2, dtype=F64)
    var_g = 0.7
    gaussian = Gaussian(mean_g.movedim(-3, -1), var_g * torch.eye(3, dtype=F64).expand(2, 3, 2, 3, 3))
    full = alg.gm_mul_gaussian(gm, gaussian, 1.0, 2.0)
    iso = alg.gm_mul_iso_gaussian(gm, IsoGaussian(mean_g, torch.full((2, 1, 1, 1), var_g, dtype=F64)), 1.0, 2.0)
    torch.testing.assert_close(full.means, iso.means.movedim(-3, -1))
    torch.testing.assert_close(full.logweights, iso.logweights.squeeze(-3))
    v = iso.variances.reshape(2, 1, 1, 1, 1, 1) * torch.eye(3, dtype=F64)
    torch.testing.assert_close(full.covs, v.expand_as(full.covs))


@pytest.mark.parametrize("powers", [(1.0, 1.0), (1.0, -1.0), (2.0, 0.5)])
def test_gaussian_mul_gaussian_grid(powers):
    p1, p2 = powers
    m1, c1 = np.array([0.3, -0.2]), np.array([[0.6, 0.2], [0.2, 0.4]])
    m2, c2 = np.array([-0.5, 0.4]), np.array([[2.0, -0.3], [-0.3, 1.5]])
    t = lambda a: torch.from_numpy(a).reshape(1, 1, *a.shape)
    out = alg.gaussian_mul_gaussian(Gaussian(t(m1), t(c1)), Gaussian(t(m2), t(c2)), p1, p2)
    x, cell = grid(2)
    product = stats.multivariate_normal(m1, c1).pdf(x) ** p1 * stats.multivariate_normal(m2, c2).pdf(x) ** p2
    analytic = stats.multivariate_normal(out.mean[0, 0].numpy(), out.cov[0, 0].numpy()).pdf(x)
    assert_density_of_product(analytic, product, cell)


# ----------------------------------------------------------------------------------------
# docs/testing.md#algebra-oracles densities integrate to one


def test_gm_cov_logprob_integrates_to_one_and_matches_closed_form():
    K, C = 3, 2
    g = torch.Generator().manual_seed(40)
    gm = GaussianMixtureCov(
        torch.randn(1, K, 1, 1, C, generator=g, dtype=F64),
        make_spd(1, K, 1, 1, C=C, seed=41),
        torch.log_softmax(torch.randn(1, K, 1, 1, generator=g, dtype=F64), dim=-3),
    )
    x, cell = grid(C, half_width=9.0)
    lp = alg.gm_cov_logprob(gm, torch.from_numpy(x).reshape(1, -1, C, 1, 1)).flatten().numpy()
    assert abs(np.exp(lp).sum() * cell - 1) < 1e-8
    ref = np_full_gm_pdf(
        x, gm.means[0, :, 0, 0].numpy(), gm.covs[0, :, 0, 0].numpy(), np.exp(gm.logweights[0, :, 0, 0].numpy())
    )
    np.testing.assert_allclose(np.exp(lp), ref, rtol=1e-10, atol=1e-300)


def test_logprobs_with_minus_inf_logweight_have_no_nan():
    K, C = 3, 2
    logweights = torch.tensor([0.0, -math.inf, 0.0], dtype=F64).reshape(1, K, 1, 1) - math.log(2)
    gm = GaussianMixtureCov(torch.randn(1, K, 1, 1, C, dtype=F64), make_spd(1, 1, 1, 1, C=C), logweights)
    x = torch.randn(1, 7, C, 1, 1, dtype=F64)
    assert torch.isfinite(alg.gm_cov_logprob(gm, x)).all()
    assert torch.isfinite(alg.gm_to_sample(gm, n_samples=5)).all()
    iso = make_gm(batch=(1,), K=K, C=C, H=1, W=1)
    iso = GaussianMixture(iso.means, iso.logstds, logweights.unsqueeze(-3))
    out = alg.gm_mul_iso_gaussian(
        iso, IsoGaussian(torch.zeros(1, C, 1, 1, dtype=F64), torch.ones(1, 1, 1, 1, dtype=F64))
    )
    assert not torch.isnan(out.logweights).any() and torch.isfinite(out.means).all()


# ----------------------------------------------------------------------------------------
# docs/ops.md#log-densities-kl-and-entropy Monte-Carlo KL / entropy


def test_kl_of_identical_gms_is_zero():
    gm = make_gm(seed=50)
    kl = divergence.gm_kl_div(gm, gm, n_samples=8, generator=torch.Generator().manual_seed(0))
    assert kl.shape == (2, 1, 3, 2)
    assert torch.count_nonzero(kl) == 0


@pytest.mark.parametrize("use_kr", [False, True])
def test_kl_and_entropy_of_gaussians_match_closed_form(use_kr):
    n, C = 20_000, 2
    p = make_gm(batch=(1,), K=1, C=C, H=1, W=1, seed=51)
    q = make_gm(batch=(1,), K=1, C=C, H=1, W=1, seed=52)
    v1, v2 = p.variances.item(), q.variances.item()
    d2 = (p.means - q.means).square().sum().item()
    kl_exact = 0.5 * C * (v1 / v2 - 1 - math.log(v1 / v2)) + 0.5 * d2 / v2
    kl = divergence.gm_kl_div(p, q, n_samples=n, use_kr=use_kr, generator=torch.Generator().manual_seed(3)).item()
    assert abs(kl - kl_exact) < 0.05 * max(kl_exact, 1.0)
    h_exact = 0.5 * C * math.log(2 * math.pi * math.e * v1)
    h = divergence.gm_entropy(p, n_samples=n, use_kr=use_kr, generator=torch.Generator().manual_seed(4)).item()
    assert abs(h - h_exact) < 5 * math.sqrt(0.5 * C / n) + 1e-9


def test_kl_with_kr_samples_is_differentiable():
    p = make_gm(batch=(1,), K=2, C=2, H=1, W=1, seed=53)
    q = make_gm(batch=(1,), K=2, C=2, H=1, W=1, seed=54)
    means = p.means.clone().requires_grad_(True)
    kl = divergence.gm_kl_div(
        GaussianMixture(means, p.logstds, p.logweights),
        q,
        n_samples=64,
        use_kr=True,
        generator=torch.Generator().manual_seed(5),
    )
    kl.sum().backward()
    assert means.grad is not None and torch.isfinite(means.grad).all() and means.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_temperature temperature / transpose


def test_gm_temperature():
    gm = make_gm(seed=60)
    same = alg.gm_temperature(gm, 1.0)
    torch.testing.assert_close(same.logweights, gm.logweights)
    torch.testing.assert_close(same.logstds, gm.logstds)
    hot = alg.gm_temperature(gm, 2.0)
    torch.testing.assert_close(hot.logweights, torch.log_softmax(gm.logweights / 2, dim=-4))
    torch.testing.assert_close(hot.logstds, gm.logstds + 0.5 * math.log(2.0))
    torch.testing.assert_close(hot.logweights.exp().sum(-4), torch.ones(2, 1, 3, 2, dtype=F64))
    cold = alg.gm_temperature(gm, 0.0)  # clamped at eps: one-hot on the largest weight
    assert torch.isfinite(cold.logstds).all()
    torch.testing.assert_close(cold.logstds, gm.logstds + 0.5 * math.log(1e-6))
    argmax = gm.logweights.argmax(-4, keepdim=True)
    torch.testing.assert_close(cold.logweights.exp().gather(-4, argmax), torch.ones_like(argmax, dtype=F64))
    t = torch.tensor([1.0, 2.0], dtype=F64).reshape(2, 1, 1, 1, 1)
    mixed = alg.gm_temperature(gm, t)
    torch.testing.assert_close(mixed.logweights[1], hot.logweights[1])
    torch.testing.assert_close(mixed.logweights[0], gm.logweights[0])


def test_gm_transpose_t_first():
    B, K, C, F, H, W = 2, 3, 4, 5, 2, 3
    means = torch.randn(B, K, C, F, H, W)
    logweights = torch.log_softmax(torch.randn(B, K, 1, F, H, W), 1)
    logstds = torch.randn(B, 1, 1, 1, 1, 1)
    out = alg.gm_transpose_t_first(GaussianMixture(means, logstds, logweights))
    assert out.means.shape == (B, F, K, C, H, W)
    assert out.logweights.shape == (B, F, K, 1, H, W)
    assert out.logstds.shape == (B, 1, 1, 1, 1, 1)
    assert torch.equal(out.means[1, 3, 2, 1], means[1, 2, 1, 3])
    with pytest.raises(ValueError, match="gm.means"):
        alg.gm_transpose_t_first(GaussianMixture(torch.randn(3, 2, 2, 2), logstds, logweights))


# ----------------------------------------------------------------------------------------
# batching, RNG, mutation, dtypes, errors


def test_any_number_of_leading_batch_dims():
    gm = make_gm(batch=(2, 3), seed=70)
    gaussian = IsoGaussian(torch.randn(2, 3, 2, 3, 2, dtype=F64), torch.rand(2, 3, 1, 1, 1, dtype=F64) + 0.5)
    out = alg.gm_mul_iso_gaussian(gm, gaussian)
    flat = alg.gm_mul_iso_gaussian(gm.map(lambda t: t.flatten(0, 1)), gaussian.map(lambda t: t.flatten(0, 1)))
    for a, b in zip(out, flat):
        torch.testing.assert_close(a.flatten(0, 1), b)
    g2, _, _ = alg.gm_to_gaussian(gm)
    g1, _, _ = alg.gm_to_gaussian(gm.map(lambda t: t.flatten(0, 1)))
    torch.testing.assert_close(g2.cov.flatten(0, 1), g1.cov)


@pytest.mark.parametrize("layout", ["iso", "covs"])
def test_sampling_is_reproducible_with_generator_and_leaves_global_rng(layout):
    gm = make_gm(seed=71)
    if layout == "covs":
        gm = GaussianMixtureCov(gm.means.movedim(-3, -1), make_spd(2, 3, 3, 2, C=2), gm.logweights.squeeze(-3))
    state = torch.get_rng_state()
    a = alg.gm_to_sample(gm, n_samples=4, generator=torch.Generator().manual_seed(123))
    b = alg.gm_to_sample(gm, n_samples=4, generator=torch.Generator().manual_seed(123))
    c = alg.gm_to_sample(gm, n_samples=4, generator=torch.Generator().manual_seed(124))
    assert torch.equal(state, torch.get_rng_state()), "global RNG was consumed"
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kl1 = divergence.gm_kl_div(make_gm(seed=1), make_gm(seed=2), generator=torch.Generator().manual_seed(7))
    kl2 = divergence.gm_kl_div(make_gm(seed=1), make_gm(seed=2), generator=torch.Generator().manual_seed(7))
    assert torch.equal(kl1, kl2)


def test_no_input_is_mutated():
    gm = make_gm(seed=72)
    gm2 = make_gm(seed=73)
    iso = IsoGaussian(torch.randn(2, 2, 3, 2, dtype=F64), torch.rand(2, 1, 1, 1, dtype=F64) + 0.5)
    full = Gaussian(torch.randn(2, 3, 2, 2, dtype=F64), make_spd(2, 3, 2, C=2))
    cov_gm = GaussianMixtureCov(
        gm.means.movedim(-3, -1).contiguous(), make_spd(2, 1, 3, 2, C=2), gm.logweights.squeeze(-3).contiguous()
    )
    x = torch.randn(2, 4, 2, 3, 2, dtype=F64)
    snap = snapshot(gm, gm2, iso, full, cov_gm, x)
    originals = [tuple(c) for c in (gm, gm2, iso, full, cov_gm)]
    gen = torch.Generator().manual_seed(0)
    alg.psd_inverse(full.cov)
    alg.gm_to_gaussian(gm)
    alg.gm_to_gaussian(cov_gm)
    alg.gm_mul_iso_gaussian(gm, iso)
    alg.iso_gaussian_mul_iso_gaussian(iso, iso, 1.0, 0.5)
    alg.gaussian_mul_gaussian(full, full)
    alg.gm_mul_gaussian(gm, full)
    alg.gm_mul_gm(gm, gm2)
    alg.gm_to_sample(gm, generator=gen)
    alg.gm_to_sample(cov_gm, generator=gen)
    alg.iso_gaussian_logprob(iso, x)
    alg.gm_cov_logprob(cov_gm, x)
    divergence.gm_kl_div(gm, gm2, generator=gen)
    divergence.gm_kl_div(gm, gm2, use_kr=True, generator=gen)
    divergence.gm_entropy(gm, generator=gen)
    alg.gm_temperature(gm, 0.5)
    assert_unchanged(snap)
    for c, orig in zip((gm, gm2, iso, full, cov_gm), originals):
        assert all(a is b for a, b in zip(c, orig))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_inputs_give_finite_outputs_of_input_dtype(dtype):
    gm = make_gm(seed=80, dtype=dtype)
    gm2 = make_gm(seed=81, dtype=dtype)
    iso = IsoGaussian(torch.randn(2, 2, 3, 2).to(dtype), (torch.rand(2, 1, 1, 1) + 0.5).to(dtype))
    full = Gaussian(torch.randn(2, 3, 2, 2).to(dtype), make_spd(2, 3, 2, C=2).to(dtype))
    x = torch.randn(2, 4, 2, 3, 2).to(dtype)
    gen = torch.Generator().manual_seed(0)
    outputs = [
        alg.psd_inverse(full.cov),
        *alg.gm_to_gaussian(gm)[0],
        *alg.gm_mul_iso_gaussian(gm, iso),
        *alg.iso_gaussian_mul_iso_gaussian(iso, iso, 1.0, 0.5),
        *alg.gaussian_mul_gaussian(full, full),
        *alg.gm_mul_gaussian(gm, full),
        *alg.gm_mul_gm(gm, gm2),
        alg.gm_to_sample(gm, generator=gen),
        alg.iso_gaussian_logprob(iso, x),
        *alg.gm_temperature(gm, 0.5),
    ]
    cov_gm = alg.gm_mul_gaussian(gm, full)
    outputs += [alg.gm_cov_logprob(cov_gm, x), alg.gm_to_sample(cov_gm, generator=gen)]
    for out in outputs:
        assert out.dtype == dtype
        assert torch.isfinite(out).all()


def test_bad_inputs_raise_value_errors():
    gm = make_gm(K=3)
    with pytest.raises(ValueError, match="logweights"):
        alg.gm_to_gaussian(GaussianMixture(gm.means, gm.logstds, gm.logweights[:, :2]))
    with pytest.raises(ValueError, match="logstds"):
        alg.gm_to_sample(GaussianMixture(gm.means, torch.zeros(2, 2, 1, 3, 2, dtype=F64), gm.logweights))
    with pytest.raises(ValueError, match="channel"):
        alg.gm_mul_gm(gm, make_gm(C=3))
    with pytest.raises(ValueError, match="logstds"):
        alg.gm_mul_gaussian(
            make_gm(per_component=True), Gaussian(torch.zeros(2, 3, 2, 2, dtype=F64), make_spd(2, 3, 2, C=2))
        )
    with pytest.raises(ValueError, match="gm_power"):
        alg.gm_mul_iso_gaussian(
            gm, IsoGaussian(torch.zeros(2, 2, 3, 2, dtype=F64), torch.ones(2, 1, 1, 1, dtype=F64)), 0.0, 1.0
        )
    with pytest.raises(ValueError, match="n_samples"):
        alg.gm_to_sample(gm, n_samples=0)
    with pytest.raises(ValueError, match="gaussian.mean"):
        alg.gm_mul_iso_gaussian(gm, IsoGaussian(torch.zeros(2, 3, 3, 2, dtype=F64), torch.ones(2, 1, 1, 1, dtype=F64)))
