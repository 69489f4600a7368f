"""The GMFlow training objective on a GM-DiT (docs/training.md#the-imagenet-objective;
docs/training.md#the-gmflow-objective).

:class:`GMFlowDiffusion` holds the trainable networks under the upstream names (``denoising`` = the
GM-DiT, ``spectrum_net``) and its ``forward`` *is* the loss, so that DistributedDataParallel wraps one
module whose forward produces every gradient:

1. :func:`gmflow.flow.transition_loss` (fp32, autocast off): ``t_high`` from the logit-normal sampler,
   ``t_low = (1 - lambda) t_high``, the pair ``(x_low, x_high)`` (every draw from the caller's generator),
   the GM-DiT forward on ``(x_high, t_high, labels)`` (under bf16 autocast when enabled; its GM head is
   float32), the reverse-transition GM and the per-pixel GM NLL of ``x_low`` (``-log p / C``, LakonLab
   normalisation, weight 8.0 = the original 2.0) averaged per sample;
2. the spectral loss (gradient into the spectrum net only).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from gmflow.flow.losses import spectral_loss, transition_loss
from gmflow.flow.schedule import NUM_TIMESTEPS, TimestepSampler
from gmflow.models import GMDiT, SpectrumMLP

__all__ = ["GMFlowDiffusion", "LossOutput"]


def _finite(v: Tensor) -> Tensor:
    v = v.detach()
    return torch.where(torch.isfinite(v), v, torch.zeros((), dtype=v.dtype, device=v.device))


class LossOutput(NamedTuple):
    loss: Tensor  # total (scalar, with grad)
    loss_transition: Tensor  # scalar, detached
    loss_spectral: Tensor  # scalar, detached (0 without a spectrum net)
    per_sample: Tensor  # (B,) weighted transition NLL per sample, detached
    variance: Tensor  # (B,) predicted u-space mixture variance per sample (channel/pixel mean), detached
    t_high: Tensor  # (B,)


class GMFlowDiffusion(nn.Module):
    """``GMFlowDiffusion(denoising, spectrum_net=None, trans_ratio=0.5, ...)``; ``forward(x_0, labels,
    generator)`` -> :class:`LossOutput`."""

    def __init__(
        self,
        denoising: GMDiT,
        spectrum_net: SpectrumMLP | None = None,
        trans_ratio: float = 0.5,
        transition_loss_weight: float = 8.0,
        spectral_loss_weight: float = 4.0,
        timestep_sampler: TimestepSampler | None = None,
        amp_dtype: torch.dtype | None = None,
        num_timesteps: float = NUM_TIMESTEPS,
    ) -> None:
        super().__init__()
        self.denoising = denoising
        self.spectrum_net = spectrum_net
        self.trans_ratio = float(trans_ratio)
        self.transition_loss_weight = float(transition_loss_weight)
        self.spectral_loss_weight = float(spectral_loss_weight)
        self.timestep_sampler = timestep_sampler or TimestepSampler(logit_normal=True)
        self.amp_dtype = amp_dtype
        self.num_timesteps = float(num_timesteps)

    def forward(self, x_0: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> LossOutput:
        T = self.num_timesteps
        device_type = x_0.device.type
        amp = dict(dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None)

        def network(x_t: Tensor, t: Tensor):
            with torch.autocast(device_type, **amp):
                return self.denoising(x_t, t, labels)

        with torch.autocast(device_type, enabled=False):
            x_0 = x_0.float()
            out = transition_loss(network, x_0, self.trans_ratio, self.timestep_sampler, generator,
                                  scale=self.transition_loss_weight, eps=1e-4, num_timesteps=T)
            gm_u, x_high, t_high, per_sample = out.gm_u, out.x_high, out.t_high, out.per_sample
            loss_trans = out.loss
            loss = loss_trans
            if self.spectrum_net is not None:
                # the spectral target is a no-grad function of (gm_u, x_0, x_high); non-finite entries are zeroed
                # so that a bad step reaches the trainer's non-finite guard (via the transition loss) instead
                # of failing inside the KR rotation's eigendecomposition. A no-op for finite values.
                loss_spec = spectral_loss(gm_u.map(_finite), _finite(x_0), _finite(x_high), t_high, self.spectrum_net,
                                          self.spectral_loss_weight, num_timesteps=T)
                loss = loss + loss_spec
            else:
                loss_spec = loss_trans.new_zeros(())
            with torch.no_grad():
                w = gm_u.logweights.exp()
                mean = (w * gm_u.means).sum(dim=1, keepdim=True)
                var = (w * (gm_u.means - mean).square()).sum(dim=1).mean(dim=(1, 2, 3))
                var = var + (w * torch.exp(2 * gm_u.logstds)).sum(dim=1).flatten(1).mean(dim=1)
        return LossOutput(loss, loss_trans.detach(), loss_spec.detach(), per_sample.detach(), var, t_high)
