"""Training checkpoints: atomic writes, the ``latest.pth`` pointer, retention and safe resume
(docs/models.md#training-checkpoint, docs/training.md#checkpoints-and-resume).

A checkpoint ``<work_dir>/checkpoints/iter_<N>.pth`` is written as ``.iter_<N>.pth.tmp`` (flushed and
fsynced), then renamed into place; only then is ``latest.pth`` — a symbolic link (a copy where links
are not available) — replaced by a new link, again through a temporary name and a rename. A process
killed at any moment therefore leaves either the old or the new ``latest.pth``, both complete, plus at
most a stray ``*.tmp`` that is ignored and cleaned up.

:func:`find_resume_checkpoint` tries ``latest.pth`` first and then every ``iter_<N>.pth`` from the newest
down, and returns the first that loads and has the expected structure: a truncated or corrupt file is
logged and never resumed from. Retention (:func:`prune_checkpoints`) keeps the newest checkpoint plus
every ``iter_<N>.pth`` with ``N`` a multiple of ``keep_every``.

The weights sit in ``state_dict`` under ``diffusion.`` (the trained :class:`GMFlowDiffusion`: ``denoising.*``
= the GM-DiT, ``spectrum_net.*``) and ``diffusion_ema.`` (its EMA); :func:`trained_models` turns a
checkpoint into the networks, the form every other part of gmflow takes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gmflow.models import GMDiT, SpectrumMLP

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointCorruptError",
    "EMA_PREFIX",
    "MODEL_PREFIX",
    "TrainedModels",
    "checkpoint_path",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "strip_prefix",
    "trained_models",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gmflow-train-1"
LATEST = "latest.pth"
_ITER_RE = re.compile(r"^iter_(\d+)\.pth$")
MODEL_PREFIX = "diffusion."  # the trained GMFlowDiffusion's weights in state_dict
EMA_PREFIX = "diffusion_ema."  # its EMA


class CheckpointCorruptError(RuntimeError):
    """A checkpoint file that cannot be loaded (truncated, corrupt, or not a training checkpoint)."""


def checkpoint_path(directory: str | os.PathLike, iteration: int) -> Path:
    return Path(directory) / f"iter_{int(iteration)}.pth"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(N, iter_N.pth), ...]`` sorted by N (temporary files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _ITER_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _point_latest(directory: Path, target: Path) -> None:
    tmp = directory / f".{LATEST}.tmp{os.getpid()}"
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp)
    except (OSError, NotImplementedError):
        shutil.copyfile(target, tmp)  # no symlinks here: a complete copy, renamed into place
    os.replace(tmp, directory / LATEST)
    _fsync_dir(directory)


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike, iteration: int) -> Path:
    """Writes ``state`` to ``iter_<iteration>.pth`` atomically, then points ``latest.pth`` at it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, iteration)
    tmp = directory / f".{final.name}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    _point_latest(directory, final)
    return final


def prune_checkpoints(directory: str | os.PathLike, keep_every: int) -> list[Path]:
    """Deletes every ``iter_N.pth`` except the newest and those with ``N % keep_every == 0`` (``keep_every``
    0: only the newest), and stray temporary files. Returns the deleted paths."""
    directory = Path(directory)
    found = list_checkpoints(directory)
    removed = []
    if found:
        newest = found[-1][0]
        for n, p in found:
            if n != newest and not (keep_every and n % keep_every == 0):
                p.unlink(missing_ok=True)
                removed.append(p)
    for p in directory.glob(".*.tmp*") if directory.is_dir() else []:
        p.unlink(missing_ok=True)  # left by a process killed while writing (ours are renamed by now)
        removed.append(p)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Loads a training checkpoint (``weights_only``) and checks its structure; raises
    :class:`CheckpointCorruptError` for a truncated / corrupt / foreign file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a pickle error, ...
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointCorruptError(f"{path}: cannot be loaded ({type(exc).__name__}: {first_line})") from None
    if not isinstance(state, dict) or not isinstance(state.get("meta"), dict):
        raise CheckpointCorruptError(f"{path}: not a gmflow training checkpoint (no 'meta')")
    missing = [k for k in ("state_dict", "optimizer", "rng") if k not in state]
    if missing or state["meta"].get("format") != CHECKPOINT_FORMAT or not isinstance(state["meta"].get("iter"), int):
        raise CheckpointCorruptError(f"{path}: not a complete {CHECKPOINT_FORMAT} checkpoint (missing {missing})")
    return state


def find_resume_checkpoint(directory: str | os.PathLike, map_location="cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest loadable checkpoint of ``directory``: ``latest.pth``, else ``iter_N.pth`` from the newest
    down. Broken files are logged and skipped; ``None`` when nothing loads."""
    directory = Path(directory)
    candidates: list[Path] = []
    latest = directory / LATEST
    if latest.exists():
        candidates.append(latest.resolve())
    candidates += [p for _, p in reversed(list_checkpoints(directory)) if p.resolve() not in candidates]
    for path in candidates:
        try:
            return path, load_checkpoint(path, map_location)
        except (CheckpointCorruptError, FileNotFoundError) as exc:
            logger.warning("not resuming from %s: %s", path, exc)
    return None


def strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state_dict`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


class TrainedModels(NamedTuple):
    transformer: GMDiT
    spectrum_net: SpectrumMLP | None
    config: dict[str, Any]  # the run's TrainConfig as a dict (e.g. its vae_path)


def trained_models(state: dict[str, Any], use_ema: bool = True, dtype: torch.dtype | None = None,
                   device=None) -> TrainedModels:
    """The networks of a loaded training checkpoint (:func:`load_checkpoint`), in eval mode: the GM-DiT and
    the spectrum net of the run's config with the EMA weights (the raw ones with ``use_ema=False`` or when
    the run kept no EMA), moved to ``device`` / ``dtype``."""
    config = state["meta"]["config"]
    sd = state["state_dict"]
    prefix = EMA_PREFIX if use_ema and any(k.startswith(EMA_PREFIX) for k in sd) else MODEL_PREFIX
    weights = strip_prefix(sd, prefix)
    transformer = GMDiT(dict(config["model"]))
    transformer.load_state_dict(strip_prefix(weights, "denoising."))
    transformer = transformer.to(device=device, dtype=dtype).eval()
    spectrum = None
    if config.get("spectrum_net"):
        spectrum = SpectrumMLP.from_config(config["spectrum_net"])
        spectrum.load_state_dict(strip_prefix(weights, "spectrum_net."))
        spectrum = spectrum.to(device=device, dtype=dtype).eval()
    return TrainedModels(transformer, spectrum, config)
