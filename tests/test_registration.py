"""Every op is fully registered: schema, reference fallback, fake kernel, autograd
(where differentiable), the native CPU kernel and, in a CUDA build, the CUDA kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import NATIVE_CPU, NATIVE_CUDA
from gmflow import _library, _native


def has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"gmflow::{name}", key)


@pytest.mark.parametrize("name", list(_library.SCHEMAS))
def test_schema_is_the_single_source_of_truth(name):
    op = getattr(torch.ops.gmflow, name).default
    assert str(op._schema) == str(torch._C.parse_schema(f"gmflow::{_library.SCHEMAS[name]}"))


@pytest.mark.parametrize("name", list(_library.SCHEMAS))
def test_op_has_fallback_fake_and_autograd(name):
    assert has_kernel(name, "CompositeExplicitAutograd")
    assert has_kernel(name, "Meta")
    if name in _library.DIFFERENTIABLE:
        assert has_kernel(name, "Autograd")
        backward = _library.DIFFERENTIABLE[name]
        assert backward is None or backward in _library.SCHEMAS


@pytest.mark.skipif(not NATIVE_CPU, reason="native CPU library not loaded")
@pytest.mark.parametrize("name", list(_library.SCHEMAS))
def test_native_cpu_kernel_registered(name):
    assert has_kernel(name, "CPU")


@pytest.mark.skipif(not torch.version.cuda, reason="CPU-only torch")
def test_cuda_build_registers_cuda_kernels():
    """In a CUDA build (GMFLOW_CUDA=ON) every op has a CUDA kernel, GPU or not."""
    if _native.STATE.build_info.get("cuda_library") != "ON":
        pytest.skip("this build has no CUDA library")
    if os.environ.get(_native.DISABLE_ENV, "") not in ("", "0"):
        pytest.skip("native libraries disabled")
    assert NATIVE_CUDA, _native.STATE.libraries["cuda"].reason
    for name in _library.SCHEMAS:
        assert has_kernel(name, "CUDA"), name


def test_namespace_has_no_unlisted_ops():
    listed = {f"gmflow::{n}" for n in _library.SCHEMAS}
    registered = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("gmflow::")}
    assert registered == listed


def test_info_reports_backends():
    out = subprocess.run([sys.executable, "-m", "gmflow.info", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert set(info["backends"]) == set(_library.SCHEMAS)
    assert info["native_libraries"]["cpu"]["loaded"] == NATIVE_CPU
    expected = "native" if NATIVE_CPU else "reference"
    assert all(row["CPU"] == expected for row in info["backends"].values())
    text = subprocess.run([sys.executable, "-m", "gmflow.info"], capture_output=True, text=True, check=True).stdout
    assert "native cpu library" in text and "gm_logprob" in text
