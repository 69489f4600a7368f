"""GM head built on gmflow's operators only through ``torch.ops.gmflow`` (no gmflow Python API).

``import gmflow`` registers the ops (native kernels where they load, the reference otherwise);
after that the model calls ``torch.ops.gmflow.gm_logprob`` like any torch op, so it traces
under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math

import gmflow  # noqa: F401  (registers torch.ops.gmflow)
import torch
from torch import nn

DIM = 2  # data dimensions (the op's channel axis)


class GMHead(nn.Module):
    """MLP from a condition ``c (B, DIM)`` to a K-component isotropic GM over ``y (B, DIM)``.

    Returns means ``(B, K, DIM, 1, 1)``, logstds ``(B, 1, 1, 1, 1)`` and normalised logweights
    ``(B, K, 1, 1, 1)``: the op's ``(..., K, C, H, W)`` layout with a 1x1 "image".
    """

    def __init__(self, components: int = 8, hidden: int = 64):
        super().__init__()
        self.components = components
        self.body = nn.Sequential(nn.Linear(DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.means = nn.Linear(hidden, components * DIM)
        self.logits = nn.Linear(hidden, components)
        self.logstd = nn.Linear(hidden, 1)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(cond)
        batch = cond.shape[0]
        means = self.means(h).view(batch, self.components, DIM, 1, 1)
        logweights = torch.log_softmax(self.logits(h), dim=-1).view(batch, self.components, 1, 1, 1)
        logstds = self.logstd(h).clamp(-5.0, 2.0).view(batch, 1, 1, 1, 1)
        return means, logstds, logweights


def gm_nll(model: GMHead, cond: torch.Tensor, target: torch.Tensor, logprob=None) -> torch.Tensor:
    """Mean negative log-likelihood of ``target (B, DIM)``; ``logprob`` defaults to the gmflow op."""
    logprob = torch.ops.gmflow.gm_logprob if logprob is None else logprob
    means, logstds, logweights = model(cond)
    samples = target.view(target.shape[0], 1, DIM, 1, 1)
    return -logprob(means, logstds, logweights, samples).mean()


def make_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition ``c`` uniform in [-1, 1]^2; target: ``c`` rotated by one of four angles plus noise.

    The target given ``c`` is a 4-component mixture, which a single Gaussian cannot fit.
    """
    cond = torch.rand(batch, DIM, generator=generator) * 2 - 1
    angle = torch.randint(0, 4, (batch,), generator=generator).float() * (math.pi / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack([cos * cond[:, 0] - sin * cond[:, 1], sin * cond[:, 0] + cos * cond[:, 1]], dim=-1)
    return cond, rotated + 0.05 * torch.randn(batch, DIM, generator=generator)


def train(steps: int = 300, batch: int = 256, seed: int = 0, compile: bool = True) -> tuple[GMHead, list[float]]:
    """Adam on the NLL; the loss (forward and backward through the op) runs under ``torch.compile``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = GMHead()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.compile(gm_nll, fullgraph=True) if compile else gm_nll
    losses = []
    for _ in range(steps):
        cond, target = make_batch(batch, generator)
        loss = loss_fn(model, cond, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses
