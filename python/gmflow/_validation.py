"""Argument checks of the native-op schemas, in Python.

They run in the fake (meta) kernels and the reference fallback, and mirror the
checks of the C++ binding (cpp/binding/checks.h, gm_ops.h) message for message,
so every backend rejects the same inputs and names the same argument.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MEANS_LAYOUT = "(..., K, C, H, W)"

#: Largest accepted ``n_steps`` of the Newton solvers (``gm1d_inverse_cdf``, ``gm_kr_inverse``): far
#: above any useful value (the iterates stop moving after a few dozen steps); it bounds one call's work.
MAX_N_STEPS = 10_000


class GMFlowInputError(ValueError, RuntimeError):
    """Invalid argument to a gmflow op.

    Subclasses both ``ValueError`` and ``RuntimeError``: the native kernels raise
    ``RuntimeError`` with the same message, so ``except RuntimeError`` catches bad
    input on every backend.
    """


def fail(op: str, message: str) -> None:
    raise GMFlowInputError(f"{op}(): {message}")


def _type_name(value) -> str:
    return "None" if value is None else type(value).__name__


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def check_floating(name: str, t) -> None:
    """For the typed wrappers (no op prefix): ``t`` is a float tensor; complex, integer and bool are refused
    (they would lose their imaginary part or give integer results)."""
    if not isinstance(t, Tensor) or t.dtype not in SUPPORTED_DTYPES:
        got = t.dtype if isinstance(t, Tensor) else _type_name(t)
        raise GMFlowInputError(f"{name} must be a floating tensor (float32, float64, float16 or bfloat16); got {got}")


def check_like(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if not isinstance(t, Tensor):
        fail(op, f"'{name}' must be a tensor; got {_type_name(t)}")
    if t.dtype not in SUPPORTED_DTYPES:
        fail(op, f"'{name}' must be a floating tensor (float32, float64, float16 or bfloat16); got {t.dtype}")
    if t.dtype != ref.dtype:
        fail(op, f"'{name}' has dtype {t.dtype} but '{ref_name}' has {ref.dtype}; all tensors must share one dtype")
    check_device(op, name, t, ref_name, ref)


def check_device(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """A tensor on another device must never route the call to another backend (e.g. meta: the fake kernel)."""
    if t.device != ref.device:
        fail(op, f"'{name}' is on {t.device} but '{ref_name}' is on {ref.device}; all tensors must be on one device")


# Scalar arguments: what each kind accepts, worded as in the error message.
FINITE = "a finite number"
FINITE_NONZERO = "a finite non-zero number"
FINITE_POSITIVE = "a finite number > 0"
POSITIVE = "a number > 0 (inf allowed)"


def check_scalar(op: str, name: str, value, kind: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(op, f"'{name}' must be {kind}; got {type(value).__name__}")
    value = float(value)
    finite = math.isfinite(value)
    ok = {
        FINITE: finite,
        FINITE_NONZERO: finite and value != 0,
        FINITE_POSITIVE: finite and value > 0,
        POSITIVE: value > 0,
    }[kind]
    if not ok:
        fail(op, f"'{name}' must be {kind}; got {value:g}")


def check_min_dim(op: str, name: str, t: Tensor, inner: int, layout: str) -> None:
    if t.dim() < inner:
        fail(op, f"'{name}' must have layout {layout} (at least {inner} dims); got shape {_shape(t)}")


def check_gm(op: str, means: Tensor, logstds: Tensor | None, logweights: Tensor) -> tuple[int, int, int, int]:
    """Checks a GM operand set; returns (K, C, H, W)."""
    if not isinstance(means, Tensor):
        fail(op, f"'means' must be a tensor; got {_type_name(means)}")
    check_min_dim(op, "means", means, 4, MEANS_LAYOUT)
    check_like(op, "means", means, "means", means)
    check_like(op, "logweights", logweights, "means", means)
    if logstds is not None:
        check_like(op, "logstds", logstds, "means", means)
    K, C, H, W = means.shape[-4:]
    if K < 1:
        fail(op, f"'means' {MEANS_LAYOUT} must have at least one component (K >= 1); got shape {_shape(means)}")
    dims = f"K={K}, C={C}, H={H}, W={W}"
    check_min_dim(op, "logweights", logweights, 4, "(..., K, 1, H, W)")
    if tuple(logweights.shape[-4:]) != (K, 1, H, W):
        fail(
            op,
            f"'logweights' must have layout (..., K, 1, H, W) with {dims} taken from 'means' "
            f"{_shape(means)}; got {_shape(logweights)}",
        )
    if logstds is not None:
        check_min_dim(op, "logstds", logstds, 4, "(..., 1, 1, 1, 1) or (..., K, 1, H, W)")
        k, c, h, w = logstds.shape[-4:]
        if k not in (1, K) or c != 1 or (h, w) not in ((1, 1), (H, W)):
            fail(
                op,
                "'logstds' must have layout (..., 1, 1, 1, 1) or (..., K, 1, H, W) (K, H and W may each be 1) "
                f"with {dims} taken from 'means' {_shape(means)}; got {_shape(logstds)}",
            )
    return K, C, H, W


def broadcast_batch(op: str, operands: Sequence[tuple[str, Tensor, int]]) -> list[int]:
    """Broadcast of the operands' batch dims (all but the trailing ``inner`` dims)."""
    out: list[int] = []
    for name, t, inner in operands:
        batch = list(t.shape[: t.dim() - inner])
        if len(batch) > len(out):
            out = [1] * (len(batch) - len(out)) + out
        shift = len(out) - len(batch)
        for i, b in enumerate(batch):
            d = out[shift + i]
            if b == d or b == 1:
                continue
            if d != 1:
                names = "".join(f" '{n}' {_shape(x)}" for n, x, _ in operands)
                fail(
                    op,
                    f"the batch dims of '{name}' (all dims before the last {inner}) do not broadcast "
                    f"with the other operands:{names}",
                )
            out[shift + i] = b
    return out


def check_samples(op: str, samples: Tensor, means: Tensor, C: int, H: int, W: int) -> None:
    check_like(op, "samples", samples, "means", means)
    check_min_dim(op, "samples", samples, 4, "(..., N, C, H, W)")
    if tuple(samples.shape[-3:]) != (C, H, W):
        fail(
            op,
            f"'samples' must have layout (..., N, C, H, W) with C={C}, H={H}, W={W} taken from 'means' "
            f"{_shape(means)}; got {_shape(samples)}",
        )


def check_grad_like(op: str, names: Sequence[str], tensors: Sequence[Tensor], means: Tensor, shape: list[int]) -> None:
    for name, t in zip(names, tensors):
        check_like(op, name, t, "means", means)
    if any(list(t.shape) != list(shape) for t in tensors):
        got = " and ".join(str(_shape(t)) for t in tensors)
        quoted = " and ".join(f"'{n}'" for n in names)
        fail(op, f"{quoted} must have the output shape {list(shape)}; got {got}")


# ------------------------------------------------------------------------------------------------
# Per-op checks returning the output shape(s)


def logprob_shapes(op: str, means: Tensor, logstds: Tensor, logweights: Tensor, samples: Tensor) -> list[int]:
    K, C, H, W = check_gm(op, means, logstds, logweights)
    check_samples(op, samples, means, C, H, W)
    batch = broadcast_batch(
        op, [("means", means, 4), ("logstds", logstds, 4), ("logweights", logweights, 4), ("samples", samples, 4)]
    )
    return batch + [samples.shape[-4], H, W]


def pixel_op_batch(op: str, means: Tensor, logstds: Tensor | None, logweights: Tensor) -> tuple[list[int], tuple]:
    dims = check_gm(op, means, logstds, logweights)
    operands = [("means", means, 4), ("logweights", logweights, 4)]
    if logstds is not None:
        operands.insert(1, ("logstds", logstds, 4))
    return broadcast_batch(op, operands), dims


def check_output_mask(op: str, output_mask: Sequence[bool], n: int) -> None:
    if len(output_mask) != n:
        fail(op, f"'output_mask' must have {n} entries; got {len(output_mask)}")


# ------------------------------------------------------------------------------------------------
# Sampling-path ops (gm_mul_iso_gaussian, gm_posterior_mean, gm1d_inverse_cdf, KR transport, gm_sample)

GM1D_MEANS_LAYOUT = "(..., K, H, W)"


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The accumulation dtype: float64 if any input is float64, else float32 (16-bit inputs are
    computed in float32 and cast back). The one place this rule lives, for the checks, the reference
    (:mod:`gmflow.reference.common` re-exports it), the wrappers and the op schemas (sigmas, rotations
    and random numbers come in this dtype)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_acc_like(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """``t`` must be in the accumulation dtype of ``ref`` (float64 for float64, else float32)."""
    if not isinstance(t, Tensor):
        fail(op, f"'{name}' must be a tensor; got {_type_name(t)}")
    want = acc_dtype(ref.dtype)
    if t.dtype != want:
        fail(op, f"'{name}' must have dtype {want} (the accumulation dtype of '{ref_name}' {ref.dtype}); got {t.dtype}")
    check_device(op, name, t, ref_name, ref)


def check_shared_logstds(op: str, logstds: Tensor) -> None:
    if tuple(logstds.shape[-4:]) != (1, 1, 1, 1):
        fail(
            op,
            "'logstds' must have layout (..., 1, 1, 1, 1) (one std shared by all components and pixels) "
            f"for this op; got {_shape(logstds)}",
        )


def check_tail(op: str, name: str, t: Tensor, means: Tensor, layout: str, want: tuple, dims: str) -> None:
    """``t`` has the trailing dims ``want`` (layout ``layout``; ``dims`` names where they come from)."""
    check_min_dim(op, name, t, len(want), layout)
    if tuple(t.shape[-len(want):]) != tuple(want):
        fail(op, f"'{name}' must have layout {layout} with {dims} taken from 'means' {_shape(means)}; got {_shape(t)}")


def mul_iso_gaussian_shapes(op, means, logstds, logweights, gaussian_mean, gaussian_var):
    """Output shapes (means, logstds, logweights) of gm_mul_iso_gaussian."""
    K, C, H, W = check_gm(op, means, logstds, logweights)
    check_like(op, "gaussian_mean", gaussian_mean, "means", means)
    check_tail(op, "gaussian_mean", gaussian_mean, means, "(..., C, H, W)", (C, H, W), f"C={C}, H={H}, W={W}")
    check_like(op, "gaussian_var", gaussian_var, "means", means)
    check_min_dim(op, "gaussian_var", gaussian_var, 3, "(..., 1, H, W) or (..., 1, 1, 1)")
    if tuple(gaussian_var.shape[-3:]) not in ((1, H, W), (1, 1, 1)):
        fail(op, f"'gaussian_var' must have layout (..., 1, H, W) or (..., 1, 1, 1) with H={H}, W={W} taken from "
                 f"'means' {_shape(means)}; got {_shape(gaussian_var)}")
    batch = broadcast_batch(op, [("means", means, 4), ("logstds", logstds, 4), ("logweights", logweights, 4),
                                 ("gaussian_mean", gaussian_mean, 3), ("gaussian_var", gaussian_var, 3)])
    per_pixel = tuple(logstds.shape[-2:]) != (1, 1) or tuple(gaussian_var.shape[-2:]) != (1, 1)
    ls_shape = batch + [logstds.shape[-4], 1] + ([H, W] if per_pixel else [1, 1])
    return batch + [K, C, H, W], ls_shape, batch + [K, 1, H, W]


def posterior_mean_shape(op, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt):
    """Output shape of gm_posterior_mean (its 'eps' is checked by the caller, after the tensors)."""
    K, C, H, W = check_gm(op, means, logstds, logweights)
    for name, x in (("x_src", x_src), ("x_tgt", x_tgt)):
        check_like(op, name, x, "means", means)
        check_tail(op, name, x, means, "(..., C, H, W)", (C, H, W), f"C={C}, H={H}, W={W}")
    for name, s in (("sigma_src", sigma_src), ("sigma_tgt", sigma_tgt)):
        check_acc_like(op, name, s, "means", means)
    batch = broadcast_batch(op, [("means", means, 4), ("logstds", logstds, 4), ("logweights", logweights, 4),
                                 ("x_src", x_src, 3), ("x_tgt", x_tgt, 3),
                                 ("sigma_src", sigma_src, sigma_inner(sigma_src)),
                                 ("sigma_tgt", sigma_tgt, sigma_inner(sigma_tgt))])
    return batch + [C, H, W]


def check_gm1d(op: str, means: Tensor, logstds: Tensor, logweights: Tensor) -> tuple[int, int, int]:
    """Checks a 1-D GM operand set; returns (K, H, W)."""
    if not isinstance(means, Tensor):
        fail(op, f"'means' must be a tensor; got {_type_name(means)}")
    check_min_dim(op, "means", means, 3, GM1D_MEANS_LAYOUT)
    check_like(op, "means", means, "means", means)
    check_like(op, "logweights", logweights, "means", means)
    check_like(op, "logstds", logstds, "means", means)
    K, H, W = means.shape[-3:]
    if K < 1:
        fail(op, f"'means' {GM1D_MEANS_LAYOUT} must have at least one component (K >= 1); got shape {_shape(means)}")
    check_min_dim(op, "logweights", logweights, 3, "(..., K, H, W)")
    if tuple(logweights.shape[-3:]) != (K, H, W):
        fail(op, f"'logweights' must have layout (..., K, H, W) with K={K}, H={H}, W={W} taken from 'means' "
                 f"{_shape(means)}; got {_shape(logweights)}")
    check_min_dim(op, "logstds", logstds, 3, "(..., 1, 1, 1)")
    if tuple(logstds.shape[-3:]) != (1, 1, 1):
        fail(op, f"'logstds' must have layout (..., 1, 1, 1) (one std per 1-D mixture); got {_shape(logstds)}")
    return K, H, W


def inverse_cdf_shape(op, means, logstds, logweights, scaled_cdfs, gaussian_samples=None):
    K, H, W = check_gm1d(op, means, logstds, logweights)
    check_like(op, "scaled_cdfs", scaled_cdfs, "means", means)
    check_min_dim(op, "scaled_cdfs", scaled_cdfs, 3, "(..., N, H, W)")
    N = scaled_cdfs.shape[-3]
    check_tail(op, "scaled_cdfs", scaled_cdfs, means, "(..., N, H, W)", (N, H, W), f"H={H}, W={W}")
    operands = [("means", means, 3), ("logstds", logstds, 3), ("logweights", logweights, 3),
                ("scaled_cdfs", scaled_cdfs, 3)]
    if gaussian_samples is not None:
        check_like(op, "gaussian_samples", gaussian_samples, "means", means)
        check_min_dim(op, "gaussian_samples", gaussian_samples, 3, "(..., N, H, W)")
        if tuple(gaussian_samples.shape[-3:]) != (N, H, W):
            fail(op, f"'gaussian_samples' must have layout (..., N, H, W) with N={N} taken from 'scaled_cdfs' "
                     f"{_shape(scaled_cdfs)} and H={H}, W={W}; got {_shape(gaussian_samples)}")
        operands.append(("gaussian_samples", gaussian_samples, 3))
    return broadcast_batch(op, operands) + [N, H, W]


def check_steps(op: str, n_steps) -> int:
    """``n_steps`` as an int in ``[0, MAX_N_STEPS]`` (a float such as 2.5 is rejected, not truncated)."""
    try:
        steps = None if isinstance(n_steps, bool) else operator.index(n_steps)
    except TypeError:
        steps = None
    if steps is None or not 0 <= steps <= MAX_N_STEPS:
        fail(op, f"'n_steps' must be an integer in [0, {MAX_N_STEPS}]; got {n_steps!r}")
    return steps


def check_newton_scalars(op: str, n_steps: int, eps: float, max_step_size: float) -> None:
    """The scalars of the Newton solvers (``gm1d_inverse_cdf``, ``gm_kr_inverse``)."""
    check_steps(op, n_steps)
    check_scalar(op, "eps", eps, FINITE_POSITIVE)
    check_scalar(op, "max_step_size", max_step_size, POSITIVE)


def sigma_inner(sigma: Tensor) -> int:
    """A sigma is batch-only ``(...)``, or ``(..., 1, 1, 1)`` broadcasting against x ``(..., C, H, W)`` as
    upstream GMFlow passes it: the trailing ``(1, 1, 1)`` then are not batch dims."""
    return 3 if sigma.dim() >= 3 and tuple(sigma.shape[-3:]) == (1, 1, 1) else 0


def batch_only_sigma(sigma: Tensor) -> Tensor:
    """``sigma`` without its trailing ``(1, 1, 1)`` (see :func:`sigma_inner`)."""
    return sigma.reshape(sigma.shape[: sigma.dim() - sigma_inner(sigma)])


def check_rotation(op: str, rotation: Tensor, means: Tensor, C: int, H: int, W: int) -> None:
    layout = "(..., 1|H, 1|W, C, C)"
    check_acc_like(op, "rotation", rotation, "means", means)
    check_min_dim(op, "rotation", rotation, 4, layout)
    h, w, c1, c2 = rotation.shape[-4:]
    if (c1, c2) != (C, C) or (h, w) not in ((1, 1), (H, W)):
        fail(op, f"'rotation' must have layout {layout} with C={C}, H={H}, W={W} taken from 'means' "
                 f"{_shape(means)} (one rotation per batch element or per pixel); got {_shape(rotation)}")


def resolve_n_axes(op: str, n_axes: int | None, C: int) -> int:
    if n_axes is None:
        n_axes = C  # all axes; still at least one (C = 0 is refused as the native kernels do)
    if not 1 <= n_axes <= C:
        fail(op, f"'n_axes' must be in [1, C={C}]; got {n_axes}")
    return n_axes


def kr_shapes(op, means, logstds, logweights, samples, samples_name, rotation, n_axes):
    """Checks of gm_kr_inverse / gm_kr_forward; returns (batch, N, C, H, W, n_axes)."""
    K, C, H, W = check_gm(op, means, logstds, logweights)
    check_shared_logstds(op, logstds)
    check_like(op, samples_name, samples, "means", means)
    check_min_dim(op, samples_name, samples, 4, "(..., N, C, H, W)")
    N = samples.shape[-4]
    check_tail(op, samples_name, samples, means, "(..., N, C, H, W)", (N, C, H, W), f"C={C}, H={H}, W={W}")
    check_rotation(op, rotation, means, C, H, W)
    A = resolve_n_axes(op, n_axes, C)
    batch = broadcast_batch(op, [("means", means, 4), ("logstds", logstds, 4), ("logweights", logweights, 4),
                                 (samples_name, samples, 4), ("rotation", rotation, 4)])
    return batch, N, C, H, W, A


def kr_inverse_shape(op, means, logstds, logweights, gaussian_samples, rotation, uniforms, n_axes, n_steps,
                     eps=1e-6, max_step_size=1.5):
    batch, N, C, H, W, A = kr_shapes(op, means, logstds, logweights, gaussian_samples, "gaussian_samples",
                                     rotation, n_axes)
    if uniforms is not None:  # checked also when unused (n_axes == C)
        check_acc_like(op, "uniforms", uniforms, "means", means)
        check_min_dim(op, "uniforms", uniforms, 4, "(..., N, 1, H, W)")
        if tuple(uniforms.shape[-4:]) != (N, 1, H, W):
            fail(op, f"'uniforms' must have layout (..., N, 1, H, W) with N={N} taken from 'gaussian_samples' and "
                     f"H={H}, W={W}; got {_shape(uniforms)}")
    if A < C:
        if uniforms is None:
            fail(op, f"'uniforms' (..., N, 1, H, W) are required when n_axes={A} < C={C} (they choose the "
                     "component of the remaining axes)")
        batch = broadcast_batch(op, [("means", means, 4), ("logstds", logstds, 4), ("logweights", logweights, 4),
                                     ("gaussian_samples", gaussian_samples, 4), ("rotation", rotation, 4),
                                     ("uniforms", uniforms, 4)])
    check_newton_scalars(op, n_steps, eps, max_step_size)
    return batch + [N, C, H, W]


def kr_forward_shape(op, means, logstds, logweights, samples, rotation, n_axes, eps=1e-6):
    batch, N, C, H, W, A = kr_shapes(op, means, logstds, logweights, samples, "samples", rotation, n_axes)
    check_scalar(op, "eps", eps, FINITE_POSITIVE)
    return batch + [N, A, H, W]


def sample_shape(op, means, logstds, logweights, uniforms, normals, gm_power=1.0, cov_sharpen=False):
    K, C, H, W = check_gm(op, means, logstds, logweights)
    check_acc_like(op, "uniforms", uniforms, "means", means)
    check_min_dim(op, "uniforms", uniforms, 4, "(..., N, 1, H, W)")
    N = uniforms.shape[-4]
    check_tail(op, "uniforms", uniforms, means, "(..., N, 1, H, W)", (N, 1, H, W), f"H={H}, W={W}")
    check_acc_like(op, "normals", normals, "means", means)
    check_min_dim(op, "normals", normals, 4, "(..., N, C, H, W)")
    if tuple(normals.shape[-4:]) != (N, C, H, W):
        fail(op, f"'normals' must have layout (..., N, C, H, W) with N={N} taken from 'uniforms' and C={C}, H={H}, "
                 f"W={W} taken from 'means' {_shape(means)}; got {_shape(normals)}")
    batch = broadcast_batch(op, [("means", means, 4), ("logstds", logstds, 4), ("logweights", logweights, 4),
                                 ("uniforms", uniforms, 4), ("normals", normals, 4)])
    check_scalar(op, "gm_power", gm_power, FINITE_POSITIVE if cov_sharpen else FINITE)
    return batch + [N, C, H, W]


def check_backward_args(op: str, output_mask: Sequence[bool], n_inputs: int, names: Sequence[str],
                        tensors: Sequence[Tensor], means: Tensor, out_shape: list[int]) -> None:
    """The extra arguments of a ``*_backward`` op: an output mask per differentiable input, and the
    incoming gradient and the saved forward output (``names``/``tensors``) in the forward's output shape."""
    check_output_mask(op, output_mask, n_inputs)
    check_grad_like(op, names, tensors, means, out_shape)
