"""The loader never fails the import: a CUDA library that cannot be used warns and ops stay on the fallback."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest
import torch

import gmflow
from gmflow import _native, info


@pytest.fixture
def fake_cuda_build(monkeypatch, tmp_path):
    """A libgmflow_cuda.so (not a real library) from a build against CUDA 13.0."""
    library = tmp_path / "libgmflow_cuda.so"
    library.write_bytes(b"not an ELF file")
    monkeypatch.delenv(_native.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_native, "find_file",
                        lambda filename: tmp_path / filename if filename == library.name else None)
    monkeypatch.setattr(_native.STATE, "build_info", {"built_with_torch_cuda": "13.0"})
    return library


def test_cuda_library_of_another_cuda_major_warns_and_stays_unloaded(monkeypatch, fake_cuda_build):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.warns(_native.NativeLibraryWarning, match=r"built for CUDA 13\.0 but this torch uses CUDA 12\.8"):
        status = _native._load_one("cuda")
    assert not status.loaded
    assert status.path == str(fake_cuda_build)
    assert "CUDA 12" in status.reason


@pytest.mark.parametrize("torch_cuda", ["12.4", "12.8", "12.9"])
def test_cuda_12_build_against_cuda_13_torch_headers_is_tried_on_any_cuda_12_torch(
        monkeypatch, fake_cuda_build, torch_cuda):
    # The +cu12 wheel: nvcc 12.4 against a CUDA 13 torch's stable headers. nvcc's major decides,
    # so the loader goes on to load it (the fake file then fails to load, and says so).
    monkeypatch.setattr(_native.STATE, "build_info",
                        {"built_with_torch_cuda": "13.0", "cuda_compiler_version": "12.4.131"})
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    with pytest.warns(_native.NativeLibraryWarning, match="failed to load"):
        status = _native._load_one("cuda")
    assert status.reason.startswith("failed to load"), status.reason


def test_cuda_12_build_is_refused_by_a_cuda_13_torch(monkeypatch, fake_cuda_build):
    monkeypatch.setattr(_native.STATE, "build_info",
                        {"built_with_torch_cuda": "13.0", "cuda_compiler_version": "12.4.131"})
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.warns(_native.NativeLibraryWarning, match=r"built for CUDA 12\.4\.131 but this torch uses CUDA 13\.0"):
        status = _native._load_one("cuda")
    assert not status.loaded and "wheel of this CUDA major" in status.reason


def test_info_prints_the_cuda_version_the_library_was_compiled_with(monkeypatch, capsys):
    monkeypatch.setattr(_native.STATE, "build_info", {
        "built_with_torch": "2.14.1", "built_with_torch_cuda": "13.0", "torch_stable_abi_target": "2.10",
        "cuda_library": "ON", "cuda_compiler_version": "12.4.131", "cuda_archs": "75-real;90-real;90-virtual",
        "cxx_compiler": "GNU 12.2.0"})
    info.main([])
    out = capsys.readouterr().out
    assert ("build: against torch 2.14.1 (CUDA 13.0; stable ABI target 2.10), "
            "CUDA 12.4.131 (archs 75-real;90-real;90-virtual), GNU 12.2.0") in out


def test_cuda_library_that_fails_to_load_warns_instead_of_raising(monkeypatch, fake_cuda_build):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.warns(_native.NativeLibraryWarning, match="reference fallback"):
        status = _native._load_one("cuda")
    assert not status.loaded
    assert status.reason.startswith("failed to load")


def test_cpu_only_torch_skips_the_cuda_library_silently(monkeypatch, fake_cuda_build):
    monkeypatch.setattr(torch.version, "cuda", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status = _native._load_one("cuda")
    assert not status.loaded and status.path is None
    assert "CPU-only build" in status.reason


@pytest.mark.skipif(bool(torch.version.cuda), reason="this torch has CUDA")
def test_info_says_why_the_cuda_library_is_not_loaded(capsys):
    info.main([])
    out = capsys.readouterr().out
    assert "native cuda library: not loaded: torch" in out and "CPU-only build" in out


def test_version_comes_from_the_package_metadata():
    assert gmflow.__version__ == importlib.metadata.version("gmflow")
