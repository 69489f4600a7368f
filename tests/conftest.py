"""Shared pytest configuration: hypothesis profiles and the native-library fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import gmflow
from gmflow import _native

# "ci" (default): derandomised, so a CI run is reproducible; "dev": more examples, random.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("GMFLOW_HYPOTHESIS_PROFILE", "ci"))

NATIVE_CPU = _native.STATE.libraries["cpu"].loaded
NATIVE_CUDA = _native.STATE.libraries["cuda"].loaded
HAS_GPU = torch.cuda.is_available()

requires_native_cpu = pytest.mark.skipif(
    not NATIVE_CPU, reason=f"native CPU library not loaded: {_native.STATE.libraries['cpu'].reason}"
)
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device")


def pytest_report_header(config):
    libs = ", ".join(
        f"{name}={'loaded' if s.loaded else 'no (' + s.reason + ')'}" for name, s in _native.STATE.libraries.items()
    )
    return [f"gmflow {gmflow.__version__}: native libraries {libs}"]


def devices() -> list[str]:
    """Devices the parity tests run on."""
    return ["cpu"] + (["cuda"] if HAS_GPU else [])


@pytest.fixture(params=devices(), scope="session")
def device(request):
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """For modules of small-tensor tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): one
    intra-op thread avoids thread-pool overhead (and stalls on a busy 2-core machine); the previous
    setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# GMFLOW_TEST_KERNELS=cuda-emulation: every torch.ops.gmflow op on CPU tensors runs the host
# emulation of the CUDA kernels (gmflow.testing), so the parity, gradcheck and oracle suites
# check the CUDA kernels; GMFLOW_CUDA_EMU_GRID picks the emulated grid.
if os.environ.get("GMFLOW_TEST_KERNELS", "") == "cuda-emulation":
    from gmflow import testing as _testing

    _CUDA_EMULATION_ROUTE = _testing.route_cpu_kernels_to_cuda_emulation()
