"""fp64 gradcheck (and gradgradcheck-free finite differences) of every differentiable op."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from gmflow import _library
from strategies import GmCase

CASES = [
    GmCase(batch=(2,), K=3, C=2, H=2, W=3, N=2, dtype=torch.float64),
    GmCase(batch=(2,), K=3, C=2, H=2, W=3, N=1, dtype=torch.float64, logstd_layout="per_component_pixel"),
    GmCase(batch=(3,), K=4, C=2, H=1, W=1, N=1, dtype=torch.float64, logstd_layout="per_component"),
    GmCase(batch=(2, 2), K=2, C=3, H=2, W=2, N=2, dtype=torch.float64, drop={"logstds": 2},
           ones={"means": (1,)}, logstd_layout="per_pixel"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c.K}-{c.logstd_layout}-b{len(c.batch)}")
def test_gradcheck_gm_logprob(device, case):
    inputs = case.tensors(device, requires_grad=True)
    assert gradcheck(torch.ops.gmflow.gm_logprob, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c.K}-{c.logstd_layout}-b{len(c.batch)}")
@pytest.mark.parametrize("power", [1.0, 0.5, 2.0])
def test_gradcheck_gm_to_mean(device, case, power):
    means, _, logweights, _ = case.tensors(device, requires_grad=True)
    assert gradcheck(lambda m, w: torch.ops.gmflow.gm_to_mean(m, w, power), (means, logweights), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c.K}-{c.logstd_layout}-b{len(c.batch)}")
def test_gradcheck_gm_to_iso_gaussian(device, case):
    means, logstds, logweights, _ = case.tensors(device, requires_grad=True)
    assert gradcheck(torch.ops.gmflow.gm_to_iso_gaussian, (means, logstds, logweights), eps=1e-6, atol=1e-6)


def test_partial_requires_grad_skips_other_gradients(device):
    """Only the inputs that need gradients get them (the backward op's output mask)."""
    means, logstds, logweights, samples = CASES[0].tensors(device)
    means.requires_grad_()
    torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples).sum().backward()
    assert means.grad is not None and means.grad.shape == means.shape
    assert logstds.grad is None and logweights.grad is None and samples.grad is None


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"K{c.K}-{c.logstd_layout}-b{len(c.batch)}")
def test_gradcheck_gm_posterior_mean(device, case):
    means, logstds, logweights, samples = case.tensors(device, requires_grad=True)
    batch = torch.broadcast_shapes(means.shape[:-4], logstds.shape[:-4], logweights.shape[:-4])
    s_src = torch.full(batch, 0.7, dtype=torch.float64, device=device)
    x_src, x_tgt = samples[..., 0, :, :, :].detach(), samples[..., -1, :, :, :].detach().flip(-2)
    assert gradcheck(lambda m, s, w: torch.ops.gmflow.gm_posterior_mean(m, s, w, x_src, x_tgt, s_src, 0.4 * s_src),
                     (means, logstds, logweights), eps=1e-6, atol=1e-6)


GM1D_CASES = [
    CASES[0],
    GmCase(batch=(2, 2), K=2, C=1, H=1, W=2, N=2, dtype=torch.float64, drop={"logstds": 1}, ones={"means": (1,)}),
]


@pytest.mark.parametrize("case", GM1D_CASES, ids=lambda c: f"K{c.K}-b{len(c.batch)}")
def test_gradcheck_gm1d_inverse_cdf_implicit_gradient(device, case):
    """The implicit-function gradient equals finite differences of the (converged) forward solve."""
    means, logstds, logweights, samples = case.tensors(device)
    m = (0.5 * means[..., 0, :, :]).detach().requires_grad_()
    s = logstds[..., 0, :, :, :].detach().requires_grad_()
    w = logweights[..., 0, :, :].detach().requires_grad_()
    c = (0.8 * torch.tanh(samples[..., 0, :, :])).detach().requires_grad_()
    assert gradcheck(lambda *a: torch.ops.gmflow.gm1d_inverse_cdf(*a, None, 60), (m, s, w, c), eps=1e-6, atol=1e-5)


def test_every_differentiable_op_is_gradchecked():
    """The ops above are gradchecked on many layouts; every differentiable op, including a new one, is
    gradchecked on its own float64 sample inputs by tests/test_op_registry.py."""
    assert {"gm_logprob", "gm_to_mean", "gm_to_iso_gaussian", "gm_posterior_mean",
            "gm1d_inverse_cdf"} <= set(_library.DIFFERENTIABLE)
    for name in _library.DIFFERENTIABLE:
        assert any(s.grad_argnums and s.args[0].dtype == torch.float64 for s in _library.OPS[name].sample_inputs()), name
