"""Tiny stand-ins for the ImageNet pipeline tests: synthetic latents, a random AutoencoderKL, a TorchScript
"Inception" with the NVIDIA interface, reference statistics, and a tiny training config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CLASSES = 10
LATENT = (4, 8, 8)

TINY_MODEL = {
    "num_gaussians": 2, "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "sample_size": 8,
    "patch_size": 2, "num_embeds_ada_norm": NUM_CLASSES, "logstd_inner_dim": 16,
}
TINY_SPECTRUM = {"base_size": list(LATENT), "layers": [8, 4]}


def write_synthetic_latents(root: Path, n: int = 32, seed: int = 0) -> Path:
    """``n`` random latents in the cache layout (``root/<class>/<i>.pth`` + ``root.txt``); returns root."""
    from gmflow.data import write_list_file

    g = torch.Generator().manual_seed(seed)
    entries = []
    for i in range(n):
        label = i % NUM_CLASSES
        rel = f"n{label:08d}/img_{i}.pth"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": torch.randn(LATENT, generator=g), "y": torch.tensor(label)}, root / rel)
        entries.append((rel, label))
    write_list_file(root.with_name(root.name + ".txt"), entries)
    return root


def tiny_train_config(data_root: Path, work_dir: Path, **overrides) -> dict:
    cfg = {
        "work_dir": str(work_dir), "iters": 6, "data_root": str(data_root), "batch_size": 4, "num_workers": 0,
        "model": dict(TINY_MODEL), "spectrum_net": dict(TINY_SPECTRUM), "checkpoint_interval": 2, "keep_every": 4,
        "log_interval": 1, "val_interval": 0, "warmup_iters": 2, "grad_clip_start": 0, "grad_clip": 1.0,
        "progress": False, "num_threads": 1, "device": "cpu", "label_dropout": 0.25, "tensorboard": True,
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def tiny_vae(folder: Path):
    """A random 2-level AutoencoderKL (x2 down-sampling, 4 latent channels), saved to ``folder``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(str(folder))
    return vae.eval()


class _TinyInception(nn.Module):
    """The interface of NVIDIA's TorchScript Inception: uint8 NCHW in, ``return_features=True`` -> pool
    features, and an ``output`` layer whose weight gives the class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 16)
        self.output = nn.Linear(16, 12)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        h = F.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)
        feats = torch.tanh(self.proj(h) * 4.0)
        if return_features:
            return feats
        return torch.softmax(self.output(feats), dim=1)


def tiny_inception(path: Path) -> Path:
    import warnings

    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_TinyInception()).save(str(path))
    return path


def tiny_reference(path: Path, n: int = 24, dim: int = 16) -> Path:
    from gmflow.evaluation import ReferenceStats, save_reference_stats

    feats = np.random.default_rng(0).uniform(-1, 1, size=(n, dim)).astype(np.float32)
    return save_reference_stats(path, ReferenceStats.from_features(feats))


def read_metrics(path: Path) -> dict[int, list[dict]]:
    """``{iteration: [records...]}`` from metrics.jsonl (a torn last line from a killed run is skipped)."""
    out: dict[int, list[dict]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.setdefault(rec["iter"], []).append(rec)
    return out
