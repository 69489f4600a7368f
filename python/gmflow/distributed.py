"""Process-group helpers shared by latent caching, training and evaluation.

Every entry point runs either plainly (one process) or under ``torchrun``; :func:`init_distributed`
reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), picks NCCL for CUDA and gloo
for CPU, and returns a :class:`DistInfo`. The helpers below are no-ops in a single process, so the
calling code has one path.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_gather_tensor",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "resolve_device",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # this call created the process group (cleanup destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None``/``'auto'``: ``cuda:<local_rank>`` when CUDA is available, else CPU. A bare ``'cuda'`` gets
    the local rank as its index (one GPU per torchrun process)."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 3600.0) -> DistInfo:
    """Joins the torchrun process group if the environment describes one (``WORLD_SIZE > 1``).

    Backend: NCCL when the device is CUDA, gloo otherwise. Without torchrun (or with one process)
    nothing is initialised and rank 0 of 1 is returned. Calling it again reuses an existing group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, False)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    logger.info("joined process group: rank %d of %d, backend %s, device %s", rank, world, backend, dev)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; for small objects)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenates ``t (n_r, ...)`` of every rank along dim 0, in rank order; ranks may hold different n_r."""
    if not _active():
        return t
    t = t.contiguous()
    sizes = all_gather_objects(int(t.shape[0]))
    n = max(sizes)
    padded = t.new_zeros((n, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])
