"""The ImageNet GM-DiT trainer (docs/training.md, docs/models.md), plain or under ``torchrun``.

::

    torchrun --nproc_per_node 8 -m gmflow.cli train --config run.json      # NCCL on GPUs
    gmflow train --config run.json --set device=cpu                        # one process (gloo if torchrun'd)

Each iteration: the batch of this iteration (a pure function of the seed and the iteration, see
:class:`gmflow.data.EpochBatchSampler`) -> micro-batches -> the GMFlow loss (:class:`GMFlowDiffusion`,
bf16 autocast around the network only) -> backward -> global-norm clipping from ``grad_clip_start`` with a
non-finite guard (gradients zeroed, the optimizer step still runs, the logged norm is NaN; gmflow's CPU
NaN checks are off during training so that a NaN reaches the guard on every device) -> AdamW
(8-bit when bitsandbytes is importable on CUDA) with linear warm-up -> EMA with the StyleGAN ramp-up ->
logs -> validation -> checkpoint -> hooks.

**Exact resume.** A checkpoint stores the model, the EMA, the optimizer, the iteration, the logging
accumulators and, gathered from *every* rank, the states of its training generator (timesteps and
noise), the global torch (and CUDA) RNG, numpy's and Python's. The data order and the label dropout are
functions of ``(seed, iteration)``, so restoring the iteration restores the sampler's position. A run
killed at any point (even SIGKILL while writing a checkpoint) and resumed with the same config and world
size therefore computes the same losses as the uninterrupted run — bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gmflow import config as gconfig
from gmflow import distributed as gdist
from gmflow.data.dataset import EpochBatchSampler, LatentDataset, ResumedBatches
from gmflow.flow.schedule import TimestepSampler
from gmflow.models import GMDiT, SpectrumMLP

from . import checkpoint as ckpt
from .config import TrainConfig
from .objective import GMFlowDiffusion
from .validation import ValidationHook

__all__ = ["TrainSummary", "Trainer", "build_diffusion", "build_optimizer", "ema_beta", "lr_at"]

logger = logging.getLogger(__name__)

Hook = Callable[["Trainer", int, dict], None]

# accumulator layout (float64 on the device): sums since the last log
_ACC_LOSS, _ACC_TRANS, _ACC_SPEC, _ACC_ITERS, _ACC_NONFINITE = range(5)
_ACC_QLOSS, _ACC_QVAR, _ACC_QCOUNT = 5, 9, 13
_ACC_SIZE = 17


def lr_at(config: TrainConfig, iteration: int) -> float:
    """Learning rate of (0-based) ``iteration``: linear warm-up from ``warmup_ratio lr`` over
    ``warmup_iters``, then constant (mmcv's linear warm-up)."""
    if config.warmup_iters and iteration < config.warmup_iters:
        return config.lr * (1 - (1 - iteration / config.warmup_iters) * (1 - config.warmup_ratio))
    return config.lr


def ema_beta(iteration: int, global_batch: int, ema_nimg: float = 30e6, rampup: float = 0.05) -> float:
    """StyleGAN ramp-up EMA momentum after (0-based) ``iteration``: ``n = iteration + 1``,
    ``nimg = min(ema_nimg, rampup n B)``, ``beta = 0.5^(B / nimg)`` (docs/training.md#ema)."""
    n = iteration + 1
    nimg = min(ema_nimg, rampup * n * global_batch) if rampup > 0 else ema_nimg
    return 0.5 ** (global_batch / max(nimg, 1e-8))


def build_diffusion(config: TrainConfig) -> GMFlowDiffusion:
    """The GM-DiT (+ spectrum net) with the objective of ``config`` (weights from the current torch seed)."""
    denoising = GMDiT(dict(config.model))
    spectrum = SpectrumMLP.from_config(config.spectrum_net) if config.spectrum_net else None
    sampler = TimestepSampler(shift=config.timestep_shift, logit_normal=config.logit_normal,
                              logit_normal_mean=config.logit_normal_mean, logit_normal_std=config.logit_normal_std)
    return GMFlowDiffusion(denoising, spectrum, config.trans_ratio, config.transition_loss_weight,
                           config.spectral_loss_weight, sampler, config.amp_dtype)


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter; weight decay 0 for names containing "bias". ``optimizer='auto'``
    uses bitsandbytes' 8-bit AdamW on CUDA when it imports, torch's AdamW otherwise."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kind = config.optimizer
    if kind in ("auto", "adamw8bit"):
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError:
            bnb = None
        if bnb is not None and (device.type == "cuda" or kind == "adamw8bit"):
            logger.info("optimizer: bitsandbytes AdamW8bit")
            return bnb.optim.AdamW8bit(groups, lr=config.lr, betas=tuple(config.betas))
        if kind == "adamw8bit":
            raise ImportError("optimizer='adamw8bit' needs bitsandbytes (pip install bitsandbytes)")
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))


@dataclass
class TrainSummary:
    start_iter: int  # iterations already done when this run started (resumed from)
    end_iter: int
    resumed_from: str | None
    last_record: dict = field(default_factory=dict)
    work_dir: str = ""


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _environment(info: gdist.DistInfo, threads: int) -> dict[str, Any]:
    import platform

    import gmflow

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": str(torch.__version__),
           "torch_cuda": torch.version.cuda, "gmflow": getattr(gmflow, "__version__", None),
           "world_size": info.world_size, "device": str(info.device), "threads": threads}
    if info.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(info.device)
    return env


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


class Trainer:
    """``Trainer(config, resume='auto', validate=True, hooks=())``; :meth:`fit` runs to ``config.iters``.

    ``resume``: ``'auto'`` (the newest loadable checkpoint of ``<work_dir>/checkpoints``, else a fresh
    start), ``'none'``, or a checkpoint path (an error if it does not load). ``hooks`` are called on
    every rank after each iteration as ``hook(trainer, iterations_done, record)`` (``record``: the logged
    values of that iteration, ``{}`` when nothing was logged).
    """

    def __init__(self, config: TrainConfig, resume: str = "auto", validate: bool = True,
                 hooks: Sequence[Hook] = ()) -> None:
        self.config = config
        self.resume = resume
        self.validate = validate
        self.hooks = list(hooks)
        self.iteration = 0  # iterations completed

    # -- set-up -------------------------------------------------------------------------------------------------
    def _setup_logging(self, work: Path) -> logging.Handler | None:
        if not self.info.is_main:
            return None
        handler = logging.FileHandler(work / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("gmflow").addHandler(handler)
        if logging.getLogger("gmflow").level == logging.NOTSET:
            logging.getLogger("gmflow").setLevel(logging.INFO)
        return handler

    def _select_checkpoint(self) -> str | None:
        """Rank 0 picks the checkpoint (broadcast to all ranks); errors are raised on every rank."""
        choice: tuple[str | None, str | None] = (None, None)
        if self.info.is_main and self.resume != "none":
            if self.resume == "auto":
                found = ckpt.find_resume_checkpoint(self.ckpt_dir)
                choice = (str(found[0]) if found else None, None)
            else:
                try:
                    ckpt.load_checkpoint(self.resume)
                    choice = (str(Path(self.resume).resolve()), None)
                except (ckpt.CheckpointCorruptError, FileNotFoundError) as exc:
                    choice = (None, f"cannot resume from {self.resume}: {exc}")
        path, error = gdist.broadcast_object(choice)
        if error:
            raise RuntimeError(error)
        return path

    def _restore(self, path: str) -> None:
        state = ckpt.load_checkpoint(path)
        sd = state["state_dict"]
        self.model.load_state_dict(ckpt.strip_prefix(sd, ckpt.MODEL_PREFIX))
        if self.ema is not None:
            ema_sd = ckpt.strip_prefix(sd, ckpt.EMA_PREFIX)
            if ema_sd:
                self.ema.load_state_dict(ema_sd)
            else:
                logger.warning("%s has no EMA weights: the EMA restarts from the current weights", path)
                self.ema.load_state_dict(self.model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"]["diffusion"])
        self.iteration = int(state["meta"]["iter"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            _set_rng_state(rngs[self.info.rank], self.generator, self.device)
        else:
            logger.warning("%s was written by %d rank(s), this run has %d: RNG streams are re-seeded, so the run "
                           "continues but not bit-identically", path, len(rngs), self.info.world_size)
            self.generator.manual_seed(self.config.seed + self.info.rank + 7919 * self.iteration)
        logs = state.get("logging") or {}
        if "acc" in logs and logs["acc"].numel() == _ACC_SIZE:
            self.acc.copy_(logs["acc"].to(self.acc))
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def _checkpoint_state(self) -> dict[str, Any]:
        cfg = self.config
        rngs = gdist.all_gather_objects(_rng_state(self.generator, self.device))
        sd = {f"{ckpt.MODEL_PREFIX}{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            for k, v in self.ema.state_dict().items():
                if cfg.fp16_ema_in_checkpoint and v.dtype == torch.float32:
                    v = v.half()
                sd[f"{ckpt.EMA_PREFIX}{k}"] = v
        epoch, batch_in_epoch = self.sampler.position(self.iteration)
        meta = {
            "format": ckpt.CHECKPOINT_FORMAT, "iter": self.iteration, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "time": time.time(), "seed": cfg.seed, "world_size": self.info.world_size,
            "global_batch": self.global_batch, "exp_name": Path(cfg.work_dir).name, "config": cfg.to_dict(),
            "torch": str(torch.__version__),
        }
        return {"meta": meta, "state_dict": sd, "optimizer": {"diffusion": self.optimizer.state_dict()}, "rng": rngs,
                "sampler": self.sampler.state_dict(self.iteration), "logging": {"acc": self.acc.cpu()}}

    # -- the loop -----------------------------------------------------------------------------------------------
    def fit(self) -> TrainSummary:
        cfg = self.config
        self.info = gdist.init_distributed(cfg.device)
        handler = None
        self.writer = None
        threads = torch.get_num_threads()
        checks = gconfig.value_checks()
        if checks == "auto":
            # a NaN must reach the non-finite guard on every device (the CPU NaN checks would raise instead)
            gconfig.set_value_checks("never")
        try:
            work = Path(cfg.work_dir)
            self.ckpt_dir = work / "checkpoints"
            if self.info.is_main:
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                _write_json_atomic(work / "config.json", cfg.to_dict())
                _write_json_atomic(work / "env.json", _environment(self.info, cfg.num_threads or torch.get_num_threads()))
            gdist.barrier()
            handler = self._setup_logging(work)
            return self._fit(work)
        finally:
            if self.writer is not None:
                self.writer.close()
            if handler is not None:
                logging.getLogger("gmflow").removeHandler(handler)
                handler.close()
            torch.set_num_threads(threads)
            gconfig.set_value_checks(checks)
            gdist.cleanup_distributed(self.info)

    def _fit(self, work: Path) -> TrainSummary:
        cfg, info = self.config, self.info
        self.device = device = info.device
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        amp_dtype = cfg.amp_dtype

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = model = build_diffusion(cfg).to(device)
        if cfg.gradient_checkpointing:
            model.denoising.enable_gradient_checkpointing()
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema else None
        self.optimizer = build_optimizer(model, cfg, device)
        dataset = LatentDataset(cfg.data_root, cfg.data_list, cfg.label_dropout, model.denoising.null_class, cfg.seed)
        self.sampler = EpochBatchSampler(len(dataset), cfg.batch_size * cfg.grad_accum, info.rank, info.world_size,
                                         cfg.seed)
        self.global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed + info.rank)
        self.acc = torch.zeros(_ACC_SIZE, dtype=torch.float64, device=device)
        torch.manual_seed(cfg.seed + info.rank)  # the global stream of this rank (unused by the loss)

        resumed_from = self._select_checkpoint()
        if resumed_from is not None:
            self._restore(resumed_from)
        start = self.iteration
        if start >= cfg.iters:
            logger.info("nothing to do: iteration %d >= iters %d", start, cfg.iters)
            return TrainSummary(start, start, resumed_from, {}, str(work))

        validation = None
        if self.validate and cfg.val_interval:
            validation = ValidationHook(cfg, info, work, progress=cfg.progress)
        ddp = model
        if info.distributed:
            # buffers are identical on every rank (the position code): no per-forward buffer broadcast
            ddp_args = inspect.signature(nn.parallel.DistributedDataParallel).parameters
            no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_args else {"broadcast_buffers": False}
            ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=False, **no_sync)
        if info.is_main and cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(work / "tb"), purge_step=start + 1 if start else None)
            except ImportError:
                logger.warning("tensorboard is not installed (pip install 'gmflow[train]'): no TensorBoard logs")
        metrics_file = work / "metrics.jsonl"
        loader = DataLoader(dataset, batch_sampler=ResumedBatches(self.sampler, start, cfg.iters),
                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        logger.info("training %s from iteration %d to %d: %d rank(s) x %d x %d = global batch %d, device %s, amp %s",
                    type(model.denoising).__name__, start, cfg.iters, info.world_size, cfg.batch_size, cfg.grad_accum,
                    self.global_batch, device, amp_dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        bar = tqdm(total=cfg.iters, initial=start, desc="train", disable=not (cfg.progress and info.is_main),
                   dynamic_ncols=True)
        last_record: dict = {}
        interval_start, interval_iters = time.perf_counter(), 0
        grad_norm = float("nan")
        model.train()
        for it, batch in zip(range(start, cfg.iters), loader):
            lr = lr_at(cfg, it)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x0 = batch["latents"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            for m, (xm, ym) in enumerate(zip(x0.chunk(cfg.grad_accum), labels.chunk(cfg.grad_accum))):
                sync = m == cfg.grad_accum - 1 or not info.distributed
                with contextlib.nullcontext() if sync else ddp.no_sync():
                    out = ddp(xm, ym, self.generator)
                    (out.loss / cfg.grad_accum).backward()
                self._accumulate(out, cfg.grad_accum)
            self.acc[_ACC_ITERS] += 1
            clip = cfg.grad_clip if (cfg.grad_clip > 0 and it >= cfg.grad_clip_start) else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if not math.isfinite(grad_norm):
                for p in params:
                    if p.grad is not None:
                        p.grad.zero_()
                self.acc[_ACC_NONFINITE] += 1
                logger.warning("iteration %d: non-finite gradient norm; gradients zeroed", it + 1)
            self.optimizer.step()
            if self.ema is not None:
                self._ema_update(ema_beta(it, self.global_batch, cfg.ema_nimg, cfg.ema_rampup))
            self.iteration = it + 1
            interval_iters += 1
            bar.update(1)

            record: dict = {}
            if self.iteration % cfg.log_interval == 0 or self.iteration == cfg.iters:
                elapsed = time.perf_counter() - interval_start
                record = self._log(lr, grad_norm, interval_iters * self.global_batch / max(elapsed, 1e-9))
                interval_start, interval_iters = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if validation is not None and self.iteration % cfg.val_interval == 0:
                val = validation(self.ema if self.ema is not None else model, self.iteration, amp_dtype)
                record.update(val)
                if info.is_main:
                    logger.info("iteration %d validation: %s", self.iteration,
                                ", ".join(f"{k} = {v:.4f}" for k, v in val.items()))
                    self._write_scalars(val)
            if record and info.is_main:
                record.setdefault("iter", self.iteration)
                with open(metrics_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            if self.iteration % cfg.checkpoint_interval == 0 or self.iteration == cfg.iters:
                state = self._checkpoint_state()
                if info.is_main:
                    path = ckpt.save_checkpoint(state, self.ckpt_dir, self.iteration)
                    ckpt.prune_checkpoints(self.ckpt_dir, cfg.keep_every)
                    logger.info("saved %s", path)
                del state
            if record:
                last_record = record
            for hook in self.hooks:
                hook(self, self.iteration, record)
        bar.close()
        gdist.barrier()
        return TrainSummary(start, self.iteration, resumed_from, last_record, str(work))

    def _accumulate(self, out, parts: int) -> None:
        acc = self.acc
        acc[_ACC_LOSS] += out.loss.detach().double() / parts
        acc[_ACC_TRANS] += out.loss_transition.double() / parts
        acc[_ACC_SPEC] += out.loss_spectral.double() / parts
        q = (out.t_high / 250).long().clamp(0, 3)
        ones = torch.ones_like(out.per_sample, dtype=torch.float64)
        acc[_ACC_QLOSS:_ACC_QLOSS + 4].index_add_(0, q, out.per_sample.double())
        acc[_ACC_QVAR:_ACC_QVAR + 4].index_add_(0, q, out.variance.double())
        acc[_ACC_QCOUNT:_ACC_QCOUNT + 4].index_add_(0, q, ones)

    @torch.no_grad()
    def _ema_update(self, beta: float) -> None:
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.model.parameters()], 1.0 - beta)
        for eb, mb in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(mb)

    def _log(self, lr: float, grad_norm: float, imgs_per_s: float) -> dict:
        acc = gdist.all_reduce_sum(self.acc.clone()).cpu()
        self.acc.zero_()
        world = self.info.world_size
        n = max(float(acc[_ACC_ITERS]) / world, 1.0)  # iterations in the interval
        record = {
            "iter": self.iteration,
            "loss": float(acc[_ACC_LOSS]) / (n * world),
            "loss_transition": float(acc[_ACC_TRANS]) / (n * world),
            "loss_spectral": float(acc[_ACC_SPEC]) / (n * world),
            "lr": lr,
            "diffusion_grad_norm": grad_norm,
            "nonfinite_grad_steps": int(acc[_ACC_NONFINITE]) // world,
            "imgs_per_s": imgs_per_s,
        }
        for q in range(4):
            c = float(acc[_ACC_QCOUNT + q])
            record[f"loss_trans_quartile_{q}"] = float(acc[_ACC_QLOSS + q]) / c if c else float("nan")
            record[f"loss_trans_var_quartile_{q}"] = float(acc[_ACC_QVAR + q]) / c if c else float("nan")
        if self.info.is_main:
            self._write_scalars(record)
        return record

    def _write_scalars(self, values: dict) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if k != "iter" and isinstance(v, (int, float)):
                self.writer.add_scalar(f"train/{k}" if not k.startswith("val_") else f"val/{k[4:]}", v, self.iteration)
        self.writer.flush()
