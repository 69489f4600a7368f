"""Native GM kernels vs the eager PyTorch reference vs torch.compile of it vs torch.compile of the
strongest pure-PyTorch formulation of each op (benchmarks/formulations.py, named per row).

Prints, per shape and op, the median time of each implementation (timed interleaved, round by
round, so that the load of a shared machine hits every implementation alike), the speed-up ratios
against the baselines (measured in the same run: this is what to report), the achieved bandwidth as
a fraction of a same-device memcpy of the same bytes (same threads), and for forward+backward the
peak memory allocated during the step. Writes everything as JSON, and the table as markdown.

    python benchmarks/bench_ops.py                 # CPU, both shapes
    python benchmarks/bench_ops.py --device cuda   # needs a GPU
    python benchmarks/bench_ops.py --quick         # smoke run (CI)

Every registered op (gmflow._library.OPS, backward ops included) also gets a row per sample input
of its module (small shapes: dispatcher vs the reference fallback), so a new op is benchmarked
without an edit here; the shaped rows above are the ones to report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import gmflow
from gmflow import _library, _native
from gmflow import info as gm_info
from gmflow.reference import density as ref
from gmflow._ops import kr as kr_op
from gmflow._ops import mul_iso_gaussian as mul_op
from gmflow._ops import posterior_mean as posterior_op
from gmflow.reference.transport import gm_kr_rotation
from gmflow.types import GaussianMixture

sys.path.insert(0, str(Path(__file__).parent))
import formulations as best  # noqa: E402

SHAPES = {
    # name: (B, K, C, H, W)
    "imagenet_latent": (8, 8, 4, 32, 32),
    "toy_2d": (4096, 64, 2, 1, 1),
}
KR_NEWTON_STEPS = 16  # Newton steps per axis of the transport rows


@dataclass
class Case:
    op: str
    mode: str  # "fwd" or "fwd+bwd"
    fns: dict  # impl name -> callable
    bytes_moved: int
    result_bytes: int = 0  # bytes every implementation must produce (outputs + gradients)
    formulation: str = ""  # label of the "best" implementation's formulation


def compiled(fn, fullgraph: bool = True):
    """torch.compile as a user would apply it to a fixed-shape hot path."""
    return torch.compile(fn, fullgraph=fullgraph, dynamic=False)


def with_best(impls: dict, op: str, formulation: best.Formulation, reference, args) -> dict:
    """impls plus "best": the compiled formulation, checked against the reference on args first."""
    best.check_formulation(op, formulation.label, formulation.fn, reference, args)
    return {**impls, "best": impls["compile"] if formulation.fn is reference else compiled(formulation.fn)}


def make_inputs(shape, device, dtype=torch.float32, seed=0):
    B, K, C, H, W = shape
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=g, dtype=dtype).to(device)

    means = randn(B, K, C, H, W)
    logstds = randn(B, 1, 1, 1, 1) * 0.3 - 0.5
    logweights = torch.log_softmax(randn(B, K, 1, H, W), dim=-4)
    samples = randn(B, 1, C, H, W)
    return means, logstds, logweights, samples


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build_cases(shape, device) -> list[Case]:
    means, logstds, logweights, samples = make_inputs(shape, device)
    logprob_best = best.Formulation("shared-std logsumexp, N=1 broadcast", best.logprob_shared_std)
    logprob_impls = with_best(
        {"native": torch.ops.gmflow.gm_logprob, "eager": ref.gm_logprob, "compile": compiled(ref.gm_logprob)},
        "gm_logprob", logprob_best, ref.gm_logprob, (means, logstds, logweights, samples),
    )
    cases = []
    out_bytes = nbytes(samples) // samples.shape[-3]
    cases.append(
        Case(
            "gm_logprob",
            "fwd",
            {k: (lambda f=f: f(means, logstds, logweights, samples)) for k, f in logprob_impls.items()},
            nbytes(means, logstds, logweights, samples) + out_bytes,
            formulation=logprob_best.label,
        )
    )
    # The training step: gradients for the GM (the target needs none).
    leaves = [t.clone().requires_grad_() for t in (means, logstds, logweights)]

    def fwd_bwd(f):
        def step():
            for t in leaves:
                t.grad = None
            f(*leaves, samples).sum().backward()

        return step

    cases.append(
        Case(
            "gm_logprob",
            "fwd+bwd",
            {k: fwd_bwd(f) for k, f in logprob_impls.items()},
            2 * nbytes(means, logstds, logweights) + nbytes(samples) + 2 * out_bytes,
            result_bytes=nbytes(means, logstds, logweights) + out_bytes,
            formulation=logprob_best.label,
        )
    )
    mean_best = best.Formulation("softmax-weighted sum", best.to_mean_softmax)
    mean_impls = with_best(
        {"native": torch.ops.gmflow.gm_to_mean, "eager": ref.gm_to_mean, "compile": compiled(ref.gm_to_mean)},
        "gm_to_mean", mean_best, ref.gm_to_mean, (means, logweights, 1.0),
    )
    cases.append(
        Case(
            "gm_to_mean",
            "fwd",
            {k: (lambda f=f: f(means, logweights, 1.0)) for k, f in mean_impls.items()},
            nbytes(means, logweights) + nbytes(samples),
            formulation=mean_best.label,
        )
    )
    iso_best = best.Formulation("two-pass moments, shared s^2", best.to_iso_shared_std)
    iso_impls = with_best(
        {"native": torch.ops.gmflow.gm_to_iso_gaussian, "eager": ref.gm_to_iso_gaussian,
         "compile": compiled(ref.gm_to_iso_gaussian)},
        "gm_to_iso_gaussian", iso_best, ref.gm_to_iso_gaussian, (means, logstds, logweights),
    )
    cases.append(
        Case(
            "gm_to_iso_gaussian",
            "fwd",
            {k: (lambda f=f: f(means, logstds, logweights)) for k, f in iso_impls.items()},
            nbytes(means, logstds, logweights) + nbytes(samples) + out_bytes,
            formulation=iso_best.label,
        )
    )
    return cases + build_sampling_cases(shape, device)


def build_sampling_cases(shape, device) -> list[Case]:
    """The sampling-path ops (issue 3): GM x Gaussian product, posterior mean, KR transport."""
    B, K, C, H, W = shape
    means, logstds, logweights, samples = make_inputs(shape, device)
    g = torch.Generator(device="cpu").manual_seed(1)
    x_src = torch.randn(B, C, H, W, generator=g).to(device)
    x_tgt = torch.randn(B, C, H, W, generator=g).to(device)
    sigma_src = torch.rand(B, generator=g).mul(0.5).add(0.4).to(device)
    sigma_tgt = sigma_src * 0.7
    g_var = torch.rand(B, 1, H, W, generator=g).add(0.1).to(device)
    rotation = gm_kr_rotation(GaussianMixture(means, logstds, logweights))  # (B, 1, 1, C, C)
    out_bytes = nbytes(samples) // samples.shape[-3]
    cases = []

    def add(op, native, reference, formulation, args, bytes_moved, fullgraph=True):
        impls = with_best({"native": native, "eager": reference, "compile": compiled(reference, fullgraph)}, op,
                          formulation, reference, args)
        cases.append(Case(op, "fwd", {k: (lambda f=f: f(*args)) for k, f in impls.items()}, bytes_moved,
                          formulation=formulation.label))

    add(
        "gm_mul_iso_gaussian", torch.ops.gmflow.gm_mul_iso_gaussian, mul_op.reference,
        best.Formulation("shared-std normaliser per pixel", best.mul_iso_shared_std),
        (means, logstds, logweights, x_tgt, g_var),
        2 * nbytes(means, logweights) + nbytes(x_tgt, g_var) + out_bytes,
    )
    add(
        "gm_posterior_mean", torch.ops.gmflow.gm_posterior_mean, posterior_op.reference,
        best.Formulation("shared-std: softmax sum, affine move", best.posterior_mean_shared_std),
        (means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt),
        nbytes(means, logstds, logweights) + 3 * nbytes(x_src),
    )
    # N(0, I) -> GM: the eager baseline is the upstream formulation (a Python loop over the
    # axes, each a batched Newton solve of n_steps Python-level iterations). No stronger PyTorch
    # form was found for the transport: its best baseline compiles the reference itself.
    add(
        "gm_kr_inverse", torch.ops.gmflow.gm_kr_inverse, kr_op.reference_inverse,
        best.Formulation("reference (per-axis Newton)", kr_op.reference_inverse),
        (means, logstds, logweights, samples, rotation, None, None, KR_NEWTON_STEPS),
        nbytes(means, logweights) + 2 * nbytes(samples),
        fullgraph=False,  # shape-specialised, its categorical draw breaks the graph
    )
    add(
        "gm_kr_forward", torch.ops.gmflow.gm_kr_forward, kr_op.reference_forward,
        best.Formulation("reference (softmax of erf)", kr_op.reference_forward),
        (means, logstds, logweights, samples, rotation),
        nbytes(means, logweights) + 2 * nbytes(samples),
    )
    return cases


ODE_SUBSTEPS = 16


def substep_rows(device: str, shapes: list[str], min_time: float, warmup: int) -> list[dict]:
    """gm_ode_euler_substeps at S = 16 against the loop it replaces in gmflow_sample: 16 native gm_posterior_mean
    calls (the first at x = x_src: the GM mean), each followed by the Euler update as one native lerp."""
    G = torch.ops.gmflow
    rows = []
    for shape_name in shapes:
        B, K, C, H, W = shape = SHAPES[shape_name]
        means, logstds, logweights, _ = make_inputs(shape, device)
        x_src = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2)).to(device)
        grid = [0.8 - 0.5 * j / ODE_SUBSTEPS for j in range(ODE_SUBSTEPS + 1)]
        sigmas = torch.tensor(grid, device=device)
        batch_sigmas = [torch.full((B,), s, device=device) for s in grid]

        def fused():
            return G.gm_ode_euler_substeps(means, logstds, logweights, x_src, sigmas)

        def separate():
            x = x_src
            for j in range(ODE_SUBSTEPS):
                x0 = G.gm_posterior_mean(means, logstds, logweights, x_src, x, batch_sigmas[0], batch_sigmas[j])
                x = torch.lerp(x0, x, grid[j + 1] / grid[j])  # x + (x - x0) / s (s' - s)
            return x

        torch.testing.assert_close(fused(), separate(), rtol=1e-5, atol=1e-5)
        # Alternating calls, so both see the same machine load; the median and the fastest call of each.
        samples = {"fused": [], "separate": []}
        for fn in (fused, separate, fused, separate):
            fn()
        start = time.perf_counter()
        while len(samples["fused"]) < 5 or time.perf_counter() - start < 2 * min_time:
            for name, fn in (("fused", fused), ("separate", separate)):
                synchronize(device)
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                samples[name].append(time.perf_counter() - t0)
        median = {k: statistics.median(v) for k, v in samples.items()}
        best = {k: min(v) for k, v in samples.items()}
        bytes_moved = nbytes(means, logstds, logweights) + 2 * nbytes(x_src)
        row = {"shape": shape_name, "BKCHW": list(shape), "op": "gm_ode_euler_substeps", "S": ODE_SUBSTEPS,
               "ms": {k: v * 1e3 for k, v in median.items()}, "best_ms": {k: v * 1e3 for k, v in best.items()},
               "speedup_vs_separate": median["separate"] / median["fused"],
               "best_speedup_vs_separate": best["separate"] / best["fused"], "bytes": bytes_moved,
               "fraction_of_memcpy": memcpy_time(bytes_moved // 2, device, min_time) / median["fused"]}
        rows.append(row)
        print(f"{shape_name:<16} gm_ode_euler_substeps  S={ODE_SUBSTEPS:<3} median: fused {row['ms']['fused']:>8.3f} ms "
              f"separate {row['ms']['separate']:>8.3f} ms x {row['speedup_vs_separate']:>4.1f}; fastest: "
              f"{row['best_ms']['fused']:>8.3f} / {row['best_ms']['separate']:>8.3f} ms x "
              f"{row['best_speedup_vs_separate']:>4.1f}; memcpy {100 * row['fraction_of_memcpy']:>3.0f}%", flush=True)
    return rows


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, min_time: float, warmup: int, min_calls: int = 5) -> float:
    """Median seconds per call, repeating until min_time has elapsed (at least min_calls calls)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict, device, min_time: float, warmup: int, stat: str = "median",
                      min_rounds: int = 5) -> dict:
    """Seconds per call of each callable (the median, or with stat="min" the fastest, of its batches), timed
    round-robin: every round runs each callable for a batch of about 2 ms, so a change of the machine's load
    between rounds hits all of them alike; on a shared machine the fastest batch is the one no other process
    interrupted. A callable that raises (e.g. a graph break under fullgraph=True) gets None unless it is
    "native"."""
    reps, live = {}, {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            synchronize(device)
        except Exception as exc:
            if name == "native":
                raise
            print(f"  {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        reps[name] = max(1, min(1000, int(2e-3 / max(time.perf_counter() - t0, 1e-7))))
        live[name] = fn
    samples = {name: [] for name in live}
    start, rounds = time.perf_counter(), 0
    while live and (rounds < min_rounds or time.perf_counter() - start < min_time * len(live)):
        rounds += 1
        for name, fn in live.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - t0) / reps[name])
    reduce = min if stat == "min" else statistics.median
    return {name: (reduce(samples[name]) if name in samples else None) for name in fns}


def peak_memory(fn, device) -> int:
    """Peak bytes allocated while running fn once (beyond what was allocated before)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def memcpy_time(num_bytes: int, device, min_time: float, stat: str = "median") -> float:
    """Seconds of a torch copy of num_bytes (read num_bytes, write num_bytes) with the same threads."""
    src = torch.empty(max(num_bytes // 4, 1), dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return interleaved_times({"copy": lambda: dst.copy_(src)}, device, min_time, 3, stat)["copy"]


def registry_rows(device: str, min_time: float, warmup: int) -> list[dict]:
    """Dispatcher (native where loaded) vs reference fallback of every registered op on its sample inputs."""
    rows = []
    for name, op in _library.OPS.items():
        for i, sample in enumerate(op.sample_inputs(device)):
            native = median_time(lambda: op.op()(*sample.args, **sample.kwargs), device, min_time, warmup)
            fallback = median_time(lambda: op.fallback(*sample.args, **sample.kwargs), device, min_time, warmup)
            rows.append({"op": name, "sample": i, "ms": {"dispatcher": native * 1e3, "fallback": fallback * 1e3},
                         "speedup_vs_fallback": fallback / native})
            print(f"{'registry':<16} {name:<27} #{i:<2} {native * 1e3:>10.4f} {fallback * 1e3:>9.4f} "
                  f"{fallback / native:>8.1f}", flush=True)
    return rows


def run(device: str, shapes: list[str], min_time: float, warmup: int, with_compile: bool = True,
        with_registry: bool = True, stat: str = "median") -> dict:
    results = {
        "device": device,
        "machine": machine_name(device),
        "torch": torch.__version__,
        "gmflow": gmflow.__version__,
        "threads": torch.get_num_threads(),
        "statistic": stat,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "backends": {name: row for name, row in gm_info.backend_table().items()},
        "rows": [],
    }
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        for case in build_cases(shape, device):
            fns = {k: f for k, f in case.fns.items() if with_compile or k not in ("compile", "best")}
            times = interleaved_times(fns, device, min_time, warmup, stat)
            times.update({k: None for k in case.fns if k not in fns})
            row = {
                "shape": shape_name,
                "BKCHW": list(shape),
                "op": case.op,
                "mode": case.mode,
                "formulation": case.formulation,
                "ms": {k: (v * 1e3 if v is not None else None) for k, v in times.items()},
                "speedup_vs_eager": ratio(times["eager"], times["native"]),
                "speedup_vs_compile": ratio(times["compile"], times["native"]),
                "speedup_vs_best_compile": ratio(times["best"], times["native"]),
                "bytes": case.bytes_moved,
                "native_GBps": case.bytes_moved / times["native"] / 1e9,
                "fraction_of_memcpy": memcpy_time(case.bytes_moved // 2, device, min_time, stat) / times["native"],
            }
            if case.mode == "fwd+bwd":
                peaks = {impl: peak_memory(case.fns[impl], device) for impl in ("native", "eager")}
                row["peak_bytes"] = peaks
                row["peak_ratio_native_over_eager"] = peaks["native"] / max(peaks["eager"], 1)
                # Workspace: the peak minus what every implementation must return (output + grads).
                work = {k: max(v - case.result_bytes, 0) for k, v in peaks.items()}
                row["workspace_bytes"] = work
                row["workspace_ratio_native_over_eager"] = work["native"] / max(work["eager"], 1)
            results["rows"].append(row)
            print_row(row)
    best_ratios = [r["speedup_vs_best_compile"] for r in results["rows"] if r["speedup_vs_best_compile"]]
    if best_ratios:
        results["geomean_speedup_vs_best_compile"] = statistics.geometric_mean(best_ratios)
        print(f"geometric mean x best-compile over {len(best_ratios)} rows: "
              f"{results['geomean_speedup_vs_best_compile']:.2f}")
    results["registry_rows"] = registry_rows(device, min(min_time, 0.05), min(warmup, 2)) if with_registry else []
    return results


HEADER = (
    f"{'shape':<16} {'op':<19} {'mode':<8} {'native ms':>10} {'eager ms':>9} {'compile ms':>10} {'best ms':>8} "
    f"{'x eager':>8} {'x compile':>9} {'x best':>7} {'GB/s':>7} {'memcpy%':>8}  best formulation; "
    "peak (workspace) native/eager"
)


def ratio(baseline, native):
    return None if baseline is None else baseline / native


def fmt(value, width: int, digits: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_row(row):
    ms = row["ms"]
    line = (
        f"{row['shape']:<16} {row['op']:<19} {row['mode']:<8} {ms['native']:>10.3f} {fmt(ms['eager'], 9, 3)} "
        f"{fmt(ms['compile'], 10, 3)} {fmt(ms['best'], 8, 3)} {fmt(row['speedup_vs_eager'], 8, 1)} "
        f"{fmt(row['speedup_vs_compile'], 9, 1)} {fmt(row['speedup_vs_best_compile'], 7, 2)} "
        f"{row['native_GBps']:>7.2f} {100 * row['fraction_of_memcpy']:>7.0f}%  {row['formulation']}"
    )
    if "peak_bytes" in row:
        p = row["peak_bytes"]
        w = row["workspace_bytes"]
        line += (
            f"; {p['native'] / 2**20:.2f}/{p['eager'] / 2**20:.2f} MiB = {row['peak_ratio_native_over_eager']:.2f}"
            f" ({w['native'] / 2**20:.2f}/{w['eager'] / 2**20:.2f} MiB = {row['workspace_ratio_native_over_eager']:.2f})"
        )
    print(line, flush=True)


def markdown_table(results: dict) -> str:
    """The rows as a markdown table (README's Benchmarks section)."""
    lines = [
        f"{results['machine']}, {results['threads']} thread(s), torch {results['torch']}",
        "",
        "| shape | op | mode | native ms | × eager | × compile(ref) | × best compile | % memcpy | best formulation |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['shape']} | `{r['op']}` | {r['mode']} | {r['ms']['native']:.3f} | "
            f"{fmt(r['speedup_vs_eager'], 0, 1).strip()} | {fmt(r['speedup_vs_compile'], 0, 2).strip()} | "
            f"{fmt(r['speedup_vs_best_compile'], 0, 2).strip()} | {100 * r['fraction_of_memcpy']:.0f} | "
            f"{r['formulation']} |"
        )
    if "geomean_speedup_vs_best_compile" in results:
        lines += ["", f"Geometric mean × best compile: {results['geomean_speedup_vs_best_compile']:.2f}"]
    return "\n".join(lines) + "\n"


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name().replace(" ", "-")
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The kernel build in use tells apart machines that report the same model name (AVX2 / AVX-512 EPYCs).
    isa = _native.STATE.libraries["cpu"].cpu_isa
    return f"cpu-{os.cpu_count()}core-" + "-".join(model.split()).replace("/", "-") + (f"-{isa}" if isa else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline (minutes of compiling)")
    parser.add_argument("--quick", action="store_true", help="short smoke run without the compile baseline (CI)")
    parser.add_argument("--substeps-only", action="store_true",
                        help="only the fused GM-ODE sub-step rows (gm_ode_euler_substeps vs the per-sub-step loop)")
    parser.add_argument("--no-registry", action="store_true", help="skip the per-op registry rows")
    parser.add_argument("--stat", choices=["median", "min"], default="median",
                        help="per-call time: median of the timed batches, or the fastest (a shared, loaded machine)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<machine>/bench_ops.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device available", file=sys.stderr)
        return 2
    if args.quick:
        args.min_time, args.warmup, args.no_compile = 0.05, 2, True
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"gmflow {gmflow.__version__}, torch {torch.__version__}, device {machine_name(args.device)}, "
          f"{torch.get_num_threads()} threads")
    if args.substeps_only:
        rows = substep_rows(args.device, args.shapes, args.min_time, args.warmup)
        print(json.dumps(rows) if args.out is None else f"wrote {args.out}")
        if args.out:
            args.out.write_text(json.dumps(rows, indent=2))
        return 0
    print(HEADER)
    results = run(args.device, args.shapes, args.min_time, args.warmup, with_compile=not args.no_compile,
                  with_registry=not args.no_registry, stat=args.stat)
    results["substep_rows"] = substep_rows(args.device, args.shapes, args.min_time, args.warmup)
    out = args.out or Path(__file__).parent / "results" / results["machine"] / "bench_ops.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    table = markdown_table(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
