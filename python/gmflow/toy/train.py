"""Trainer of the checkerboard toy model (docs/training.md#toy-trainer, scaled to a CPU budget).

AdamW (weight decay 0), linear warm-up from ``0.001 lr``, the GMFlow transition loss (trans_ratio
0.9 by default; LakonLab's loss normalisation with scale 2.0), a "karras" EMA copy
(``beta_n = (1 - 1/n)^(gamma + 1)``, gamma = 7), fresh checkerboard batches from a seeded generator
every iteration, a tqdm progress bar and periodic loss logging, checkpoint save/load.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from gmflow.flow.losses import transition_loss
from gmflow.flow.schedule import TimestepSampler

from .data import Checkerboard
from .model import GMFlowMLP2DDenoiser

__all__ = ["ToyTrainConfig", "TrainResult", "build_model", "karras_ema_beta", "load_checkpoint", "save_checkpoint",
           "train_toy"]

log = logging.getLogger(__name__)


@dataclass
class ToyTrainConfig:
    """Everything that defines a toy training run (saved into checkpoints)."""

    k: int = 64
    iters: int = 10_000
    batch_size: int = 1024
    lr: float = 1e-3
    warmup: int = 200
    lr_schedule: str = "cosine"  # or "constant"; cosine decays after the warm-up to final_lr_ratio * lr
    final_lr_ratio: float = 0.1
    trans_ratio: float = 0.9
    timestep_shift: float = 1.0  # shift of the training-time sampler (< 1 favours low noise)
    ema: bool = True
    ema_gamma: float = 7.0
    hidden_dim: int = 256
    num_layers: int = 4
    weight_decay: float = 0.0
    loss_scale: float = 2.0
    seed: int = 0
    device: str = "cpu"
    log_every: int = 1000

    def __post_init__(self) -> None:
        for name in ("k", "iters", "batch_size", "hidden_dim", "num_layers", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.trans_ratio <= 1:
            raise ValueError(f"trans_ratio must be in (0, 1], got {self.trans_ratio}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        if not self.timestep_shift > 0:
            raise ValueError(f"timestep_shift must be positive, got {self.timestep_shift}")
        if self.ema_gamma < 0:
            raise ValueError(f"ema_gamma must be >= 0, got {self.ema_gamma}")


@dataclass
class TrainResult:
    model: nn.Module  # the trained weights
    ema_model: nn.Module | None  # the EMA weights (None with ema=False)
    config: ToyTrainConfig
    history: list[dict] = field(default_factory=list)  # {'iter', 'loss', 'lr', 'seconds'}
    seconds: float = 0.0

    @property
    def sampling_model(self) -> nn.Module:
        """The weights to sample with: the EMA if there is one."""
        return self.ema_model if self.ema_model is not None else self.model


def build_model(config: ToyTrainConfig) -> GMFlowMLP2DDenoiser:
    return GMFlowMLP2DDenoiser(config.k, hidden_dim=config.hidden_dim, num_layers=config.num_layers)


def karras_ema_beta(n: int, gamma: float = 7.0) -> float:
    """``(1 - 1/n)^(gamma + 1)`` for step ``n >= 1`` (0 at n = 1: the EMA starts as a copy)."""
    return (1.0 - 1.0 / n) ** (gamma + 1.0)


def _lr_at(config: ToyTrainConfig, i: int) -> float:
    if config.warmup and i < config.warmup:
        return config.lr * (1 - (1 - i / config.warmup) * 0.999)
    if config.lr_schedule == "cosine":
        progress = (i - config.warmup) / max(config.iters - config.warmup, 1)
        ratio = config.final_lr_ratio + (1 - config.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return config.lr * ratio
    return config.lr


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - beta)


def train_toy(
    config: ToyTrainConfig,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    desc: str | None = None,
    position: int | None = None,
) -> TrainResult:
    """Trains a toy model from scratch; ``on_log`` receives each logged record (default: logging)."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)  # model init only; the data and times use the generator below
    model = build_model(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if config.ema else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    data = Checkerboard()
    sampler = TimestepSampler(shift=config.timestep_shift)
    history: list[dict] = []
    start = time.perf_counter()
    running, count = 0.0, 0
    bar = tqdm(range(config.iters), desc=desc or f"train K={config.k}", disable=not progress, dynamic_ncols=True,
               position=position)
    for i in bar:
        lr = _lr_at(config, i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_0 = data.sample(config.batch_size, generator=generator, device=device).reshape(-1, 2, 1, 1)
        out = transition_loss(model, x_0, config.trans_ratio, sampler, generator, scale=config.loss_scale)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if ema is not None:
            _ema_update(ema, model, karras_ema_beta(i + 1, config.ema_gamma))
        loss = out.loss.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at iteration {i + 1} (loss {loss}); try a lower --lr")
        running, count = running + loss, count + 1
        if (i + 1) % config.log_every == 0 or i + 1 == config.iters:
            record = {"iter": i + 1, "loss": running / count, "lr": lr, "seconds": time.perf_counter() - start}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            (on_log or (lambda r: log.info("iter %(iter)d loss %(loss).4f", r)))(record)
            running, count = 0.0, 0
    bar.close()
    return TrainResult(model.eval(), ema.eval() if ema is not None else None, config, history,
                       time.perf_counter() - start)


def save_checkpoint(result: TrainResult, path: str | Path) -> Path:
    """Saves config, weights, EMA weights and the loss history to ``path`` (``torch.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": asdict(result.config),
            "model": result.model.state_dict(),
            "ema": result.ema_model.state_dict() if result.ema_model is not None else None,
            "history": result.history,
            "seconds": result.seconds,
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> TrainResult:
    """Inverse of :func:`save_checkpoint` (models in eval mode on ``device``)."""
    state = torch.load(Path(path), map_location=device, weights_only=True)
    known = {f.name for f in fields(ToyTrainConfig)}
    config = ToyTrainConfig(**{k: v for k, v in state["config"].items() if k in known})
    model = build_model(config).to(device)
    model.load_state_dict(state["model"])
    ema = None
    if state.get("ema") is not None:
        ema = build_model(config).to(device)
        ema.load_state_dict(state["ema"])
        ema.eval().requires_grad_(False)
    return TrainResult(model.eval(), ema, config, list(state.get("history", [])), float(state.get("seconds", 0.0)))
