"""ImageNet files: list files, class names, and the ADM center crop (docs/training.md#latent-caching).

- list files have one ``<relative path> <label>`` per line (the caffe ``train.txt`` of ILSVRC2012, and the
  ``train_cache.txt`` written by latent caching);
- class names come from ``imagenet1000_clsidx_to_labels.txt`` (lines like ``17: 'jay',``);
- :func:`adm_center_crop` is the ADM preprocessing: halve with BOX while the short side is at least
  twice the target, BICUBIC-resize the short side to the target, crop the center.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "ListEntry",
    "adm_center_crop",
    "image_to_array",
    "read_class_names",
    "read_list_file",
    "write_list_file",
]


class ListEntry(NamedTuple):
    path: str  # relative to the data root, '/'-separated
    label: int


def read_list_file(path: str | os.PathLike) -> list[ListEntry]:
    """Entries of a ``<relative path> <label>`` list file (blank lines skipped). A malformed line raises
    ``ValueError`` naming the file and the line number."""
    path = Path(path)
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
                raise ValueError(f"{path}:{lineno}: expected '<relative path> <integer label>', got {line!r}")
            entries.append(ListEntry(parts[0], int(parts[1])))
    return entries


def write_list_file(path: str | os.PathLike, entries: list[ListEntry] | list[tuple[str, int]]) -> Path:
    """Writes a list file atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for rel, label in entries:
            f.write(f"{rel} {int(label)}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_class_names(path: str | os.PathLike) -> dict[int, str]:
    """``{id: "name, synonym, ..."}`` from ``imagenet1000_clsidx_to_labels.txt`` (a Python dict literal, or
    one ``id: 'names',`` per line)."""
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        table = ast.literal_eval(text if text.startswith("{") else "{" + text + "}")
        return {int(k): str(v) for k, v in table.items()}
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a class-name table ({exc})") from None


def adm_center_crop(image, size: int = 256):
    """ADM center crop of a PIL image to ``size x size`` (returns a PIL image, same mode).

    While the short side is at least ``2 size``, both sides are halved (floor) with BOX resampling; then a
    BICUBIC resize makes the short side ``size`` (the other side rounded), and the ``size x size``
    center is cut at offsets ``floor((side - size) / 2)``.
    """
    from PIL import Image

    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    while min(image.size) >= 2 * size:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), resample=Image.BICUBIC)
    left = (image.size[0] - size) // 2
    top = (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_to_array(image, size: int = 256, flip: bool = False) -> np.ndarray:
    """Opened PIL image -> float32 ``(3, size, size)`` in [-1, 1]: grey / palette / RGBA become RGB, ADM
    center crop, optional horizontal flip."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(adm_center_crop(image, size), dtype=np.float32)
    if flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1)) / 127.5 - 1.0
