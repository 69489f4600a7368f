"""The ``gmflow`` command line.

    gmflow toy       the main job: train GMFlow (K=64) and a K=1 flow-matching baseline on the
                     2-D checkerboard, sample them with GM-SDE2 / GM-ODE2 / Euler at several
                     NFEs, score the samples against the exact density, write .npy/JSON/PNG
    gmflow sample    class-conditional ImageNet images from a GM-DiT pipeline folder (the layout of
                     Lakonik/gmflow_imagenet_k8_ema): GM-ODE 2 / GM-SDE 2 with probabilistic guidance
    gmflow cache-latents   ImageNet folder + list file -> SD-VAE latents (one .pth per image), resumable,
                     sharded over torchrun ranks
    gmflow train     train GM-DiT on cached latents (plain or under torchrun), exact resume
    gmflow evaluate  sweep solvers x guidance scales: FID / IS / precision / recall, resumable table
    gmflow demo      fit a 64-component Gaussian mixture to the 2-D checkerboard by
                     maximum likelihood with the native gm_logprob kernel, then sample it
    gmflow info      same as ``python -m gmflow.info``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from gmflow import GMFlowInputError
from gmflow.toy.data import Checkerboard


def run_demo(args: argparse.Namespace) -> dict:
    from gmflow import GaussianMixture, ops
    from gmflow.info import collect

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    backend = collect()["backends"]["gm_logprob"]["CPU"]
    print(f"gmflow demo: fitting a K={args.k} Gaussian mixture to the checkerboard (gm_logprob backend: {backend})")
    board = Checkerboard()
    data = board.sample(args.points, generator).reshape(1, -1, 2, 1, 1)  # (batch, N, C, H, W)
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
        inside = board.inside(samples).float().mean().item()
        data_inside = board.inside(board.sample(args.samples, generator)).float().mean().item()
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


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def device_name(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} requested but CUDA is not available in this torch")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise argparse.ArgumentTypeError(f"unsupported device type {device.type!r}")
    return str(device)


def add_toy_parser(sub) -> None:
    from gmflow.toy.train import ToyTrainConfig

    d = ToyTrainConfig()
    toy = sub.add_parser(
        "toy",
        help="main job: GMFlow vs flow matching on the 2-D checkerboard (train, sample, score, plot)",
        description="Train GMFlow (K components, transition loss) and a K=1 flow-matching baseline with the "
        "same budget on the 2-D checkerboard, sample both (GM-SDE2 / GM-ODE2 at --nfe, Euler at "
        "--baseline-nfe), score the samples against the exact density (fraction inside the white squares, "
        "Jensen-Shannon divergence of 64x64 histograms, sliced Wasserstein-1) and write OUT/samples/*.npy, "
        "OUT/metrics.json and the figures OUT/toy_grid.png, OUT/toy_metrics.png, OUT/toy_loss.png.",
    )
    toy.add_argument("--k", type=positive_int, default=d.k, help=f"mixture components of GMFlow (default {d.k})")
    toy.add_argument("--iters", type=positive_int, default=d.iters, help=f"training iterations per model (default {d.iters})")
    toy.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    toy.add_argument("--lr", type=positive_float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    toy.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule,
                     help=f"after the warm-up: cosine decay to 0.1 lr, or constant (default {d.lr_schedule})")
    toy.add_argument("--warmup", type=nonnegative_int, default=d.warmup, help=f"linear warm-up iterations (default {d.warmup})")
    toy.add_argument("--trans-ratio", type=unit_interval, default=d.trans_ratio,
                     help=f"transition ratio lambda in (0, 1]; 1 = plain x0 NLL (default {d.trans_ratio})")
    toy.add_argument("--timestep-shift", type=positive_float, default=d.timestep_shift,
                     help=f"shift of the training timestep sampler; < 1 favours low noise (default {d.timestep_shift})")
    toy.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the karras EMA")
    toy.add_argument("--hidden-dim", type=positive_int, default=d.hidden_dim,
                     help=f"MLP width (default {d.hidden_dim}; the paper's model: 512)")
    toy.add_argument("--num-layers", type=positive_int, default=d.num_layers,
                     help=f"MLP depth (default {d.num_layers}; the paper's model: 5)")
    toy.add_argument("--nfe", type=positive_int, nargs="+", default=[1, 2, 4, 8],
                     help="NFEs of the GMFlow solvers (default 1 2 4 8)")
    toy.add_argument("--baseline-nfe", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                     help="NFEs of the Euler baseline (default 1 2 4 8 16 32)")
    toy.add_argument("--ode-substeps-total", type=positive_int, default=128,
                     help="GM-ODE sub-steps per trajectory: ceil(this / NFE) per step (default 128, as the paper)")
    toy.add_argument("--sde-temperature", type=positive_float, default=0.8,
                     help="scale of the component stds at the last GM-SDE step; < 1 sharpens the final draw, "
                     "1 is the model's own (default 0.8)")
    toy.add_argument("--no-baseline", action="store_true", help="skip the K=1 flow-matching baseline")
    toy.add_argument("--samples", type=positive_int, default=100_000, help="points per setting (default 100000)")
    toy.add_argument("--seed", type=nonnegative_int, default=0, help="seed of training and sampling (default 0)")
    toy.add_argument("--device", type=device_name, default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    toy.add_argument("--out", type=Path, default=Path("out/toy"), help="output directory (default out/toy)")
    toy.add_argument("--reuse-checkpoints", action="store_true",
                     help="load OUT/checkpoints/*.pt instead of training when their config matches")
    toy.add_argument("--log-every", type=positive_int, default=d.log_every, help=f"loss log period (default {d.log_every})")
    toy.add_argument("--no-progress", action="store_true", help="no progress bars")
    toy.add_argument("--threads", type=positive_int, default=None,
                     help="torch intra-op threads in total (default: torch's choice, one per core)")
    toy.add_argument("--replot", type=Path, default=None, metavar="OUT",
                     help="only redraw the figures of a finished run in OUT from its metrics.json and samples "
                     "(no training, no sampling)")
    toy.add_argument("--jobs", type=positive_int, default=2,
                     help="worker processes on CPU: the two models train and sample side by side, each with "
                     "threads/jobs threads (default 2; 1 = everything in this process)")


def run_toy(args: argparse.Namespace) -> dict:
    from gmflow.toy.experiment import ToyExperiment, run_toy_experiment
    from gmflow.toy.train import ToyTrainConfig

    if args.replot is not None:
        from gmflow.toy.figures import replot

        try:
            paths = replot(args.replot)
        except FileNotFoundError as exc:
            raise SystemExit(f"gmflow toy --replot: {exc}") from None
        print("wrote " + ", ".join(str(p) for p in paths))
        return {"figures": [str(p) for p in paths]}
    train = ToyTrainConfig(
        k=args.k, iters=args.iters, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        lr_schedule=args.lr_schedule,
        trans_ratio=args.trans_ratio, timestep_shift=args.timestep_shift, ema=not args.no_ema,
        hidden_dim=args.hidden_dim, num_layers=args.num_layers,
        seed=args.seed, device=args.device, log_every=args.log_every,
    )
    exp = ToyExperiment(
        train=train, gm_nfe=tuple(sorted(set(args.nfe))), baseline=not args.no_baseline,
        baseline_nfe=tuple(sorted(set(args.baseline_nfe))), samples=args.samples, out=args.out,
        reuse_checkpoints=args.reuse_checkpoints, progress=not args.no_progress,
        ode_total_substeps=args.ode_substeps_total, sde_temperature=args.sde_temperature, jobs=args.jobs,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"gmflow toy: K={args.k} and the K=1 baseline, {args.iters} iterations x batch {args.batch_size} each, "
          f"device {args.device}, {torch.get_num_threads()} threads in {args.jobs} job(s), output {args.out}")
    return run_toy_experiment(exp)


def guidance_scale(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"probabilistic guidance must be in [0, 1), got {text}")
    return value


def add_sample_parser(sub) -> None:
    sample = sub.add_parser(
        "sample",
        help="class-conditional ImageNet samples from a GM-DiT checkpoint folder",
        description="Sample one image per label with a GM-DiT pipeline folder in the layout of "
        "Lakonik/gmflow_imagenet_k8_ema (local only: nothing is downloaded) and write OUT/<i>_<label>.png. "
        "Decoding needs the optional extra gmflow[diffusers]; without it the latents are written to "
        "OUT/latents.npy.",
    )
    sample.add_argument("--checkpoint", type=Path, required=True, help="local pipeline folder (model_index.json, "
                        "transformer/, spectrum_net/, scheduler/, vae/)")
    sample.add_argument("--labels", nargs="+", required=True,
                        help="ImageNet label names (any synonym in id2label, e.g. jay magpie) or class ids")
    sample.add_argument("--solver", default="gm-ode2",
                        help="gm-ode2 (default): 2nd-order GM-ODE with analytic sub-steps; gm-sde2: 2nd-order GM-SDE "
                        "with spectral sampling; gm-ode1 / gm-sde1: first order")
    sample.add_argument("--steps", type=positive_int, default=32, help="network evaluations (default 32)")
    sample.add_argument("--substeps", type=positive_int, default=None,
                        help="GM-ODE sub-steps per network evaluation (default 4; GM-SDE uses 1)")
    sample.add_argument("--guidance", type=guidance_scale, default=0.45,
                        help="probabilistic guidance w in [0, 1), 0 = none (default 0.45)")
    sample.add_argument("--orthogonal-guidance", type=float, default=1.0, help="orthogonal projection (default 1.0)")
    sample.add_argument("--seed", type=int, default=42, help="seed of the torch.Generator of every draw (default 42)")
    sample.add_argument("--variant", default=None,
                        help="weight file variant, e.g. bf16 (default: the plain file, or the only variant present)")
    sample.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="network dtype; the GM math is always float32 (auto: bfloat16 on CUDA, float32 on CPU)")
    sample.add_argument("--device", type=device_name, default=None, help="torch device (default cuda if available)")
    sample.add_argument("--out", type=Path, default=Path("out/samples"), help="output directory (default out/samples)")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_sample(args: argparse.Namespace) -> list[Path]:
    import re

    import numpy as np

    from gmflow.flow import GM_SOLVERS, SUBSTEP_SOLVERS, SamplerSpec, parse_solver
    from gmflow.pipelines import GMDiTPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype == "auto":
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    solver = parse_solver(args.solver, GM_SOLVERS, "--solver")
    substeps = args.substeps if args.substeps is not None else (4 if solver in SUBSTEP_SOLVERS else 1)
    spec = SamplerSpec(solver, args.steps, substeps, args.guidance, args.orthogonal_guidance)
    pipe = GMDiTPipeline.from_pretrained(args.checkpoint, variant=args.variant, torch_dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=args.no_progress)
    ids = pipe.get_label_ids(args.labels)
    print(f"gmflow sample: {args.solver}, {args.steps} steps x {substeps} sub-steps, guidance {args.guidance}, "
          f"seed {args.seed}, labels {ids}, {device} {str(dtype).replace('torch.', '')}")
    start = time.perf_counter()
    out = pipe(ids, sampler=spec, generator=torch.Generator().manual_seed(args.seed), output_type="pil")
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if out.images is None:
        path = args.out / "latents.npy"
        np.save(path, out.latents.cpu().numpy())
        written.append(path)
        print(f"no VAE: wrote the latents {tuple(out.latents.shape)} to {path}; for PNGs install "
              "`pip install 'gmflow[diffusers]'` and keep the SD-VAE in <checkpoint>/vae")
    else:
        for i, (word, image) in enumerate(zip(args.labels, out.images)):
            slug = re.sub(r"[^A-Za-z0-9]+", "_", str(word)).strip("_") or "label"
            path = args.out / f"{i:03d}_{slug}.png"
            image.save(path)
            written.append(path)
    print(f"sampled {len(ids)} in {elapsed:.1f} s; wrote {', '.join(str(p) for p in written)}")
    return written


# -- ImageNet: cache-latents, train, evaluate -------------------------------------------------------------------
def add_cache_parser(sub) -> None:
    p = sub.add_parser(
        "cache-latents",
        help="encode ImageNet images into SD-VAE latents (one .pth per image; resumable; torchrun-sharded)",
        description="ADM center crop to --image-size, a random horizontal flip decided once per image, the VAE "
        "posterior sample x scaling_factor (0.18215), written to OUT/<wnid>/<file>.pth as {x, y} plus the list "
        "OUT.txt. Images already cached are skipped; under torchrun each rank takes every WORLD-th entry. The "
        "VAE is a local diffusers AutoencoderKL folder (gmflow[diffusers]); nothing is downloaded.",
    )
    p.add_argument("--images", type=Path, required=True, help="image root, e.g. data/imagenet/train")
    p.add_argument("--list", type=Path, required=True, help="list file of '<wnid>/<file>.JPEG <label>' lines")
    p.add_argument("--vae", type=Path, required=True, help="local AutoencoderKL folder (e.g. sd-vae-ft-ema)")
    p.add_argument("--out", type=Path, required=True, help="output root, e.g. data/imagenet/train_cache")
    p.add_argument("--out-list", type=Path, default=None, help="output list file (default OUT.txt)")
    p.add_argument("--image-size", type=positive_int, default=256, help="crop size (default 256)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per VAE call (default 32)")
    p.add_argument("--workers", type=nonnegative_int, default=4, help="DataLoader workers (default 4)")
    p.add_argument("--seed", type=int, default=2021, help="seed of the flips and posterior draws (default 2021)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="VAE dtype (default float32)")
    p.add_argument("--device", default=None, help="torch device (default: cuda:<local rank> if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cache_latents(args: argparse.Namespace) -> int:
    from gmflow.data import cache_latents

    result = cache_latents(args.images, args.list, args.vae, args.out, args.out_list, image_size=args.image_size,
                           batch_size=args.batch_size, num_workers=args.workers, seed=args.seed, device=args.device,
                           dtype=getattr(torch, args.dtype), progress=not args.no_progress)
    listed = f"; wrote {result.list_file}" if result.list_file else ""
    print(f"cache-latents: {result.written} written, {result.skipped} already cached (of {result.total} in the list) "
          f"in {result.seconds:.1f} s{listed}")
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train GM-DiT on cached latents (torchrun: NCCL on GPU, gloo on CPU; exact resume)",
        description="Train GM-DiT with the GMFlow transition + spectral losses on the latents of "
        "`gmflow cache-latents`. Launch plainly or with `torchrun --nproc_per_node N -m gmflow.cli train ...`. "
        "The config is a JSON file of TrainConfig fields (`gmflow train --print-config` shows the defaults, the "
        "paper's run); --set overrides single fields. Checkpoints go to WORK_DIR/checkpoints (latest.pth); by "
        "default a run resumes from the newest complete one, bit-identically.",
    )
    p.add_argument("--config", type=Path, default=None, help="JSON config (default: the paper's run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set iters=1000 --set model.num_layers=12 (repeatable)")
    p.add_argument("--work-dir", default=None, help="run directory (checkpoints, logs, TensorBoard)")
    p.add_argument("--resume", default="auto",
                   help="auto (default: the newest loadable checkpoint of the work dir), none, or a checkpoint path")
    p.add_argument("--no-validate", action="store_true", help="skip the validation hook")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    from gmflow.train import TrainConfig, Trainer, apply_overrides

    data = TrainConfig.from_file(args.config).to_dict() if args.config else TrainConfig().to_dict()
    overrides = list(args.overrides)
    if args.work_dir is not None:
        overrides.append(f"work_dir={json.dumps(str(args.work_dir))}")
    if args.no_progress:
        overrides.append("progress=false")
    config = TrainConfig.from_dict(apply_overrides(data, overrides))
    if args.print_config:
        print(config.to_json())
        return 0
    summary = Trainer(config, resume=args.resume, validate=not args.no_validate).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        src = f" (resumed from {summary.resumed_from})" if summary.resumed_from else ""
        print(f"gmflow train: iterations {summary.start_iter} -> {summary.end_iter}{src}; work dir {summary.work_dir}")
    return 0


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="sweep GM solvers x guidance scales; FID / IS / precision / recall; resumable results table",
        description="Sample the deterministic 50K test set (label of item i from seed i, noise from seed i+1000) "
        "with every setting of the sweep (default: the paper's 80: NFE/sub-steps 8/16 and 32/4, gm-ode2 and "
        "gm-sde2, 20 guidance scales), decode with the VAE, score against the reference statistics and write "
        "OUT/results/<setting>.json, OUT/results.md, OUT/results.csv. Settings already done are skipped. Runs "
        "under torchrun (the items are sharded). Every file is local; nothing is downloaded.",
    )
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="pipeline folder (model_index.json layout) or training checkpoint iter_N.pth (EMA weights)")
    p.add_argument("--inception", type=Path, required=True,
                   help="TorchScript Inception-v3 (NVIDIA inception-2015-12-05.pt), a local file")
    p.add_argument("--reference", type=Path, required=True,
                   help="reference statistics: .pkl (mean, cov, real_feats_np), .npz or .pt")
    p.add_argument("--vae", type=Path, default=None, help="AutoencoderKL folder (default: the pipeline's vae/)")
    p.add_argument("--out", type=Path, default=Path("out/eval"), help="output directory (default out/eval)")
    p.add_argument("--solvers", "--methods", dest="solvers", nargs="+", default=["gm-ode2", "gm-sde2"],
                   help="GM solvers: gm-ode2, gm-sde2, gm-ode1, gm-sde1 (default gm-ode2 gm-sde2); the results keep "
                   "upstream's names, e.g. gmode2_g0.04_step16_sub8")
    p.add_argument("--nfe", nargs="+", default=["8:16", "32:4"], metavar="NFE:SUBSTEPS",
                   help="NFE and GM-ODE sub-steps pairs (default 8:16 32:4; GM-SDE uses 1 sub-step)")
    p.add_argument("--guidance", type=guidance_scale, nargs="+", default=None,
                   help="probabilistic guidance scales (default: the paper's 20, 0.02 ... 0.75)")
    p.add_argument("--num-samples", type=positive_int, default=50_000, help="test items (default 50000)")
    p.add_argument("--batch-size", type=positive_int, default=125, help="items per rank and batch (default 125)")
    p.add_argument("--seed", type=int, default=2021, help="seed of the GM-SDE draws (default 2021)")
    p.add_argument("--viz-every", type=nonnegative_int, default=256,
                   help="save the PNGs of every Nth batch (0: none; default 256)")
    p.add_argument("--class-names", type=Path, default=None, help="imagenet1000_clsidx_to_labels.txt for PNG names")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="network dtype (auto: bfloat16 on CUDA, float32 on CPU); the GM math is float32")
    p.add_argument("--device", default=None, help="torch device (default: cuda:<local rank> if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _nfe_pair(text: str) -> tuple[int, int]:
    nfe, _, sub = text.partition(":")
    try:
        pair = (int(nfe), int(sub or 1))
    except ValueError:
        raise ValueError(f"--nfe takes NFE:SUBSTEPS pairs like 8:16, got {text!r}") from None
    if min(pair) < 1:
        raise ValueError(f"--nfe values must be positive, got {text!r}")
    return pair


def load_eval_model(checkpoint: str | os.PathLike, dtype: torch.dtype = torch.float32, device=None,
                    vae_path: str | os.PathLike | None = None, use_ema: bool = True):
    """``(transformer, spectrum_net | None, vae | None, id2label)`` from a pipeline folder or a training
    checkpoint file (EMA weights unless ``use_ema=False``); ``vae_path`` overrides / supplies the VAE."""
    from gmflow.data.cache import load_vae_for_caching
    from gmflow.pipelines import GMDiTPipeline
    from gmflow.train.checkpoint import load_checkpoint, trained_models

    path = Path(checkpoint)
    vae, id2label = None, {}
    if path.is_dir():
        pipe = GMDiTPipeline.from_pretrained(path, torch_dtype=dtype, device=device, load_vae=vae_path is None)
        transformer, spectrum, vae, id2label = pipe.transformer, pipe.spectrum_net, pipe.vae, pipe.id2label
    elif path.is_file():
        transformer, spectrum, config = trained_models(load_checkpoint(path), use_ema, dtype, device)
        vae_path = vae_path if vae_path is not None else config.get("vae_path") or None
    else:
        raise FileNotFoundError(f"{path}: neither a pipeline folder nor a training checkpoint file")
    if vae_path is not None:
        vae = load_vae_for_caching(vae_path, dtype, device)
    return transformer, spectrum, vae, id2label


def run_evaluate(args: argparse.Namespace) -> int:
    from gmflow import distributed as gdist
    from gmflow.data.imagenet import read_class_names
    from gmflow.evaluation.metrics import InceptionFeatureNet, InceptionMetrics, load_reference_stats
    from gmflow.evaluation.sweep import PAPER_GUIDANCE, run_sweep, sweep_settings

    info = gdist.init_distributed(args.device)
    try:
        dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
            torch.bfloat16 if info.device.type == "cuda" else torch.float32)
        settings = sweep_settings(args.solvers, [_nfe_pair(t) for t in args.nfe], args.guidance or PAPER_GUIDANCE)
        net = InceptionFeatureNet(args.inception, info.device)
        metrics = InceptionMetrics(net, load_reference_stats(args.reference, net))
        transformer, spectrum, vae, id2label = load_eval_model(args.checkpoint, dtype, info.device, args.vae)
        if vae is None:
            raise ValueError("no VAE: pass --vae <AutoencoderKL folder> (images are needed for the Inception metrics)")
        names = read_class_names(args.class_names) if args.class_names else id2label
        if info.is_main:
            print(f"gmflow evaluate: {len(settings)} settings x {args.num_samples} samples, {info.world_size} rank(s), "
                  f"{info.device} {str(dtype).replace('torch.', '')}, output {args.out}")
        results = run_sweep(transformer, settings, args.out, metrics, vae, spectrum, args.num_samples, args.batch_size,
                            args.seed, args.viz_every, names, progress=not args.no_progress)
        if info.is_main:
            print(f"wrote {args.out / 'results.md'} and {args.out / 'results.csv'} ({len(results)} settings)")
    finally:
        gdist.cleanup_distributed(info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmflow", description="Gaussian Mixture Flow Matching tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_toy_parser(sub)
    add_sample_parser(sub)
    add_cache_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
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


def run_info(args: argparse.Namespace) -> int:
    from gmflow.info import main as info_main

    return info_main([])


COMMANDS = {"toy": run_toy, "sample": run_sample, "cache-latents": run_cache_latents, "train": run_train,
            "evaluate": run_evaluate, "demo": run_demo, "info": run_info}
# errors besides GMFlowInputError that a command reports as one line (exit code 2) instead of a traceback
REPORTED_ERRORS = {"sample": (ValueError,), "cache-latents": (ValueError, FileNotFoundError, ImportError),
                   "train": (ValueError, FileNotFoundError, ImportError),
                   "evaluate": (ValueError, FileNotFoundError, ImportError)}


def main(argv: list[str] | None = None) -> int:
    """Runs one command; bad input (:class:`gmflow.GMFlowInputError`) is printed as one line, exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except (GMFlowInputError, *REPORTED_ERRORS.get(args.command, ())) as exc:
        print(f"gmflow {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
