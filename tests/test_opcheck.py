"""torch.library.opcheck of the ops on broadcast, strided and toy-like layouts: schema, autograd registration,
fake tensor, aot_dispatch_dynamic. Runs on whatever backend serves the op (native or fallback). Every
registered op is opchecked on its own sample inputs by tests/test_op_registry.py, by construction."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from gmflow.reference.common import acc_dtype
from strategies import GmCase

CASES = {
    "shared_std": GmCase(batch=(2,), K=3, C=2, H=4, W=5, N=2),
    "per_component_std_broadcast": GmCase(
        batch=(2, 3), K=4, C=3, H=2, W=3, N=1, logstd_layout="per_component_pixel",
        drop={"logstds": 1}, ones={"logweights": (1,)},
    ),
    "strided_fp64": GmCase(
        batch=(2,), K=2, C=2, H=3, W=4, N=2, dtype=torch.float64,
        layout={"means": "outer", "samples": "pixel", "logweights": "expand"},
    ),
    "toy_like": GmCase(batch=(5,), K=6, C=2, H=1, W=1, N=1),
}


def _inputs(name, device, requires_grad):
    return CASES[name].tensors(device, requires_grad=requires_grad)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward_ops(device, case, requires_grad):
    means, logstds, logweights, samples = _inputs(case, device, requires_grad)
    opcheck(torch.ops.gmflow.gm_logprob.default, (means, logstds, logweights, samples))
    opcheck(torch.ops.gmflow.gm_to_mean.default, (means, logweights, 1.0))
    opcheck(torch.ops.gmflow.gm_to_mean.default, (means, logweights), {"power": 2.0})
    opcheck(torch.ops.gmflow.gm_to_iso_gaussian.default, (means, logstds, logweights))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mask", [[True, True, True, True], [True, False, True, False], [False, True, False, True]])
def test_opcheck_backward_ops(device, case, mask):
    means, logstds, logweights, samples = _inputs(case, device, False)
    logprob = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    grad = torch.randn_like(logprob)
    opcheck(torch.ops.gmflow.gm_logprob_backward.default, (grad, means, logstds, logweights, samples, logprob, mask))
    mean = torch.ops.gmflow.gm_to_mean(means, logweights, 0.5)
    opcheck(torch.ops.gmflow.gm_to_mean_backward.default,
            (torch.randn_like(mean), means, logweights, mean, 0.5, mask[:2]))


SAMPLING_CASES = ["shared_std", "strided_fp64"]


def _acc(t):
    return acc_dtype(t.dtype)


def _posterior_args(means, logstds, logweights, samples):
    batch = means.shape[:-4]
    s_src = torch.full(batch, 0.6, dtype=_acc(means), device=means.device)
    x = samples.detach()  # only the GM is differentiable
    return means, logstds, logweights, x[..., 0, :, :, :], x[..., -1, :, :, :].flip(-1), s_src, 0.5 * s_src


def _gm1d_args(means, logstds, logweights, samples):
    return means[..., 0, :, :], logstds[..., 0, :, :, :], logweights[..., 0, :, :], torch.tanh(samples[..., 0, :, :])


@pytest.mark.parametrize("case", SAMPLING_CASES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_differentiable_sampling_ops(device, case, requires_grad):
    means, logstds, logweights, samples = _inputs(case, device, requires_grad)
    opcheck(torch.ops.gmflow.gm_posterior_mean.default, _posterior_args(means, logstds, logweights, samples))
    opcheck(torch.ops.gmflow.gm1d_inverse_cdf.default, (*_gm1d_args(means, logstds, logweights, samples), None, 6))
    m, s, w, c = _gm1d_args(means, logstds, logweights, samples)
    opcheck(torch.ops.gmflow.gm1d_inverse_cdf.default, (m, s, w, c, samples[..., 0, :, :].detach()),
            {"n_steps": 3, "eps": 1e-5, "max_step_size": 1.0})


@pytest.mark.parametrize("case", SAMPLING_CASES)
def test_opcheck_inference_sampling_ops(device, case):
    means, logstds, logweights, samples = _inputs(case, device, False)
    acc = _acc(means)
    g_var = logstds.exp()[..., 0, :, :, :] + 0.1
    opcheck(torch.ops.gmflow.gm_mul_iso_gaussian.default,
            (means, logstds, logweights, samples[..., 0, :, :, :], g_var, 1.0, 0.5))
    C, H, W = means.shape[-3:]
    V = torch.linalg.qr(torch.randn(*means.shape[:-4], 1, 1, C, C, dtype=acc))[0].to(device)
    u = torch.rand(*samples.shape[:-3], 1, H, W, dtype=acc, device=device)
    opcheck(torch.ops.gmflow.gm_kr_inverse.default, (means, logstds, logweights, samples, V, u, 1, 4))
    opcheck(torch.ops.gmflow.gm_kr_inverse.default, (means, logstds, logweights, samples, V))
    opcheck(torch.ops.gmflow.gm_kr_forward.default, (means, logstds, logweights, samples, V), {"n_axes": 1})
    opcheck(torch.ops.gmflow.gm_sample.default, (means, logstds, logweights, u, samples.to(acc), 2.0, True))


@pytest.mark.parametrize("case", SAMPLING_CASES)
@pytest.mark.parametrize("mask", [[True, True, True, True], [False, True, False, True]])
def test_opcheck_sampling_backward_ops(device, case, mask):
    means, logstds, logweights, samples = _inputs(case, device, False)
    args = _posterior_args(means, logstds, logweights, samples)
    mean = torch.ops.gmflow.gm_posterior_mean(*args)
    opcheck(torch.ops.gmflow.gm_posterior_mean_backward.default,
            (torch.randn_like(mean), *args, mean, 1e-6, mask[:3]))
    m, s, w, c = _gm1d_args(means, logstds, logweights, samples)
    x = torch.ops.gmflow.gm1d_inverse_cdf(m, s, w, c, None, 8)
    opcheck(torch.ops.gmflow.gm1d_inverse_cdf_backward.default, (torch.randn_like(x), m, s, w, c, x, 1e-6, mask))
