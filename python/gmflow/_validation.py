"""Argument checks of the native-op schemas, in Python.

They run in the fake (meta) kernels and the reference fallback, and mirror the
checks of the C++ binding (cpp/binding/checks.h, gm_ops.h) message for message,
so every backend rejects the same inputs and names the same argument.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MEANS_LAYOUT = "(..., K, C, H, W)"


class GMFlowInputError(ValueError, RuntimeError):
    """Invalid argument to a gmflow op.

    Subclasses both ``ValueError`` and ``RuntimeError``: the native kernels raise
    ``RuntimeError`` with the same message, so ``except RuntimeError`` catches bad
    input on every backend.
    """


def fail(op: str, message: str) -> None:
    raise GMFlowInputError(f"{op}(): {message}")


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def check_like(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if not isinstance(t, Tensor):
        fail(op, f"'{name}' must be a tensor; got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        fail(op, f"'{name}' must be a floating tensor (float32, float64, float16 or bfloat16); got {t.dtype}")
    if t.dtype != ref.dtype:
        fail(op, f"'{name}' has dtype {t.dtype} but '{ref_name}' has {ref.dtype}; all tensors must share one dtype")
    if t.device != ref.device:
        fail(op, f"'{name}' is on {t.device} but '{ref_name}' is on {ref.device}; all tensors must be on one device")


def check_min_dim(op: str, name: str, t: Tensor, inner: int, layout: str) -> None:
    if t.dim() < inner:
        fail(op, f"'{name}' must have layout {layout} (at least {inner} dims); got shape {_shape(t)}")


def check_gm(op: str, means: Tensor, logstds: Tensor | None, logweights: Tensor) -> tuple[int, int, int, int]:
    """Checks a GM operand set; returns (K, C, H, W)."""
    if not isinstance(means, Tensor):
        fail(op, f"'means' must be a tensor; got {type(means).__name__}")
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
