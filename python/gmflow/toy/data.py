"""The 2-D checkerboard data set (docs/training.md#checkerboard-data) and its exact density.

A 4x4 board scaled to ``[-4, 4]^2``: the 8 "white" squares ``(i, j)`` with ``i + j`` even, square
``(i, j)`` covering ``x in [2i - 4, 2i - 2)``, ``y in [2j - 4, 2j - 2)``; the density is uniform on them
(``1/32`` per unit area). Points are generated on demand from a ``torch.Generator`` (the original
pre-drew and stored 1e8 points).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Checkerboard"]


class Checkerboard:
    """Uniform distribution on the white squares of an ``n_rc x n_rc`` board spanning ``[-scale, scale]^2``."""

    def __init__(self, n_rc: int = 4, scale: float = 4.0) -> None:
        if n_rc < 1:
            raise ValueError(f"n_rc must be >= 1, got {n_rc}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.n_rc = int(n_rc)
        self.scale = float(scale)
        self.cell = 2.0 * self.scale / self.n_rc
        self.cells = torch.tensor(
            [(i, j) for i in range(self.n_rc) for j in range(self.n_rc) if (i + j) % 2 == 0], dtype=torch.float64
        )
        self.density = 1.0 / (len(self.cells) * self.cell**2)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
        """``n`` points ``(n, 2)``: a white square uniformly, then a uniform point inside it."""
        pick = torch.randint(0, len(self.cells), (n,), generator=generator, device=device)
        uv = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
        cells = self.cells.to(device)
        return ((cells[pick] + uv) * self.cell - self.scale).to(dtype)

    def inside(self, points: Tensor) -> Tensor:
        """Boolean mask ``(...)`` of points ``(..., 2)`` that lie in a white square."""
        cell = torch.floor((points.double() + self.scale) / self.cell)
        on_board = ((cell >= 0) & (cell <= self.n_rc - 1)).all(dim=-1)
        return on_board & (cell.sum(dim=-1).remainder(2) == 0)

    def log_density(self, points: Tensor) -> Tensor:
        """Exact log density (``-inf`` outside the white squares)."""
        inside = self.inside(points)
        return torch.where(inside, math.log(self.density), -math.inf).to(points.dtype)

    def bin_masses(self, bins: int = 64, limit: float = 4.5) -> Tensor:
        """Exact probability of each cell of a ``bins x bins`` grid over ``[-limit, limit]^2``, ``(bins, bins)``
        indexed ``[x_bin, y_bin]`` (float64; sums to the mass inside the grid)."""
        edges = torch.linspace(-limit, limit, bins + 1, dtype=torch.float64)
        lo, hi = edges[:-1], edges[1:]
        masses = torch.zeros(bins, bins, dtype=torch.float64)
        for i, j in self.cells.tolist():
            x0, y0 = i * self.cell - self.scale, j * self.cell - self.scale
            ox = (torch.minimum(hi, torch.tensor(x0 + self.cell)) - torch.maximum(lo, torch.tensor(x0))).clamp_min(0)
            oy = (torch.minimum(hi, torch.tensor(y0 + self.cell)) - torch.maximum(lo, torch.tensor(y0))).clamp_min(0)
            masses += torch.outer(ox, oy) * self.density
        return masses

    def projected_cdf(self, z: Tensor, angle: float) -> Tensor:
        """Exact CDF at ``z`` of the projection ``x cos(angle) + y sin(angle)`` (float64)."""
        c, s = math.cos(angle), math.sin(angle)
        z = z.double()
        total = torch.zeros_like(z)
        a, b = abs(c) * self.cell, abs(s) * self.cell  # widths of the two uniform summands
        for i, j in self.cells.tolist():
            x0, y0 = i * self.cell - self.scale, j * self.cell - self.scale
            # projection of the square = lowest corner + U[0, a] + U[0, b]
            low = x0 * c + y0 * s + min(c, 0.0) * self.cell + min(s, 0.0) * self.cell
            total += _uniform_sum_cdf(z - low, a, b)
        return total / len(self.cells)


def _uniform_sum_cdf(z: Tensor, a: float, b: float) -> Tensor:
    """CDF of ``U[0, a] + U[0, b]`` (a trapezoid density), for ``a, b >= 0``."""
    if a < b:
        a, b = b, a
    if b < 1e-12:
        return (z / a).clamp(0, 1) if a > 0 else (z >= 0).double()
    # integral of the ramp function: F(z) = [r(z)^2 - r(z-a)^2 - r(z-b)^2 + r(z-a-b)^2] / (2ab), r = max(., 0)
    def ramp2(v):
        return v.clamp_min(0).square()

    return ((ramp2(z) - ramp2(z - a) - ramp2(z - b) + ramp2(z - a - b)) / (2 * a * b)).clamp(0, 1)
