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


SHARED = GmCase(batch=(2,), K=3, C=3, H=4, W=4, N=2)


def _sampling_path(means, logstds, logweights, samples, rotation=None):
    gm = gmflow.GaussianMixture(means, logstds, logweights)
    x = samples[:, 0]
    post = ops.gm_posterior_mean(gm, x.flip(-1), x, t_src=700.0, t_tgt=300.0)
    prod = ops.gm_mul_iso_gaussian(gm, gmflow.IsoGaussian(post, torch.full_like(post[:, :1, :1, :1], 0.5)))
    gm1 = gmflow.GaussianMixture1D(means[:, :, 0], logstds[:, 0], logweights[:, :, 0])
    icdf = ops.gm1d_inverse_cdf(gm1, torch.tanh(samples[:, :, 0]), n_steps=6)
    if rotation is None:
        return post, prod.means, prod.logweights, icdf
    z = ops.gm_samples_to_gaussian_samples(gm, samples, rotation=rotation)
    back = ops.gaussian_samples_to_gm_samples(gm, torch.tanh(samples), rotation=rotation)
    return post, prod.means, prod.logweights, icdf, ops.gm_kr_rotation(gm), z, back


def test_compile_fullgraph_sampling_ops_match_eager(device):
    inputs = SHARED.tensors(device)
    inputs = (*inputs, ops.gm_kr_rotation(gmflow.GaussianMixture(*inputs[:3])))
    torch._dynamo.reset()
    compiled = torch.compile(_sampling_path, fullgraph=True)
    for a, b in zip(compiled(*inputs), _sampling_path(*inputs)):
        torch.testing.assert_close(a, b)


def test_compile_fullgraph_sampling_backward_matches_eager(device):
    def loss(means, logstds, logweights, samples):
        post, _, _, icdf = _sampling_path(means, logstds, logweights, samples)
        return post.square().sum() + icdf.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    eager_inputs = SHARED.tensors(device, requires_grad=True)
    compiled_inputs = SHARED.tensors(device, requires_grad=True)
    loss(*eager_inputs[:3], eager_inputs[3].detach()).backward()
    compiled(*compiled_inputs[:3], compiled_inputs[3].detach()).backward()
    for a, b in zip(compiled_inputs[:3], eager_inputs[:3]):
        torch.testing.assert_close(a.grad, b.grad)
