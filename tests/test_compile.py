"""torch.compile(fullgraph=True) of the ops (and of code around them) equals eager."""

from __future__ import annotations

import torch

import gmflow
from gmflow import ops
from strategies import GmCase

CASE = GmCase(batch=(2,), K=4, C=3, H=4, W=4, N=2, logstd_layout="per_component_pixel")


def _nll_and_moments(means, logstds, logweights, samples):
    gm = gmflow.GaussianMixture(means, logstds, logweights)
    nll = -ops.gm_logprob(gm, samples).mean()
    iso = ops.gm_to_iso_gaussian(gm)
    return nll, ops.gm_to_mean(gm, power=1.5), iso.mean, iso.var


def test_compile_fullgraph_forward_matches_eager(device):
    inputs = CASE.tensors(device)
    torch._dynamo.reset()
    compiled = torch.compile(_nll_and_moments, fullgraph=True)
    for a, b in zip(compiled(*inputs), _nll_and_moments(*inputs)):
        torch.testing.assert_close(a, b)


def test_compile_fullgraph_backward_matches_eager(device):
    torch._dynamo.reset()
    compiled = torch.compile(lambda *x: _nll_and_moments(*x)[0] + _nll_and_moments(*x)[2].square().sum(),
                             fullgraph=True)
    eager_inputs = CASE.tensors(device, requires_grad=True)
    compiled_inputs = CASE.tensors(device, requires_grad=True)
    (_nll_and_moments(*eager_inputs)[0] + _nll_and_moments(*eager_inputs)[2].square().sum()).backward()
    compiled(*compiled_inputs).backward()
    for a, b in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, b.grad)


def test_compile_dynamic_shapes(device):
    torch._dynamo.reset()
    compiled = torch.compile(lambda *x: _nll_and_moments(*x)[0], fullgraph=True, dynamic=True)
    for batch in [(2,), (3,), (5,)]:
        case = GmCase(batch=batch, K=3, C=2, H=3, W=2, N=1)
        inputs = case.tensors(device)
        torch.testing.assert_close(compiled(*inputs), _nll_and_moments(*inputs)[0])
