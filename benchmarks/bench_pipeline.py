"""GM-DiT pipeline step: transformer forward vs the GM math around it, as the GM share of a step.

One sampling step of the ImageNet pipeline is one transformer call on the guided batch (2B: the
conditional half and the null-class half) plus the GM operations of the loop (``gmflow_sample``):
u -> x0 conversion, probabilistic guidance, the second-order GM solver, and either
- GM-ODE 2: the GM mean + 3 analytic sub-steps (posterior means of the step's GM), 4 Euler updates; or
- GM-SDE 2: the spectrum net, a spectral sample of the GM (Knothe-Rosenblatt transport), one SDE update.
The GM time per step is measured by running the whole loop with a stub network that returns a fixed
u-GM of the right shape, divided by the number of steps. GM share = GM / (GM + forward).

Configs: ``tiny`` (2 blocks, width 64), ``full-width-1block`` (the released width 1152, K = 8, one
block; the full 28-block forward is extrapolated from 1 and 2 blocks as t1 + 27 (t2 - t1)), and
``full`` (the released 676M model; GPU). Latents 4 x 32 x 32, K = 8 throughout.

    python benchmarks/bench_pipeline.py                      # CPU: tiny + full-width-1block, float32
    python benchmarks/bench_pipeline.py --device cuda        # GPU: full size in bfloat16
    python benchmarks/bench_pipeline.py --quick              # smoke run

Writes JSON to benchmarks/results/<machine>/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

import gmflow
from gmflow import GaussianMixture
from gmflow import info as gm_info
from gmflow.flow import FlowEulerODEScheduler, GMFlowSDEScheduler, gmflow_sample
from gmflow.models import GMDIT_IMAGENET_K8, GMDiT, SpectrumMLP

sys.path.insert(0, str(Path(__file__).parent))
from bench_ops import machine_name, median_time  # noqa: E402

CONFIGS = {
    "tiny": dataclasses.replace(GMDIT_IMAGENET_K8, num_layers=2, num_attention_heads=4, attention_head_dim=16,
                                logstd_inner_dim=64),
    "full-width-1block": dataclasses.replace(GMDIT_IMAGENET_K8, num_layers=1),
    "full": GMDIT_IMAGENET_K8,
}
SOLVERS = {
    # name: (output_mode, substeps, scheduler class)
    "gm-ode2": ("mean", 4, FlowEulerODEScheduler),
    "gm-sde2": ("sample", 1, GMFlowSDEScheduler),
}


def build(config, device: str, dtype: torch.dtype) -> GMDiT:
    torch.manual_seed(0)
    model = GMDiT(config).to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # non-zero adaLN / output layers, so the blocks do real work
        for block in model.transformer_blocks:
            block.norm1.linear.weight.normal_(std=0.02)
        model.proj_out_1.weight.normal_(std=0.02)
    return model.requires_grad_(False)


def forward_time(model: GMDiT, batch: int, device: str, min_time: float, warmup: int) -> float:
    cfg = model.config
    x = torch.randn(2 * batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=device)
    t = torch.full((2 * batch,), 700.0, device=device)
    labels = torch.arange(2 * batch, device=device) % (cfg.num_embeds_ada_norm + 1)

    def fn():
        with torch.inference_mode():
            model(x.to(model.dtype), t, labels)

    return median_time(fn, device, min_time, warmup, min_calls=3)


def gm_step_time(solver: str, batch: int, K: int, C: int, size: int, device: str, steps: int, min_time: float,
                 warmup: int, guidance: float = 0.45) -> float:
    """Seconds of GM math per sampling step (guidance + second order + sub-steps / spectral sampling)."""
    output_mode, substeps, scheduler_cls = SOLVERS[solver]
    g = torch.Generator(device="cpu").manual_seed(0)
    B2 = 2 * batch
    gm = GaussianMixture(
        (0.5 * torch.randn(B2, K, C, size, size, generator=g)).to(device),
        torch.full((B2, 1, 1, 1, 1), -0.3).to(device),
        torch.log_softmax(torch.randn(B2, K, 1, size, size, generator=g), dim=1).to(device),
    )
    spectrum = SpectrumMLP(base_size=(C, size, size)).to(device).requires_grad_(False)
    with torch.no_grad():
        spectrum.mlp[4].weight.normal_(std=0.1)
    noise = torch.randn(batch, C, size, size, generator=g).to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def stub(x, t):
        return gm

    def fn():
        gmflow_sample(stub, noise, steps, output_mode=output_mode, order=2, num_substeps=substeps,
                      guidance_scale=guidance, scheduler=scheduler_cls(), spectrum_net=spectrum,
                      generator=generator, cond_first=True)

    return median_time(fn, device, min_time, warmup, min_calls=3) / steps


def run(args) -> dict:
    device = args.device
    dtype = getattr(torch, args.dtype)
    results = {
        "device": device,
        "machine": machine_name(device),
        "torch": torch.__version__,
        "gmflow": gmflow.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch": args.batch,
        "guided_batch": 2 * args.batch,
        "gm_steps_timed": args.steps,
        "backends": {name: row for name, row in gm_info.backend_table().items()},
        "rows": [],
    }
    K, C, size = GMDIT_IMAGENET_K8.num_gaussians, GMDIT_IMAGENET_K8.in_channels, GMDIT_IMAGENET_K8.sample_size
    gm_ms = {}
    for solver in SOLVERS:
        gm_ms[solver] = 1e3 * gm_step_time(solver, args.batch, K, C, size, device, args.steps, args.min_time,
                                           args.warmup)
    results["gm_ms_per_step"] = gm_ms
    print(f"GM math per step (B={args.batch}, K={K}, {C}x{size}x{size}, guidance + 2nd order): "
          + ", ".join(f"{s} {v:.2f} ms" for s, v in gm_ms.items()), flush=True)
    print(f"{'config':<40} {'params':>12} {'fwd ms':>10} " + " ".join(f"{s + ' share':>13}" for s in SOLVERS))
    for name in args.configs:
        model = build(CONFIGS[name], device, dtype)
        params = sum(p.numel() for p in model.parameters())
        fwd = 1e3 * forward_time(model, args.batch, device, args.min_time, args.warmup)
        rows = [(name, params, fwd, False)]
        if name == "full-width-1block":
            del model
            two = build(dataclasses.replace(CONFIGS[name], num_layers=2), device, dtype)
            fwd2 = 1e3 * forward_time(two, args.batch, device, args.min_time, args.warmup)
            del two
            per_block = max(fwd2 - fwd, 0.0)
            full_params = sum(p.numel() for p in GMDiT(GMDIT_IMAGENET_K8).parameters()) if args.count_full else None
            rows.append(("full (extrapolated: t1 + 27 (t2 - t1))", full_params or 676_164_001,
                         fwd + (GMDIT_IMAGENET_K8.num_layers - 1) * per_block, True))
        for label, n_params, fwd_ms, extrapolated in rows:
            shares = {s: gm_ms[s] / (gm_ms[s] + fwd_ms) for s in SOLVERS}
            row = {"config": label, "params": n_params, "forward_ms": fwd_ms, "extrapolated": extrapolated,
                   "gm_ms": gm_ms, "gm_share": shares}
            results["rows"].append(row)
            print(f"{label:<40} {n_params:>12,} {fwd_ms:>10.2f} "
                  + " ".join(f"{100 * shares[s]:>12.2f}%" for s in SOLVERS), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="default: tiny full-width-1block on CPU, full on CUDA")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="transformer dtype (default float32 on CPU, bfloat16 on CUDA); the GM math is float32")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 4 on CPU, 8 on CUDA)")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps per timed GM loop (default 8)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--count-full", action="store_true", help="instantiate the full model to count parameters")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<machine>/bench_pipeline.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device available", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    args.configs = args.configs or (["full"] if cuda else ["tiny", "full-width-1block"])
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch = args.batch or (8 if cuda else 4)
    if args.quick:
        args.min_time, args.warmup, args.steps = 0.0, 0, 2
        args.configs = [c for c in args.configs if c == "tiny"] or ["tiny"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"gmflow {gmflow.__version__}, torch {torch.__version__}, device {machine_name(args.device)}, "
          f"{torch.get_num_threads()} threads, transformer {args.dtype}")
    results = run(args)
    out = args.out or Path(__file__).parent / "results" / results["machine"] / "bench_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
