"""Training data: the cached-latents dataset and a resumable, rank-sharded epoch sampler
(docs/training.md#training-data).

Both are *pure functions of their seeds*: the sampler's batch for global iteration ``i`` depends only on
``(seed, i, rank, world size)``, and the label dropout of an item only on ``(seed, epoch, index)``. So a
resumed run that knows its iteration reads exactly the batches, and drops exactly the labels, that the
uninterrupted run would have — in any number of DataLoader workers — with no sampler state to restore
beyond the iteration (upstream skips ``iter mod len(loader)`` batches of the stored epoch; same result).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import Dataset

from .imagenet import read_list_file

__all__ = ["EpochBatchSampler", "LatentDataset", "hash_uniform"]

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def hash_uniform(*keys: int) -> float:
    """A uniform number in [0, 1) determined by the integers ``keys`` (chained splitmix64)."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _M64))
    return (h >> 11) * (1.0 / (1 << 53))


class LatentDataset(Dataset):
    """Cached latents (the output of ``gmflow cache-latents``).

    ``LatentDataset(root, list_file=None, label_dropout=0.0, null_class=1000, seed=2021)``: ``list_file``
    defaults to ``<root>.txt``; its lines are ``<relative .pth path> <label>``. Each file holds
    ``{'x': (C, h, w) latent, 'y': label}``.

    An item is an index, or ``(index, epoch)`` as :class:`EpochBatchSampler` yields them; it returns
    ``{'latents': float32 (C, h, w), 'labels': int64, 'ids': index}``. With ``label_dropout = p > 0``
    (classifier-free guidance training; the paper keeps a label with probability 0.9, so p = 0.1) the
    label is replaced by ``null_class`` when ``hash_uniform(seed, epoch, index) < p``: a fresh decision
    every epoch, reproducible without any RNG state.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike | None = None,
        label_dropout: float = 0.0,
        null_class: int = 1000,
        seed: int = 2021,
    ) -> None:
        if not 0 <= label_dropout <= 1:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        self.root = Path(root)
        self.list_file = Path(list_file) if list_file is not None else self.root.with_name(self.root.name + ".txt")
        if not self.list_file.is_file():
            raise FileNotFoundError(f"{self.list_file}: latent list file not found (run `gmflow cache-latents` first)")
        self.entries = read_list_file(self.list_file)
        if not self.entries:
            raise ValueError(f"{self.list_file}: empty list")
        self.label_dropout = float(label_dropout)
        self.null_class = int(null_class)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.entries)

    def drops_label(self, index: int, epoch: int) -> bool:
        return self.label_dropout > 0 and hash_uniform(self.seed, epoch, index) < self.label_dropout

    def __getitem__(self, item) -> dict:
        index, epoch = item if isinstance(item, tuple) else (int(item), 0)
        rel, label = self.entries[index]
        path = self.root / rel
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: cached latent listed in {self.list_file} is missing") from None
        latents = data["x"] if isinstance(data, dict) else data
        if self.drops_label(index, epoch):
            label = self.null_class
        return {"latents": latents.float(), "labels": torch.tensor(label, dtype=torch.int64), "ids": index}


class EpochBatchSampler:
    """Deterministic, rank-sharded batches for iteration-based training.

    Epoch ``e`` shuffles all ``N`` indices with ``torch.randperm(N)`` seeded by ``seed + e`` (as upstream's
    DDP sampler), keeps the first ``W * floor(N / W)``, gives rank ``r`` every ``W``-th starting at ``r``,
    and cuts that into ``batches_per_epoch`` batches of ``batch_size`` (the remainder is dropped). Global
    iteration ``i`` reads batch ``i mod batches_per_epoch`` of epoch ``i div batches_per_epoch``. Items
    are ``(index, epoch)`` pairs for :class:`LatentDataset`.
    """

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 2021,
                 shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        per_rank = num_items // world_size
        if per_rank < batch_size:
            raise ValueError(f"{num_items} items over {world_size} rank(s) give {per_rank} per rank, fewer than the "
                             f"per-rank batch of {batch_size}")
        self.num_items, self.batch_size = int(num_items), int(batch_size)
        self.rank, self.world_size, self.seed, self.shuffle = int(rank), int(world_size), int(seed), bool(shuffle)
        self.per_rank = per_rank
        self.batches_per_epoch = per_rank // batch_size
        self._cache: tuple[int, list[int]] | None = None

    def position(self, iteration: int) -> tuple[int, int]:
        """``(epoch, batch within the epoch)`` of global iteration ``iteration`` (0-based)."""
        return divmod(int(iteration), self.batches_per_epoch)

    def _rank_indices(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            if self.shuffle:
                order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))
            else:
                order = torch.arange(self.num_items)
            self._cache = (epoch, order[: self.per_rank * self.world_size][self.rank:: self.world_size].tolist())
        return self._cache[1]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        epoch, b = self.position(iteration)
        idx = self._rank_indices(epoch)[b * self.batch_size: (b + 1) * self.batch_size]
        return [(i, epoch) for i in idx]

    def iterate(self, start_iteration: int = 0, stop_iteration: int | None = None) -> Iterator[list[tuple[int, int]]]:
        i = int(start_iteration)
        while stop_iteration is None or i < stop_iteration:
            yield self.batch(i)
            i += 1

    def state_dict(self, iteration: int) -> dict:
        epoch, b = self.position(iteration)
        return {"epoch": epoch, "batch_in_epoch": b, "batches_per_epoch": self.batches_per_epoch, "seed": self.seed,
                "world_size": self.world_size, "num_items": self.num_items, "batch_size": self.batch_size}


class ResumedBatches:
    """A ``batch_sampler`` for ``DataLoader`` yielding ``sampler.batch(i)`` for ``i in [start, stop)``."""

    def __init__(self, sampler: EpochBatchSampler, start: int, stop: int) -> None:
        self.sampler, self.start, self.stop = sampler, int(start), int(stop)

    def __iter__(self):
        return self.sampler.iterate(self.start, self.stop)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)
