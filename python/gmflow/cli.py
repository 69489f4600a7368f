"""The ``gmflow`` command line.

    gmflow demo      fit a 64-component Gaussian mixture to the 2-D checkerboard by
                     maximum likelihood with the native gm_logprob kernel, then sample it
    gmflow info      same as ``python -m gmflow.info``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def checkerboard(n: int, generator: torch.Generator, scale: float = 4.0) -> torch.Tensor:
    """n points uniform on the 8 white squares of a 4x4 board spanning [-scale, scale]^2."""
    cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float32)
    pick = torch.randint(0, len(cells), (n,), generator=generator)
    uv = torch.rand(n, 2, generator=generator)
    return ((cells[pick] + uv) * 0.5 - 1.0) * scale


def inside_white_squares(points: torch.Tensor, scale: float = 4.0) -> torch.Tensor:
    cell = torch.floor((points / scale + 1.0) * 2.0)
    inside = ((cell >= 0) & (cell <= 3)).all(dim=-1)
    return inside & ((cell.sum(dim=-1) % 2) == 0)


def run_demo(args: argparse.Namespace) -> dict:
    from gmflow import GaussianMixture, ops
    from gmflow.info import collect

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    backend = collect()["backends"]["gm_logprob"]["CPU"]
    print(f"gmflow demo: fitting a K={args.k} Gaussian mixture to the checkerboard (gm_logprob backend: {backend})")
    data = checkerboard(args.points, generator).reshape(1, -1, 2, 1, 1)  # (batch, N, C, H, W)
    means = (torch.rand(1, args.k, 2, 1, 1, generator=generator) * 8 - 4).requires_grad_()
    logstd = torch.full((1, 1, 1, 1, 1), -0.5, requires_grad=True)
    logits = torch.zeros(1, args.k, 1, 1, 1, requires_grad=True)
    optimizer = torch.optim.Adam([means, logstd, logits], lr=args.lr)
    start = time.perf_counter()
    history = []
    for step in range(1, args.steps + 1):
        batch = data[:, torch.randint(0, data.shape[1], (args.batch_size,), generator=generator)]
        gm = GaussianMixture(means, logstd, torch.log_softmax(logits, dim=-4))
        nll = -ops.gm_logprob(gm, batch).mean() / 2  # nats per dimension
        optimizer.zero_grad(set_to_none=True)
        nll.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == 1:
            history.append({"step": step, "nll": nll.item()})
            print(f"  step {step:5d}  NLL {nll.item():.4f} nats/dim")
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        gm = GaussianMixture(means, logstd, torch.log_softmax(logits, dim=-4))
        samples = ops.gm_to_sample(gm, n_samples=args.samples, generator=generator)[0, :, :, 0, 0]
        inside = inside_white_squares(samples).float().mean().item()
        data_inside = inside_white_squares(checkerboard(args.samples, generator)).float().mean().item()
    summary = {
        "k": args.k,
        "steps": args.steps,
        "seconds": elapsed,
        "final_nll": history[-1]["nll"],
        "fraction_inside_white_squares": inside,
        "data_fraction_inside": data_inside,
        "history": history,
    }
    print(f"fitted in {elapsed:.1f} s; {100 * inside:.1f}% of {args.samples} samples fall in the white squares "
          f"(data: {100 * data_inside:.1f}%)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.out}")
    return summary


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmflow", description="Gaussian Mixture Flow Matching tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit a Gaussian mixture to the 2-D checkerboard with the native ops")
    demo.add_argument("--k", type=positive_int, default=64, help="mixture components (default 64)")
    demo.add_argument("--steps", type=positive_int, default=400, help="Adam steps (default 400)")
    demo.add_argument("--batch-size", type=positive_int, default=4096)
    demo.add_argument("--points", type=positive_int, default=200_000, help="size of the data set")
    demo.add_argument("--samples", type=positive_int, default=100_000, help="samples drawn at the end")
    demo.add_argument("--lr", type=positive_float, default=0.05)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--log-every", type=positive_int, default=50)
    demo.add_argument("--out", type=Path, help="write a JSON summary here")
    sub.add_parser("info", help="native libraries and the backend of every op")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        run_demo(args)
        return 0
    if args.command == "info":
        from gmflow.info import main as info_main

        return info_main([])
    return 2


if __name__ == "__main__":
    sys.exit(main())
