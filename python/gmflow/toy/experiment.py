"""The ``gmflow toy`` main job: train GMFlow (K = 64) and the K = 1 flow-matching baseline with the
same budget, sample every (solver, NFE) setting, score against the exact density, write the outputs.

Outputs under ``out``: ``checkpoints/{gmflow_k<K>,baseline_k1}.pt``, ``samples/<solver>_nfe<N>.npy``
(float32, N x 2), ``metrics.json``, ``toy_grid.png``; the table is printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import Checkerboard
from .evaluate import format_table, sample_metrics, sample_toy, write_histogram_grid
from .train import ToyTrainConfig, TrainResult, load_checkpoint, save_checkpoint, train_toy

__all__ = ["ToyExperiment", "acceptance_checks", "run_toy_experiment"]


@dataclass
class ToyExperiment:
    train: ToyTrainConfig = field(default_factory=ToyTrainConfig)
    gm_solvers: tuple[str, ...] = ("gm-sde2", "gm-ode2")
    gm_nfe: tuple[int, ...] = (1, 2, 4, 8)
    baseline: bool = True
    baseline_solver: str = "fm-euler"
    baseline_nfe: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    samples: int = 100_000
    ode_total_substeps: int = 128
    out: Path = Path("out/toy")
    reuse_checkpoints: bool = False
    progress: bool = True


def acceptance_checks(rows: list[dict], k: int) -> list[dict]:
    """The README's acceptance: GMFlow at NFE 4 (gm-ode2 and gm-sde2) beats fm-euler at NFE 8 on all three
    metrics and fm-euler at NFE 32 on sliced Wasserstein. Checks whose settings were not run are skipped."""
    index = {(r["solver"], r["nfe"]): r for r in rows}
    better = {"inside": lambda a, b: a > b, "js_bits": lambda a, b: a < b, "swd": lambda a, b: a < b}
    checks = []
    for solver in ("gm-ode2", "gm-sde2"):
        for ref_nfe, metrics in ((8, ("inside", "js_bits", "swd")), (32, ("swd",))):
            a, b = index.get((solver, 4)), index.get(("fm-euler", ref_nfe))
            if a is None or b is None:
                continue
            for m in metrics:
                checks.append({"check": f"K={k} {solver}@4 vs fm-euler@{ref_nfe} on {m}", "gmflow": a[m],
                               "baseline": b[m], "passed": bool(better[m](a[m], b[m]))})
    return checks


def _train_or_load(config: ToyTrainConfig, path: Path, exp: ToyExperiment, say: Callable[[str], None],
                   desc: str) -> TrainResult:
    if exp.reuse_checkpoints and path.exists():
        result = load_checkpoint(path, config.device)
        if asdict(result.config) == asdict(config):
            say(f"{desc}: reusing {path}")
            return result
        say(f"{desc}: {path} was trained with another config; retraining")

    def on_log(record: dict) -> None:
        msg = f"  [{desc}] iter {record['iter']:>6d}  loss {record['loss']:.4f}  ({record['seconds']:.0f} s)"
        if exp.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)
        else:
            say(msg)

    result = train_toy(config, progress=exp.progress, on_log=on_log, desc=desc)
    save_checkpoint(result, path)
    say(f"{desc}: trained {config.iters} iterations in {result.seconds:.0f} s -> {path}")
    return result


def run_toy_experiment(exp: ToyExperiment, say: Callable[[str], None] = print) -> dict:
    """Runs the whole job and returns the metrics record that is also written to ``metrics.json``."""
    start = time.perf_counter()
    out = Path(exp.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    device = torch.device(exp.train.device)
    timings: dict[str, float] = {}

    models: dict[str, TrainResult] = {}
    t0 = time.perf_counter()
    models["gm"] = _train_or_load(exp.train, out / "checkpoints" / f"gmflow_k{exp.train.k}.pt", exp, say,
                                  f"GMFlow K={exp.train.k}")
    timings["train_gmflow_s"] = time.perf_counter() - t0
    if exp.baseline:
        t0 = time.perf_counter()
        base_cfg = replace(exp.train, k=1)
        models["fm"] = _train_or_load(base_cfg, out / "checkpoints" / "baseline_k1.pt", exp, say, "baseline K=1")
        timings["train_baseline_s"] = time.perf_counter() - t0

    settings = [(s, n, "gm") for s in exp.gm_solvers for n in exp.gm_nfe]
    if exp.baseline:
        settings += [(exp.baseline_solver, n, "fm") for n in exp.baseline_nfe]
    data = Checkerboard()
    rows, grid = [], {}
    t0 = time.perf_counter()
    say(f"sampling {exp.samples} points for each of {len(settings)} settings")
    for i, (solver, nfe, which) in enumerate(settings):
        # one generator per setting: each sample set is reproducible on its own
        generator = torch.Generator(device=device).manual_seed(exp.train.seed * 1000 + 17 + i)
        ts = time.perf_counter()
        x = sample_toy(models[which].sampling_model, solver, nfe, exp.samples, generator, device,
                       ode_total_substeps=exp.ode_total_substeps)
        np.save(out / "samples" / f"{solver}_nfe{nfe}.npy", x.numpy().astype(np.float32))
        metrics = sample_metrics(x, data)
        row = {"solver": solver, "nfe": nfe, "k": models[which].config.k, **metrics,
               "seconds": time.perf_counter() - ts}
        rows.append(row)
        grid.setdefault(solver, {})[nfe] = x
        say(f"  {solver:<9} NFE {nfe:>2d}: inside {metrics['inside']:.4f}  JS {metrics['js_bits']:.4f} bits  "
            f"SW1 {metrics['swd']:.4f}  ({row['seconds']:.1f} s)")
    timings["sampling_s"] = time.perf_counter() - t0
    png = write_histogram_grid(out / "toy_grid.png", grid)
    timings["total_s"] = time.perf_counter() - start
    checks = acceptance_checks(rows, exp.train.k) if exp.baseline else []
    record = {
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(exp).items() if k != "train"},
                   "train": asdict(exp.train)},
        "results": rows,
        "acceptance": checks,
        "acceptance_passed": all(c["passed"] for c in checks) if checks else None,
        "train_history": {k: m.history for k, m in models.items()},
        "timings": timings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    say("")
    say(format_table(rows))
    if checks:
        say("")
        for c in checks:
            say(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['check']}: {c['gmflow']:.4f} vs {c['baseline']:.4f}")
    say("")
    say(f"wrote {out / 'samples'}/*.npy, {out / 'metrics.json'}, {png}  (total {timings['total_s']:.0f} s)")
    return record
