"""Sampling the toy model with every solver, metrics against the exact density, the PNG figure.

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

:func:`write_histogram_grid` writes a PNG of 2-D histograms (rows = solver, columns = NFE, like the
paper's Fig. 2) with the standard library only (zlib + struct).
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from gmflow.flow.sampling import gm_ode_substeps
from gmflow.flow.spec import SOLVERS, SUBSTEP_SOLVERS, SamplerSpec, parse_solver

from .data import Checkerboard

__all__ = [
    "SOLVERS",
    "fraction_inside",
    "js_divergence_bits",
    "sample_metrics",
    "sample_toy",
    "sliced_wasserstein",
    "toy_sampler",
    "write_histogram_grid",
]

def toy_sampler(solver: str, nfe: int, ode_total_substeps: int = 128) -> SamplerSpec:
    """The toy's :class:`SamplerSpec`: GM-ODE takes ``ceil(ode_total_substeps / nfe)`` sub-steps per step."""
    solver = parse_solver(solver)
    substeps = gm_ode_substeps(nfe, ode_total_substeps) if solver in SUBSTEP_SOLVERS else 1
    return SamplerSpec(solver, nfe, substeps=substeps)


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
) -> Tensor:
    """``n`` points ``(n, 2)`` (float32, CPU) from ``model`` with ``solver`` at ``nfe`` network calls.

    The initial noise and every draw come from ``generator`` (a generator on ``device``).
    For ``fm-heun`` the number of steps is ``(nfe + 1) // 2`` (NFE ``2 steps - 1``).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    spec = toy_sampler(solver, nfe, ode_total_substeps)
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


# ------------------------------------------------------------------------------------------
# PNG figure (stdlib only)

# viridis anchor colours (0, 1/8, ..., 1), linearly interpolated
_VIRIDIS = torch.tensor(
    [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=torch.float64)

# 3x5 bitmap glyphs (rows top to bottom, 3 bits each) for the labels
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001010010",
    "8": "111101111101111", "9": "111101111001111", "-": "000000111000000", " ": "000000000000000",
    "A": "010101111101101", "D": "110101101101110", "E": "111100111100111", "F": "111100110100100",
    "G": "111100101101111", "H": "101101111101101", "K": "101110100110101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "111101101101111", "R": "110101110101101",
    "S": "111100111001111", "T": "111010010010010", "U": "101101101101111", "=": "000111000111000",
}


def _colormap(values: Tensor) -> Tensor:
    """values in [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    pos = values.clamp(0, 1) * (len(_VIRIDIS) - 1)
    lo = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    return rgb.round().to(torch.uint8)


def _draw_text(img: Tensor, text: str, top: int, left: int, scale: int = 2, color=(0, 0, 0)) -> None:
    for n, ch in enumerate(text.upper()):
        glyph = _GLYPHS.get(ch, _GLYPHS[" "])
        for r in range(5):
            for c in range(3):
                if glyph[r * 3 + c] == "1":
                    y, x = top + r * scale, left + (n * 4 + c) * scale
                    img[y:y + scale, x:x + scale] = torch.tensor(color, dtype=torch.uint8)


def _write_png(path: Path, rgb: Tensor) -> None:
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + bytes(rgb[y].flatten().tolist()) for y in range(h))

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def _density_image(samples: Tensor | None, size: int, limit: float, data: Checkerboard) -> Tensor:
    """2-D histogram image (size, size) in [0, 1]: the exact density maps to 0.75; y axis points up."""
    bin_area = (2 * limit / size) ** 2
    if samples is None:
        values = data.bin_masses(size, limit) / bin_area
    else:
        counts, _ = _histogram(samples, size, limit)
        values = counts / max(len(samples), 1) / bin_area
    values = values / data.density * 0.75
    return values.T.flip(0)  # rows = y (top = +limit), columns = x


def write_histogram_grid(
    path: str | Path,
    rows: dict[str, dict[int, Tensor]],
    limit: float = 4.5,
    cell: int = 144,
    data: Checkerboard | None = None,
    include_data: bool = True,
) -> Path:
    """PNG grid of 2-D sample histograms: one row per solver (``rows[solver][nfe] = samples (N, 2)``),
    one column per NFE (union of all rows, ascending), plus a first row with the exact density."""
    data = data or Checkerboard()
    nfes = sorted({n for r in rows.values() for n in r})
    labels = (["DATA"] if include_data else []) + [s.upper() for s in rows]
    pad, left, top = 6, 8 * 4 * 2 + 12, 22
    width = left + len(nfes) * (cell + pad) + pad
    height = top + len(labels) * (cell + pad) + pad
    img = torch.full((height, width, 3), 255, dtype=torch.uint8)
    for c, nfe in enumerate(nfes):
        _draw_text(img, f"NFE={nfe}", 6, left + c * (cell + pad) + cell // 2 - 24)
    grid_rows = ([{nfes[0]: None}] if include_data else []) + list(rows.values())
    for r, (label, row) in enumerate(zip(labels, grid_rows)):
        y = top + r * (cell + pad)
        _draw_text(img, label, y + cell // 2 - 5, 6)
        for c, nfe in enumerate(nfes):
            if nfe not in row:
                continue
            x = left + c * (cell + pad)
            img[y:y + cell, x:x + cell] = _colormap(_density_image(row[nfe], cell, limit, data))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(path, img)
    return path


def format_table(metrics: Iterable[dict]) -> str:
    """Plain-text table of ``{'solver', 'nfe', 'inside', 'js_bits', 'swd'}`` records."""
    lines = [f"{'solver':<10} {'NFE':>4} {'inside':>8} {'JS (bits)':>10} {'SW1':>8}"]
    for m in metrics:
        lines.append(f"{m['solver']:<10} {m['nfe']:>4d} {m['inside']:>8.4f} {m['js_bits']:>10.4f} {m['swd']:>8.4f}")
    return "\n".join(lines)
