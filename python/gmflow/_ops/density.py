"""Density ops: ``gm_logprob``, ``gm_to_mean``, ``gm_to_iso_gaussian`` (and the backward ops of the
first two). Reference: :mod:`gmflow.reference.density` (also used by the container-level reference)."""

from __future__ import annotations

import torch
from torch import Tensor

from gmflow import _validation as V
from gmflow._library import SampleInput, define, empty_grads, empty_like_means, register_wrapper_example
from gmflow.reference import density as ref
from gmflow.reference.common import result_dtype
from gmflow.types import GaussianMixture, GaussianMixtureCov, IsoGaussian

from .support import names_nan_inputs, same_dtype
from .sample_data import grad_like, gm_tensors, output_mask

#: The typed wrappers this module adds to :mod:`gmflow.ops`.
__all__ = ["gm_logprob", "gm_to_mean", "gm_to_iso_gaussian"]

# ------------------------------------------------------------------------------------------------
# gm_logprob

logprob = define("gm_logprob(Tensor means, Tensor logstds, Tensor logweights, Tensor samples) -> Tensor")
logprob_backward = define(
    "gm_logprob_backward(Tensor grad, Tensor means, Tensor logstds, Tensor logweights, Tensor samples, "
    "Tensor logprob, bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor)"
)


@logprob.register_fallback
def _logprob_fallback(means, logstds, logweights, samples):
    V.logprob_shapes("gm_logprob", means, logstds, logweights, samples)
    return ref.gm_logprob(means, logstds, logweights, samples).contiguous()


@logprob.register_fake
def _logprob_fake(means, logstds, logweights, samples):
    return empty_like_means(means, V.logprob_shapes("gm_logprob", means, logstds, logweights, samples))


def _logprob_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


@logprob.register_autograd(_logprob_setup_context, backward_op="gm_logprob_backward")
def _logprob_backward(ctx, grad):
    means, logstds, logweights, samples, logprob = ctx.saved_tensors
    mask = list(ctx.needs_input_grad)
    grads = torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, mask)
    return tuple(g if m else None for g, m in zip(grads, mask))


@logprob.register_sample_inputs
def _logprob_inputs(device):
    for gm, samples in gm_tensors(device):
        yield SampleInput((*gm, samples), grad_argnums=(0, 1, 2, 3))


@logprob.register_valid_call
def _logprob_valid_call(r):
    return dict(**r.gm, samples=r.rand(r.B, r.N, r.C, r.H, r.W))


@logprob.register_parity_args()
def _logprob_parity_args(case, choose):
    return case.tensors()


def _logprob_backward_checks(grad, means, logstds, logweights, samples, logprob, output_mask):
    op = "gm_logprob_backward"
    out_shape = V.logprob_shapes(op, means, logstds, logweights, samples)
    V.check_backward_args(op, output_mask, 4, ("grad", "logprob"), (grad, logprob), means, out_shape)


@logprob_backward.register_fallback
def _logprob_backward_fallback(grad, means, logstds, logweights, samples, logprob, output_mask):
    _logprob_backward_checks(grad, means, logstds, logweights, samples, logprob, output_mask)
    grads = ref.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, output_mask)
    return tuple(g.contiguous() for g in grads)


@logprob_backward.register_fake
def _logprob_backward_fake(grad, means, logstds, logweights, samples, logprob, output_mask):
    _logprob_backward_checks(grad, means, logstds, logweights, samples, logprob, output_mask)
    return empty_grads(means, (means, logstds, logweights, samples), output_mask)


@logprob_backward.register_sample_inputs
def _logprob_backward_inputs(device):
    for gm, samples in gm_tensors(device):
        out = torch.ops.gmflow.gm_logprob(*gm, samples)
        for mask in ([True] * 4, [True, False, True, False], [False, True, False, True]):
            yield SampleInput((torch.randn_like(out), *gm, samples, out, mask))


@logprob_backward.register_valid_call
def _logprob_backward_valid_call(r):
    return dict(grad=r.rand(r.B, r.N, r.H, r.W), **r.gm, samples=r.rand(r.B, r.N, r.C, r.H, r.W),
                logprob=r.rand(r.B, r.N, r.H, r.W), output_mask=[True] * 4)


@logprob_backward.register_parity_args()
def _logprob_backward_parity_args(case, choose):
    args = case.tensors()
    out = torch.ops.gmflow.gm_logprob(*args)
    return (grad_like(out, case.seed), *args, out, output_mask(choose, 4))


@names_nan_inputs
def gm_logprob(gm: GaussianMixture, samples: Tensor) -> Tensor:
    """Log density of ``samples (..., N, C, H, W)`` per pixel, summed over channels: ``(..., N, H, W)``.

    Includes the ``-C/2 log 2pi`` constant. Differentiable w.r.t. the GM and the samples;
    the native kernels loop over K with an online logsumexp (no ``(N, K, C, H, W)`` tensor).
    Mixed float dtypes are computed in their promotion.
    """
    tensors = _promoted(*gm, samples)
    return torch.ops.gmflow.gm_logprob(*tensors)


@register_wrapper_example(gm_logprob)
def _gm_logprob_example(gm, given):
    return gm_logprob(gm, given.samples)


# ------------------------------------------------------------------------------------------------
# gm_to_mean

to_mean = define("gm_to_mean(Tensor means, Tensor logweights, float power=1.0) -> Tensor")
to_mean_backward = define(
    "gm_to_mean_backward(Tensor grad, Tensor means, Tensor logweights, Tensor mean, float power, "
    "bool[] output_mask) -> (Tensor, Tensor)"
)


def _to_mean_shape(op, means, logweights, power):
    batch, (K, C, H, W) = V.pixel_op_batch(op, means, None, logweights)
    V.check_scalar(op, "power", power, V.FINITE)
    return batch + [C, H, W]


@to_mean.register_fallback
def _to_mean_fallback(means, logweights, power=1.0):
    _to_mean_shape("gm_to_mean", means, logweights, power)
    return ref.gm_to_mean(means, logweights, power).contiguous()


@to_mean.register_fake
def _to_mean_fake(means, logweights, power=1.0):
    return empty_like_means(means, _to_mean_shape("gm_to_mean", means, logweights, power))


def _to_mean_setup_context(ctx, inputs, output):
    means, logweights, power = inputs
    ctx.power = power
    ctx.save_for_backward(means, logweights, output)


@to_mean.register_autograd(_to_mean_setup_context, backward_op="gm_to_mean_backward")
def _to_mean_backward(ctx, grad):
    means, logweights, mean = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:2])
    g_means, g_logweights = torch.ops.gmflow.gm_to_mean_backward(grad, means, logweights, mean, ctx.power, mask)
    return (g_means if mask[0] else None, g_logweights if mask[1] else None, None)


@to_mean.register_sample_inputs
def _to_mean_inputs(device):
    for gm, _ in gm_tensors(device):
        yield SampleInput((gm.means, gm.logweights, 1.0), grad_argnums=(0, 1))
        yield SampleInput((gm.means, gm.logweights), {"power": 2.0}, grad_argnums=(0, 1))


@to_mean.register_valid_call
def _to_mean_valid_call(r):
    return dict(means=r.gm["means"], logweights=r.gm["logweights"], power=1.0)


@to_mean.register_parity_args()
def _to_mean_parity_args(case, choose):
    means, _, logweights, _ = case.tensors()
    return means, logweights, choose("power", (1.0, 0.5, 2.0, 0.0))


def _to_mean_backward_checks(grad, means, logweights, mean, power, output_mask):
    op = "gm_to_mean_backward"
    batch, (K, C, H, W) = V.pixel_op_batch(op, means, None, logweights)
    V.check_output_mask(op, output_mask, 2)  # the native order: mask, power, then the gradients
    V.check_scalar(op, "power", power, V.FINITE)
    V.check_grad_like(op, ("grad", "mean"), (grad, mean), means, batch + [C, H, W])


@to_mean_backward.register_fallback
def _to_mean_backward_fallback(grad, means, logweights, mean, power, output_mask):
    _to_mean_backward_checks(grad, means, logweights, mean, power, output_mask)
    grads = ref.gm_to_mean_backward(grad, means, logweights, mean, power, output_mask)
    return tuple(g.contiguous() for g in grads)


@to_mean_backward.register_fake
def _to_mean_backward_fake(grad, means, logweights, mean, power, output_mask):
    _to_mean_backward_checks(grad, means, logweights, mean, power, output_mask)
    return empty_grads(means, (means, logweights), output_mask)


@to_mean_backward.register_sample_inputs
def _to_mean_backward_inputs(device):
    for gm, _ in gm_tensors(device):
        mean = torch.ops.gmflow.gm_to_mean(gm.means, gm.logweights, 0.5)
        for mask in ([True, True], [True, False], [False, True]):
            yield SampleInput((torch.randn_like(mean), gm.means, gm.logweights, mean, 0.5, mask))


@to_mean_backward.register_valid_call
def _to_mean_backward_valid_call(r):
    return dict(grad=r.rand(r.B, r.C, r.H, r.W), means=r.gm["means"], logweights=r.gm["logweights"],
                mean=r.rand(r.B, r.C, r.H, r.W), power=1.0, output_mask=[True] * 2)


@to_mean_backward.register_parity_args()
def _to_mean_backward_parity_args(case, choose):
    means, logweights, power = _to_mean_parity_args(case, choose)
    out = torch.ops.gmflow.gm_to_mean(means, logweights, power)
    return grad_like(out, case.seed), means, logweights, out, power, output_mask(choose, 2)


def _as_iso_layout(gm: GaussianMixture | GaussianMixtureCov) -> tuple[Tensor, Tensor]:
    """(means (..., K, C, H, W), logweights (..., K, 1, H, W)) of either GM layout."""
    if isinstance(gm, GaussianMixtureCov):
        return gm.means.movedim(-1, -3), gm.logweights.unsqueeze(-3)
    return gm.means, gm.logweights


@names_nan_inputs
def gm_to_mean(gm: GaussianMixture | GaussianMixtureCov, power: float = 1.0) -> Tensor:
    """Mean of the GM, ``sum_k softmax_k(power * logweights) mu_k``: ``(..., C, H, W)``.

    ``power != 1`` sharpens (``> 1``) or flattens (``< 1``) the weights. Differentiable.
    Mixed float dtypes are computed in their promotion.
    """
    means, logweights = _promoted(*_as_iso_layout(gm))
    return torch.ops.gmflow.gm_to_mean(means, logweights, float(power))


@register_wrapper_example(gm_to_mean)
def _gm_to_mean_example(gm, given):
    return gm_to_mean(gm)


# ------------------------------------------------------------------------------------------------
# gm_to_iso_gaussian (gradient by a Python formula: not on a training hot path)

to_iso_gaussian = define(
    "gm_to_iso_gaussian(Tensor means, Tensor logstds, Tensor logweights) -> (Tensor, Tensor)"
)


def _iso_shapes(means, logstds, logweights):
    batch, (K, C, H, W) = V.pixel_op_batch("gm_to_iso_gaussian", means, logstds, logweights)
    return batch + [C, H, W], batch + [1, H, W]


@to_iso_gaussian.register_fallback
def _iso_fallback(means, logstds, logweights):
    _iso_shapes(means, logstds, logweights)
    return ref.gm_to_iso_gaussian(means, logstds, logweights)


@to_iso_gaussian.register_fake
def _iso_fake(means, logstds, logweights):
    mean_shape, var_shape = _iso_shapes(means, logstds, logweights)
    return empty_like_means(means, mean_shape), empty_like_means(means, var_shape)


def _iso_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@to_iso_gaussian.register_autograd(_iso_setup_context)
def _iso_backward(ctx, grad_mean, grad_var):
    means, logstds, logweights = ctx.saved_tensors
    return ref.gm_to_iso_gaussian_backward(grad_mean, grad_var, means, logstds, logweights)


@to_iso_gaussian.register_sample_inputs
def _iso_inputs(device):
    for gm, _ in gm_tensors(device):
        yield SampleInput(tuple(gm), grad_argnums=(0, 1, 2))


@to_iso_gaussian.register_valid_call
def _iso_valid_call(r):
    return dict(**r.gm)


@to_iso_gaussian.register_parity_args()
def _iso_parity_args(case, choose):
    return case.tensors()[:3]


@names_nan_inputs
def gm_to_iso_gaussian(gm: GaussianMixture) -> IsoGaussian:
    """Moment-matched isotropic Gaussian per pixel: mean ``(..., C, H, W)``, var ``(..., 1, H, W)``.

    ``var = mean_c sum_k w_k (mu_kc - m_c)^2 + s^2``. Differentiable. Mixed float dtypes are
    computed in their promotion.
    """
    mean, var = torch.ops.gmflow.gm_to_iso_gaussian(*_promoted(*gm))
    return IsoGaussian(mean, var)


@register_wrapper_example(gm_to_iso_gaussian)
def _gm_to_iso_gaussian_example(gm, given):
    return gm_to_iso_gaussian(gm)


def _promoted(*tensors: Tensor) -> list[Tensor]:
    """Mixed float dtypes cast to their promotion (the ops take one dtype); others left to the op's checks."""
    if same_dtype(*tensors) or not all(isinstance(t, Tensor) and t.is_floating_point() for t in tensors):
        return list(tensors)
    dtype = result_dtype(*tensors)
    return [t.to(dtype) for t in tensors]
