"""``gm1d_inverse_cdf``: the inverse CDF of 1-D GMs by clamped Newton steps, with an implicit-function gradient.

Op layout: 1-D GM ``means/logweights (..., K, H, W)``, ``logstds (..., 1, 1, 1)``; ``scaled_cdfs`` and
``gaussian_samples (..., N, H, W)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow import _validation as V
from gmflow._library import SampleInput, define, empty_grads, empty_like_means, register_wrapper_example
from gmflow.reference import gm1d as ref_gm1d
from gmflow.reference.common import acc_dtype, result_dtype, sum_to_shape
from gmflow.types import GaussianMixture1D

from .sample_data import BOOLEANS, extra, gm_tensors, grad_like, output_mask
from .support import names_nan_inputs

#: The typed wrappers this module adds to :mod:`gmflow.ops`.
__all__ = ["gm1d_inverse_cdf"]

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)

op = define(
    "gm1d_inverse_cdf(Tensor means, Tensor logstds, Tensor logweights, Tensor scaled_cdfs, "
    "Tensor? gaussian_samples=None, int n_steps=8, float eps=1e-06, float max_step_size=1.5) -> Tensor"
)
backward_op = define(
    "gm1d_inverse_cdf_backward(Tensor grad, Tensor means, Tensor logstds, Tensor logweights, "
    "Tensor scaled_cdfs, Tensor samples, float eps, bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor)"
)


def reference(means, logstds, logweights, scaled_cdfs, gaussian_samples=None, n_steps=8, eps=1e-6,
              max_step_size=1.5):
    """:func:`gmflow.reference.gm1d.gm1d_inverse_cdf` in the op layout: ``(batch, N, H, W)``, no grad."""
    operands = [means, logstds, logweights, scaled_cdfs] + ([gaussian_samples] if gaussian_samples is not None else [])
    batch = torch.broadcast_shapes(*(t.shape[:-3] for t in operands))
    with torch.no_grad():
        x = ref_gm1d.gm1d_inverse_cdf(
            GaussianMixture1D(means, logstds, logweights), scaled_cdfs, n_steps, eps, max_step_size, gaussian_samples
        )
    return x.expand(*batch, *x.shape[-3:]).to(means.dtype).contiguous()


def reference_backward(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask):
    """Implicit-function gradients of the root ``x = samples`` of ``scaled_cdf(x) = c``.

    ``p = max(pdf(x), eps)``, ``N_k = w_k phi(z_k) / s``: ``dx/dc = 1 / (2p)``, ``dx/dmu_k = N_k / p``,
    ``dx/dlogstd = sum_k N_k (x - mu_k) / p``, ``dx/dlogweight_k = -w_k erf(z_k / sqrt 2) / (2p)``.
    Summed to each input's shape; an unrequested gradient is an empty tensor.
    """
    dtype = means.dtype
    work = acc_dtype(means.dtype)
    mu, ls, lw, x, g = (t.to(work) for t in (means, logstds, logweights, samples, grad))
    mu, ls, lw = mu.unsqueeze(-4), ls.unsqueeze(-4), lw.unsqueeze(-4)  # (..., 1, K|1, H|1, W|1)
    x, g = x.unsqueeze(-3), g.unsqueeze(-3)  # (..., N, 1, H, W)
    z = (x - mu) * torch.exp(-ls)
    comp = torch.exp(lw - 0.5 * z.square() - ls) * _INV_SQRT_2PI  # N_k, (..., N, K, H, W)
    p = torch.clamp_min(comp.sum(dim=-3, keepdim=True), eps)
    gp = g / p
    out = [means.new_empty(0) for _ in range(4)]  # distinct: outputs must not alias
    if output_mask[0]:
        out[0] = sum_to_shape((gp * comp).sum(dim=-4), means.shape).to(dtype)
    if output_mask[1]:
        out[1] = sum_to_shape((gp * comp * (x - mu)).sum(dim=-3).sum(dim=-3, keepdim=True), logstds.shape).to(dtype)
    if output_mask[2]:
        term = -0.5 * gp * torch.exp(lw) * torch.erf(z / _SQRT_2)
        out[2] = sum_to_shape(term.sum(dim=-4), logweights.shape).to(dtype)
    if output_mask[3]:
        out[3] = sum_to_shape((0.5 * gp).squeeze(-3), scaled_cdfs.shape).to(dtype)
    return tuple(out)


def _shape(name, means, logstds, logweights, scaled_cdfs, gaussian_samples, n_steps, eps, max_step_size):
    shape = V.inverse_cdf_shape(name, means, logstds, logweights, scaled_cdfs, gaussian_samples)
    V.check_newton_scalars(name, n_steps, eps, max_step_size)
    return shape


@op.register_fallback
def _fallback(means, logstds, logweights, scaled_cdfs, gaussian_samples=None, n_steps=8, eps=1e-6,
              max_step_size=1.5):
    _shape("gm1d_inverse_cdf", means, logstds, logweights, scaled_cdfs, gaussian_samples, n_steps, eps, max_step_size)
    return reference(means, logstds, logweights, scaled_cdfs, gaussian_samples, n_steps, eps, max_step_size)


@op.register_fake
def _fake(means, logstds, logweights, scaled_cdfs, gaussian_samples=None, n_steps=8, eps=1e-6, max_step_size=1.5):
    return empty_like_means(means, _shape("gm1d_inverse_cdf", means, logstds, logweights, scaled_cdfs,
                                          gaussian_samples, n_steps, eps, max_step_size))


def _setup_context(ctx, inputs, output):
    means, logstds, logweights, scaled_cdfs, _gaussian_samples, _n_steps, eps, _max_step = inputs
    ctx.eps = eps
    ctx.save_for_backward(means, logstds, logweights, scaled_cdfs, output)


@op.register_autograd(_setup_context, backward_op="gm1d_inverse_cdf_backward")
def _backward(ctx, grad):
    means, logstds, logweights, scaled_cdfs, samples = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    grads = torch.ops.gmflow.gm1d_inverse_cdf_backward(grad, means, logstds, logweights, scaled_cdfs, samples,
                                                       ctx.eps, mask)
    # The root does not depend on the Newton initialisation (gaussian_samples).
    return (*(g if m else None for g, m in zip(grads, mask)), None, None, None, None)


def _gm1d_args(gm, samples):
    """A 1-D GM (channel 0 of ``gm``, shared std) and scaled CDFs in (-1, 1)."""
    return (gm.means[..., 0, :, :], gm.logstds[..., :1, 0, :1, :1], gm.logweights[..., 0, :, :],
            0.8 * torch.tanh(samples[..., 0, :, :]))


@op.register_sample_inputs
def _inputs(device):
    for gm, samples in gm_tensors(device):
        args = _gm1d_args(gm, samples)
        yield SampleInput((*args, None, 40), grad_argnums=(0, 1, 2, 3))
        yield SampleInput((*args, samples[..., 0, :, :]), {"n_steps": 3, "eps": 1e-5, "max_step_size": 1.0})


@op.register_valid_call
def _valid_call(r):
    return dict(**r.gm1d, scaled_cdfs=r.rand(r.B, r.N, r.H, r.W, lo=-0.9, hi=0.9),
                gaussian_samples=r.rand(r.B, r.N, r.H, r.W), n_steps=8, eps=1e-6, max_step_size=1.5)


_SHARED_STD = {"logstd_layouts": ("shared",)}


# Unconverged float Newton steps divide erf rounding differences by the pdf: the float parity
# suites compare converged (or zero-step) solves, as the reference suite does.
@op.register_parity_args(factor=5.0, case_options=_SHARED_STD, newton_steps_arg=5,
                         dtypes=(torch.float64, torch.float32, torch.bfloat16))
def _parity_args(case, choose):
    means, _, logweights, samples = case.tensors()
    logstds = extra(case, "logstds", (1, 1, 1), 7, kind="uniform", low=-1.5, high=0.3)
    g = samples[..., 0, :, :]
    with_gaussian = choose("with_gaussian", BOOLEANS)
    c = torch.erf(g.double() / math.sqrt(2)).to(case.dtype) if with_gaussian else torch.tanh(g)
    n_steps = choose("n_steps", (0, 1, 3, 8, 16))
    return (means[..., 0, :, :], logstds, logweights[..., 0, :, :], c, g if with_gaussian else None, n_steps,
            1e-6, 1.5)


def _backward_checks(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask):
    name = "gm1d_inverse_cdf_backward"
    shape = V.inverse_cdf_shape(name, means, logstds, logweights, scaled_cdfs)
    V.check_backward_args(name, output_mask, 4, ("grad", "samples"), (grad, samples), means, shape)
    V.check_scalar(name, "eps", eps, V.FINITE_POSITIVE)


@backward_op.register_fallback
def _backward_fallback(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask):
    _backward_checks(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask)
    grads = reference_backward(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask)
    return tuple(g.contiguous() for g in grads)


@backward_op.register_fake
def _backward_fake(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask):
    _backward_checks(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask)
    return empty_grads(means, (means, logstds, logweights, scaled_cdfs), output_mask)


@backward_op.register_sample_inputs
def _backward_inputs(device):
    for gm, samples in gm_tensors(device):
        args = _gm1d_args(gm, samples)
        x = torch.ops.gmflow.gm1d_inverse_cdf(*args, None, 8)
        for mask in ([True] * 4, [False, True, False, True]):
            yield SampleInput((torch.randn_like(x), *args, x, 1e-6, mask))


@backward_op.register_valid_call
def _backward_valid_call(r):
    return dict(grad=r.rand(r.B, r.N, r.H, r.W), **r.gm1d, scaled_cdfs=r.rand(r.B, r.N, r.H, r.W, lo=-0.9, hi=0.9),
                samples=r.rand(r.B, r.N, r.H, r.W), eps=1e-6, output_mask=[True] * 4)


@backward_op.register_parity_args(factor=10.0, case_options=_SHARED_STD, dtypes=(torch.float64, torch.float32))
def _backward_parity_args(case, choose):
    m, s, w, c, _, _, eps, step = _parity_args(case, choose)
    x = torch.ops.gmflow.gm1d_inverse_cdf(m, s, w, c, None, 8, eps, step)
    return grad_like(x, case.seed), m, s, w, c, x, eps, output_mask(choose, 4)


@names_nan_inputs
def gm1d_inverse_cdf(
    gm1d: GaussianMixture1D,
    scaled_cdfs: Tensor,
    n_steps: int = 8,
    eps: float = 1e-6,
    max_step_size: float = 1.5,
    gaussian_samples: Tensor | None = None,
) -> Tensor:
    """Solves ``scaled_cdf(x) = c`` for ``c = scaled_cdfs (..., N, H, W)`` by exactly ``n_steps`` clamped
    Newton steps from the moment-matched quantile (docs/ops.md#gm1d_inverse_cdf); ``(..., N, H, W)``.

    ``delta = clamp((F(x) - c) / (2 max(p(x), eps)), +-max_step_size * s)``. Differentiable w.r.t. the
    GM and ``scaled_cdfs`` by the implicit-function theorem at the returned root (native backward op,
    no unrolling). Same semantics as :func:`gmflow.reference.gm1d.gm1d_inverse_cdf`.
    """
    ref_gm1d.check_gm1d(gm1d)
    ref_gm1d.check_broadcast("gm1d_inverse_cdf", gm1d, scaled_cdfs, gaussian_samples)
    n_steps = V.check_steps("gm1d_inverse_cdf", n_steps)
    means, logstds, logweights = gm1d
    tensors = [means, logstds, logweights, scaled_cdfs] + ([gaussian_samples] if gaussian_samples is not None else [])
    common = result_dtype(*tensors)  # mixed dtypes: computed in their promotion
    tensors = [t if t.dtype == common else t.to(common) for t in tensors]
    H, W = tensors[3].shape[-2:]
    pixels_ok = all(tuple(t.shape[-2:]) in ((H, W), (1, 1)) for t in (means, logweights)) and (
        gaussian_samples is None or gaussian_samples.shape[-2:] == (H, W))
    if not pixels_ok:  # the op needs every operand on the samples' pixels
        return ref_gm1d.gm1d_inverse_cdf(gm1d, scaled_cdfs, n_steps, eps, max_step_size, gaussian_samples)
    for i in (0, 2):
        if tensors[i].shape[-2:] != (H, W):
            tensors[i] = tensors[i].expand(*tensors[i].shape[:-2], H, W)
    g = tensors[4] if gaussian_samples is not None else None
    x = torch.ops.gmflow.gm1d_inverse_cdf(*tensors[:4], g, n_steps, float(eps), float(max_step_size))
    return x.to(result_dtype(means, scaled_cdfs))


@register_wrapper_example(gm1d_inverse_cdf)
def _example(gm, given):
    gm1d = GaussianMixture1D(gm.means[:, :, 0], gm.logstds[:, 0], gm.logweights[:, :, 0])
    return gm1d_inverse_cdf(gm1d, torch.tanh(given.samples[:, :, 0]))
