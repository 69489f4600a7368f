"""The toy GM MLP denoiser (docs/models.md#toy-mlp, ``GMFlowMLP2DDenoiser``).

Input ``x_t (B, 2, 1, 1)`` and ``t (B,)`` in T-units; output the u-GM ``GaussianMixture(means
(B, K, 2, 1, 1), logstds (B, 1, 1, 1, 1), logweights (B, K, 1, 1, 1))``. Features: a 256-d sinusoidal
time embedding (flip to [cos, sin], frequency shift 1) and a 256-d sin/cos position code of the two
coordinates (64 log-spaced periods from 5e-3 to 50 per coordinate), concatenated, then
``num_layers x (Linear -> SiLU)`` of width ``hidden_dim`` and three linear heads. The paper's
model is ``hidden_dim=512, num_layers=5`` (1,412,289 parameters at K = 64); ``K = 1`` is a plain
flow-matching model with a learned isotropic variance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gmflow.types import GaussianMixture

__all__ = ["GMFlowMLP2DDenoiser", "position_embedding", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` with ``f_i = max_period^(-i / (dim/2 - 1))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float().reshape(-1, 1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def position_embedding(xy: Tensor, dim: int = 256, min_period: float = 5e-3, max_period: float = 50.0) -> Tensor:
    """Per coordinate ``[sin(2 pi x / P_j), cos(2 pi x / P_j)]`` over ``dim/4`` log-spaced periods; the
    coordinates' codes concatenated: ``(B, dim)`` for ``xy (B, 2)``."""
    n = dim // (2 * xy.shape[-1])
    periods = torch.exp(torch.linspace(math.log(min_period), math.log(max_period), n, device=xy.device))
    args = 2 * math.pi * xy.float().unsqueeze(-1) / periods  # (B, 2, n)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(1)


class GMFlowMLP2DDenoiser(nn.Module):
    """GM MLP denoiser for 2-D points: ``forward(x_t (B, 2, 1, 1), t (B,)) -> u-GM``.

    ``constant_logstd`` (a float) replaces the learned logstd head.
    """

    def __init__(
        self,
        num_gaussians: int = 64,
        hidden_dim: int = 512,
        num_layers: int = 5,
        embed_dim: int = 256,
        constant_logstd: float | None = None,
    ) -> None:
        super().__init__()
        if num_gaussians < 1 or hidden_dim < 1 or num_layers < 1 or embed_dim < 8 or embed_dim % 4:
            raise ValueError("num_gaussians, hidden_dim, num_layers must be >= 1; embed_dim a multiple of 4 >= 8")
        self.num_gaussians = num_gaussians
        self.embed_dim = embed_dim
        self.constant_logstd = constant_logstd
        layers: list[nn.Module] = []
        width = 2 * embed_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.SiLU()]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        self.out_means = nn.Linear(hidden_dim, 2 * num_gaussians)
        self.out_logweights = nn.Linear(hidden_dim, num_gaussians)
        self.out_logstds = nn.Linear(hidden_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in, ReLU gain) weights, zero biases; zero logweight/logstd heads."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.out_logweights.weight)
        nn.init.zeros_(self.out_logstds.weight)

    def forward(self, x_t: Tensor, t: Tensor) -> GaussianMixture:
        B = x_t.shape[0]
        if x_t.shape[1:] != (2, 1, 1):
            raise ValueError(f"x_t must have shape (B, 2, 1, 1), got {tuple(x_t.shape)}")
        t = torch.as_tensor(t, device=x_t.device).float().reshape(-1).expand(B)
        features = torch.cat(
            [timestep_embedding(t, self.embed_dim), position_embedding(x_t.reshape(B, 2), self.embed_dim)], dim=-1
        )
        h = self.trunk(features.to(self.out_means.weight.dtype))
        K = self.num_gaussians
        means = self.out_means(h).reshape(B, K, 2, 1, 1)
        logweights = torch.log_softmax(self.out_logweights(h), dim=-1).reshape(B, K, 1, 1, 1)
        if self.constant_logstd is None:
            logstds = self.out_logstds(h).reshape(B, 1, 1, 1, 1)
        else:
            logstds = means.new_full((B, 1, 1, 1, 1), float(self.constant_logstd))
        return GaussianMixture(means.float(), logstds.float(), logweights.float())
