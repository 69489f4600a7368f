"""With the native library disabled (GMFLOW_DISABLE_NATIVE=1) everything still
imports and works through the reference fallback, with the same results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import NATIVE_CPU
from strategies import GmCase

TESTS = Path(__file__).parent
SCRIPT = """
import sys, torch, gmflow
from gmflow import _native
assert not _native.STATE.libraries["cpu"].loaded, _native.STATE.libraries
assert "GMFLOW_DISABLE_NATIVE" in _native.STATE.libraries["cpu"].reason
sys.path.insert(0, {tests!r})
from strategies import GmCase
case = GmCase(batch=(2,), K=3, C=2, H=4, W=5, N=2, logstd_layout="per_component_pixel")
inputs = case.tensors(requires_grad=True)
out = torch.ops.gmflow.gm_logprob(*inputs)
out.sum().backward()
mean = torch.ops.gmflow.gm_to_mean(inputs[0], inputs[2], 1.5)
iso = torch.ops.gmflow.gm_to_iso_gaussian(*inputs[:3])
torch.save({{"out": out.detach(), "grads": [t.grad for t in inputs], "mean": mean.detach(),
            "iso": [t.detach() for t in iso]}}, sys.argv[1])
"""


def _env():
    return dict(os.environ, GMFLOW_DISABLE_NATIVE="1")


@pytest.mark.skipif(not NATIVE_CPU, reason="compares against the native library")
def test_fallback_results_equal_native(tmp_path):
    path = tmp_path / "fallback.pt"
    subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS)), str(path)], env=_env(), check=True)
    fallback = torch.load(path)
    case = GmCase(batch=(2,), K=3, C=2, H=4, W=5, N=2, logstd_layout="per_component_pixel")
    inputs = case.tensors(requires_grad=True)
    out = torch.ops.gmflow.gm_logprob(*inputs)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), fallback["out"])
    for g, f in zip((t.grad for t in inputs), fallback["grads"]):
        torch.testing.assert_close(g, f)
    torch.testing.assert_close(torch.ops.gmflow.gm_to_mean(inputs[0], inputs[2], 1.5).detach(), fallback["mean"])
    for a, b in zip(torch.ops.gmflow.gm_to_iso_gaussian(*inputs[:3]), fallback["iso"]):
        torch.testing.assert_close(a.detach(), b)


def test_op_test_suites_pass_on_the_fallback():
    """opcheck, gradcheck, compile, error messages and registration, all on the reference fallback."""
    suites = ["test_opcheck.py", "test_gradcheck.py", "test_compile.py", "test_errors.py", "test_registration.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *suites],
        cwd=TESTS, env=_env(), capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
