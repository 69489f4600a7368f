"""Wall time of the toy's GM-ODE2 sampling (gmflow.toy.evaluate.sample_toy) at NFE 1, 2, 4, 8.

Each NFE runs ceil(128 / NFE) analytic sub-steps per network call. ``--substeps fused`` is
gmflow_sample as it is (one gm_ode_euler_substeps call per outer step); ``--substeps loop`` forces
the per-sub-step loop (gm_posterior_mean + scheduler step per sub-step, the path before the fused op);
``both`` (default) times the two in one process, alternating, so their ratio is measured under the
same machine load. The model is a freshly initialised toy denoiser (K = 64; the sampler's cost does not
depend on its weights) unless ``--checkpoint`` names a trained one.

    python benchmarks/bench_toy_sampling.py --points 100000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gmflow.flow import sampling
from gmflow.toy.evaluate import sample_toy
from gmflow.toy.model import GMFlowMLP2DDenoiser


def _model(checkpoint: Path | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = GMFlowMLP2DDenoiser(num_gaussians=64)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu")
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return model.eval()


def _time(model, nfe: int, points: int, fused: bool) -> float:
    original = sampling._fused_substeps
    if not fused:
        sampling._fused_substeps = lambda *args: False
    try:
        start = time.perf_counter()
        sample_toy(model, "gm-ode2", nfe, points, generator=torch.Generator().manual_seed(nfe))
        return time.perf_counter() - start
    finally:
        sampling._fused_substeps = original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the median is reported)")
    parser.add_argument("--substeps", choices=["fused", "loop", "both"], default="both")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--out", type=Path, help="JSON path for the rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model(args.checkpoint)
    paths = {"both": ["loop", "fused"]}.get(args.substeps, [args.substeps])
    print(f"GM-ODE2 toy sampling, {args.points} points, {torch.get_num_threads()} threads, median of {args.repeats}")
    rows = []
    for nfe in args.nfe:
        _time(model, nfe, min(args.points, 4096), True)  # warm-up
        times: dict[str, list[float]] = {p: [] for p in paths}
        for _ in range(args.repeats):
            for p in paths:
                times[p].append(_time(model, nfe, args.points, p == "fused"))
        row = {"nfe": nfe, "substeps": -(-128 // nfe), "seconds": {p: statistics.median(t) for p, t in times.items()}}
        if len(paths) == 2:
            row["speedup"] = row["seconds"]["loop"] / row["seconds"]["fused"]
        rows.append(row)
        line = "  ".join(f"{p} {s:7.2f} s" for p, s in row["seconds"].items())
        ratio = f"  x {row['speedup']:.1f}" if "speedup" in row else ""
        print(f"NFE {nfe:<2} (S={row['substeps']:<3})  {line}{ratio}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
