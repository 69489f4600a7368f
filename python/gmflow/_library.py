"""The ``torch.ops.gmflow`` library: schemas, reference fallback, fake kernels, autograd.

Schemas live here, in Python, and nowhere else (the C++ side only registers
kernels with ``STABLE_TORCH_LIBRARY_IMPL``), so every op exists on every device
and every torch, whether or not a native library loads. The pure-PyTorch
reference is registered under ``CompositeExplicitAutograd``: a native CPU or
CUDA kernel, where loaded, takes precedence for its dispatch key.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _validation as V
from .reference import core as ref
from .reference import sampling_ops as sref

NAMESPACE = "gmflow"

#: op name -> schema. The single source of truth (tests/test_registration.py checks it).
SCHEMAS: dict[str, str] = {
    "gm_logprob": "gm_logprob(Tensor means, Tensor logstds, Tensor logweights, Tensor samples) -> Tensor",
    "gm_logprob_backward": (
        "gm_logprob_backward(Tensor grad, Tensor means, Tensor logstds, Tensor logweights, Tensor samples, "
        "Tensor logprob, bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    "gm_to_mean": "gm_to_mean(Tensor means, Tensor logweights, float power=1.0) -> Tensor",
    "gm_to_mean_backward": (
        "gm_to_mean_backward(Tensor grad, Tensor means, Tensor logweights, Tensor mean, float power, "
        "bool[] output_mask) -> (Tensor, Tensor)"
    ),
    "gm_to_iso_gaussian": "gm_to_iso_gaussian(Tensor means, Tensor logstds, Tensor logweights) -> (Tensor, Tensor)",
    # Sampling path (OPS_AND_SAMPLERS.md §1.5, §1.10, §2, §3, §4.5, §4.6)
    "gm_mul_iso_gaussian": (
        "gm_mul_iso_gaussian(Tensor means, Tensor logstds, Tensor logweights, Tensor gaussian_mean, "
        "Tensor gaussian_var, float gm_power=1.0, float gaussian_power=1.0, float eps=1e-06) -> (Tensor, Tensor, Tensor)"
    ),
    "gm_posterior_mean": (
        "gm_posterior_mean(Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, Tensor x_tgt, "
        "Tensor sigma_src, Tensor sigma_tgt, float eps=1e-06) -> Tensor"
    ),
    "gm_posterior_mean_backward": (
        "gm_posterior_mean_backward(Tensor grad, Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, "
        "Tensor x_tgt, Tensor sigma_src, Tensor sigma_tgt, Tensor mean, float eps, bool[] output_mask) "
        "-> (Tensor, Tensor, Tensor)"
    ),
    "gm1d_inverse_cdf": (
        "gm1d_inverse_cdf(Tensor means, Tensor logstds, Tensor logweights, Tensor scaled_cdfs, "
        "Tensor? gaussian_samples=None, int n_steps=8, float eps=1e-06, float max_step_size=1.5) -> Tensor"
    ),
    "gm1d_inverse_cdf_backward": (
        "gm1d_inverse_cdf_backward(Tensor grad, Tensor means, Tensor logstds, Tensor logweights, "
        "Tensor scaled_cdfs, Tensor samples, float eps, bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    "gm_kr_inverse": (
        "gm_kr_inverse(Tensor means, Tensor logstds, Tensor logweights, Tensor gaussian_samples, Tensor rotation, "
        "Tensor? uniforms=None, int? n_axes=None, int n_steps=16, float eps=1e-06, float max_step_size=1.5) -> Tensor"
    ),
    "gm_kr_forward": (
        "gm_kr_forward(Tensor means, Tensor logstds, Tensor logweights, Tensor samples, Tensor rotation, "
        "int? n_axes=None, float eps=1e-06) -> Tensor"
    ),
    "gm_sample": (
        "gm_sample(Tensor means, Tensor logstds, Tensor logweights, Tensor uniforms, Tensor normals, "
        "float gm_power=1.0, bool cov_sharpen=False) -> Tensor"
    ),
}

#: Ops with an autograd formula, and the op computing their gradients (None: Python formula).
DIFFERENTIABLE: dict[str, str | None] = {
    "gm_logprob": "gm_logprob_backward",
    "gm_to_mean": "gm_to_mean_backward",
    "gm_to_iso_gaussian": None,
    "gm_posterior_mean": "gm_posterior_mean_backward",
    "gm1d_inverse_cdf": "gm1d_inverse_cdf_backward",
}

_lib = torch.library.Library(NAMESPACE, "DEF")
for _schema in SCHEMAS.values():
    _lib.define(_schema)


def _qualname(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def _empty(like: Tensor, shape) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device)


# ------------------------------------------------------------------------------------------------
# gm_logprob


def _logprob_fallback(means, logstds, logweights, samples):
    V.logprob_shapes("gm_logprob", means, logstds, logweights, samples)
    return ref.gm_logprob(means, logstds, logweights, samples).contiguous()


def _logprob_fake(means, logstds, logweights, samples):
    return _empty(means, V.logprob_shapes("gm_logprob", means, logstds, logweights, samples))


def _logprob_backward_checks(grad, means, logstds, logweights, samples, logprob, output_mask):
    op = "gm_logprob_backward"
    out_shape = V.logprob_shapes(op, means, logstds, logweights, samples)
    V.check_output_mask(op, output_mask, 4)
    V.check_grad_like(op, ("grad", "logprob"), (grad, logprob), means, out_shape)


def _logprob_backward_fallback(grad, means, logstds, logweights, samples, logprob, output_mask):
    _logprob_backward_checks(grad, means, logstds, logweights, samples, logprob, output_mask)
    grads = ref.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, output_mask)
    return tuple(g.contiguous() for g in grads)


def _logprob_backward_fake(grad, means, logstds, logweights, samples, logprob, output_mask):
    _logprob_backward_checks(grad, means, logstds, logweights, samples, logprob, output_mask)
    inputs = (means, logstds, logweights, samples)
    return tuple(_empty(means, x.shape if m else (0,)) for x, m in zip(inputs, output_mask))


def _logprob_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def _logprob_backward(ctx, grad):
    means, logstds, logweights, samples, logprob = ctx.saved_tensors
    mask = list(ctx.needs_input_grad)
    grads = torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, mask)
    return tuple(g if m else None for g, m in zip(grads, mask))


# ------------------------------------------------------------------------------------------------
# gm_to_mean


def _to_mean_shape(op, means, logweights, power):
    batch, (K, C, H, W) = V.pixel_op_batch(op, means, None, logweights)
    V.check_scalar(op, "power", power, V.FINITE)
    return batch + [C, H, W]


def _to_mean_fallback(means, logweights, power=1.0):
    _to_mean_shape("gm_to_mean", means, logweights, power)
    return ref.gm_to_mean(means, logweights, power).contiguous()


def _to_mean_fake(means, logweights, power=1.0):
    return _empty(means, _to_mean_shape("gm_to_mean", means, logweights, power))


def _to_mean_backward_checks(grad, means, logweights, mean, power, output_mask):
    op = "gm_to_mean_backward"
    batch, (K, C, H, W) = V.pixel_op_batch(op, means, None, logweights)
    V.check_output_mask(op, output_mask, 2)
    V.check_scalar(op, "power", power, V.FINITE)
    V.check_grad_like(op, ("grad", "mean"), (grad, mean), means, batch + [C, H, W])


def _to_mean_backward_fallback(grad, means, logweights, mean, power, output_mask):
    _to_mean_backward_checks(grad, means, logweights, mean, power, output_mask)
    grads = ref.gm_to_mean_backward(grad, means, logweights, mean, power, output_mask)
    return tuple(g.contiguous() for g in grads)


def _to_mean_backward_fake(grad, means, logweights, mean, power, output_mask):
    _to_mean_backward_checks(grad, means, logweights, mean, power, output_mask)
    return tuple(_empty(means, x.shape if m else (0,)) for x, m in zip((means, logweights), output_mask))


def _to_mean_setup_context(ctx, inputs, output):
    means, logweights, power = inputs
    ctx.power = power
    ctx.save_for_backward(means, logweights, output)


def _to_mean_backward(ctx, grad):
    means, logweights, mean = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:2])
    g_means, g_logweights = torch.ops.gmflow.gm_to_mean_backward(grad, means, logweights, mean, ctx.power, mask)
    return (g_means if mask[0] else None, g_logweights if mask[1] else None, None)


# ------------------------------------------------------------------------------------------------
# gm_to_iso_gaussian (gradient by a Python formula: not on a training hot path)


def _iso_shapes(means, logstds, logweights):
    batch, (K, C, H, W) = V.pixel_op_batch("gm_to_iso_gaussian", means, logstds, logweights)
    return batch + [C, H, W], batch + [1, H, W]


def _iso_fallback(means, logstds, logweights):
    _iso_shapes(means, logstds, logweights)
    return ref.gm_to_iso_gaussian(means, logstds, logweights)


def _iso_fake(means, logstds, logweights):
    mean_shape, var_shape = _iso_shapes(means, logstds, logweights)
    return _empty(means, mean_shape), _empty(means, var_shape)


def _iso_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _iso_backward(ctx, grad_mean, grad_var):
    means, logstds, logweights = ctx.saved_tensors
    return ref.gm_to_iso_gaussian_backward(grad_mean, grad_var, means, logstds, logweights)


# ------------------------------------------------------------------------------------------------
# gm_mul_iso_gaussian (inference only: no autograd)


def _mul_iso_shapes(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power, gaussian_power, eps):
    op = "gm_mul_iso_gaussian"
    shapes = V.mul_iso_gaussian_shapes(op, means, logstds, logweights, gaussian_mean, gaussian_var)
    V.check_scalar(op, "gm_power", gm_power, V.FINITE_NONZERO)
    V.check_scalar(op, "gaussian_power", gaussian_power, V.FINITE)
    V.check_scalar(op, "eps", eps, V.FINITE_POSITIVE)
    return shapes


def _mul_iso_fallback(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power=1.0, gaussian_power=1.0,
                      eps=1e-6):
    _mul_iso_shapes(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power, gaussian_power, eps)
    return sref.gm_mul_iso_gaussian(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power,
                                    gaussian_power, eps)


def _mul_iso_fake(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power=1.0, gaussian_power=1.0,
                  eps=1e-6):
    shapes = _mul_iso_shapes(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power, gaussian_power, eps)
    return tuple(_empty(means, s) for s in shapes)


# ------------------------------------------------------------------------------------------------
# gm_posterior_mean


def _posterior_shape(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps):
    op = "gm_posterior_mean"
    shape = V.posterior_mean_shape(op, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt)
    V.check_scalar(op, "eps", eps, V.FINITE_POSITIVE)
    return shape


def _posterior_fallback(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps=1e-6):
    _posterior_shape(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps)
    return sref.gm_posterior_mean(means, logstds, logweights, x_src, x_tgt, V.batch_only_sigma(sigma_src),
                                  V.batch_only_sigma(sigma_tgt), eps)


def _posterior_fake(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps=1e-6):
    return _empty(means, _posterior_shape(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps))


def _posterior_backward_checks(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps,
                               output_mask):
    op = "gm_posterior_mean_backward"
    shape = V.posterior_mean_shape(op, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt)
    V.check_output_mask(op, output_mask, 3)
    V.check_grad_like(op, ("grad", "mean"), (grad, mean), means, shape)
    V.check_scalar(op, "eps", eps, V.FINITE_POSITIVE)


def _posterior_backward_fallback(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps,
                                 output_mask):
    _posterior_backward_checks(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps,
                               output_mask)
    grads = sref.gm_posterior_mean_backward(grad, means, logstds, logweights, x_src, x_tgt,
                                            V.batch_only_sigma(sigma_src), V.batch_only_sigma(sigma_tgt), mean, eps,
                                            output_mask)
    return tuple(g.contiguous() for g in grads)


def _posterior_backward_fake(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps,
                             output_mask):
    _posterior_backward_checks(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps,
                               output_mask)
    return tuple(_empty(means, x.shape if m else (0,)) for x, m in zip((means, logstds, logweights), output_mask))


def _posterior_setup_context(ctx, inputs, output):
    *tensors, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(*tensors, output)


def _posterior_backward(ctx, grad):
    means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean = ctx.saved_tensors
    if any(ctx.needs_input_grad[3:7]):
        V.fail("gm_posterior_mean", "gradients w.r.t. 'x_src', 'x_tgt', 'sigma_src' and 'sigma_tgt' are not "
                                    "implemented (only the GM is differentiable); detach them")
    mask = list(ctx.needs_input_grad[:3])
    grads = torch.ops.gmflow.gm_posterior_mean_backward(grad, means, logstds, logweights, x_src, x_tgt, sigma_src,
                                                        sigma_tgt, mean, ctx.eps, mask)
    return (*(g if m else None for g, m in zip(grads, mask)), None, None, None, None, None)


# ------------------------------------------------------------------------------------------------
# gm1d_inverse_cdf (implicit-function gradient, no unrolling)


def _inverse_cdf_shape(op, means, logstds, logweights, scaled_cdfs, gaussian_samples, n_steps, eps, max_step_size):
    shape = V.inverse_cdf_shape(op, means, logstds, logweights, scaled_cdfs, gaussian_samples)
    V.check_newton_scalars(op, n_steps, eps, max_step_size)
    return shape


def _inverse_cdf_fallback(means, logstds, logweights, scaled_cdfs, gaussian_samples=None, n_steps=8, eps=1e-6,
                          max_step_size=1.5):
    _inverse_cdf_shape("gm1d_inverse_cdf", means, logstds, logweights, scaled_cdfs, gaussian_samples, n_steps, eps,
                       max_step_size)
    return sref.gm1d_inverse_cdf(means, logstds, logweights, scaled_cdfs, gaussian_samples, n_steps, eps,
                                 max_step_size)


def _inverse_cdf_fake(means, logstds, logweights, scaled_cdfs, gaussian_samples=None, n_steps=8, eps=1e-6,
                      max_step_size=1.5):
    return _empty(means, _inverse_cdf_shape("gm1d_inverse_cdf", means, logstds, logweights, scaled_cdfs,
                                            gaussian_samples, n_steps, eps, max_step_size))


def _inverse_cdf_backward_checks(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask):
    op = "gm1d_inverse_cdf_backward"
    shape = V.inverse_cdf_shape(op, means, logstds, logweights, scaled_cdfs)
    V.check_output_mask(op, output_mask, 4)
    V.check_grad_like(op, ("grad", "samples"), (grad, samples), means, shape)
    V.check_scalar(op, "eps", eps, V.FINITE_POSITIVE)


def _inverse_cdf_backward_fallback(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask):
    _inverse_cdf_backward_checks(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask)
    grads = sref.gm1d_inverse_cdf_backward(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask)
    return tuple(g.contiguous() for g in grads)


def _inverse_cdf_backward_fake(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask):
    _inverse_cdf_backward_checks(grad, means, logstds, logweights, scaled_cdfs, samples, eps, output_mask)
    inputs = (means, logstds, logweights, scaled_cdfs)
    return tuple(_empty(means, x.shape if m else (0,)) for x, m in zip(inputs, output_mask))


def _inverse_cdf_setup_context(ctx, inputs, output):
    means, logstds, logweights, scaled_cdfs, _gaussian_samples, _n_steps, eps, _max_step = inputs
    ctx.eps = eps
    ctx.save_for_backward(means, logstds, logweights, scaled_cdfs, output)


def _inverse_cdf_backward(ctx, grad):
    means, logstds, logweights, scaled_cdfs, samples = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    grads = torch.ops.gmflow.gm1d_inverse_cdf_backward(grad, means, logstds, logweights, scaled_cdfs, samples,
                                                       ctx.eps, mask)
    # The root does not depend on the Newton initialisation (gaussian_samples).
    return (*(g if m else None for g, m in zip(grads, mask)), None, None, None, None)


# ------------------------------------------------------------------------------------------------
# Knothe-Rosenblatt transport (inference only)


def _kr_inverse_fallback(means, logstds, logweights, gaussian_samples, rotation, uniforms=None, n_axes=None,
                         n_steps=16, eps=1e-6, max_step_size=1.5):
    V.kr_inverse_shape("gm_kr_inverse", means, logstds, logweights, gaussian_samples, rotation, uniforms, n_axes,
                       n_steps, eps, max_step_size)
    return sref.gm_kr_inverse(means, logstds, logweights, gaussian_samples, rotation, uniforms, n_axes, n_steps, eps,
                              max_step_size)


def _kr_inverse_fake(means, logstds, logweights, gaussian_samples, rotation, uniforms=None, n_axes=None, n_steps=16,
                     eps=1e-6, max_step_size=1.5):
    return _empty(means, V.kr_inverse_shape("gm_kr_inverse", means, logstds, logweights, gaussian_samples, rotation,
                                            uniforms, n_axes, n_steps, eps, max_step_size))


def _kr_forward_fallback(means, logstds, logweights, samples, rotation, n_axes=None, eps=1e-6):
    V.kr_forward_shape("gm_kr_forward", means, logstds, logweights, samples, rotation, n_axes, eps)
    return sref.gm_kr_forward(means, logstds, logweights, samples, rotation, n_axes, eps)


def _kr_forward_fake(means, logstds, logweights, samples, rotation, n_axes=None, eps=1e-6):
    return _empty(means, V.kr_forward_shape("gm_kr_forward", means, logstds, logweights, samples, rotation, n_axes,
                                            eps))


# ------------------------------------------------------------------------------------------------
# gm_sample (random numbers come in as tensors)


def _sample_fallback(means, logstds, logweights, uniforms, normals, gm_power=1.0, cov_sharpen=False):
    V.sample_shape("gm_sample", means, logstds, logweights, uniforms, normals, gm_power, cov_sharpen)
    return sref.gm_sample(means, logstds, logweights, uniforms, normals, gm_power, cov_sharpen)


def _sample_fake(means, logstds, logweights, uniforms, normals, gm_power=1.0, cov_sharpen=False):
    return _empty(means, V.sample_shape("gm_sample", means, logstds, logweights, uniforms, normals, gm_power,
                                        cov_sharpen))


# ------------------------------------------------------------------------------------------------
# Registration

_FALLBACKS = {
    "gm_logprob": _logprob_fallback,
    "gm_logprob_backward": _logprob_backward_fallback,
    "gm_to_mean": _to_mean_fallback,
    "gm_to_mean_backward": _to_mean_backward_fallback,
    "gm_to_iso_gaussian": _iso_fallback,
    "gm_mul_iso_gaussian": _mul_iso_fallback,
    "gm_posterior_mean": _posterior_fallback,
    "gm_posterior_mean_backward": _posterior_backward_fallback,
    "gm1d_inverse_cdf": _inverse_cdf_fallback,
    "gm1d_inverse_cdf_backward": _inverse_cdf_backward_fallback,
    "gm_kr_inverse": _kr_inverse_fallback,
    "gm_kr_forward": _kr_forward_fallback,
    "gm_sample": _sample_fallback,
}
_FAKES = {
    "gm_logprob": _logprob_fake,
    "gm_logprob_backward": _logprob_backward_fake,
    "gm_to_mean": _to_mean_fake,
    "gm_to_mean_backward": _to_mean_backward_fake,
    "gm_to_iso_gaussian": _iso_fake,
    "gm_mul_iso_gaussian": _mul_iso_fake,
    "gm_posterior_mean": _posterior_fake,
    "gm_posterior_mean_backward": _posterior_backward_fake,
    "gm1d_inverse_cdf": _inverse_cdf_fake,
    "gm1d_inverse_cdf_backward": _inverse_cdf_backward_fake,
    "gm_kr_inverse": _kr_inverse_fake,
    "gm_kr_forward": _kr_forward_fake,
    "gm_sample": _sample_fake,
}
_AUTOGRAD = {
    "gm_logprob": (_logprob_backward, _logprob_setup_context),
    "gm_to_mean": (_to_mean_backward, _to_mean_setup_context),
    "gm_to_iso_gaussian": (_iso_backward, _iso_setup_context),
    "gm_posterior_mean": (_posterior_backward, _posterior_setup_context),
    "gm1d_inverse_cdf": (_inverse_cdf_backward, _inverse_cdf_setup_context),
}

for _name, _fn in _FALLBACKS.items():
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")
for _name, _fn in _FAKES.items():
    torch.library.register_fake(_qualname(_name), _fn, lib=_lib)
for _name, (_backward, _setup) in _AUTOGRAD.items():
    torch.library.register_autograd(_qualname(_name), _backward, setup_context=_setup, lib=_lib)

assert set(_FALLBACKS) == set(SCHEMAS) == set(_FAKES), "every op needs a fallback and a fake"
assert set(_AUTOGRAD) == set(DIFFERENTIABLE)
