"""Shared core of the reference: the dtype rules, layout checks and helpers every reference module
(and :mod:`gmflow.ops`) uses. Imports nothing from the rest of gmflow but the containers and the
input checks (:mod:`gmflow._validation`, below the containers)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow._validation import GMFlowInputError, acc_dtype, check_floating
from gmflow.types import GaussianMixture

__all__ = [
    "LOG_2PI",
    "acc_dtype",
    "categorical_from_uniforms",
    "check_channels",
    "check_gm",
    "check_shared_logstds",
    "gm_batch_shape",
    "gm_in_acc_dtype",
    "result_dtype",
    "sum_to_shape",
]

LOG_2PI = math.log(2 * math.pi)


def result_dtype(*tensors: Tensor) -> torch.dtype:
    """The type promotion of the tensors' dtypes (the dtype of a mixed-dtype call's result)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_gm(gm, name: str = "gm") -> None:
    """Raises a ValueError naming ``name`` if ``gm`` does not follow the iso-GM layout."""
    if not isinstance(gm, GaussianMixture):
        raise TypeError(f"{name} must be a GaussianMixture, got {type(gm).__name__}")
    means, logstds, logweights = gm
    for part, t in zip(("means", "logstds", "logweights"), gm):
        check_floating(f"{name}.{part}", t)
    if means.dim() < 4:
        raise GMFlowInputError(f"{name}.means must have shape (..., K, C, H, W), got {tuple(means.shape)}")
    K = means.shape[-4]
    if K < 1:
        raise GMFlowInputError(f"{name}.means (..., K, C, H, W) must have at least one component (K >= 1), "
                               f"got {tuple(means.shape)}")
    if logweights.dim() < 4 or logweights.shape[-4] != K or logweights.shape[-3] != 1:
        raise GMFlowInputError(
            f"{name}.logweights must have shape (..., K={K}, 1, H, W), got {tuple(logweights.shape)}")
    if logstds.dim() < 4 or logstds.shape[-4] not in (1, K) or logstds.shape[-3] != 1:
        raise GMFlowInputError(
            f"{name}.logstds must have shape (..., 1, 1, 1, 1) or (..., K={K}, 1, H, W), got {tuple(logstds.shape)}"
        )
    for part, t in (("logweights", logweights), ("logstds", logstds)):
        if any(a != b and 1 not in (a, b) for a, b in zip(t.shape[-2:], means.shape[-2:])):
            raise GMFlowInputError(
                f"{name}.{part} {tuple(t.shape)} must have the pixel dims (H, W) of {name}.means "
                f"{tuple(means.shape)} (or 1)")


def check_channels(x: Tensor, C: int, name: str) -> None:
    """``x (..., C, H, W)`` must be a float tensor with the GM's channel count at dim -3."""
    check_floating(name, x)
    if x.dim() < 3 or x.shape[-3] != C:
        raise ValueError(f"{name} must have shape (..., C={C}, H, W), got {tuple(x.shape)}")


def check_shared_logstds(gm: GaussianMixture, name: str = "gm") -> None:
    if gm.logstds.shape[-4:] != (1, 1, 1, 1):
        raise ValueError(
            f"{name}.logstds must be one shared std of shape (..., 1, 1, 1, 1) for this op, "
            f"got {tuple(gm.logstds.shape)}"
        )


def gm_in_acc_dtype(gm: GaussianMixture) -> tuple[GaussianMixture, torch.dtype]:
    """The GM cast to its accumulation dtype, and the dtype to cast results back to."""
    dtype = gm.means.dtype
    work = acc_dtype(*(t.dtype for t in gm))
    return gm.map(lambda t: t.to(work)), dtype


def gm_batch_shape(gm: GaussianMixture) -> torch.Size:
    return torch.broadcast_shapes(gm.means.shape[:-4], gm.logstds.shape[:-4], gm.logweights.shape[:-4])


def sum_to_shape(t: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Sums a broadcast gradient ``t`` back to ``shape`` (the shape it was broadcast from)."""
    shape = tuple(shape)
    if tuple(t.shape) == shape:
        return t
    lead = t.dim() - len(shape)
    dims = [d for d in range(t.dim()) if d < lead or (shape[d - lead] == 1 and t.shape[d] != 1)]
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t.reshape(shape)


def categorical_from_uniforms(logits: Tensor, uniforms: Tensor, dim: int) -> Tensor:
    """Index along ``dim`` of the categorical ``softmax(logits)`` drawn by inverting its CDF at ``uniforms``.

    With ``e_k = exp(logits_k - max)`` and ``cum_k = e_0 + ... + e_k``: the first ``k`` with
    ``cum_k > u * cum_{K-1}``; if rounding leaves none, the last ``k`` with a non-zero weight.
    ``uniforms`` has size 1 along ``dim``; the result too. The one Python copy of this draw
    (the native kernels have their own, checked against it).
    """
    e = torch.exp(logits - logits.amax(dim=dim, keepdim=True))
    cum = torch.cumsum(e, dim=dim)
    target = uniforms * cum.narrow(dim, cum.shape[dim] - 1, 1)
    idx = (cum <= target).sum(dim=dim, keepdim=True)
    K = logits.shape[dim]
    positions = torch.arange(K, device=logits.device).reshape(-1, *([1] * (logits.dim() - 1 - (dim % logits.dim()))))
    last_nonzero = torch.where(e > 0, positions, 0).amax(dim=dim, keepdim=True)
    return torch.minimum(idx, last_nonzero)
