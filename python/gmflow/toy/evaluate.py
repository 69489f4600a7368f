"""Sampling the toy model with every solver, metrics against the exact density (figures: ``figures``).

Solvers: every name of :data:`gmflow.flow.SOLVERS` (:class:`gmflow.flow.SamplerSpec`): ``gm-sde2`` /
``gm-sde1`` (GM-SDE, order 2 / 1), ``gm-ode2`` / ``gm-ode1`` (GM-ODE with ``ceil(128 / NFE)`` analytic
sub-steps), ``fm-euler`` / ``fm-heun`` (flow-matching baselines on the mean velocity; meant for the K = 1
model; Heun uses ``2 steps - 1`` evaluations).

Metrics (:func:`sample_metrics`), all against the exact checkerboard density:

- ``inside``: fraction of samples inside the white squares (data: 1);
- ``js_bits``: Jensen–Shannon divergence in bits between the 64x64 histogram over
  ``[-4.5, 4.5]^2`` plus one "outside" bin and the exact bin masses (0 = perfect, 1 = disjoint);
- ``swd``: sliced Wasserstein-1 distance, the mean over 64 evenly spaced directions of the exact
  1-D W1 between the projected samples and the exact projected density.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from gmflow import GMFlowInputError
from gmflow.flow.sampling import gm_ode_substeps
from gmflow.flow.schedule import NUM_TIMESTEPS
from gmflow.flow.spec import SOLVERS, SUBSTEP_SOLVERS, SamplerSpec, parse_solver
from gmflow.types import GaussianMixture

from .data import Checkerboard

__all__ = [
    "SOLVERS",
    "FinalStepTemperature",
    "fraction_inside",
    "js_divergence_bits",
    "sample_metrics",
    "sample_toy",
    "sliced_wasserstein",
    "toy_sampler",
]


def toy_sampler(solver: str, nfe: int, ode_total_substeps: int = 128) -> SamplerSpec:
    """The toy's :class:`SamplerSpec`: GM-ODE takes ``ceil(ode_total_substeps / nfe)`` sub-steps per step."""
    solver = parse_solver(solver)
    substeps = gm_ode_substeps(nfe, ode_total_substeps) if solver in SUBSTEP_SOLVERS else 1
    return SamplerSpec(solver, nfe, substeps=substeps)


class FinalStepTemperature(torch.nn.Module):
    """Wraps a GM model: at the last GM-SDE step (``t <= t_last``) the component stds are multiplied by
    ``temperature``, so the final x0 draw is sharper (< 1) or blurrier (> 1); every other call is unchanged."""

    def __init__(self, model, temperature: float, t_last: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise GMFlowInputError(f"'temperature' must be positive, got {temperature}")
        self.model, self.temperature, self.t_last = model, float(temperature), float(t_last)

    def forward(self, x_t: Tensor, t: Tensor) -> GaussianMixture:
        gm = self.model(x_t, t)
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
        log_scale = torch.where(t <= self.t_last * (1 + 1e-5), math.log(self.temperature), 0.0)
        return GaussianMixture(gm.means, gm.logstds + log_scale.to(gm.logstds.dtype), gm.logweights)


@torch.no_grad()
def sample_toy(
    model,
    solver: str,
    nfe: int,
    n: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    chunk: int = 4096,
    ode_total_substeps: int = 128,
    sde_temperature: float = 1.0,
) -> Tensor:
    """``n`` points ``(n, 2)`` (float32, CPU) from ``model`` with ``solver`` at ``nfe`` network calls.

    The initial noise and every draw come from ``generator`` (a generator on ``device``).
    For ``fm-heun`` the number of steps is ``(nfe + 1) // 2`` (NFE ``2 steps - 1``). ``sde_temperature``
    scales the component stds of the last GM-SDE step (:class:`FinalStepTemperature`; 1 = off).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    spec = toy_sampler(solver, nfe, ode_total_substeps)
    if spec.is_sde and sde_temperature != 1.0:  # evenly spaced steps: the last one is at T / nfe
        model = FinalStepTemperature(model, sde_temperature, NUM_TIMESTEPS / nfe)
    parts = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        noise = torch.randn(m, 2, 1, 1, generator=generator, device=device)
        x = spec.sample(model, noise, generator)
        parts.append(x.reshape(m, 2).float().cpu())
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------
# metrics


def fraction_inside(samples: Tensor, data: Checkerboard | None = None) -> float:
    data = data or Checkerboard()
    return data.inside(samples).double().mean().item()


def _histogram(samples: Tensor, bins: int, limit: float) -> tuple[Tensor, float]:
    """(counts (bins, bins) indexed [x, y] over [-limit, limit]^2, count outside) as float64."""
    x = samples.double()
    idx = torch.floor((x + limit) / (2 * limit) * bins).long()
    ok = ((idx >= 0) & (idx < bins)).all(dim=-1) & torch.isfinite(x).all(dim=-1)
    idx = idx[ok]
    counts = torch.bincount(idx[:, 0] * bins + idx[:, 1], minlength=bins * bins).double().reshape(bins, bins)
    return counts, float((~ok).sum())


def js_divergence_bits(samples: Tensor, data: Checkerboard | None = None, bins: int = 64, limit: float = 4.5) -> float:
    """JS divergence (bits) between the sample histogram (+ an outside bin) and the exact bin masses."""
    data = data or Checkerboard()
    counts, outside = _histogram(samples, bins, limit)
    p = torch.cat([counts.flatten(), torch.tensor([outside], dtype=torch.float64)])
    p = p / p.sum()
    exact = data.bin_masses(bins, limit).flatten()
    q = torch.cat([exact, (1 - exact.sum()).clamp_min(0).reshape(1)])
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return (a[nz] * torch.log2(a[nz] / b[nz])).sum()

    return float(0.5 * kl(p, m) + 0.5 * kl(q, m))


def sliced_wasserstein(
    samples: Tensor, data: Checkerboard | None = None, n_projections: int = 64, limit: float = 6.0,
    grid_points: int = 12001,
) -> float:
    """Sliced W1 to the exact density: mean over directions ``theta_j = pi j / n`` of
    ``integral |F_n(z) - F(z)| dz`` (trapezoid on a fine grid over ``[-limit, limit]`` plus the exact tail
    terms of samples beyond it)."""
    data = data or Checkerboard()
    x = samples.double()
    x = x[torch.isfinite(x).all(dim=-1)]
    if len(x) == 0:
        return math.inf
    n = len(x)
    angles = torch.arange(n_projections, dtype=torch.float64) * (math.pi / n_projections)
    directions = torch.stack([angles.cos(), angles.sin()])  # (2, P)
    proj = torch.sort((x @ directions).T.contiguous(), dim=1).values  # (P, n)
    z = torch.linspace(-limit, limit, grid_points, dtype=torch.float64)
    empirical = torch.searchsorted(proj, z.expand(n_projections, -1).contiguous(), right=True).double() / n
    exact = torch.stack([data.projected_cdf(z, float(a)) for a in angles])
    inner = torch.trapezoid((empirical - exact).abs(), z, dim=1)
    tails = ((proj - limit).clamp_min(0) + (-limit - proj).clamp_min(0)).sum(dim=1) / n
    return float((inner + tails).mean())


def sample_metrics(samples: Tensor, data: Checkerboard | None = None) -> dict[str, float]:
    """``{'inside', 'js_bits', 'swd'}`` of ``samples (N, 2)``."""
    data = data or Checkerboard()
    return {
        "inside": fraction_inside(samples, data),
        "js_bits": js_divergence_bits(samples, data),
        "swd": sliced_wasserstein(samples, data),
    }


def format_table(metrics: Iterable[dict]) -> str:
    """Plain-text table of ``{'solver', 'nfe', 'inside', 'js_bits', 'swd'}`` records."""
    lines = [f"{'solver':<10} {'NFE':>4} {'inside':>8} {'JS (bits)':>10} {'SW1':>8}"]
    for m in metrics:
        lines.append(f"{m['solver']:<10} {m['nfe']:>4d} {m['inside']:>8.4f} {m['js_bits']:>10.4f} {m['swd']:>8.4f}")
    return "\n".join(lines)
