"""The three CPU kernel builds (baseline, AVX2, AVX-512) all run the parity suite: the default one in
this process (whichever the CPU supports best), the others in subprocesses with ``GMFLOW_CPU_ISA``
capping the dispatcher's choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gmflow import _native

from conftest import requires_native_cpu

TESTS = Path(__file__).resolve().parent
ACTIVE = _native.STATE.libraries["cpu"].cpu_isa


def _run(args: list[str], isa: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{_native.CPU_ISA_ENV: isa})
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=TESTS.parent)


def _cpu_isa_under(isa: str) -> str:
    out = _run(["-m", "gmflow.info", "--json"], isa)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["native_libraries"]["cpu"]["cpu_isa"]


@requires_native_cpu
def test_the_default_is_the_best_supported_build():
    assert ACTIVE in _native.CPU_ISAS
    assert _cpu_isa_under("") == ACTIVE
    assert _cpu_isa_under("avx512") == ACTIVE  # a cap at or above the best changes nothing


@requires_native_cpu
def test_an_unknown_cap_warns_and_is_ignored():
    out = _run(["-W", "error::RuntimeWarning", "-c", "import gmflow, gmflow.ops"], "avx-512")
    assert out.returncode != 0 and "GMFLOW_CPU_ISA='avx-512' is not one of baseline, avx2, avx512" in out.stderr


@requires_native_cpu
@pytest.mark.parametrize("isa", [i for i in _native.CPU_ISAS if i != ACTIVE])
def test_capped_build_passes_the_parity_suite(isa):
    if _native.CPU_ISAS.index(isa) > _native.CPU_ISAS.index(ACTIVE):
        pytest.skip(f"this CPU runs {ACTIVE} at best")
    assert _cpu_isa_under(isa) == isa
    out = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(TESTS / "test_native_parity.py")], isa)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
