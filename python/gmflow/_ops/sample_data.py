"""Small deterministic GMs the op modules build their ``sample_inputs`` from (opcheck, gradcheck,
fallback and benchmark runs parametrize over them)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from gmflow.reference.common import acc_dtype
from gmflow.types import GaussianMixture

__all__: list[str] = []  # no gmflow.ops wrappers here

# (batch, K, C, H, W, N, dtype, per-component-and-pixel logstds)
_CASES = (
    ((2,), 3, 2, 3, 4, 2, torch.float64, False),
    ((2,), 2, 3, 2, 3, 1, torch.float64, True),
    ((3,), 4, 2, 1, 1, 1, torch.float32, False),
)


def gm_tensors(device: str, shared_std_only: bool = False) -> Iterator[tuple[GaussianMixture, Tensor]]:
    """``(gm, samples (batch, N, C, H, W))`` per case; the GM's logweights are normalised."""
    for i, (batch, K, C, H, W, N, dtype, per_component) in enumerate(_CASES):
        if shared_std_only and per_component:
            continue
        g = torch.Generator().manual_seed(1234 + i)
        means = torch.randn(*batch, K, C, H, W, generator=g, dtype=torch.float64)
        ls_shape = (*batch, K, 1, H, W) if per_component else (*batch, 1, 1, 1, 1)
        logstds = -0.5 + 0.3 * torch.rand(ls_shape, generator=g, dtype=torch.float64)
        logweights = torch.log_softmax(torch.randn(*batch, K, 1, H, W, generator=g, dtype=torch.float64), dim=-4)
        samples = torch.randn(*batch, N, C, H, W, generator=g, dtype=torch.float64)
        gm = GaussianMixture(*(t.to(dtype=dtype, device=device) for t in (means, logstds, logweights)))
        yield gm, samples.to(dtype=dtype, device=device)


def acc_full(shape, value: float, like: Tensor) -> Tensor:
    """A constant tensor in the accumulation dtype of ``like`` (sigmas, uniforms)."""
    return torch.full(shape, value, dtype=acc_dtype(like.dtype), device=like.device)
