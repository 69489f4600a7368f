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
}

#: Ops with an autograd formula, and the op computing their gradients (None: Python formula).
DIFFERENTIABLE: dict[str, str | None] = {
    "gm_logprob": "gm_logprob_backward",
    "gm_to_mean": "gm_to_mean_backward",
    "gm_to_iso_gaussian": None,
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


def _to_mean_shape(op, means, logweights):
    batch, (K, C, H, W) = V.pixel_op_batch(op, means, None, logweights)
    return batch + [C, H, W]


def _to_mean_fallback(means, logweights, power=1.0):
    _to_mean_shape("gm_to_mean", means, logweights)
    return ref.gm_to_mean(means, logweights, power).contiguous()


def _to_mean_fake(means, logweights, power=1.0):
    return _empty(means, _to_mean_shape("gm_to_mean", means, logweights))


def _to_mean_backward_checks(grad, means, logweights, mean, output_mask):
    op = "gm_to_mean_backward"
    out_shape = _to_mean_shape(op, means, logweights)
    V.check_output_mask(op, output_mask, 2)
    V.check_grad_like(op, ("grad", "mean"), (grad, mean), means, out_shape)


def _to_mean_backward_fallback(grad, means, logweights, mean, power, output_mask):
    _to_mean_backward_checks(grad, means, logweights, mean, output_mask)
    grads = ref.gm_to_mean_backward(grad, means, logweights, mean, power, output_mask)
    return tuple(g.contiguous() for g in grads)


def _to_mean_backward_fake(grad, means, logweights, mean, power, output_mask):
    _to_mean_backward_checks(grad, means, logweights, mean, output_mask)
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
# Registration

_FALLBACKS = {
    "gm_logprob": _logprob_fallback,
    "gm_logprob_backward": _logprob_backward_fallback,
    "gm_to_mean": _to_mean_fallback,
    "gm_to_mean_backward": _to_mean_backward_fallback,
    "gm_to_iso_gaussian": _iso_fallback,
}
_FAKES = {
    "gm_logprob": _logprob_fake,
    "gm_logprob_backward": _logprob_backward_fake,
    "gm_to_mean": _to_mean_fake,
    "gm_to_mean_backward": _to_mean_backward_fake,
    "gm_to_iso_gaussian": _iso_fake,
}
_AUTOGRAD = {
    "gm_logprob": (_logprob_backward, _logprob_setup_context),
    "gm_to_mean": (_to_mean_backward, _to_mean_setup_context),
    "gm_to_iso_gaussian": (_iso_backward, _iso_setup_context),
}

for _name, _fn in _FALLBACKS.items():
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")
for _name, _fn in _FAKES.items():
    torch.library.register_fake(_qualname(_name), _fn, lib=_lib)
for _name, (_backward, _setup) in _AUTOGRAD.items():
    torch.library.register_autograd(_qualname(_name), _backward, setup_context=_setup, lib=_lib)

assert set(_FALLBACKS) == set(SCHEMAS) == set(_FAKES), "every op needs a fallback and a fake"
assert set(_AUTOGRAD) == set(DIFFERENTIABLE)
