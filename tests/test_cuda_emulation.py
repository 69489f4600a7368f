"""The CUDA kernels, run on the CPU by their host emulation (torch.ops.gmflow_cuda_emu, built with
GMFLOW_CUDA_EMULATION=ON), against the native CPU kernels: every op, forward and backward, over
hypothesis-drawn shapes, K, dtypes, broadcasting, strides and empty inputs, on three grids (one
thread, an odd 3 x 37 grid, the production grid), to the tolerances of the CPU-vs-reference
suites; random draws (gm_sample, the KR extra axes) pick the same components from the same
uniforms. Skipped, with the reason, when the emulation library is not built.

The reference parity, gradcheck and oracle suites run against the emulated kernels too, with
GMFLOW_TEST_KERNELS=cuda-emulation (see tests/conftest.py and .ci/run)."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NATIVE_CPU
from gmflow import _library, testing
from gmflow._ops.sample_data import GmCase, random_rotation
from strategies import DTYPES, gm_cases, tolerances

try:
    EMU = testing.load_cuda_emulation()
    SKIP_REASON = ""
except RuntimeError as error:
    EMU = None
    SKIP_REASON = str(error)


requires_emulation = pytest.mark.skipif(
    EMU is None or not NATIVE_CPU, reason=SKIP_REASON or "the native CPU library is not loaded"
)

GRIDS = {"1x1": (1, 1), "3x37": (3, 37), "production": (None, None)}
CASES: Counter = Counter()  # (op, dtype, grid) -> cases compared


@pytest.fixture(scope="module", autouse=True)
def _case_counts():
    """Writes the parity case counts to $GMFLOW_EMU_CASES_JSON (CI prints them)."""
    yield
    path = os.environ.get("GMFLOW_EMU_CASES_JSON")
    if path and CASES:
        rows = [{"op": op, "dtype": dtype, "grid": grid, "cases": n} for (op, dtype, grid), n in sorted(CASES.items())]
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def choose_from(data):
    """The ``choose(label, options)`` of the op modules' parity builders, drawn by hypothesis."""

    def choose(label, options):
        if isinstance(options, range):
            return data.draw(st.integers(options.start, options.stop - 1), label=label)
        return data.draw(st.sampled_from(options), label=label)

    return choose


# Each op module registers how to call its op (OpDef.register_parity_args).
OPS = {name: op.parity for name, op in _library.OPS.items()}
PARITY = [(op, dtype) for op, recipe in OPS.items() for dtype in (recipe.dtypes or DTYPES)]


# Float Newton solves are compared at convergence (0 steps, or enough steps for both): an fp32
# trajectory through a flat stretch of the CDF depends on the last bits of each cdf evaluation,
# so the two kernels may reach the same root a few steps apart (found: K=16, C=3 KR inverse at
# 16 steps, emulated CUDA 0.014 off the fp64 root, CPU converged; both within 0.004 at 32+).
FLOAT_NEWTON_STEPS = 64


def _float_converged(recipe, args: tuple, dtype) -> tuple:
    if dtype == torch.float64:
        return args
    args = list(args)
    step_index = recipe.newton_steps_arg
    if step_index is not None and args[step_index] != 0:
        args[step_index] = FLOAT_NEWTON_STEPS
    return tuple(args)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype, factor: float, view=None):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    if view is not None and dtype != torch.float64:
        actual, expected = view(actual), view(expected)
        scale = 1.0
    else:
        scale = expected.detach().abs().max().item() if expected.numel() else 1.0
    tol = tolerances(dtype)
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"] * factor,
                               atol=tol["atol"] * factor * max(1.0, scale))


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def test_loader_says_why_it_cannot_load():
    from gmflow import _native

    built = _native.STATE.build_info.get("cuda_emulation_library") == "ON"
    if EMU is None:
        assert not built or "torch" in SKIP_REASON, SKIP_REASON
        assert "GMFLOW_CUDA_EMULATION=ON" in SKIP_REASON or "torch" in SKIP_REASON
        with pytest.raises(RuntimeError, match="gmflow"):
            testing.load_cuda_emulation()
    else:
        assert built and testing.load_cuda_emulation() is EMU


@requires_emulation
def test_schemas_are_those_of_gmflow():
    """Every gmflow op, forward and backward, exists under gmflow_cuda_emu with the same schema."""
    schemas = testing.gmflow_schemas()
    assert {"gm_logprob", "gm_logprob_backward", "gm_kr_inverse", "gm_sample"} <= set(schemas)
    for name, schema in schemas.items():
        (emu,) = torch._C._jit_get_schemas_for_operator(f"{testing.NAMESPACE}::{name}")
        assert str(emu).split("::", 1)[1] == schema
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{testing.NAMESPACE}::{name}", "CPU"), name
    assert set(OPS) == set(schemas)
    missing = [name for name, recipe in OPS.items() if recipe is None]
    assert not missing, f"ops without parity args (register_parity_args): {missing}"


@requires_emulation
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("op,dtype", PARITY, ids=[f"{op}-{str(d).removeprefix('torch.')}" for op, d in PARITY])
@given(data=st.data())
@settings(max_examples=12)
def test_emulated_cuda_matches_cpu_kernels(op, dtype, grid, data):
    recipe = OPS[op]
    case = data.draw(gm_cases(dtypes=[dtype], **recipe.case_options), label="case")
    args = _float_converged(recipe, recipe.build(case, choose_from(data)), case.dtype)
    expected = _as_tuple(getattr(torch.ops.gmflow, op)(*args))
    with testing.cuda_emulation_grid(*GRIDS[grid]):
        actual = _as_tuple(getattr(EMU, op)(*args))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.is_contiguous()
        _close(a, e, case.dtype, recipe.factor, recipe.float_view)
    CASES[(op, str(case.dtype).removeprefix("torch."), grid)] += 1


@requires_emulation
@pytest.mark.parametrize("grid", list(GRIDS))
def test_draws_pick_the_same_components(grid):
    """Well separated components: the same uniforms give the same component, bit for bit in fp64."""
    case = GmCase(batch=(2,), K=7, C=3, H=3, W=5, N=4, dtype=torch.float64, seed=11)
    means, logstds, logweights, normals = case.tensors()
    means = means * 40.0
    uniforms = torch.rand(2, 4, 1, 3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rotation = random_rotation(case, per_pixel=False)
    calls = {
        "gm_sample": (means, logstds, logweights, uniforms, normals, 1.0, False),
        "gm_kr_inverse": (means, logstds, logweights, normals, rotation, uniforms, 1, 16, 1e-6, 1.5),
    }
    with testing.cuda_emulation_grid(*GRIDS[grid]):
        for op, args in calls.items():
            expected = getattr(torch.ops.gmflow, op)(*args)
            actual = getattr(EMU, op)(*args)
            torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-9)


@requires_emulation
def test_launch_configuration_errors_raise():
    """A grid the device would reject fails the op with the launch error, as on a GPU."""
    case = GmCase(batch=(2,), K=3, C=2, H=2, W=2, N=1)
    args = case.tensors()
    for bad in ("1x1000", "0x32", "3"):
        os.environ[testing.GRID_ENV] = bad
        try:
            with pytest.raises(RuntimeError, match="CUDA kernel launch failed: invalid configuration"):
                EMU.gm_logprob(*args)
        finally:
            os.environ.pop(testing.GRID_ENV)
    torch.testing.assert_close(EMU.gm_logprob(*args), torch.ops.gmflow.gm_logprob(*args))


@requires_emulation
def test_cuda_tensors_are_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    case = GmCase(batch=(1,), K=2, C=1, H=1, W=1, N=1)
    with pytest.raises(RuntimeError, match="CPU tensors"):
        EMU.gm_logprob(*case.tensors("cuda"))


@requires_emulation
def test_routing_sends_gmflow_cpu_ops_to_the_emulated_kernels():
    """GMFLOW_TEST_KERNELS=cuda-emulation really runs the CUDA kernels: a grid the device would
    reject fails torch.ops.gmflow calls while the route lasts, and only then."""
    args = GmCase(batch=(2,), K=3, C=2, H=2, W=2, N=1).tensors()
    route = testing.route_cpu_kernels_to_cuda_emulation()
    try:
        torch.testing.assert_close(torch.ops.gmflow.gm_logprob(*args), EMU.gm_logprob(*args), rtol=0, atol=0)
        with testing.cuda_emulation_grid(1, 1000):
            with pytest.raises(RuntimeError, match="CUDA kernel launch failed"):
                torch.ops.gmflow.gm_logprob(*args)
    finally:
        del route
    if os.environ.get("GMFLOW_TEST_KERNELS", "") != "cuda-emulation":
        with testing.cuda_emulation_grid(1, 1000):
            torch.ops.gmflow.gm_logprob(*args)  # the native CPU kernel again
