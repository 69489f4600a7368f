"""Training losses of GMFlow (docs/training.md#transition-loss, docs/training.md#gm-nll,
docs/training.md#spectral-loss).

- :func:`gm_nll_loss`: per-pixel GM negative log-likelihood ``-log p / C`` (the LakonLab
  normalisation, 2pi constant included), mean over pixels, times ``scale``, mean over the batch.
  It runs on :func:`gmflow.ops.gm_logprob` (native kernel forward and backward).
- :func:`transition_loss`: the GMFlow *transition* loss: draw ``t_high``, the pair
  ``(x_low, x_high)`` with ``t_low = (1 - trans_ratio) t_high``, and score the true ``x_low``
  under the reverse-transition GM of the network's u-GM (:func:`gmflow.ops.reverse_transition`).
  ``trans_ratio = 1`` is the plain x0-NLL.
- :func:`spectral_loss`: trains a spectrum network (log power spectrum of the KR-whitened
  velocity in the Hartley domain); every GM op there runs without gradient.

Every random draw takes a ``torch.Generator``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from gmflow import GMFlowInputError, ops
from gmflow.reference.common import acc_dtype
from gmflow.types import GaussianMixture, IsoGaussian

from .schedule import NUM_TIMESTEPS, TimestepSampler

__all__ = ["TransitionLossOutput", "gm_nll_loss", "gm_nll_per_sample", "spectral_loss", "transition_loss",
           "transition_pair"]


def _bcast(t: Tensor, ref: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` against ``ref``."""
    return t.reshape(*t.shape, *([1] * (ref.dim() - t.dim())))


def gm_nll_per_sample(gm: GaussianMixture, target: Tensor) -> Tensor:
    """``mean_{h,w} ( -log p_gm(target) / C )`` per sample, ``(B,)``, for ``target (B, C, H, W)``."""
    if target.dim() < 4:
        raise GMFlowInputError(f"target must have shape (B, C, H, W), got {tuple(target.shape)}")
    C = gm.means.shape[-3]
    if target.shape[-3] != C:
        raise GMFlowInputError(f"target has {target.shape[-3]} channels but the GM has C={C}")
    logp = ops.gm_logprob(gm, target.unsqueeze(-4)).squeeze(-3)  # (B, H, W)
    return (-logp / C).flatten(1).mean(dim=1)


def gm_nll_loss(gm: GaussianMixture, target: Tensor, scale: float = 1.0) -> Tensor:
    """``mean_b [ scale * mean_{h,w} ( -log p_gm(target) / C ) ]`` for ``target (B, C, H, W)``.

    Equals ``(L_G + C/2 log 2pi) / C`` of the original release's loss (which had no 2pi constant,
    no division by C and an inverse-std cap of 1e4); gradients are those of the original times
    ``scale / C``. Differentiable w.r.t. the GM.
    """
    return (scale * gm_nll_per_sample(gm, target)).mean()


def transition_pair(
    x_0: Tensor,
    trans_ratio: float = 0.9,
    timestep_sampler: TimestepSampler | None = None,
    generator: torch.Generator | None = None,
    eps: float = 1e-4,
    num_timesteps: float = NUM_TIMESTEPS,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draws ``(x_low, x_high, t_low, t_high)`` for the transition loss (docs/training.md#transition-loss).

    ``t_high = clamp(sampler(B), eps, T)``; ``t_low = max(min((1 - trans_ratio) t_high, t_high - eps), 0)``;
    ``x_low = alpha_low x_0 + sigma_low n_0``; ``x_high`` = forward transition of ``x_low`` with ``n_1``
    (so ``x_high`` is marginally ``alpha_high x_0 + sigma_high eps`` and ``x_low`` its true posterior partner).
    Draw order: times, then ``n_0``, then ``n_1`` (all from ``generator``).
    """
    if not 0 < trans_ratio <= 1:
        raise GMFlowInputError(f"trans_ratio must be in (0, 1], got {trans_ratio}")
    sampler = timestep_sampler or TimestepSampler(num_timesteps=num_timesteps)
    B = x_0.shape[0]
    work = acc_dtype(x_0.dtype)
    t_high = sampler.sample(B, generator=generator, device=x_0.device, dtype=work)
    t_high = t_high.clamp(eps, num_timesteps)
    t_low = torch.minimum(t_high * (1 - trans_ratio), t_high - eps).clamp_min(0)
    noise = torch.randn((2, *x_0.shape), generator=generator, device=x_0.device, dtype=work)
    x_0 = x_0.to(work)
    x_low = ops.sample_forward_diffusion(x_0, t_low, noise[0], num_timesteps=num_timesteps)[0]
    x_high = ops.sample_forward_transition(x_low, noise[1], t_low, t_high, num_timesteps=num_timesteps)
    return x_low, x_high, t_low, t_high


class TransitionLossOutput(NamedTuple):
    loss: Tensor
    gm_u: GaussianMixture  # the network's u-GM at (x_high, t_high)
    x_low: Tensor
    x_high: Tensor
    t_low: Tensor
    t_high: Tensor
    per_sample: Tensor  # (B,) scale * the NLL of each sample; loss = per_sample.mean()


def transition_loss(
    model: Callable[[Tensor, Tensor], GaussianMixture],
    x_0: Tensor,
    trans_ratio: float = 0.9,
    timestep_sampler: TimestepSampler | None = None,
    generator: torch.Generator | None = None,
    scale: float = 1.0,
    eps: float = 1e-4,
    num_timesteps: float = NUM_TIMESTEPS,
) -> TransitionLossOutput:
    """GMFlow transition loss (docs/training.md#transition-loss, docs/training.md#gm-nll) of ``model(x_t, t) -> u-GM``
    on data ``x_0 (B, C, H, W)``.

    ``loss = gm_nll_loss(reverse_transition(gm_u, x_high, t_low, t_high), x_low, scale)``. The GM math
    runs in fp32 (network outputs are cast), as upstream.
    """
    x_low, x_high, t_low, t_high = transition_pair(x_0, trans_ratio, timestep_sampler, generator, eps, num_timesteps)
    gm_u = model(x_high.to(x_0.dtype), t_high.to(x_0.dtype))
    gm_u = gm_u.map(lambda v: v.to(x_low.dtype))
    gm_low = ops.reverse_transition(gm_u, x_high, t_low, t_high, prediction_type="u", num_timesteps=num_timesteps)
    per_sample = scale * gm_nll_per_sample(gm_low, x_low)
    return TransitionLossOutput(per_sample.mean(), gm_u, x_low, x_high, t_low, t_high, per_sample)


def spectral_loss(
    gm_u: GaussianMixture,
    x_0: Tensor,
    x_t: Tensor,
    t: Tensor,
    spectrum_net: Callable[[IsoGaussian], Tensor],
    weight: float = 1.0,
    eps: float = 1e-6,
    num_timesteps: float = NUM_TIMESTEPS,
) -> Tensor:
    """Spectral loss (docs/training.md#spectral-loss): Gaussian NLL of the Hartley coefficients ``S`` of the KR-whitened
    true velocity under ``N(0, e^P)`` relative to ``N(0, 1)``, ``P = spectrum_net(x0-Gaussian)``.

    ``loss = 1/2 weight mean_{b,c,h,w}[ S^2 (e^{-P} - 1) + P ]`` (LakonLab scaling; the original's
    ``1/2 C weight`` is ``weight = C`` here). Only ``P`` carries gradient; its optimum is ``e^P = E[S^2]``.
    """
    with torch.no_grad():
        gm_u = gm_u.map(lambda v: v.detach().float())
        x_t, x_0 = x_t.float(), x_0.float()
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        t = _bcast(t, x_t) if t.dim() > 0 else t
        g_x0 = ops.u_to_x_0(ops.gm_to_iso_gaussian(gm_u), x_t, t, num_timesteps=num_timesteps)
        u = (x_t - x_0) * num_timesteps / t.clamp_min(eps)
        z = ops.gm_samples_to_gaussian_samples(gm_u, u.unsqueeze(-4), axis_aligned=True).squeeze(-4)
        spectrum = ops.hartley2(z)
    log_power = spectrum_net(g_x0).float()
    return 0.5 * weight * (spectrum.square() * (torch.exp(-log_power) - 1) + log_power).mean()
