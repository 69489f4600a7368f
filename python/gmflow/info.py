"""``python -m gmflow.info``: what this gmflow install can do, and why.

Prints the torch / CUDA versions, the build's torch target and CUDA archs,
whether each native library loaded (and why not), and which backend serves
each op on each device.
"""

from __future__ import annotations

import json
import sys

import torch

import gmflow
from gmflow import _library, _native


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def native_kernel_serves(op: str, device: torch.device | str) -> bool:
    """Whether a native kernel (not the reference fallback) runs ``torch.ops.gmflow.<op>`` on ``device``."""
    key = _DISPATCH_KEYS.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"{_library.NAMESPACE}::{op}", key)


def backend_table() -> dict[str, dict[str, str]]:
    """op -> {device: "native" | "reference"} for the devices this torch supports."""
    devices = ["cpu"] + (["cuda"] if torch.version.cuda else [])
    return {name: {d.upper(): "native" if native_kernel_serves(name, d) else "reference" for d in devices}
            for name in _library.SCHEMAS}


def collect() -> dict:
    state = _native.load()
    return {
        "gmflow": gmflow.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "build": state.build_info,
        "native_libraries": {
            name: {"loaded": s.loaded, "path": s.path, "reason": s.reason, "cpu_isa": s.cpu_isa}
            for name, s in state.libraries.items()
        },
        "backends": backend_table(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    info = collect()
    if "--json" in argv:
        print(json.dumps(info, indent=2))
        return 0
    print(f"gmflow {info['gmflow']}  (python {info['python']})")
    print(f"torch {info['torch']}  CUDA: {info['torch_cuda'] or 'none'}  GPU available: {info['cuda_available']}")
    build = info["build"]
    if build:
        cuda = (f"CUDA {_native.built_cuda_version(build)} (archs {build.get('cuda_archs') or '-'})"
                if build.get("cuda_library") == "ON" else "no CUDA library")
        print(
            f"build: against torch {build.get('built_with_torch')} (CUDA {build.get('built_with_torch_cuda') or 'none'}"
            f"; stable ABI target {build.get('torch_stable_abi_target')}), {cuda}, {build.get('cxx_compiler')}"
        )
    else:
        print("build: no build information (pure-Python install)")
    for name, lib in info["native_libraries"].items():
        state = "loaded" if lib["loaded"] else f"not loaded: {lib['reason']}"
        if lib["cpu_isa"]:
            state += f" ({lib['cpu_isa']} kernels)"
        print(f"native {name} library: {state}" + (f"  [{lib['path']}]" if lib["path"] else ""))
    devices = list(next(iter(info["backends"].values())).keys())
    width = max(len(n) for n in info["backends"])
    print()
    print(f"{'op':<{width}}  " + "  ".join(f"{d:<9}" for d in devices))
    for name, row in info["backends"].items():
        print(f"{name:<{width}}  " + "  ".join(f"{row[d]:<9}" for d in devices))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
