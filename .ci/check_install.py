"""Checks an installed gmflow wheel from the user's side (run by .ci/run, never by pytest).

    python .ci/check_install.py --cuda {loaded,cpu-only,refused} [--built-cuda MAJOR]

loaded:   both native libraries load and every op has a CUDA kernel (a CUDA torch of the wheel's CUDA major)
cpu-only: the CUDA library is not loaded because this torch has no CUDA, and nothing warns about it
refused:  the CUDA library is not loaded (another CUDA major): a NativeLibraryWarning at import, no failure
In every case the native CPU library is loaded and its ops agree with gmflow.reference.
--built-cuda: the wheel's CUDA library was compiled with CUDA MAJOR, its version has the matching
local part (+cuMAJOR, none for 13) and `python -m gmflow.info` prints that CUDA version.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cuda", choices=["loaded", "cpu-only", "refused"], required=True)
    parser.add_argument("--built-cuda", choices=["12", "13"])
    args = parser.parse_args()
    expect = args.cuda

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import gmflow
        from gmflow import _library, _native
        from gmflow.reference import density as ref
    native_warnings = [str(w.message) for w in caught if issubclass(w.category, _native.NativeLibraryWarning)]

    state = _native.STATE
    build = state.build_info
    cpu, cuda = state.libraries["cpu"], state.libraries["cuda"]
    assert gmflow.__version__ == importlib.metadata.version("gmflow") == build["gmflow_version"], (
        gmflow.__version__, build)
    assert build["cpu_library"] == "ON" and build["cuda_library"] == "ON", build
    assert build["torch_stable_abi_target"] == "2.10", build
    assert cpu.loaded, cpu.reason
    assert "site-packages" in cpu.path, f"gmflow imported from {cpu.path}, not from the installed wheel"

    if expect == "loaded":
        assert cuda.loaded, cuda.reason
        missing = [n for n in _library.SCHEMAS
                   if not torch._C._dispatch_has_kernel_for_dispatch_key(f"gmflow::{n}", "CUDA")]
        assert not missing, f"ops without a CUDA kernel: {missing}"
        assert not native_warnings, native_warnings
    elif expect == "cpu-only":
        assert not torch.version.cuda, torch.version.cuda
        assert not cuda.loaded and "CPU-only" in cuda.reason, cuda.reason
        assert not native_warnings, native_warnings
    else:
        assert not cuda.loaded, "the CUDA library loaded into a torch of another CUDA major"
        assert native_warnings and "CUDA" in native_warnings[0], native_warnings
        print(f"import warned, as it should: {native_warnings[0]}")

    if args.built_cuda:
        built = _native.built_cuda_version(build)
        assert built.split(".")[0] == args.built_cuda, f"CUDA library built with CUDA {built}"
        local = "" if args.built_cuda == "13" else f"+cu{args.built_cuda}"
        assert gmflow.__version__.endswith(local) and ("+" in gmflow.__version__) == bool(local), gmflow.__version__
        from gmflow import info
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            info.main([])
        assert f"CUDA {built} (archs" in printed.getvalue(), printed.getvalue()
        print(f"gmflow {gmflow.__version__}: CUDA library built with CUDA {built}, and gmflow.info says so")

    g = torch.Generator().manual_seed(0)
    means, logweights = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, 1, 5, 6, generator=g).log_softmax(1)
    logstds, samples = torch.randn(2, 1, 1, 1, 1, generator=g) * 0.1, torch.randn(2, 1, 4, 5, 6, generator=g)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("gmflow::gm_logprob", "CPU")
    torch.testing.assert_close(torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples),
                               ref.gm_logprob(means, logstds, logweights, samples))
    torch.testing.assert_close(torch.ops.gmflow.gm_to_mean(means, logweights, 1.0), ref.gm_to_mean(means, logweights))
    print(f"gmflow {gmflow.__version__} in torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}): "
          f"CPU library loaded; CUDA library {'loaded' if cuda.loaded else 'not loaded: ' + cuda.reason}")


if __name__ == "__main__":
    main()
