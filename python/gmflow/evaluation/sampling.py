"""Sampling the evaluation set with a GM-DiT and scoring it (docs/training.md#validation,
docs/training.md#evaluation-sweep).

The test set is deterministic per item, whatever the number of ranks or the batch size: item ``i`` has
label ``randint(0, num_classes)`` from a generator seeded with ``i`` (the same labels for every method) and
initial noise ``randn(C, H, W)`` from a generator seeded with ``i + 1000`` (the LakonLab convention). Rank
``r`` of ``W`` samples the items ``r, r + W, ...`` in batches. GM-SDE's in-loop draws come from a
generator seeded per batch with ``seed`` and the batch's first item.

:class:`EvalSetting` is the :class:`gmflow.flow.SamplerSpec` of one GM solver (``gm-ode2``, ``gm-sde2``,
``gm-ode1``, ``gm-sde1``) at an NFE, sub-step count and guidance scale; on disk it keeps upstream's names
(``gmode2_g0.04_step16_sub8``). :func:`evaluate_setting` samples, decodes with the VAE, feeds
:class:`InceptionMetrics` and saves PNGs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gmflow.flow.spec import GM_SOLVERS, SamplerSpec, parse_solver

__all__ = [
    "EvalSetting",
    "decode_latents",
    "evaluate_setting",
    "item_labels",
    "item_noise",
    "sample_latents",
]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class EvalSetting(SamplerSpec):
    """The :class:`SamplerSpec` of one evaluation setting: a GM solver (:data:`gmflow.flow.GM_SOLVERS`),
    shift 1 unless given; ``substeps`` must be 1 for GM-SDE."""

    solver: str = "gm-ode2"
    nfe: int = 16
    substeps: int = 8
    guidance: float = 0.04
    shift: float | None = 1.0

    def __post_init__(self) -> None:
        parse_solver(self.solver, GM_SOLVERS)
        super().__post_init__()

    @property
    def method(self) -> str:
        """Upstream's label of the solver (``gmode2`` for ``gm-ode2``): the stored form, used in
        :attr:`name`, the ``method`` column of the results tables and the validation metric keys."""
        return self.solver.replace("-", "")

    @property
    def name(self) -> str:
        """``gmode2_g0.04_step16_sub8`` (upstream's viz directory name plus the sub-steps)."""
        return f"{self.method}_g{self.guidance:g}_step{self.nfe}_sub{self.substeps}"


def item_labels(indices: Tensor | list[int], num_classes: int) -> Tensor:
    """Label of test item ``i``: ``randint(0, num_classes)`` from a generator seeded with ``i``."""
    return torch.stack([torch.randint(0, num_classes, (), generator=torch.Generator().manual_seed(int(i)))
                        for i in indices])


def item_noise(indices: Tensor | list[int], shape: tuple[int, ...]) -> Tensor:
    """Initial noise of test item ``i``: ``randn(shape)`` from a generator seeded with ``i + 1000``."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(i) + 1000))
                        for i in indices])


def sample_latents(transformer: nn.Module, labels: Tensor, noise: Tensor, setting: EvalSetting,
                   spectrum_net: Callable | None = None, generator: torch.Generator | None = None,
                   null_class: int | None = None, amp_dtype: torch.dtype | None = None) -> Tensor:
    """GM-ODE / GM-SDE samples (float32 latents) of ``transformer`` for ``labels`` from ``noise``; the
    transformer runs in its own dtype (under autocast to ``amp_dtype`` if given), the GM math in float32;
    guidance puts the conditional half first."""
    device = noise.device
    labels = labels.to(device)
    guided = setting.guidance > 0
    if null_class is None:
        null_class = transformer.config.num_embeds_ada_norm
    model_labels = torch.cat([labels, torch.full_like(labels, null_class)]) if guided else labels
    dtype = next(transformer.parameters()).dtype

    def model(x: Tensor, t: Tensor):
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            gm = transformer(x.to(dtype), t, model_labels)
        return gm.map(lambda v: v.float())

    return setting.sample(model, noise.float(), generator, spectrum_net=spectrum_net, cond_first=True)


@torch.no_grad()
def decode_latents(vae, latents: Tensor) -> Tensor:
    """Scaled VAE latents -> images in [-1, 1] (float32) with diffusers' ``AutoencoderKL``."""
    scale = getattr(vae.config, "scaling_factor", 0.18215)
    shift = getattr(vae.config, "shift_factor", None)
    z = latents / scale
    if shift is not None:
        z = z + shift
    p = next(vae.parameters())
    return vae.decode(z.to(device=p.device, dtype=p.dtype)).sample.float().clamp(-1, 1)


def _save_pngs(images: Tensor, indices: list[int], labels: Tensor, folder: Path,
               class_names: dict[int, str] | None) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    arrays = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for arr, i, y in zip(arrays, indices, labels.tolist()):
        name = (class_names or {}).get(int(y), str(int(y))).split(",")[0].strip().replace(" ", "_").replace("/", "_")
        Image.fromarray(arr).save(folder / f"{i:09d}_{name}.png")


@torch.no_grad()
def evaluate_setting(
    transformer: nn.Module,
    setting: EvalSetting,
    num_samples: int,
    batch_size: int,
    metrics,
    vae=None,
    spectrum_net: Callable | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 2021,
    num_classes: int | None = None,
    viz_dir: str | os.PathLike | None = None,
    viz_every: int = 256,
    class_names: dict[int, str] | None = None,
    progress: bool = True,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Samples ``num_samples`` test items with ``setting`` (this rank's share), decodes them with ``vae``,
    feeds ``metrics`` (an :class:`InceptionMetrics`, reset first) and returns its ``compute()`` (call on
    every rank). Every ``viz_every``-th batch of this rank is saved as PNGs to ``viz_dir``.
    Without a VAE or metrics it only samples and returns ``{}``."""
    cfg = transformer.config
    num_classes = num_classes or cfg.num_embeds_ada_norm
    device = next(transformer.parameters()).device
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    mine = list(range(rank, num_samples, world_size))
    if metrics is not None:
        metrics.reset()
    batches = [mine[s: s + batch_size] for s in range(0, len(mine), batch_size)]
    for b, idx in enumerate(tqdm(batches, desc=setting.name, disable=not progress or rank != 0, leave=False,
                                 dynamic_ncols=True)):
        labels = item_labels(idx, num_classes)
        noise = item_noise(idx, shape).to(device)
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + idx[0])
        latents = sample_latents(transformer, labels, noise, setting, spectrum_net, gen, amp_dtype=amp_dtype)
        if vae is None:
            continue
        images = decode_latents(vae, latents)
        if metrics is not None:
            metrics.update(images)
        if viz_dir is not None and b % viz_every == 0:
            _save_pngs(images, idx, labels, Path(viz_dir), class_names)
    if metrics is None or vae is None:
        return {}
    return metrics.compute()
