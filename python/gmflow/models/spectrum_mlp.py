"""SpectrumMLP: the power-spectrum predictor of spectral sampling (docs/models.md#spectrummlp).

From an isotropic x0-space Gaussian ``{mean (B, C, H, W), var (B, 1, H, W) or (B, 1, 1, 1)}`` it takes two
scalars per sample, the mean of ``var`` and the channel-averaged (unbiased) spatial variance of
``mean``, and maps them with a small MLP (``2 -> 64 -> 8 -> C h0 w0``, SiLU between layers) to a log
power spectrum ``P (B, C, H, W)`` in FFT layout (zero frequency at ``[0, 0]``), normalised per channel
so that the mean of ``exp(P)`` over the frequencies is 1. Grids smaller than the base grid keep the
four frequency corners. The last layer starts at zero, i.e. a flat (white) spectrum.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from gmflow import GMFlowInputError
from gmflow.types import IsoGaussian, check_iso_gaussian

__all__ = ["SpectrumMLP", "spectrum_stats"]


def spectrum_stats(gaussian: IsoGaussian) -> Tensor:
    """``(..., 2)``: mean of ``var`` over its (1, H, W) entries, and the per-channel unbiased variance of
    ``mean`` over (H, W) averaged over channels."""
    mean, var = gaussian
    s1 = var.flatten(-3).mean(-1)
    s2 = mean.flatten(-2).var(dim=-1, correction=1).mean(-1)
    return torch.stack([s1, s2], dim=-1)


class SpectrumMLP(nn.Module):
    """``SpectrumMLP(base_size=(4, 32, 32), layers=(64, 8))``; 37,576 parameters at that size.

    ``forward(gaussian: IsoGaussian) -> Tensor`` log power spectrum ``(..., C, H, W)`` in the input dtype;
    a callable ``IsoGaussian -> Tensor`` as :func:`gmflow.flow.gmflow_sample` and
    :func:`gmflow.flow.spectral_loss` expect. ``H <= h0`` and ``W <= w0``; ``C`` must equal the base one.
    """

    def __init__(self, base_size: Sequence[int] = (4, 32, 32), layers: Sequence[int] = (64, 8)) -> None:
        super().__init__()
        base_size = tuple(int(v) for v in base_size)
        layers = tuple(int(v) for v in layers)
        if len(base_size) != 3 or min(base_size) < 1:
            raise GMFlowInputError(f"base_size must be (C, H, W) of positive ints, got {base_size}")
        if any(v < 1 for v in layers):
            raise GMFlowInputError(f"layers must be positive widths, got {layers}")
        self.base_size = base_size
        self.layers = layers
        dims = [2, *layers, math.prod(base_size)]
        modules: list[nn.Module] = []
        for i in range(len(dims) - 1):
            if i:
                modules.append(nn.SiLU())
            modules.append(nn.Linear(dims[i], dims[i + 1]))
        self.mlp = nn.Sequential(*modules)
        self.initialize_weights()

    @property
    def config(self) -> dict[str, Any]:
        """The keys of the checkpoint's ``spectrum_net/config.json``."""
        return {"base_size": list(self.base_size), "layers": list(self.layers)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SpectrumMLP":
        return cls(base_size=config.get("base_size", (4, 32, 32)), layers=config.get("layers", (64, 8)))

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Xavier-uniform weights, zero biases, last layer all zero (flat spectrum)."""
        linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        for m in linears:
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(linears[-1].weight)

    def reset_buffers(self) -> None:
        """No buffers (present for the checkpoint loader's uniform interface)."""

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp[0].weight.dtype

    def forward(self, gaussian: IsoGaussian) -> Tensor:
        check_iso_gaussian("SpectrumMLP.forward()", "gaussian", gaussian)
        mean, var = gaussian
        C0, h0, w0 = self.base_size
        C, H, W = mean.shape[-3:]
        if C != C0 or H > h0 or W > w0:
            raise GMFlowInputError(f"SpectrumMLP with base_size {self.base_size} needs C = {C0}, H <= {h0}, "
                                   f"W <= {w0}; got mean of shape {tuple(mean.shape)}")
        lead = mean.shape[:-3]
        if H * W == 1:  # one frequency: its log power is 0 whatever the network says
            return torch.zeros_like(mean)
        stats = spectrum_stats(IsoGaussian(mean, var)).to(self.dtype)
        logits = self.mlp(stats).reshape(*lead, C0, h0, w0)
        if H < h0:
            logits = torch.cat([logits[..., : (H + 1) // 2, :], logits[..., h0 - H // 2:, :]], dim=-2)
        if W < w0:
            logits = torch.cat([logits[..., : (W + 1) // 2], logits[..., w0 - W // 2:]], dim=-1)
        flat = logits.flatten(-2).float()
        log_power = torch.log_softmax(flat, dim=-1) + math.log(H * W)
        return log_power.reshape(*lead, C, H, W).to(mean.dtype)
