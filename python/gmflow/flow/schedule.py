"""Noise schedule and timestep helpers of rectified flow (docs/sampling.md#flow-math, docs/training.md#timestep-sampler,
docs/sampling.md#time-grid).

``t`` is a continuous time in T-units (``T = num_timesteps = 1000`` by default), the noise
level is ``sigma = t / T`` and the signal level ``alpha = 1 - sigma``; ``x_t = alpha x_0 + sigma eps``
and the velocity is ``u = eps - x_0``.

A *shift* warps a raw time ``r in [0, 1]`` to ``sigma = shift r / (1 + (shift - 1) r)`` (``shift > 1``
spends more time at high noise); :func:`unwarp_shift` inverts it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow import GMFlowInputError


__all__ = [
    "NUM_TIMESTEPS",
    "TimestepSampler",
    "flow_sigmas",
    "unwarp_shift",
    "warp_shift",
]

NUM_TIMESTEPS = 1000.0


def _check_shift(shift: float) -> None:
    if not shift > 0 or not math.isfinite(shift):
        raise GMFlowInputError(f"shift must be a positive finite number, got {shift}")


def warp_shift(raw, shift: float = 1.0):
    """``sigma = shift r / (1 + (shift - 1) r)``: maps 0 -> 0 and 1 -> 1 for every shift > 0."""
    _check_shift(shift)
    return shift * raw / (1 + (shift - 1) * raw)


def unwarp_shift(sigma, shift: float = 1.0):
    """Inverse of :func:`warp_shift`: ``r = sigma / (shift + (1 - shift) sigma)``."""
    _check_shift(shift)
    return sigma / (shift + (1 - shift) * sigma)


def flow_sigmas(
    num_steps: int,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The ``num_steps + 1`` noise levels of a sampling schedule (docs/sampling.md#time-grid), descending.

    Raw times ``r_i = 1 - i / M`` (``i = 0 .. M-1``) are warped by :func:`warp_shift`, and a final
    0 is appended: ``sigmas[0] = 1`` for every shift, ``sigmas[-1] = 0``, strictly decreasing.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise GMFlowInputError(f"num_steps must be a positive integer, got {num_steps!r}")
    raw = 1 - torch.arange(num_steps, dtype=torch.float64) / num_steps
    sigmas = warp_shift(raw, shift)
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=dtype)


class TimestepSampler:
    """Training-time sampler of ``t_high`` in T-units (docs/training.md#timestep-sampler,
    ``ContinuousTimeStepSampler``).

    Raw time ``r = 1 - U[0, 1)`` in (0, 1] (uniform) or ``sigmoid(mean + std n)`` (logit-normal),
    warped by ``shift``; returns ``t = sigma T``. Every draw comes from the ``generator`` passed to
    :meth:`sample`.
    """

    def __init__(
        self,
        shift: float = 1.0,
        logit_normal: bool = False,
        logit_normal_mean: float = 0.0,
        logit_normal_std: float = 1.0,
        num_timesteps: float = NUM_TIMESTEPS,
    ) -> None:
        _check_shift(shift)
        if logit_normal and not logit_normal_std > 0:
            raise GMFlowInputError(f"logit_normal_std must be positive, got {logit_normal_std}")
        self.shift = float(shift)
        self.logit_normal = bool(logit_normal)
        self.logit_normal_mean = float(logit_normal_mean)
        self.logit_normal_std = float(logit_normal_std)
        self.num_timesteps = float(num_timesteps)

    def sample_raw(
        self, batch_size: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32
    ) -> Tensor:
        """Un-warped times ``r (batch_size,)`` in (0, 1]."""
        if self.logit_normal:
            n = torch.randn(batch_size, generator=generator, device=device, dtype=dtype)
            return torch.sigmoid(self.logit_normal_mean + self.logit_normal_std * n)
        return 1 - torch.rand(batch_size, generator=generator, device=device, dtype=dtype)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32
    ) -> Tensor:
        """Times ``t = warp_shift(r) T`` of shape ``(batch_size,)``."""
        return warp_shift(self.sample_raw(batch_size, generator, device, dtype), self.shift) * self.num_timesteps

    def __repr__(self) -> str:
        kind = (
            f"logit_normal(mean={self.logit_normal_mean}, std={self.logit_normal_std})" if self.logit_normal else "uniform"
        )
        return f"TimestepSampler({kind}, shift={self.shift}, num_timesteps={self.num_timesteps})"
