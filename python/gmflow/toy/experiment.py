"""The ``gmflow toy`` main job: train GMFlow (K = 64) and the K = 1 flow-matching baseline with the
same budget, sample every (solver, NFE) setting, score against the exact density, write the outputs.

Outputs under ``out``: ``checkpoints/{gmflow_k<K>,baseline_k1}.pt``, ``samples/<solver>_nfe<N>.npy``
(float32, N x 2), ``metrics.json``, ``toy_grid.png``, ``toy_metrics.png``, ``toy_loss.png``; the table is
printed.

With ``jobs = 2`` (the default on a CPU) the two models are trained, then sampled, in two worker
processes at once, each with half of the intra-op threads: on a small machine two single-threaded
processes keep both cores busy without the thread-pool stalls of small multi-threaded ops.
Every sample set has its own seeded generator, so ``jobs`` does not change what is drawn.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import Checkerboard
from .evaluate import format_table, sample_metrics, sample_toy
from .figures import data_seed, exact_data_sample, history_labels, write_figures
from .train import ToyTrainConfig, load_checkpoint, save_checkpoint, train_toy

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
    sde_temperature: float = 0.8  # component std scale of the last GM-SDE step (1 = the model's own)
    out: Path = Path("out/toy")
    reuse_checkpoints: bool = False
    progress: bool = True
    jobs: int = 2


def acceptance_checks(rows: list[dict], k: int) -> list[dict]:
    """The README's acceptance, on all three metrics, for GMFlow at NFE 4 (gm-ode2 and gm-sde2): better than
    fm-euler at NFE 8, and at least as good as fm-euler at NFE 32 (the paper's claim: 4 GMFlow steps match
    32 flow-matching steps). Checks whose settings were not run are skipped."""
    index = {(r["solver"], r["nfe"]): r for r in rows}
    higher_is_better = {"inside": True, "js_bits": False, "swd": False}
    checks = []
    for solver in ("gm-ode2", "gm-sde2"):
        for ref_nfe, strict in ((8, True), (32, False)):
            a, b = index.get((solver, 4)), index.get(("fm-euler", ref_nfe))
            if a is None or b is None:
                continue
            for m, up in higher_is_better.items():
                gain = a[m] - b[m] if up else b[m] - a[m]
                relation = "beats" if strict else "at least as good as"
                checks.append({"check": f"K={k} {solver}@4 {relation} fm-euler@{ref_nfe} on {m}", "gmflow": a[m],
                               "baseline": b[m], "passed": bool(gain > 0 if strict else gain >= 0)})
    return checks


# ------------------------------------------------------------------------------------------
# jobs (top-level functions: they also run in spawned worker processes)


def _say(message: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
    else:
        print(message, flush=True)


def _train_job(config: dict, path: str, desc: str, reuse: bool, progress: bool, threads: int | None,
               position: int | None) -> dict:
    """Trains (or reuses) one model and saves its checkpoint; returns its history and time."""
    if threads:
        torch.set_num_threads(threads)
    config = ToyTrainConfig(**config)
    path = Path(path)
    if reuse and path.exists():
        result = load_checkpoint(path, config.device)
        if asdict(result.config) == asdict(config):
            _say(f"{desc}: reusing {path}", progress)
            return {"history": result.history, "seconds": result.seconds, "reused": True}
        _say(f"{desc}: {path} was trained with another config; retraining", progress)

    def on_log(record: dict) -> None:
        _say(f"  [{desc}] iter {record['iter']:>6d}  loss {record['loss']:.4f}  ({record['seconds']:.0f} s)", progress)

    result = train_toy(config, progress=progress, on_log=on_log, desc=desc, position=position)
    save_checkpoint(result, path)
    _say(f"{desc}: trained {config.iters} iterations in {result.seconds:.0f} s -> {path}", progress)
    return {"history": result.history, "seconds": result.seconds, "reused": False}


def _sample_job(path: str, device: str, settings: list[tuple[str, int, int]], samples: int, out: str,
                ode_total_substeps: int, progress: bool, threads: int | None,
                sde_temperature: float = 1.0) -> list[dict]:
    """Samples one model at each ``(solver, nfe, seed)``; saves the .npy files; returns the metric rows."""
    if threads:
        torch.set_num_threads(threads)
    result = load_checkpoint(path, device)
    model = result.sampling_model
    data = Checkerboard()
    rows = []
    for solver, nfe, seed in settings:
        generator = torch.Generator(device=device).manual_seed(seed)
        start = time.perf_counter()
        x = sample_toy(model, solver, nfe, samples, generator, device, ode_total_substeps=ode_total_substeps,
                       sde_temperature=sde_temperature)
        np.save(Path(out) / "samples" / f"{solver}_nfe{nfe}.npy", x.numpy().astype(np.float32))
        row = {"solver": solver, "nfe": nfe, "k": result.config.k, **sample_metrics(x, data),
               "seconds": time.perf_counter() - start}
        rows.append(row)
        _say(f"  {solver:<9} NFE {nfe:>2d}: inside {row['inside']:.4f}  JS {row['js_bits']:.4f} bits  "
             f"SW1 {row['swd']:.4f}  ({row['seconds']:.1f} s)", progress)
    return rows


def _run_all(pool: ProcessPoolExecutor | None, fn, calls: list[tuple]) -> list:
    """``[fn(*args) for args in calls]``, in the worker processes of ``pool`` if there is one."""
    if pool is None:
        return [fn(*args) for args in calls]
    futures = [pool.submit(fn, *args) for args in calls]
    return [f.result() for f in futures]


def run_toy_experiment(exp: ToyExperiment, say: Callable[[str], None] = print) -> dict:
    """Runs the whole job and returns the metrics record that is also written to ``metrics.json``."""
    start = time.perf_counter()
    out = Path(exp.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    jobs = exp.jobs if torch.device(exp.train.device).type == "cpu" else 1
    jobs = min(jobs, 2 if exp.baseline else 1)
    threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) if jobs > 1 else None
    try:
        return _run(exp, out, start, jobs, threads, pool, say)
    finally:
        if pool is not None:
            pool.shutdown()


def _run(exp: ToyExperiment, out: Path, start: float, jobs: int, threads: int | None,
         pool: ProcessPoolExecutor | None, say: Callable[[str], None]) -> dict:
    timings: dict[str, float] = {}

    configs = {"gm": exp.train}
    paths = {"gm": out / "checkpoints" / f"gmflow_k{exp.train.k}.pt"}
    names = {"gm": f"GMFlow K={exp.train.k}"}
    if exp.baseline:
        configs["fm"] = replace(exp.train, k=1)
        paths["fm"] = out / "checkpoints" / "baseline_k1.pt"
        names["fm"] = "baseline K=1"
    keys = list(configs)
    t0 = time.perf_counter()
    trained = _run_all(pool, _train_job, [(asdict(configs[k]), str(paths[k]), names[k], exp.reuse_checkpoints,
                                           exp.progress, threads, i if jobs > 1 else None) for i, k in enumerate(keys)])
    timings["train_s"] = time.perf_counter() - t0
    histories = {k: t["history"] for k, t in zip(keys, trained)}

    # every setting gets its own generator seed, independent of how the work is split
    settings = {"gm": [(s, n) for s in exp.gm_solvers for n in exp.gm_nfe]}
    if exp.baseline:
        settings["fm"] = [(exp.baseline_solver, n) for n in exp.baseline_nfe]
    seeded, i = {}, 0
    for k in keys:
        seeded[k] = []
        for solver, nfe in settings[k]:
            seeded[k].append((solver, nfe, exp.train.seed * 1000 + 17 + i))
            i += 1
    say(f"sampling {exp.samples} points for each of {i} settings")
    t0 = time.perf_counter()
    sampled = _run_all(pool, _sample_job, [(str(paths[k]), exp.train.device, seeded[k], exp.samples, str(out),
                                            exp.ode_total_substeps, exp.progress, threads, exp.sde_temperature)
                                           for k in keys])
    timings["sampling_s"] = time.perf_counter() - t0
    rows = [row for part in sampled for row in part]

    grid: dict[str, dict[int, torch.Tensor]] = {}
    for row in rows:
        x = np.load(out / "samples" / f"{row['solver']}_nfe{row['nfe']}.npy")
        grid.setdefault(row["solver"], {})[row["nfe"]] = torch.from_numpy(x)
    # the noise floor of every metric: an exact-data sample of the same size, from its own generator
    data_sample = exact_data_sample(exp.samples, data_seed(exp.train.seed))
    exact_data = sample_metrics(data_sample)
    labels = history_labels(exp.train.k)
    figures = write_figures(out, rows, grid, {labels[k]: h for k, h in histories.items()}, data_sample, exact_data)
    timings["total_s"] = time.perf_counter() - start
    checks = acceptance_checks(rows, exp.train.k) if exp.baseline else []
    record = {
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(exp).items() if k != "train"},
                   "train": asdict(exp.train)},
        "results": rows,
        "acceptance": checks,
        "acceptance_passed": all(c["passed"] for c in checks) if checks else None,
        "exact_data": exact_data,
        "train_history": histories,
        "timings": timings,
        "torch": torch.__version__,
        "jobs": jobs,
        "threads_per_job": threads or torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    say("")
    say(format_table(rows))
    if checks:
        say("")
        for c in checks:
            say(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['check']}: {c['gmflow']:.4f} vs {c['baseline']:.4f}")
    say("")
    say(f"wrote {out / 'samples'}/*.npy, {out / 'metrics.json'}, {', '.join(str(f) for f in figures)}")
    say(f"time: training {timings['train_s']:.0f} s, sampling {timings['sampling_s']:.0f} s, "
        f"total {timings['total_s']:.0f} s")
    return record
