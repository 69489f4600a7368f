"""Finds and loads the native libraries (never compiles anything).

``libgmflow_cpu.so`` registers the CPU kernels; ``libgmflow_cuda.so`` the CUDA
kernels and is only loaded into a torch built with CUDA (it links libtorch_cuda).
Both are stable-ABI libraries: built once against torch >= 2.10, they load into
any later torch of the same CUDA major. A library that exists but cannot be used
(another CUDA major, a CUDA runtime that does not load) is reported once with a
``NativeLibraryWarning`` at import and by ``python -m gmflow.info``; it never
fails the import, and every op keeps working through the reference fallback.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger("gmflow")

MIN_TORCH = (2, 10)
DISABLE_ENV = "GMFLOW_DISABLE_NATIVE"


class NativeLibraryWarning(RuntimeWarning):
    """A native library of this install could not be used; its ops run on the reference fallback."""


def _warn_not_loaded(path: Path, name: str, reason: str) -> None:
    message = f"gmflow: not loading {path}: {reason}. {name.upper()} ops use the reference fallback."
    logger.debug(message)
    warnings.warn(message, NativeLibraryWarning, stacklevel=3)


@dataclass
class LibraryStatus:
    name: str  # "cpu" or "cuda"
    loaded: bool = False
    path: str | None = None
    reason: str = ""  # why it is not loaded
    cpu_isa: str = ""  # the CPU library's kernel build in use: "avx512", "avx2" or "baseline"


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


def built_cuda_version(build_info: dict) -> str:
    """The CUDA version the CUDA library was compiled with (nvcc's; older builds recorded only torch's)."""
    return build_info.get("cuda_compiler_version") or build_info.get("built_with_torch_cuda", "")


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
        status.reason = f"torch {torch.__version__} is a CPU-only build (the CUDA library needs a CUDA build of torch)"
        return status
    path = find_file(f"libgmflow_{name}.so")
    if path is None:
        status.reason = "not part of this build" + (
            " (built without CUDA kernels; see GMFLOW_CUDA in the README)" if name == "cuda" else ""
        )
        return status
    status.path = str(path)
    # The CUDA runtime the library links (libcudart.so.<major>) is nvcc's, not the build torch's.
    built_cuda = built_cuda_version(STATE.build_info)
    if name == "cuda" and _major(built_cuda) != _major(torch.version.cuda or ""):
        status.reason = (
            f"built for CUDA {built_cuda} but this torch uses CUDA {torch.version.cuda}; "
            "install the gmflow wheel of this CUDA major (see the README's Install section) or build "
            "gmflow from source against this torch for native CUDA kernels"
        )
        _warn_not_loaded(path, name, status.reason)
        return status
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as error:
        status.reason = f"failed to load: {error}"
        _warn_not_loaded(path, name, status.reason)
        return status
    status.loaded = True
    if name == "cpu":
        status.cpu_isa = _active_cpu_isa(path)
    return status


CPU_ISA_ENV = "GMFLOW_CPU_ISA"
CPU_ISAS = ("baseline", "avx2", "avx512")


def _active_cpu_isa(path: Path) -> str:
    """Which build of the CPU kernels the library dispatches to here (``GMFLOW_CPU_ISA`` caps it)."""
    cap = os.environ.get(CPU_ISA_ENV, "")
    if cap and cap not in CPU_ISAS:
        warnings.warn(f"gmflow: {CPU_ISA_ENV}={cap!r} is not one of {', '.join(CPU_ISAS)}; ignored (the best "
                      "build this CPU supports runs)", NativeLibraryWarning, stacklevel=4)
    try:
        query = ctypes.CDLL(str(path)).gmflow_cpu_active_isa
    except (OSError, AttributeError):  # a library from before the query existed
        return ""
    query.restype = ctypes.c_char_p
    return query().decode()
