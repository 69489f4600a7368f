"""Oracles (docs/testing.md#transport-and-spectral-oracles and the docs/ops.md#gm_spectral_logprobs likelihood) for the
KR transport reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from gmflow.reference import transport as tr
from gmflow.reference.algebra import gm_to_gaussian, gm_to_sample
from gmflow.reference.density import gm_logprob
from gmflow.types import GaussianMixture

F64 = torch.float64


LOG_015 = math.log(0.15)


def make_gm(batch=(2,), K=4, C=3, H=2, W=3, seed=0, spread=0.6, logstd=LOG_015, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(*batch, K, C, H, W, generator=g, dtype=F64)
    logstds = torch.full((*batch, 1, 1, 1, 1), logstd, dtype=F64)
    logweights = torch.log_softmax(torch.randn(*batch, K, 1, H, W, generator=g, dtype=F64), dim=-4)
    return GaussianMixture(means.to(dtype), logstds.to(dtype), logweights.to(dtype))


def mc_mean_ok(x, expected, n):
    se = x.std(0) / math.sqrt(n)
    return bool(torch.all((x.mean(0) - expected).abs() <= 5 * se))


def mc_cov_ok(x, expected, n):
    d = x - x.mean(0)
    prods = d[:, :, None] * d[:, None, :]
    se = prods.std(0) / math.sqrt(n)
    return bool(torch.all((prods.mean(0) - expected).abs() <= 5 * se))


# ----------------------------------------------------------------------------------------
# rotation


@pytest.mark.parametrize("axis_aligned", [True, False])
def test_rotation_is_orthonormal_eigenbasis_in_descending_order(axis_aligned):
    gm = make_gm()
    V = tr.gm_kr_rotation(gm, axis_aligned)
    assert V.shape == ((2, 1, 1, 3, 3) if axis_aligned else (2, 2, 3, 3, 3))
    torch.testing.assert_close(V.transpose(-1, -2) @ V, torch.eye(3, dtype=F64).expand_as(V), atol=1e-12, rtol=0)
    cov = gm_to_gaussian(gm)[0].cov
    if axis_aligned:
        cov = cov.mean(dim=(-4, -3), keepdim=True)
    d = V.transpose(-1, -2) @ cov @ V
    diag = torch.diagonal(d, dim1=-2, dim2=-1)
    torch.testing.assert_close(d, torch.diag_embed(diag), atol=1e-12, rtol=0)
    assert torch.all(diag[..., :-1] >= diag[..., 1:])
    # sign convention: largest-magnitude entry of every eigenvector is positive
    pivot = torch.gather(V, -2, V.abs().argmax(-2, keepdim=True))
    assert torch.all(pivot > 0)


# ----------------------------------------------------------------------------------------
# docs/testing.md#transport-and-spectral-oracles round trips and the K = 1 affine map


@pytest.mark.parametrize("axis_aligned", [True, False])
def test_round_trip_gm_to_gaussian_to_gm(axis_aligned):
    gm = make_gm(seed=1)
    x = gm_to_sample(gm, n_samples=64, generator=torch.Generator().manual_seed(0))
    V = tr.gm_kr_rotation(gm, axis_aligned)
    g = tr.gm_samples_to_gaussian_samples(gm, x, axis_aligned=axis_aligned, rotation=V)
    back = tr.gaussian_samples_to_gm_samples(gm, g, n_steps=16, axis_aligned=axis_aligned, rotation=V)
    torch.testing.assert_close(back, x, atol=1e-9, rtol=0)


@pytest.mark.parametrize("axis_aligned", [True, False])
def test_round_trip_gaussian_to_gm_to_gaussian(axis_aligned):
    gm = make_gm(seed=2)
    g = torch.randn(2, 64, 3, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64).clamp(-4, 4)
    x = tr.gaussian_samples_to_gm_samples(gm, g, n_steps=24, axis_aligned=axis_aligned)
    back = tr.gm_samples_to_gaussian_samples(gm, x, axis_aligned=axis_aligned)
    torch.testing.assert_close(back, g, atol=1e-7, rtol=0)


@pytest.mark.parametrize("axis_aligned", [True, False])
def test_k1_transport_is_affine(axis_aligned):
    gm = make_gm(K=1, seed=3, logstd=-0.4)
    g = torch.randn(2, 10, 3, 2, 3, dtype=F64)
    V = tr.gm_kr_rotation(gm, axis_aligned)
    x = tr.gaussian_samples_to_gm_samples(gm, g, n_steps=16, axis_aligned=axis_aligned, rotation=V)
    # axis_aligned=True: g is in the rotated basis -> x = mu + s g V^T; False: x = mu + s g
    g_cl = g.movedim(-3, -1)
    rotated_back = (g_cl.unsqueeze(-2) @ V.transpose(-1, -2).unsqueeze(-5)).squeeze(-2) if axis_aligned else g_cl
    expected = gm.means + gm.logstds.exp() * rotated_back.movedim(-1, -3)
    torch.testing.assert_close(x, expected, atol=1e-12, rtol=0)
    # ... and the forward map is its exact inverse
    torch.testing.assert_close(
        tr.gm_samples_to_gaussian_samples(gm, x, axis_aligned=axis_aligned, rotation=V), g, atol=1e-12, rtol=0
    )


# ----------------------------------------------------------------------------------------
# docs/testing.md#transport-and-spectral-oracles push-forward checks


def test_push_forward_of_gm_samples_is_standard_normal():
    n = 20_000
    gm = make_gm(batch=(1,), K=3, C=2, H=1, W=1, seed=4, spread=1.0, logstd=math.log(0.4))
    x = gm_to_sample(gm, n_samples=n, generator=torch.Generator().manual_seed(2))
    z = tr.gm_samples_to_gaussian_samples(gm, x)[0, :, :, 0, 0]  # (N, C)
    assert mc_mean_ok(z, torch.zeros(2, dtype=F64), n)
    assert mc_cov_ok(z, torch.eye(2, dtype=F64), n)
    for a in range(2):
        assert stats.kstest(z[:, a].numpy(), "norm").pvalue > 1e-3


def test_push_forward_of_normals_has_gm_moments_and_marginals():
    n = 20_000
    gm = make_gm(batch=(1,), K=3, C=2, H=1, W=1, seed=5, spread=1.0, logstd=math.log(0.4))
    g = torch.randn(1, n, 2, 1, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    V = tr.gm_kr_rotation(gm)
    x = tr.gaussian_samples_to_gm_samples(gm, g, rotation=V)[0, :, :, 0, 0]
    gaussian = gm_to_gaussian(gm)[0]
    assert mc_mean_ok(x, gaussian.mean[0, 0, 0], n)
    assert mc_cov_ok(x, gaussian.cov[0, 0, 0], n)
    # each rotated coordinate is distributed as the GM projected on that axis
    w = np.exp(gm.logweights[0, :, 0, 0, 0].numpy())
    s = gm.logstds.exp().item()
    for a in range(2):
        axis = V[0, 0, 0, :, a].numpy()
        proj_means = gm.means[0, :, :, 0, 0].numpy() @ axis
        coord = x.numpy() @ axis

        def cdf(t, proj_means=proj_means):
            return (w * stats.norm.cdf(np.asarray(t)[..., None], proj_means, s)).sum(-1)

        assert stats.kstest(coord, cdf).pvalue > 1e-3


# ----------------------------------------------------------------------------------------
# partial transport (n_axes < C) and the slice helper


def test_gm_kr_slice_matches_bayes_rule():
    B, N, K, H, W = 1, 4, 3, 2, 2
    g = torch.Generator().manual_seed(6)
    last_x = torch.randn(B, N, H, W, generator=g, dtype=F64)
    prev_x = torch.randn(B, N, H, W, generator=g, dtype=F64)
    means_prev = torch.randn(B, K, H, W, generator=g, dtype=F64)
    means_last = torch.randn(B, K, H, W, generator=g, dtype=F64)
    logstds = torch.full((B, 1, 1, 1), -0.3, dtype=F64)
    logweights = torch.log_softmax(torch.randn(B, K, H, W, generator=g, dtype=F64), dim=-3)
    _, sq = tr.gm_kr_slice(prev_x, means_prev, logstds, logweights)
    cond, sq2 = tr.gm_kr_slice(last_x, means_last, logstds, logweights, sq)
    s = math.exp(-0.3)
    w = np.exp(logweights.numpy())[:, None]
    lik = stats.norm.pdf(prev_x.numpy()[:, :, None], means_prev.numpy()[:, None], s) * stats.norm.pdf(
        last_x.numpy()[:, :, None], means_last.numpy()[:, None], s
    )
    post = w * lik
    post /= post.sum(2, keepdims=True)
    np.testing.assert_allclose(cond.exp().numpy(), post, rtol=1e-10)
    expected_sq = (
        (prev_x[:, :, None] - means_prev[:, None]) ** 2 + (last_x[:, :, None] - means_last[:, None]) ** 2
    ) / s**2
    torch.testing.assert_close(sq2, expected_sq)


def test_partial_inverse_transport_keeps_leading_axes_and_gm_law():
    n = 10_000
    gm = make_gm(batch=(1,), K=3, C=3, H=1, W=1, seed=7, spread=1.0, logstd=math.log(0.4))
    V = tr.gm_kr_rotation(gm)
    g = torch.randn(1, n, 3, 1, 1, generator=torch.Generator().manual_seed(4), dtype=F64)
    full = tr.gaussian_samples_to_gm_samples(gm, g, rotation=V)
    part = tr.gaussian_samples_to_gm_samples(gm, g, n_axes=2, rotation=V, generator=torch.Generator().manual_seed(5))
    rot = lambda t: t[0, :, :, 0, 0] @ V[0, 0, 0]
    torch.testing.assert_close(rot(part)[:, :2], rot(full)[:, :2], atol=1e-12, rtol=0)
    assert not torch.allclose(rot(part)[:, 2], rot(full)[:, 2])
    gaussian = gm_to_gaussian(gm)[0]
    x = part[0, :, :, 0, 0]
    assert mc_mean_ok(x, gaussian.mean[0, 0, 0], n)
    assert mc_cov_ok(x, gaussian.cov[0, 0, 0], n)
    again = tr.gaussian_samples_to_gm_samples(gm, g, n_axes=2, rotation=V, generator=torch.Generator().manual_seed(5))
    assert torch.equal(part, again)


def test_partial_forward_transport():
    gm = make_gm(seed=8)
    x = gm_to_sample(gm, n_samples=8, generator=torch.Generator().manual_seed(6))
    full = tr.gm_samples_to_gaussian_samples(gm, x)
    state = torch.get_rng_state()
    a = tr.gm_samples_to_gaussian_samples(gm, x, n_axes=1, generator=torch.Generator().manual_seed(7))
    b = tr.gm_samples_to_gaussian_samples(gm, x, n_axes=1, generator=torch.Generator().manual_seed(7))
    c = tr.gm_samples_to_gaussian_samples(gm, x, n_axes=1, generator=torch.Generator().manual_seed(8))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a[:, :, 0], full[:, :, 0], atol=1e-14, rtol=0)


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_spectral_logprobs spectral log-likelihood and the Hartley transform


def test_hartley2_matches_cas_definition_and_is_self_inverse():
    H, W = 5, 6
    x = torch.randn(2, 3, H, W, dtype=F64)
    k = np.arange(H)[:, None, None, None]
    l = np.arange(W)[None, :, None, None]
    m = np.arange(H)[None, None, :, None]
    j = np.arange(W)[None, None, None, :]
    angle = 2 * np.pi * (k * m / H + l * j / W)
    # Re F + Im F with F = fft2 (kernel e^{-i angle}) is the cas kernel at -angle
    cas = (np.cos(angle) - np.sin(angle)) / math.sqrt(H * W)  # (H, W, H, W)
    ref = np.einsum("klmj,bcmj->bckl", cas, x.numpy())
    np.testing.assert_allclose(tr.hartley2(x).numpy(), ref, atol=1e-12)
    torch.testing.assert_close(tr.hartley2(tr.hartley2(x)), x, atol=1e-12, rtol=0)


def test_spectral_logprobs_formula():
    gm = make_gm(seed=9, logstd=-0.7)
    N = 3
    x = gm_to_sample(gm, n_samples=N, generator=torch.Generator().manual_seed(9))
    base = gm_logprob(*gm, x).sum((-2, -1))
    torch.testing.assert_close(tr.gm_spectral_logprobs(gm, x), base)
    torch.testing.assert_close(tr.gm_spectral_logprobs(gm, x, torch.zeros(2, 3, 2, 3, dtype=F64)), base)
    P = torch.randn(2, 3, 2, 3, dtype=F64)
    S = torch.randn(2, N, 3, 2, 3, dtype=F64)
    out = tr.gm_spectral_logprobs(gm, x, P, spectral_samples=S)
    assert out.shape == (2, N)
    # density ratio N(S; 0, e^P) / N(S; 0, 1) summed over (c, h, w), independently via scipy
    sd = np.exp(0.5 * P.numpy())[:, None]
    ratio = stats.norm.logpdf(S.numpy(), 0, sd) - stats.norm.logpdf(S.numpy(), 0, 1)
    np.testing.assert_allclose(out.numpy(), base.numpy() + ratio.sum((-3, -2, -1)), rtol=1e-12)
    # without spectral samples: S is the Hartley transform of the forward KR image
    z = tr.gm_samples_to_gaussian_samples(gm, x)
    torch.testing.assert_close(tr.gm_spectral_logprobs(gm, x, P), tr.gm_spectral_logprobs(gm, x, P, tr.hartley2(z)))
    # each sample's value is independent of the other samples (no stray channel broadcast)
    torch.testing.assert_close(tr.gm_spectral_logprobs(gm, x[:, 1:2], P)[:, 0], tr.gm_spectral_logprobs(gm, x, P)[:, 1])


# ----------------------------------------------------------------------------------------
# gradients, mutation, dtypes, errors


def test_inverse_transport_is_differentiable():
    gm = make_gm(K=1, seed=10)
    means = gm.means.clone().requires_grad_(True)
    g = torch.randn(2, 5, 3, 2, 3, dtype=F64)
    x = tr.gaussian_samples_to_gm_samples(GaussianMixture(means, gm.logstds, gm.logweights), g)
    (grad,) = torch.autograd.grad(x.sum(), means)
    torch.testing.assert_close(grad, torch.full_like(means, 5.0))  # x = mu + s g V^T -> dx/dmu = I


def test_no_input_is_mutated():
    gm = make_gm(seed=11)
    x = gm_to_sample(gm, n_samples=4)
    g = torch.randn_like(x)
    V = tr.gm_kr_rotation(gm)
    P = torch.randn(2, 3, 2, 3, dtype=F64)
    tensors = [*gm, x, g, V, P]
    snap = [(t.clone(), t._version) for t in tensors]
    gen = torch.Generator().manual_seed(0)
    tr.gm_samples_to_gaussian_samples(gm, x, rotation=V)
    tr.gm_samples_to_gaussian_samples(gm, x, n_axes=2, axis_aligned=False, generator=gen)
    tr.gaussian_samples_to_gm_samples(gm, g, rotation=V)
    tr.gaussian_samples_to_gm_samples(gm, g, n_axes=1, generator=gen)
    tr.gm_spectral_logprobs(gm, x, P)
    tr.hartley2(x)
    for t, (copy, version) in zip(tensors, snap):
        assert t._version == version and torch.equal(t, copy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_inputs(dtype):
    gm = make_gm(seed=12, logstd=math.log(0.3), dtype=dtype)
    g = torch.randn(2, 4, 3, 2, 3).to(dtype)
    x = tr.gaussian_samples_to_gm_samples(gm, g)
    z = tr.gm_samples_to_gaussian_samples(gm, x)
    lp = tr.gm_spectral_logprobs(gm, x, torch.zeros(2, 3, 2, 3, dtype=dtype))
    for out in (x, z, lp, tr.hartley2(g)):
        assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(z.float(), g.float(), atol=0.1, rtol=0.05)


def test_bad_inputs_raise():
    gm = make_gm()
    x = torch.randn(2, 4, 3, 2, 3, dtype=F64)
    per_component = GaussianMixture(gm.means, torch.zeros(2, 4, 1, 2, 3, dtype=F64), gm.logweights)
    with pytest.raises(ValueError, match="logstds"):
        tr.gm_samples_to_gaussian_samples(per_component, x)
    with pytest.raises(ValueError, match="n_axes"):
        tr.gaussian_samples_to_gm_samples(gm, x, n_axes=4)
    with pytest.raises(ValueError, match="rotation"):
        tr.gaussian_samples_to_gm_samples(gm, x, rotation=torch.eye(2, dtype=F64).expand(2, 1, 1, 2, 2))
    with pytest.raises(ValueError, match="gaussian_samples"):
        tr.gaussian_samples_to_gm_samples(gm, x[:, :, :2])
