"""Finds and loads the native libraries (never compiles anything).

``libgmflow_cpu.so`` registers the CPU kernels; ``libgmflow_cuda.so`` the CUDA
kernels and is only loaded into a torch built with CUDA (it links libtorch_cuda).
Both are stable-ABI libraries: built once against torch >= 2.10, they load into
any later torch of the same CUDA major. A library that exists but cannot be used
is reported once through the ``gmflow`` logger; every op keeps working through
the reference fallback.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger("gmflow")

MIN_TORCH = (2, 10)
DISABLE_ENV = "GMFLOW_DISABLE_NATIVE"


@dataclass
class LibraryStatus:
    name: str  # "cpu" or "cuda"
    loaded: bool = False
    path: str | None = None
    reason: str = ""  # why it is not loaded


@dataclass
class NativeState:
    build_info: dict = field(default_factory=dict)
    libraries: dict[str, LibraryStatus] = field(default_factory=dict)


STATE = NativeState()


def _package_dirs() -> list[Path]:
    """The package's directories, from the import system's record of it (no import of the package)."""
    return [Path(p) for p in importlib.util.find_spec(__package__).submodule_search_locations]


def find_file(filename: str) -> Path | None:
    """``filename`` in the package's directories (editable installs split the package over several), or None."""
    for directory in _package_dirs():
        candidate = directory / filename
        if candidate.exists():
            return candidate
    return None


def torch_version() -> tuple[int, int]:
    """The running torch's (major, minor)."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _major(version: str) -> str:
    return version.split(".")[0] if version else ""


def load() -> NativeState:
    """Loads whatever native libraries apply to this torch; idempotent."""
    if STATE.libraries:
        return STATE
    info_path = find_file("_build_info.json")
    if info_path is not None:
        STATE.build_info = json.loads(info_path.read_text())
    for name in ("cpu", "cuda"):
        STATE.libraries[name] = _load_one(name)
    return STATE


def _load_one(name: str) -> LibraryStatus:
    status = LibraryStatus(name)
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        status.reason = f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
        return status
    if torch_version() < MIN_TORCH:
        status.reason = f"torch {torch.__version__} is older than 2.10, the stable-ABI target of the native libraries"
        return status
    if name == "cuda" and not torch.version.cuda:
        status.reason = "this torch has no CUDA"
        return status
    path = find_file(f"libgmflow_{name}.so")
    if path is None:
        status.reason = "not part of this build" + (
            " (built without CUDA kernels; see GMFLOW_CUDA in the README)" if name == "cuda" else ""
        )
        return status
    status.path = str(path)
    built_cuda = STATE.build_info.get("built_with_torch_cuda", "")
    if name == "cuda" and _major(built_cuda) != _major(torch.version.cuda or ""):
        status.reason = (
            f"built for CUDA {built_cuda} but this torch uses CUDA {torch.version.cuda}; "
            "rebuild gmflow against this torch"
        )
        logger.warning("gmflow: not loading %s: %s. CUDA ops use the reference fallback.", path, status.reason)
        return status
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as error:
        status.reason = f"failed to load: {error}"
        logger.warning("gmflow: could not load %s (%s); %s ops use the reference fallback.", path, error, name.upper())
        return status
    status.loaded = True
    return status
