"""Oracles (docs/testing.md#inverse-cdf-oracles) for the 1-D GM pdf/cdf and the Newton inverse CDF."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gmflow.reference.gm1d import gm1d_inverse_cdf, gm1d_moments, gm1d_pdf_cdf
from gmflow.types import GaussianMixture1D

F64 = torch.float64


def make_gm1d(batch=(2,), K=3, H=2, W=2, seed=0, spread=1.0, logstd=-0.5, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(*batch, K, H, W, generator=g, dtype=F64)
    logstds = logstd + 0.2 * torch.randn(*batch, 1, 1, 1, generator=g, dtype=F64)
    logweights = torch.log_softmax(torch.randn(*batch, K, H, W, generator=g, dtype=F64), dim=-3)
    return GaussianMixture1D(means.to(dtype), logstds.to(dtype), logweights.to(dtype))


def scipy_pdf_cdf(gm1d, x):
    """Independent oracle: mixture of scipy normals, per (b, n, h, w)."""
    mu = gm1d.means.numpy()[:, None]  # (B, 1, K, H, W)
    s = np.exp(gm1d.logstds.numpy())[:, None]
    w = np.exp(gm1d.logweights.numpy())[:, None]
    xx = x.numpy()[:, :, None]
    pdf = (w * stats.norm.pdf(xx, mu, s)).sum(2)
    cdf = (w * stats.norm.cdf(xx, mu, s)).sum(2)
    return pdf, 2 * cdf - 1


def newton_reference(gm1d, c, n_steps, eps=1e-6, max_step=1.5):
    """Plain numpy re-statement of the Newton iteration of docs/ops.md#gm1d_inverse_cdf (moment-matched init)."""
    mu = gm1d.means.numpy()[:, None]
    s = np.exp(gm1d.logstds.numpy())[:, None]
    w = np.exp(gm1d.logweights.numpy())[:, None]
    m = (w * mu).sum(2)
    v = (w * (mu - m[:, :, None]) ** 2).sum(2) + s[:, :, 0] ** 2
    from scipy.special import erf, erfinv

    cc = c.numpy()
    x = math.sqrt(2) * erfinv(np.clip(cc, -1 + eps, 1 - eps)) * np.sqrt(v) + m
    for _ in range(n_steps):
        z = (x[:, :, None] - mu) / s
        pdf = (w * np.exp(-0.5 * z**2) / (s * math.sqrt(2 * math.pi))).sum(2)
        cdf = (w * erf(z / math.sqrt(2))).sum(2)
        delta = np.clip(0.5 * (cdf - cc) / np.maximum(pdf, eps), -max_step * s[:, :, 0], max_step * s[:, :, 0])
        x = x - delta
    return x


# ----------------------------------------------------------------------------------------
# docs/testing.md#inverse-cdf-oracles pdf / cdf


def test_pdf_cdf_match_scipy():
    gm = make_gm1d()
    x = 2 * torch.randn(2, 5, 2, 2, dtype=F64)
    pdf, cdf = gm1d_pdf_cdf(gm, x)
    assert pdf.shape == cdf.shape == (2, 5, 2, 2)
    ref_pdf, ref_cdf = scipy_pdf_cdf(gm, x)
    np.testing.assert_allclose(pdf.numpy(), ref_pdf, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(cdf.numpy(), ref_cdf, rtol=1e-12, atol=1e-15)


def test_scaled_cdf_limits_and_pdf_mass():
    gm = make_gm1d(batch=(1,), H=1, W=1)
    far = torch.tensor([-1e3, 1e3], dtype=F64).reshape(1, 2, 1, 1)
    _, cdf = gm1d_pdf_cdf(gm, far)
    torch.testing.assert_close(cdf.flatten(), torch.tensor([-1.0, 1.0], dtype=F64), atol=1e-14, rtol=0)
    xs = torch.linspace(-12, 12, 24001, dtype=F64)
    pdf, _ = gm1d_pdf_cdf(gm, xs.reshape(1, -1, 1, 1))
    assert abs(pdf.sum().item() * (xs[1] - xs[0]).item() - 1) < 1e-10


def test_cdf_derivative_is_twice_pdf():
    gm = make_gm1d()
    x = torch.randn(2, 6, 2, 2, dtype=F64)
    h = 1e-5
    pdf, _ = gm1d_pdf_cdf(gm, x)
    _, up = gm1d_pdf_cdf(gm, x + h)
    _, down = gm1d_pdf_cdf(gm, x - h)
    torch.testing.assert_close((up - down) / (2 * h), 2 * pdf, rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------------------------------
# docs/testing.md#inverse-cdf-oracles inverse CDF


def test_inverse_of_cdf_values():
    gm = make_gm1d(seed=1)
    c = torch.linspace(-1 + 1e-4, 1 - 1e-4, 41, dtype=F64).reshape(1, 41, 1, 1).expand(2, 41, 2, 2)
    x = gm1d_inverse_cdf(gm, c, n_steps=32)
    _, back = gm1d_pdf_cdf(gm, x)
    torch.testing.assert_close(back, c, atol=1e-10, rtol=0)


def test_inverse_cdf_recovers_points_near_components():
    gm = make_gm1d(seed=2)
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 3, (2, 20, 2, 2), generator=g)
    s = gm.logstds.exp()
    x = torch.gather(gm.means, 1, k) + s * (6 * torch.rand(2, 20, 2, 2, generator=g, dtype=F64) - 3)
    _, c = gm1d_pdf_cdf(gm, x)
    torch.testing.assert_close(gm1d_inverse_cdf(gm, c, n_steps=32), x, atol=1e-8, rtol=0)


@settings(deadline=None, max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    K=st.integers(1, 4),
    logstd=st.floats(-1.0, 0.5),
    spread=st.floats(0.0, 1.0),
)
def test_inverse_cdf_property(seed, K, logstd, spread):
    gm = make_gm1d(batch=(1,), K=K, H=1, W=3, seed=seed, spread=spread, logstd=logstd)
    c = torch.linspace(-0.999, 0.999, 17, dtype=F64).reshape(1, 17, 1, 1)
    x = gm1d_inverse_cdf(gm, c, n_steps=32)
    _, back = gm1d_pdf_cdf(gm, x)
    torch.testing.assert_close(back, c.expand_as(back), atol=1e-9, rtol=0)


def test_k1_zero_steps_is_the_gaussian_quantile():
    gm = make_gm1d(K=1)
    g = torch.randn(2, 7, 2, 2, dtype=F64)
    c = torch.erf(g / math.sqrt(2))
    expected = gm.means + gm.logstds.exp() * g
    torch.testing.assert_close(gm1d_inverse_cdf(gm, c, n_steps=0, gaussian_samples=g), expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(gm1d_inverse_cdf(gm, c, n_steps=0), expected, atol=1e-9, rtol=0)
    # already exact: further Newton steps do not move it
    torch.testing.assert_close(gm1d_inverse_cdf(gm, c, n_steps=5, gaussian_samples=g), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n_steps", [0, 1, 3])
def test_runs_exactly_n_steps_newton_iterations(n_steps):
    # far-apart modes so each iteration visibly changes x (and clamps are active)
    gm = make_gm1d(seed=3, spread=4.0, logstd=-1.0)
    c = torch.linspace(-0.9, 0.9, 9, dtype=F64).reshape(1, 9, 1, 1).expand(2, 9, 2, 2)
    out = gm1d_inverse_cdf(gm, c, n_steps=n_steps)
    np.testing.assert_allclose(out.numpy(), newton_reference(gm, c, n_steps), rtol=1e-12, atol=1e-12)
    if n_steps:
        assert not np.allclose(out.numpy(), newton_reference(gm, c, n_steps + 1), rtol=1e-9, atol=1e-9)


def test_per_sample_logweights_broadcast():
    # KR-style call: GM batch (B, N) with its own weights per sample, kernel-N = 1
    B, N, K, H, W = 2, 5, 3, 2, 2
    gm = make_gm1d(batch=(B,), K=K, H=H, W=W, seed=4)
    logweights = torch.log_softmax(torch.randn(B, N, K, H, W, dtype=F64), dim=-3)
    per_sample = GaussianMixture1D(gm.means.unsqueeze(1), gm.logstds.unsqueeze(1), logweights)
    c = torch.rand(B, N, 1, H, W, dtype=F64) * 1.8 - 0.9
    x = gm1d_inverse_cdf(per_sample, c, n_steps=32)
    assert x.shape == (B, N, 1, H, W)
    for n in range(N):
        single = GaussianMixture1D(gm.means, gm.logstds, logweights[:, n])
        torch.testing.assert_close(x[:, n], gm1d_inverse_cdf(single, c[:, n], n_steps=32))


# ----------------------------------------------------------------------------------------
# docs/testing.md#inverse-cdf-oracles implicit gradient


def test_value_is_independent_of_grad_mode():
    gm = make_gm1d(seed=5)
    c = torch.rand(2, 4, 2, 2, dtype=F64) * 1.8 - 0.9
    plain = gm1d_inverse_cdf(gm, c, n_steps=4)
    means = gm.means.clone().requires_grad_(True)
    with_grad = gm1d_inverse_cdf(GaussianMixture1D(means, gm.logstds, gm.logweights), c, n_steps=4)
    assert with_grad.requires_grad
    assert torch.equal(with_grad.detach(), plain)


def test_implicit_gradient_matches_finite_differences():
    gm = make_gm1d(batch=(1,), K=3, H=1, W=1, seed=6, spread=0.8)
    c = torch.tensor([-0.7, -0.1, 0.3, 0.8], dtype=F64).reshape(1, 4, 1, 1)
    proj = torch.tensor([0.3, -1.2, 0.7, 1.1], dtype=F64).reshape(1, 4, 1, 1)
    inputs = [gm.means, gm.logstds, gm.logweights, c]

    def loss(means, logstds, logweights, cdfs):
        x = gm1d_inverse_cdf(GaussianMixture1D(means, logstds, logweights), cdfs, n_steps=60)
        return (x * proj).sum()

    leaves = [t.clone().requires_grad_(True) for t in inputs]
    grads = torch.autograd.grad(loss(*leaves), leaves)
    h = 1e-6
    for i, t in enumerate(inputs):
        fd = torch.zeros_like(t)
        for j in range(t.numel()):
            up, down = [u.clone() for u in inputs], [u.clone() for u in inputs]
            up[i].view(-1)[j] += h
            down[i].view(-1)[j] -= h
            fd.view(-1)[j] = (loss(*up) - loss(*down)) / (2 * h)
        torch.testing.assert_close(grads[i], fd, rtol=1e-6, atol=1e-8)


def test_implicit_gradient_closed_form():
    gm = make_gm1d(batch=(1,), K=3, H=1, W=1, seed=7)
    c = torch.tensor([0.25], dtype=F64).reshape(1, 1, 1, 1).requires_grad_(True)
    leaves = [t.clone().requires_grad_(True) for t in gm]
    x = gm1d_inverse_cdf(GaussianMixture1D(*leaves), c, n_steps=60)
    g_mu, g_ls, g_lw, g_c = torch.autograd.grad(x.sum(), [*leaves, c])
    xs = x.item()
    mu = gm.means.flatten().numpy()
    s = math.exp(gm.logstds.item())
    w = np.exp(gm.logweights.flatten().numpy())
    comp = w * stats.norm.pdf(xs, mu, s)
    p = comp.sum()
    r = comp / p
    np.testing.assert_allclose(g_c.item(), 1 / (2 * p), rtol=1e-10)
    np.testing.assert_allclose(g_mu.flatten().numpy(), r, rtol=1e-10)
    np.testing.assert_allclose(g_ls.item(), (r * (xs - mu)).sum(), rtol=1e-10)
    from scipy.special import erf

    np.testing.assert_allclose(g_lw.flatten().numpy(), -w * erf((xs - mu) / (s * math.sqrt(2))) / (2 * p), rtol=1e-10)


# ----------------------------------------------------------------------------------------
# dtypes, mutation, errors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_inputs(dtype):
    gm = make_gm1d(dtype=dtype)
    c = (torch.rand(2, 4, 2, 2) * 1.8 - 0.9).to(dtype)
    pdf, cdf = gm1d_pdf_cdf(gm, c)
    x = gm1d_inverse_cdf(gm, c, n_steps=8)
    for out in (pdf, cdf, x):
        assert out.dtype == dtype and torch.isfinite(out).all()
    ref = gm1d_inverse_cdf(gm.__class__(*(t.double() for t in gm)), c.double(), n_steps=8)
    torch.testing.assert_close(x.double(), ref, atol=0.05, rtol=0.02)


def test_no_input_is_mutated():
    gm = make_gm1d()
    c = torch.rand(2, 4, 2, 2, dtype=F64) * 1.8 - 0.9
    g = torch.randn(2, 4, 2, 2, dtype=F64)
    tensors = [*gm, c, g]
    snap = [(t.clone(), t._version) for t in tensors]
    gm1d_pdf_cdf(gm, c)
    gm1d_moments(gm)
    gm1d_inverse_cdf(gm, c)
    gm1d_inverse_cdf(gm, c, gaussian_samples=g)
    for t, (copy, version) in zip(tensors, snap):
        assert t._version == version and torch.equal(t, copy)


def test_moments():
    gm = make_gm1d(seed=8)
    m, v = gm1d_moments(gm)
    xs = torch.linspace(-15, 15, 30001, dtype=F64)
    pdf, _ = gm1d_pdf_cdf(gm, xs.reshape(1, -1, 1, 1).expand(2, -1, 2, 2))
    dx = (xs[1] - xs[0]).item()
    mean = (pdf * xs.reshape(1, -1, 1, 1)).sum(1, keepdim=True) * dx
    var = (pdf * (xs.reshape(1, -1, 1, 1) - mean) ** 2).sum(1, keepdim=True) * dx
    torch.testing.assert_close(m, mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(v, var, atol=1e-9, rtol=0)


def test_bad_inputs_raise():
    gm = make_gm1d()
    c = torch.zeros(2, 4, 2, 2, dtype=F64)
    with pytest.raises(ValueError, match="logstds"):
        gm1d_inverse_cdf(GaussianMixture1D(gm.means, torch.zeros(2, 3, 1, 1, dtype=F64), gm.logweights), c)
    with pytest.raises(ValueError, match="logweights"):
        gm1d_pdf_cdf(GaussianMixture1D(gm.means, gm.logstds, gm.logweights[:, :2]), c)
    with pytest.raises(ValueError, match="n_steps"):
        gm1d_inverse_cdf(gm, c, n_steps=-1)
