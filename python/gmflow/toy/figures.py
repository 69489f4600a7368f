"""Figures of the toy main job, drawn with matplotlib on its non-interactive Agg canvas (no pyplot state).

- :func:`plot_sample_grid` — ``toy_grid.png``: 2-D sample histograms like the paper's Fig. 2 (rows = data and
  each solver, columns = NFE), square panels with one extent and one colour scale;
- :func:`plot_metrics` — ``toy_metrics.png``: inside, JS and SW1 against NFE (log scale) for every solver, each
  with the value an exact-data sample of the same size gets (the noise floor of the metric);
- :func:`plot_training_loss` — ``toy_loss.png``: the training loss of each model against the iteration;
- :func:`write_figures` / :func:`replot` — all three, from a run's records or from its output folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from .data import Checkerboard
from .evaluate import sample_metrics

__all__ = [
    "exact_data_sample",
    "plot_metrics",
    "plot_sample_grid",
    "plot_training_loss",
    "replot",
    "write_figures",
]

SOLVER_LABELS = {
    "gm-sde2": "GM-SDE2", "gm-ode2": "GM-ODE2", "gm-sde1": "GM-SDE1", "gm-ode1": "GM-ODE1",
    "fm-euler": "Euler (K=1)", "fm-heun": "Heun (K=1)",
}
METRIC_LABELS = {"inside": "inside fraction ↑", "js_bits": "JS divergence (bits) ↓", "swd": "sliced W1 ↓"}
FIGURE_NAMES = ("toy_grid.png", "toy_metrics.png", "toy_loss.png")


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def exact_data_sample(n: int, seed: int, data: Checkerboard | None = None) -> torch.Tensor:
    """``n`` exact checkerboard points from their own seeded generator."""
    return (data or Checkerboard()).sample(n, generator=torch.Generator().manual_seed(seed))


def plot_sample_grid(
    path: str | Path,
    rows: Mapping[str, Mapping[int, torch.Tensor | np.ndarray]],
    data_sample: torch.Tensor | np.ndarray | None = None,
    data: Checkerboard | None = None,
    limit: float = 4.5,
    bins: int = 128,
    dpi: int = 110,
) -> Path:
    """2-D histograms of ``rows[solver][nfe] = samples (N, 2)``: one row per solver, one column per NFE (the
    union of all rows), after a first row with the exact density (and ``data_sample``, if given). The colour
    is the density relative to the checkerboard's (1 on a white square), clipped at 2."""
    data = data or Checkerboard()
    nfes = sorted({n for row in rows.values() for n in row})
    if not nfes:
        raise ValueError("rows holds no sample sets")
    edges = np.linspace(-limit, limit, bins + 1)
    bin_area = (2 * limit / bins) ** 2
    exact = data.bin_masses(bins, limit).numpy() / bin_area / data.density

    def relative_density(samples) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float64).reshape(-1, 2)
        counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=(edges, edges))
        return counts / max(len(x), 1) / bin_area / data.density

    data_row: dict[int, tuple[str, np.ndarray]] = {nfes[0]: ("data: exact density", exact)}
    if data_sample is not None and len(nfes) > 1:
        data_row[nfes[1]] = (f"data: {len(data_sample):,} samples", relative_density(data_sample))
    panels = [("data", data_row)] + [
        (SOLVER_LABELS.get(solver, solver),
         {nfe: (f"{SOLVER_LABELS.get(solver, solver)}, NFE {nfe}", relative_density(x)) for nfe, x in row.items()})
        for solver, row in rows.items()]

    fig = new_figure(2.1 * len(nfes) + 0.9, 2.15 * len(panels) + 0.3)
    axes = fig.subplots(len(panels), len(nfes), squeeze=False)
    image = None
    for r, (label, row) in enumerate(panels):
        first = True
        for c, nfe in enumerate(nfes):
            ax = axes[r, c]
            if nfe not in row:
                ax.set_axis_off()
                continue
            title, density = row[nfe]
            image = ax.imshow(density.T, origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis",
                              vmin=0.0, vmax=2.0, interpolation="nearest")
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
            if first:
                ax.set_ylabel(label, fontsize=11)
                first = False
    fig.colorbar(image, ax=axes, shrink=0.5, label="density / data density")
    fig.suptitle(f"2-D checkerboard: samples per solver and NFE (histograms over [−{limit:g}, {limit:g}]²)",
                 fontsize=12)
    return save_figure(fig, path, dpi)


def format_metric_axis(ax, metric: str, ticks: list[int], xlabel: str) -> None:
    """A log2 x axis with ``ticks``, a log y axis for the divergences (not the inside fraction), a title."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.minorticks_off()
    if metric != "inside":
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(METRIC_LABELS[metric])
    ax.grid(True, which="major", alpha=0.3)


def plot_metrics(
    path: str | Path,
    results: Iterable[Mapping],
    floors: Mapping[str, float] | None = None,
    floor_label: str = "exact-data sample",
    dpi: int = 110,
) -> Path:
    """Inside, JS and SW1 against NFE (log2 axis) for every solver in ``results`` (records with ``solver``,
    ``nfe`` and the metrics), with ``floors[metric]`` as a dashed line."""
    by_solver: dict[str, list[Mapping]] = {}
    for r in results:
        by_solver.setdefault(r["solver"], []).append(r)
    if not by_solver:
        raise ValueError("results is empty")
    nfes = sorted({r["nfe"] for rs in by_solver.values() for r in rs})
    fig = new_figure(13.5, 4.0)
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("inside", "js_bits", "swd")):
        for solver, rs in by_solver.items():
            rs = sorted(rs, key=lambda r: r["nfe"])
            ax.plot([r["nfe"] for r in rs], [r[metric] for r in rs], marker="o",
                    label=SOLVER_LABELS.get(solver, solver))
        if floors is not None and metric in floors:
            ax.axhline(floors[metric], color="0.35", linestyle="--", linewidth=1.2, label=floor_label)
        format_metric_axis(ax, metric, nfes, "NFE (network evaluations)")
    axes[0].legend(fontsize=9)
    fig.suptitle("Sample quality against the exact checkerboard density", fontsize=12)
    return save_figure(fig, path, dpi)


def plot_training_loss(path: str | Path, histories: Mapping[str, Iterable[Mapping]], dpi: int = 110) -> Path:
    """Training loss against iteration, one line per model (``histories[label] = [{'iter', 'loss'}, ...]``)."""
    fig = new_figure(6.5, 4.0)
    ax = fig.subplots()
    drawn = 0
    for label, history in histories.items():
        history = list(history)
        if history:
            ax.plot([h["iter"] for h in history], [h["loss"] for h in history], marker=".", label=label)
            drawn += 1
    if not drawn:
        raise ValueError("no loss history to plot")
    ax.set_xlabel("iteration")
    ax.set_ylabel("transition loss (mean over the logging window)")
    ax.set_title("Training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi)


def write_figures(
    out: str | Path,
    results: list[Mapping],
    samples: Mapping[str, Mapping[int, torch.Tensor | np.ndarray]],
    histories: Mapping[str, Iterable[Mapping]],
    data_sample: torch.Tensor | np.ndarray,
    floors: Mapping[str, float],
) -> list[Path]:
    """``toy_grid.png``, ``toy_metrics.png`` and ``toy_loss.png`` in ``out``."""
    out = Path(out)
    floor_label = f"exact-data sample (N = {len(data_sample):,})"
    return [plot_sample_grid(out / FIGURE_NAMES[0], samples, data_sample),
            plot_metrics(out / FIGURE_NAMES[1], results, floors, floor_label),
            plot_training_loss(out / FIGURE_NAMES[2], histories)]


def history_labels(k: int) -> dict[str, str]:
    """Legend labels of a metrics record's ``train_history`` keys (``gm``, ``fm``) for GMFlow with ``k``."""
    return {"gm": f"GMFlow K={k}", "fm": "flow matching K=1"}


def data_seed(seed: int) -> int:
    """Seed of the exact-data sample of a run with training seed ``seed`` (apart from every sampling seed)."""
    return seed * 1000 + 1


def replot(out: str | Path) -> list[Path]:
    """Redraws the three figures of a finished run from ``out/metrics.json`` and ``out/samples/*.npy``."""
    out = Path(out)
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found: --replot needs the output folder of a finished run")
    record = json.loads(metrics_path.read_text())
    results = record["results"]
    samples: dict[str, dict[int, np.ndarray]] = {}
    for r in results:
        samples.setdefault(r["solver"], {})[r["nfe"]] = np.load(out / "samples" / f"{r['solver']}_nfe{r['nfe']}.npy")
    n = len(next(iter(next(iter(samples.values())).values())))
    seed = data_seed(record["config"]["train"]["seed"])
    data_sample = exact_data_sample(n, seed)
    floors = record.get("exact_data") or sample_metrics(data_sample)
    labels = history_labels(record["config"]["train"]["k"])
    histories = {labels.get(k, k): h for k, h in record.get("train_history", {}).items()}
    return write_figures(out, results, samples, histories, data_sample, floors)
