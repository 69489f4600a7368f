"""How the toy's claim moves with the training budget: ``gmflow toy`` at 1x, 2x, 4x ... the iterations.

Each budget runs the whole main job (both models on the same budget and recipe, every solver) into
``OUT/x<m>/`` (a finished budget is reused, so the sweep can be resumed), then writes
``OUT/budget_sweep.md`` (the settings the checks compare, the checks passed, the times) and
``OUT/budget_sweep.png`` (each metric of those settings against the iterations, with the exact-data
floor)::

    python benchmarks/toy_budget_sweep.py --out out/toy_sweep                       # 10k, 20k, 40k iterations
    python benchmarks/toy_budget_sweep.py --base-iters 1000 --samples 20000 --out /tmp/sweep  # a quick proxy
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from gmflow.toy.experiment import ToyExperiment, run_toy_experiment
from gmflow.toy.figures import METRIC_LABELS, SOLVER_LABELS, format_metric_axis, new_figure, save_figure
from gmflow.toy.train import ToyTrainConfig

COMPARED = (("gm-ode2", 4), ("gm-sde2", 4), ("fm-euler", 8), ("fm-euler", 32))


def run_budget(base: ToyExperiment, iters: int, out: Path) -> dict:
    done = out / "metrics.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if record["config"]["train"]["iters"] == iters:
            print(f"{out}: reusing the finished run", flush=True)
            return record
    exp = replace(base, train=replace(base.train, iters=iters), out=out)
    return run_toy_experiment(exp)


def sweep_table(records: dict[int, dict]) -> str:
    lines = ["| iterations | setting | inside ↑ | JS (bits) ↓ | SW1 ↓ |", "|---:|---|---:|---:|---:|"]
    for iters, record in records.items():
        index = {(r["solver"], r["nfe"]): r for r in record["results"]}
        for solver, nfe in COMPARED:
            r = index.get((solver, nfe))
            if r is not None:
                lines.append(f"| {iters} | {solver}@{nfe} | {r['inside']:.4f} | {r['js_bits']:.4f} | {r['swd']:.4f} |")
        floor = record.get("exact_data")
        if floor:
            lines.append(f"| {iters} | exact-data sample | {floor['inside']:.4f} | {floor['js_bits']:.4f} | "
                         f"{floor['swd']:.4f} |")
    lines += ["", "| iterations | checks passed | failing checks | training s | sampling s | total s |",
              "|---:|---:|---|---:|---:|---:|"]
    for iters, record in records.items():
        checks = record["acceptance"]
        failing = "; ".join(c["check"] for c in checks if not c["passed"]) or "none"
        t = record["timings"]
        lines.append(f"| {iters} | {sum(c['passed'] for c in checks)} / {len(checks)} | {failing} | "
                     f"{t['train_s']:.0f} | {t['sampling_s']:.0f} | {t['total_s']:.0f} |")
    return "\n".join(lines)


def plot_sweep(path: Path, records: dict[int, dict]) -> Path:
    fig = new_figure(13.5, 4.0)
    axes = fig.subplots(1, 3)
    budgets = list(records)
    for ax, metric in zip(axes, METRIC_LABELS):
        for solver, nfe in COMPARED:
            points = [(i, r[metric]) for i, rec in records.items() for r in rec["results"]
                      if (r["solver"], r["nfe"]) == (solver, nfe)]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{SOLVER_LABELS.get(solver, solver)}, NFE {nfe}")
        floors = [(i, rec["exact_data"][metric]) for i, rec in records.items() if rec.get("exact_data")]
        if floors:
            ax.plot(*zip(*floors), color="0.35", linestyle="--", label="exact-data sample")
        format_metric_axis(ax, metric, budgets, "training iterations (both models)")
    axes[0].legend(fontsize=8)
    fig.suptitle("The toy's claim against the training budget", fontsize=12)
    return save_figure(fig, path, 110)


def main(argv: list[str] | None = None) -> int:
    d = ToyTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/toy_sweep"))
    parser.add_argument("--base-iters", type=int, default=d.iters, help=f"the 1x budget (default {d.iters})")
    parser.add_argument("--multipliers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in total (default: one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = ToyExperiment(train=ToyTrainConfig(seed=args.seed), samples=args.samples, progress=False)
    records = {}
    for m in sorted(set(args.multipliers)):
        iters = args.base_iters * m
        records[iters] = run_budget(base, iters, args.out / f"x{m}")
    table = sweep_table(records)
    load = os.getloadavg()
    note = (f"Seed {args.seed}, {args.samples} samples per setting; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) on {os.cpu_count()} cores.\n\n")
    (args.out / "budget_sweep.md").write_text(note + table + "\n")
    plot_sweep(args.out / "budget_sweep.png", records)
    print(table)
    print(f"wrote {args.out / 'budget_sweep.md'}, {args.out / 'budget_sweep.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
