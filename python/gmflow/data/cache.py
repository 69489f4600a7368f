"""Latent caching: ImageNet images -> SD-VAE latents, one file per image (docs/training.md#latent-caching).

For every ``<wnid>/<file>.JPEG <label>`` line of the list file:

1. open the image, convert to RGB, ADM center crop to ``image_size`` (:func:`adm_center_crop`);
2. flip it horizontally with probability 1/2 — decided **once per image** by a hash of
   ``(seed, relative path)``, so the cache holds one fixed orientation per image whatever the number of
   ranks, the batch size or how often the run was restarted;
3. encode with diffusers' ``AutoencoderKL`` (loaded from a local folder) and take a **sample** of the
   posterior, ``mean + std * n`` with ``n`` drawn from a generator seeded by the same hash, times the
   VAE's ``scaling_factor`` (0.18215 for ``sd-vae-ft-ema``);
4. write ``<out_root>/<wnid>/<file>.pth`` = ``{'x': float32 (C, h, w), 'y': int64 label}`` atomically
   (temporary file + rename).

Resumable: images whose output exists are skipped, so an interrupted run is simply started again.
Sharded: under ``torchrun`` rank ``r`` of ``W`` takes the entries ``i`` with ``i % W == r``. When every
output exists, the list ``<out_root>.txt`` (``<wnid>/<file>.pth <label>`` per line, input order) is
written, by rank 0 after a barrier.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from gmflow import distributed as gdist

from .imagenet import ListEntry, image_to_array, read_list_file, write_list_file

__all__ = ["CacheResult", "cache_latents", "cache_path", "image_key", "load_vae_for_caching"]

logger = logging.getLogger(__name__)


def image_key(seed: int, relative_path: str) -> int:
    """64-bit key of an image: its top bit is the flip decision, the rest seeds the posterior noise."""
    digest = hashlib.blake2b(f"{int(seed)}:{relative_path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def flip_and_noise_seed(seed: int, relative_path: str) -> tuple[bool, int]:
    key = image_key(seed, relative_path)
    return bool(key >> 63), key & ((1 << 63) - 1)


def cache_path(relative_path: str) -> str:
    """``n01440764/x.JPEG -> n01440764/x.pth``."""
    stem, _ = os.path.splitext(relative_path)
    return stem + ".pth"


class _Images(Dataset):
    def __init__(self, root: Path, entries: list[tuple[int, ListEntry]], size: int, seed: int) -> None:
        self.root, self.entries, self.size, self.seed = root, entries, size, seed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        from PIL import Image

        index, (rel, _) = self.entries[i]
        flip, _ = flip_and_noise_seed(self.seed, rel)
        with Image.open(self.root / rel) as image:
            array = image_to_array(image, self.size, flip)
        return torch.from_numpy(array), index


def load_vae_for_caching(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device=None):
    """diffusers ``AutoencoderKL`` from a local folder (``config.json`` + weights); no download."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no AutoencoderKL folder here (config.json missing); point --vae at a local "
                                "copy of stabilityai/sd-vae-ft-ema (gmflow never downloads)")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ImportError("latent caching needs diffusers: pip install 'gmflow[diffusers]'") from None
    vae = AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False)
    return vae.to(device).eval().requires_grad_(False)


@dataclass
class CacheResult:
    written: int  # latents written by this rank
    skipped: int  # entries of this rank whose output already existed
    total: int  # entries in the list file
    list_file: Path | None  # the written list (None if some outputs are still missing)
    seconds: float


@torch.inference_mode()
def cache_latents(
    image_root: str | os.PathLike,
    list_file: str | os.PathLike,
    vae,
    out_root: str | os.PathLike,
    out_list: str | os.PathLike | None = None,
    image_size: int = 256,
    batch_size: int = 32,
    num_workers: int = 4,
    seed: int = 2021,
    scaling_factor: float | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> CacheResult:
    """Caches the latents of every list entry (see the module doc); returns this rank's counts.

    ``vae``: a local ``AutoencoderKL`` folder or a loaded module. ``rank``/``world_size`` default to the
    torchrun process group (or 0 of 1); passing them by hand shards without a process group (the list is
    then written by whichever call finds every output present).
    """
    start = time.perf_counter()
    image_root, out_root = Path(image_root), Path(out_root)
    out_list = Path(out_list) if out_list is not None else out_root.with_name(out_root.name + ".txt")
    info = None
    if rank is None or world_size is None:
        info = gdist.init_distributed(device)
        rank, world_size, device = info.rank, info.world_size, info.device
        grouped = info.distributed
    else:
        grouped = False
        device = gdist.resolve_device(device)
    try:
        return _cache(image_root, list_file, vae, out_root, out_list, image_size, batch_size, num_workers, seed,
                      scaling_factor, device, dtype, rank, world_size, grouped, progress, start)
    finally:
        if info is not None:
            gdist.cleanup_distributed(info)


def _cache(image_root, list_file, vae, out_root, out_list, image_size, batch_size, num_workers, seed, scaling_factor,
           device, dtype, rank, world_size, grouped, progress, start) -> CacheResult:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    entries = read_list_file(list_file)
    if isinstance(vae, (str, os.PathLike)):
        vae = load_vae_for_caching(vae, dtype, device)
    factor = float(scaling_factor if scaling_factor is not None else getattr(vae.config, "scaling_factor", 0.18215))
    mine = [(i, e) for i, e in enumerate(entries) if i % world_size == rank]
    todo = [(i, e) for i, e in mine if not (out_root / cache_path(e.path)).is_file()]
    skipped = len(mine) - len(todo)
    if skipped:
        logger.info("rank %d: %d of %d latents already cached, %d to go", rank, skipped, len(mine), len(todo))
    loader = DataLoader(_Images(image_root, todo, image_size, seed), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    vae_dtype = next(vae.parameters()).dtype
    written = 0
    bar = tqdm(total=len(todo), desc=f"cache latents (rank {rank})", disable=not progress or rank != 0,
               dynamic_ncols=True)
    for images, indices in loader:
        posterior = vae.encode(images.to(device=device, dtype=vae_dtype)).latent_dist
        mean, std = posterior.mean.float(), posterior.std.float()
        for j, index in enumerate(indices.tolist()):
            rel, label = entries[index]
            _, noise_seed = flip_and_noise_seed(seed, rel)
            noise = torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(noise_seed))
            latent = (mean[j] + std[j] * noise.to(mean.device)) * factor
            _save_atomic({"x": latent.cpu().contiguous(), "y": torch.tensor(label, dtype=torch.int64)},
                         out_root / cache_path(rel))
            written += 1
        bar.update(len(indices))
    bar.close()
    if grouped:
        gdist.barrier()
    written_list = None
    if rank == 0 or not grouped:
        missing = [e.path for e in entries if not (out_root / cache_path(e.path)).is_file()]
        if missing:
            logger.info("%d latents still missing (e.g. %s): %s not written yet", len(missing), missing[0], out_list)
        else:
            written_list = write_list_file(out_list, [(cache_path(e.path), e.label) for e in entries])
    if grouped:
        gdist.barrier()
    return CacheResult(written, skipped, len(entries), written_list, time.perf_counter() - start)


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
