"""Configuration of an ImageNet GM-DiT training run (docs/training.md).

:class:`TrainConfig` is a flat dataclass; its defaults are the paper's run (``gmflow_imagenet_k8_8gpus``)
except where a CPU-friendly choice is noted. It round-trips through JSON (``to_json`` /
``from_json``); ``gmflow train --config run.json --set key=value ...`` overrides single fields (dotted keys
reach into the ``model`` / ``spectrum_net`` dicts; values are parsed as JSON, else taken as strings).
Unknown keys are an error that lists the known ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmflow.flow.spec import GM_SOLVERS, upgrade_solver
from gmflow.models.gmdit import GMDIT_IMAGENET_K8

__all__ = ["TrainConfig", "apply_overrides"]


def _default_model() -> dict[str, Any]:
    return dict(GMDIT_IMAGENET_K8.to_dict()) if hasattr(GMDIT_IMAGENET_K8, "to_dict") else dict(GMDIT_IMAGENET_K8)


@dataclass
class TrainConfig:
    # -- run ------------------------------------------------------------------------------------------------
    work_dir: str = "work_dirs/gmflow_imagenet_k8"
    iters: int = 200_000
    seed: int = 2021  # rank r uses seed + r for its noise / timesteps (upstream --diff_seed)
    device: str = "auto"  # auto: cuda:<local rank> when available, else cpu
    num_threads: int = 0  # torch intra-op threads per process (0: leave torch's default)
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cudnn.benchmark
    # -- data (docs/training.md#training-data) ----------------------------------------------------------------
    data_root: str = "data/imagenet/train_cache"
    data_list: str | None = None  # default <data_root>.txt
    batch_size: int = 512  # per rank and micro-step; global batch = batch_size * world * grad_accum
    grad_accum: int = 1
    num_workers: int = 4
    label_dropout: float = 0.1  # upstream prob_class = 0.9
    # -- model (docs/models.md#gm-dit) ------------------------------------------------------------------------
    model: dict[str, Any] = field(default_factory=_default_model)
    spectrum_net: dict[str, Any] | None = field(default_factory=lambda: {"base_size": [4, 32, 32], "layers": [64, 8]})
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"  # bf16 | no | auto (bf16 on CUDA, no on CPU)
    # -- objective (docs/training.md#the-imagenet-objective) --------------------------------------------------
    trans_ratio: float = 0.5
    transition_loss_weight: float = 8.0  # LakonLab normalisation (per-pixel NLL / C, 2pi included) = original 2.0
    spectral_loss_weight: float = 4.0  # LakonLab scaling (= original 1.0 x C)
    logit_normal: bool = True
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    timestep_shift: float = 1.0
    # -- optimisation (docs/training.md#optimisation) ---------------------------------------------------------
    optimizer: str = "auto"  # auto (AdamW8bit when bitsandbytes imports, else AdamW) | adamw | adamw8bit
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # 0 for every parameter whose name contains "bias"
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001  # the warm-up starts at warmup_ratio * lr
    grad_clip: float = 10.0  # global norm; 0 disables clipping (the non-finite guard stays on)
    grad_clip_start: int = 1000
    # -- EMA (docs/training.md#ema) ---------------------------------------------------------------------------
    ema: bool = True
    ema_nimg: float = 30_000_000.0
    ema_rampup: float = 0.05
    # -- checkpoints, logs (docs/models.md#training-checkpoint, docs/training.md#checkpoints-and-resume,
    # docs/training.md#logging) ---
    checkpoint_interval: int = 1000
    keep_every: int = 40_000  # besides the newest, keep iter_N.pth for N a multiple of this (0: none)
    fp16_ema_in_checkpoint: bool = False  # upstream ckpt_fp16_ema (breaks bit-exact EMA resume)
    log_interval: int = 10
    tensorboard: bool = True
    progress: bool = True
    # -- validation (docs/training.md#validation) -----------------------------------------------------------
    val_interval: int = 20_000  # 0: never
    val_num_samples: int = 50_000
    val_batch_size: int = 125  # per rank
    val_method: str = "gm-ode2"  # a GM solver of gmflow.flow.SamplerSpec; the retired gmode2 etc. still load
    val_nfe: int = 16
    val_substeps: int = 8
    val_guidance: float = 0.04
    val_viz_every: int = 256
    vae_path: str | None = None  # local diffusers AutoencoderKL (needed to decode samples for the metrics)
    inception_path: str | None = None  # local TorchScript Inception-v3
    reference_stats: str | None = None  # local .pkl / .npz / .pt
    class_names: str | None = None  # imagenet1000_clsidx_to_labels.txt, for the PNG names

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"train config: {msg}")

        for name in ("iters", "batch_size", "grad_accum", "checkpoint_interval", "log_interval", "val_batch_size",
                     "val_num_samples", "val_nfe", "val_substeps"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        for name in ("num_workers", "warmup_iters", "grad_clip_start", "keep_every", "val_interval", "num_threads",
                     "val_viz_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 0, f"{name} must be a non-negative integer, got {v!r}")
        need(0 < self.trans_ratio <= 1, f"trans_ratio must be in (0, 1], got {self.trans_ratio}")
        need(0 <= self.label_dropout <= 1, f"label_dropout must be in [0, 1], got {self.label_dropout}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1)")
        need(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay and grad_clip must be >= 0")
        need(0 < self.warmup_ratio <= 1, f"warmup_ratio must be in (0, 1], got {self.warmup_ratio}")
        need(self.optimizer in ("auto", "adamw", "adamw8bit"), f"optimizer must be auto, adamw or adamw8bit")
        need(self.mixed_precision in ("auto", "bf16", "no"), f"mixed_precision must be auto, bf16 or no")
        self.val_method = upgrade_solver(self.val_method, GM_SOLVERS, "train config: val_method")
        need(0 <= self.val_guidance < 1, f"val_guidance must lie in [0, 1)")
        need(self.ema_nimg > 0 and self.ema_rampup >= 0, "ema_nimg must be > 0 and ema_rampup >= 0")
        need(isinstance(self.model, dict), "model must be a dict of GMDiT config keys")

    # -- (de)serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in data if k not in names and not k.startswith("_"))
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown} (known: {', '.join(names)})")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a JSON object")
        return cls.from_dict(data)

    @property
    def amp_dtype(self):
        """The autocast dtype of the network forward/backward (None: float32)."""
        import torch

        if self.mixed_precision == "bf16":
            return torch.bfloat16
        if self.mixed_precision == "auto":
            from gmflow.distributed import resolve_device

            return torch.bfloat16 if resolve_device(self.device).type == "cuda" else None
        return None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``['iters=10', 'model.num_layers=2']`` applied to a config dict (a copy is returned)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: {p} is not a dict")
            node = node[p]
        node[parts[-1]] = _parse_value(value)
    return data
