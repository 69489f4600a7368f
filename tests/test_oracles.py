"""Mathematical oracles for the native-kernel ops, independent of the reference
implementation (docs/testing.md#algebra-oracles)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import gmflow
from gmflow import ops


def random_gm(batch, K, C, H, W, dtype=torch.float64, seed=0, per_component=False):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(*batch, K, C, H, W, generator=g, dtype=dtype)
    shape = (*batch, K, 1, H, W) if per_component else (*batch, 1, 1, 1, 1)
    logstds = torch.rand(shape, generator=g, dtype=dtype) - 1.0
    logweights = torch.log_softmax(torch.randn(*batch, K, 1, H, W, generator=g, dtype=dtype), dim=-4)
    return gmflow.GaussianMixture(means, logstds, logweights)


def torch_mixture(gm, b, h, w):
    """torch.distributions mixture of pixel (b, h, w) of a GM with batch dims (B,)."""
    mu = gm.means[b, :, :, h, w]
    std = gm.logstds.expand(gm.means.shape[:-3] + (1,) + gm.means.shape[-2:])[b, :, 0, h, w].exp()
    comp = Independent(Normal(mu, std[:, None].expand_as(mu)), 1)
    return MixtureSameFamily(Categorical(logits=gm.logweights[b, :, 0, h, w]), comp)


def test_k1_logprob_is_the_gaussian_log_density():
    gm = random_gm((3,), 1, 4, 5, 6, per_component=True)
    x = torch.randn(3, 2, 4, 5, 6, dtype=torch.float64)
    expected = Normal(gm.means, gm.logstds.exp()).log_prob(x).sum(dim=-3)
    torch.testing.assert_close(ops.gm_logprob(gm, x), expected)
    torch.testing.assert_close(ops.gm_to_mean(gm), gm.means[:, 0])
    torch.testing.assert_close(ops.gm_to_iso_gaussian(gm).var, (2 * gm.logstds[:, 0]).exp())


@pytest.mark.parametrize("per_component", [False, True])
def test_logprob_matches_torch_distributions_mixture(per_component):
    gm = random_gm((2,), 5, 3, 2, 3, per_component=per_component, seed=4)
    x = torch.randn(2, 4, 3, 2, 3, dtype=torch.float64)
    out = ops.gm_logprob(gm, x)
    for b in range(2):
        for h in range(2):
            for w in range(3):
                mix = torch_mixture(gm, b, h, w)
                torch.testing.assert_close(out[b, :, h, w], mix.log_prob(x[b, :, :, h, w]))


def test_density_integrates_to_one_on_a_grid():
    gm = random_gm((1,), 4, 2, 1, 1, seed=7)
    lim, n = 8.0, 801
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # (n*n, 2)
    samples = points.reshape(1, -1, 2, 1, 1)
    density = ops.gm_logprob(gm, samples).exp().reshape(n, n)
    cell = (2 * lim / (n - 1)) ** 2
    assert abs(density.sum().item() * cell - 1.0) < 1e-6


def test_monte_carlo_moments_match_mean_and_iso_variance():
    gm = random_gm((1,), 6, 3, 1, 2, seed=11)
    n = 200_000
    torch.manual_seed(0)
    for w in range(2):
        mix = torch_mixture(gm, 0, 0, w)
        draws = mix.sample((n,))  # (n, C)
        mean = ops.gm_to_mean(gm)[0, :, 0, w]
        std_err = draws.std(dim=0) / math.sqrt(n)
        assert ((draws.mean(dim=0) - mean).abs() < 5 * std_err).all()
        var = ops.gm_to_iso_gaussian(gm).var[0, 0, 0, w]
        mc_var = draws.var(dim=0).mean()
        assert abs(mc_var - var) < 5 * mc_var * math.sqrt(2 / n) * 3


def test_power_sharpens_towards_the_heaviest_component():
    gm = random_gm((2,), 4, 3, 2, 2, seed=5)
    heaviest = gm.logweights.argmax(dim=-4, keepdim=True).expand(2, 1, 3, 2, 2)
    torch.testing.assert_close(ops.gm_to_mean(gm, power=1e4), gm.means.gather(-4, heaviest)[:, 0])
    uniform = gm.means.mean(dim=-4)
    torch.testing.assert_close(ops.gm_to_mean(gm, power=0.0), uniform)


def test_logprob_gradient_matches_finite_differences():
    gm = random_gm((1,), 3, 2, 1, 2, per_component=True, seed=2)
    x = torch.randn(1, 2, 2, 1, 2, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in gm]
    ops.gm_logprob(gmflow.GaussianMixture(*leaves), x).sum().backward()
    h = 1e-6
    for leaf, base in zip(leaves, gm):
        flat = base.reshape(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 5)):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += h
            minus[i] -= h
            f = lambda v: ops.gm_logprob(  # noqa: E731
                gmflow.GaussianMixture(*[v.reshape(base.shape) if t is base else t for t in gm]), x
            ).sum()
            numeric = (f(plus) - f(minus)) / (2 * h)
            assert abs(leaf.grad.reshape(-1)[i] - numeric) < 1e-6


def test_nan_inputs_propagate_to_outputs(device="cpu"):
    """The native kernels turn a NaN input into a NaN output for that pixel (never a finite value)."""
    gm = random_gm((2,), 3, 2, 2, 4, dtype=torch.float32, per_component=True)
    x = torch.randn(2, 1, 2, 2, 4)
    for i, name in enumerate(["means", "logstds", "logweights", "samples"]):
        tensors = [t.clone() for t in (*gm, x)]
        tensors[i][0, 0, 0, 1, 2] = float("nan")
        out = torch.ops.gmflow.gm_logprob(*tensors)
        assert torch.isnan(out[0, 0, 1, 2]), name
        assert torch.isfinite(out[1]).all(), name
