"""How the toy's claim moves with the training budget: ``gmflow toy`` at several iteration counts.

Each budget runs the whole main job (both models on the same budget and recipe, every solver, the
learning-rate schedule stretched to the budget) into ``OUT/iters<N>/`` (a finished run with the same
settings is reused, so the sweep can be resumed, and a default ``gmflow toy`` run can be linked in),
then writes ``OUT/budget_sweep.md`` (the settings the checks compare, the checks passed at each
budget, the times) and ``OUT/budget_sweep.png`` (each metric of those settings against the
iterations, with the exact-data floor)::

    python benchmarks/toy_budget_sweep.py --out out/toy_sweep                        # 10k, 20k, 40k iterations
    python benchmarks/toy_budget_sweep.py --budgets 1000 2500 5000 10000 --out out/toy_sweep
    python benchmarks/toy_budget_sweep.py --base-iters 1000 --samples 20000 --out /tmp/sweep  # a quick proxy
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from gmflow.toy.experiment import ToyExperiment, run_toy_experiment
from gmflow.toy.figures import METRIC_LABELS, SOLVER_LABELS, format_metric_axis, new_figure, save_figure
from gmflow.toy.train import ToyTrainConfig

COMPARED = (("gm-ode2", 4), ("gm-sde2", 4), ("fm-euler", 8), ("fm-euler", 32))


# settings of a run that do not change its results
_RESULT_NEUTRAL = ("out", "reuse_checkpoints", "progress", "jobs")


def _result_settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _RESULT_NEUTRAL}


def run_budget(base: ToyExperiment, iters: int, out: Path) -> dict:
    exp = replace(base, train=replace(base.train, iters=iters), out=out)
    done = out / "metrics.json"
    if done.is_file():
        record = json.loads(done.read_text())
        wanted = _result_settings(json.loads(json.dumps(asdict(exp), default=str)))
        if _result_settings(record["config"]) == wanted:
            print(f"{out}: reusing the finished run", flush=True)
            return record
        print(f"{out}: the finished run has other settings; rerunning", flush=True)
    return run_toy_experiment(exp)


def wall_times(record: dict) -> tuple[float, float, float]:
    """Training, sampling and total seconds; a run that reused its checkpoints is charged the training time
    the checkpoints recorded (the two models train side by side, so the slower one)."""
    t = record["timings"]
    trained = [h[-1]["seconds"] for h in record.get("train_history", {}).values() if h]
    train_s = max([t["train_s"], *trained])
    return train_s, t["sampling_s"], t["total_s"] + train_s - t["train_s"]


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
        train_s, sampling_s, total_s = wall_times(record)
        lines.append(f"| {iters} | {sum(c['passed'] for c in checks)} / {len(checks)} | {failing} | "
                     f"{train_s:.0f} | {sampling_s:.0f} | {total_s:.0f} |")
    return "\n".join(lines + ["", check_matrix(records)])


def check_matrix(records: dict[int, dict]) -> str:
    """One row per acceptance check, one column per budget: where each check passes (the GMFlow and baseline
    values in the cell)."""
    budgets = list(records)
    names = list(dict.fromkeys(c["check"] for rec in records.values() for c in rec["acceptance"]))
    lines = ["| check | " + " | ".join(f"{i} it" for i in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for name in names:
        cells = []
        for rec in records.values():
            c = next((c for c in rec["acceptance"] if c["check"] == name), None)
            cells.append("–" if c is None else
                         f"{'pass' if c['passed'] else '**FAIL**'} {c['gmflow']:.4f} vs {c['baseline']:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="the iteration counts to run (instead of --base-iters times --multipliers)")
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in total (default: one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = ToyExperiment(train=ToyTrainConfig(seed=args.seed), samples=args.samples, progress=False)
    budgets = args.budgets or [args.base_iters * m for m in args.multipliers]
    if min(budgets) < 1:
        parser.error("budgets must be positive iteration counts")
    records = {}
    for iters in sorted(set(budgets)):
        records[iters] = run_budget(base, iters, args.out / f"iters{iters}")
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
