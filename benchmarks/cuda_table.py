"""One table of every gmflow op on the GPU: max error vs the native CPU kernel on the same inputs,
median time, achieved bandwidth and its fraction of a device memcpy of the same bytes.

Bytes are the compulsory traffic: every tensor argument read once plus every output written
once; the memcpy baseline copies half that many bytes (a copy reads and writes each byte).

    python benchmarks/cuda_table.py --out table.json          # needs a GPU and the CUDA library
    python benchmarks/cuda_table.py --dry-run                 # CPU only: checks this script's path
                                                              # (the emulated CUDA kernels if built)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ops  # noqa: E402  (median_time, memcpy_time, make_inputs)

from gmflow.reference.transport import gm_kr_rotation  # noqa: E402
from gmflow.types import GaussianMixture  # noqa: E402

SHAPE = (8, 8, 4, 32, 32)  # B, K, C, H, W: the imagenet-latent benchmark shape
DRY_SHAPE = (2, 3, 2, 4, 5)


def op_calls(shape, device) -> dict[str, tuple]:
    """op name -> positional arguments, on `device`; backward ops get their forward outputs."""
    B, K, C, H, W = shape
    means, logstds, logweights, samples = bench_ops.make_inputs(shape, device)
    g = torch.Generator().manual_seed(1)

    def rand(*size, low=0.0, high=1.0):
        return (low + (high - low) * torch.rand(*size, generator=g)).to(device)

    def randn(*size):
        return torch.randn(*size, generator=g).to(device)

    ops = torch.ops.gmflow
    x_src, x_tgt = randn(B, C, H, W), randn(B, C, H, W)
    sigma_src = rand(B, low=0.4, high=0.9)
    sigma_tgt = sigma_src * 0.7
    g_var = rand(B, 1, H, W, low=0.1, high=1.1)
    rotation = gm_kr_rotation(GaussianMixture(means, logstds, logweights))
    uniforms = rand(*samples.shape[:-3], 1, H, W)
    m1, w1, c1 = means[:, :, 0], logweights[:, :, 0], torch.tanh(samples[:, :, 0])
    s1 = logstds[:, :, 0]

    logprob = ops.gm_logprob(means, logstds, logweights, samples)
    mean = ops.gm_to_mean(means, logweights, 1.0)
    post = ops.gm_posterior_mean(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, 1e-6)
    roots = ops.gm1d_inverse_cdf(m1, s1, w1, c1, None, 8, 1e-6, 1.5)
    return {
        "gm_logprob": (means, logstds, logweights, samples),
        "gm_logprob_backward": (randn(*logprob.shape), means, logstds, logweights, samples, logprob, [True] * 4),
        "gm_to_mean": (means, logweights, 1.0),
        "gm_to_mean_backward": (randn(*mean.shape), means, logweights, mean, 1.0, [True, True]),
        "gm_to_iso_gaussian": (means, logstds, logweights),
        "gm_mul_iso_gaussian": (means, logstds, logweights, x_tgt, g_var, 1.0, 1.0, 1e-6),
        "gm_posterior_mean": (means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, 1e-6),
        "gm_posterior_mean_backward": (randn(*post.shape), means, logstds, logweights, x_src, x_tgt, sigma_src,
                                       sigma_tgt, post, 1e-6, [True] * 3),
        "gm1d_inverse_cdf": (m1, s1, w1, c1, None, 8, 1e-6, 1.5),
        "gm1d_inverse_cdf_backward": (randn(*roots.shape), m1, s1, w1, c1, roots, 1e-6, [True] * 4),
        "gm_kr_inverse": (means, logstds, logweights, samples, rotation, uniforms, C - 1, 16, 1e-6, 1.5),
        "gm_kr_forward": (means, logstds, logweights, samples, rotation, None, 1e-6),
        "gm_sample": (means, logstds, logweights, uniforms, samples, 1.0, False),
    }


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def max_error(out, expected) -> float:
    errors = [(a.double().cpu() - e.double()).abs().max().item() for a, e in zip(_tensors(out), _tensors(expected))
              if e.numel()]
    return max(errors, default=0.0)


def run(device: str, impl, shape, min_time: float) -> list[dict]:
    rows = []
    calls = op_calls(shape, device)
    for name, args in calls.items():
        fn = getattr(impl, name)
        out = fn(*args)
        expected = getattr(torch.ops.gmflow, name)(*_to(args, "cpu"))
        seconds = bench_ops.median_time(lambda: fn(*args), device, min_time, warmup=3)
        num_bytes = sum(t.numel() * t.element_size() for t in _tensors(args) + _tensors(out))
        memcpy = bench_ops.memcpy_time(num_bytes // 2, device, min_time)
        rows.append({
            "op": name,
            "max_error_vs_cpu": max_error(out, expected),
            "ms": seconds * 1e3,
            "bytes": num_bytes,
            "GBps": num_bytes / seconds / 1e9,
            "fraction_of_memcpy": memcpy / seconds,
        })
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'op':<28} {'max err vs CPU':>15} {'time ms':>9} {'GB/s':>8} {'% memcpy':>9}")
    for r in rows:
        print(f"{r['op']:<28} {r['max_error_vs_cpu']:>15.3e} {r['ms']:>9.3f} {r['GBps']:>8.1f} "
              f"{100 * r['fraction_of_memcpy']:>8.1f}%")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny shape (checks the script)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds of timing per measurement")
    parser.add_argument("--out", type=Path, help="JSON path of the rows")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, shape, impl, title = "cpu", DRY_SHAPE, torch.ops.gmflow, "dry run: native CPU ops on CPU"
        try:
            from gmflow import testing

            impl, title = testing.load_cuda_emulation(), "dry run: emulated CUDA kernels on CPU"
        except RuntimeError as error:
            print(f"(no CUDA emulation: {error})")
        min_time = min(args.min_time, 0.01)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --dry-run", file=sys.stderr)
            return 2
        device, shape, impl, min_time = "cuda", SHAPE, torch.ops.gmflow, args.min_time
        title = f"CUDA kernels on {torch.cuda.get_device_name()} (B, K, C, H, W) = {SHAPE}, fp32"
    rows = run(device, impl, shape, min_time)
    print_table(rows, title)
    if args.out:
        args.out.write_text(json.dumps({"title": title, "shape": list(shape), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
