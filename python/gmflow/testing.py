"""Test support: the host emulation of gmflow's CUDA kernels.

``load_cuda_emulation()`` defines ``torch.ops.gmflow_cuda_emu`` with the schemas of every
``torch.ops.gmflow`` op (read from the dispatcher, so the two cannot drift) and loads
``libgmflow_cuda_emu.so``: the CUDA kernels of ``cuda/*.cu`` compiled by the host compiler, taking
CPU tensors and running every block and thread of each launch on the CPU. The library exists only
in builds made with ``GMFLOW_CUDA_EMULATION=ON pip install --no-build-isolation .``.

``cuda_emulation_grid(blocks, threads)`` makes every emulated launch use that grid instead of the
production one (``GMFLOW_CUDA_EMU_GRID``), so tests reach the grid-stride and indexing paths that
a small or odd grid exercises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from . import _native

NAMESPACE = "gmflow_cuda_emu"
GRID_ENV = "GMFLOW_CUDA_EMU_GRID"
LIBRARY = "libgmflow_cuda_emu.so"

_state: dict = {}


def gmflow_schemas() -> dict[str, str]:
    """op name -> schema string of every op registered under ``torch.ops.gmflow``."""
    import gmflow  # noqa: F401  (defines the gmflow library)

    schemas = {}
    for qualname in torch._C._dispatch_get_all_op_names():
        if not qualname.startswith("gmflow::"):
            continue
        name = qualname.split("::", 1)[1]
        (schema,) = torch._C._jit_get_schemas_for_operator(qualname)
        schemas[name] = str(schema).split("::", 1)[1]
    return dict(sorted(schemas.items()))


def load_cuda_emulation():
    """``torch.ops.gmflow_cuda_emu``; raises RuntimeError with the reason when it cannot be loaded."""
    if "ops" in _state:
        return _state["ops"]
    if "error" in _state:
        raise RuntimeError(_state["error"])
    path = _native.find_file(LIBRARY)
    if path is None:
        _state["error"] = (
            f"gmflow: {LIBRARY} is not part of this build; rebuild with "
            "`GMFLOW_CUDA_EMULATION=ON pip install --no-build-isolation .`"
        )
        raise RuntimeError(_state["error"])
    if _native.torch_version() < _native.MIN_TORCH:
        _state["error"] = f"gmflow: torch {torch.__version__} is older than the stable-ABI target of {LIBRARY}"
        raise RuntimeError(_state["error"])
    library = torch.library.Library(NAMESPACE, "DEF")
    for schema in gmflow_schemas().values():
        library.define(schema)
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as error:
        _state["error"] = f"gmflow: could not load {path}: {error}"
        raise RuntimeError(_state["error"]) from error
    _state["library"] = library  # keeps the definitions alive
    _state["ops"] = getattr(torch.ops, NAMESPACE)
    return _state["ops"]


@contextlib.contextmanager
def cuda_emulation_grid(blocks: int | None, threads: int | None = None) -> Iterator[None]:
    """Every emulated launch inside uses ``blocks`` x ``threads``; ``None``: the production grid."""
    previous = os.environ.get(GRID_ENV)
    os.environ[GRID_ENV] = "production" if blocks is None else f"{blocks}x{threads}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(GRID_ENV, None)
        else:
            os.environ[GRID_ENV] = previous


def route_cpu_kernels_to_cuda_emulation() -> torch.library.Library:
    """Makes every ``torch.ops.gmflow`` op on CPU tensors run the emulated CUDA kernels.

    Overrides the CPU kernels of the ``gmflow`` library (native or fallback) with
    ``torch.ops.gmflow_cuda_emu``, so that any test written against ``torch.ops.gmflow`` checks
    the CUDA kernels. The override lasts as long as the returned library object lives.
    """
    emulated = load_cuda_emulation()
    library = torch.library.Library("gmflow", "IMPL")
    for name in gmflow_schemas():
        library.impl(name, getattr(emulated, name).default, "CPU")
    return library
