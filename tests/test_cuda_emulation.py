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
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NATIVE_CPU
from gmflow import testing
from strategies import DTYPES, GmCase, gm_cases, tolerances, with_layout

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


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _extra(case: GmCase, name: str, tail, seed: int, kind="normal", low=0.0, high=1.0, dtype=None):
    """An operand with the batch of `name` in the case and trailing dims `tail`."""
    g = torch.Generator().manual_seed(case.seed + seed)
    shape = case.batch_of(name) + list(tail)
    t = torch.randn(shape, generator=g, dtype=torch.float64) if kind == "normal" else (
        low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64))
    t = t.to(dtype or case.dtype)
    return with_layout(t, case.layout.get(name), case.batch) if len(tail) >= 4 else t


def _grad_like(out: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g.to(out.dtype)


def _rotation(case: GmCase, per_pixel: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(case.seed)
    pixels = (case.H, case.W) if per_pixel else (1, 1)
    q, _ = torch.linalg.qr(torch.randn(*case.batch_of("means"), *pixels, case.C, case.C, generator=g,
                                       dtype=torch.float64))
    return q.to(_acc(case.dtype))


def _mask(data, n):
    return data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="output_mask")


# Argument builders: (case, hypothesis data) -> the op's positional arguments. Backward ops take
# the forward output of the native CPU kernel, so both implementations see the same inputs.


def _logprob(case, data):
    return case.tensors()


def _logprob_backward(case, data):
    args = case.tensors()
    out = torch.ops.gmflow.gm_logprob(*args)
    return (_grad_like(out, case.seed), *args, out, _mask(data, 4))


def _to_mean(case, data):
    means, _, logweights, _ = case.tensors()
    return means, logweights, data.draw(st.sampled_from([1.0, 0.5, 2.0, 0.0]), label="power")


def _to_mean_backward(case, data):
    means, logweights, power = _to_mean(case, data)
    out = torch.ops.gmflow.gm_to_mean(means, logweights, power)
    return _grad_like(out, case.seed), means, logweights, out, power, _mask(data, 2)


def _iso(case, data):
    return case.tensors()[:3]


def _mul_iso(case, data):
    means, logstds, logweights, _ = case.tensors()
    per_pixel = data.draw(st.booleans(), label="per_pixel_var")
    g_mean = _extra(case, "samples", (case.C, case.H, case.W), 3)
    var_tail = (1, case.H, case.W) if per_pixel else (1, 1, 1)
    g_var = _extra(case, "logweights", var_tail, 4, kind="uniform", low=0.05, high=2.0)
    powers = data.draw(st.sampled_from([(1.0, 1.0), (0.5, 1.0), (2.0, 0.3)]), label="powers")
    return means, logstds, logweights, g_mean, g_var, *powers, 1e-6


def _posterior(case, data):
    means, logstds, logweights, _ = case.tensors()
    x_src = _extra(case, "samples", (case.C, case.H, case.W), 3)
    x_tgt = _extra(case, "means", (case.C, case.H, case.W), 4)
    s_src = _extra(case, "logstds", (), 5, kind="uniform", low=0.3, high=0.95, dtype=torch.float64)
    s_tgt = s_src * _extra(case, "logstds", (), 6, kind="uniform", low=0.05, high=0.95, dtype=torch.float64)
    acc = _acc(case.dtype)
    return means, logstds, logweights, x_src, x_tgt, s_src.to(acc), s_tgt.to(acc), 1e-6


def _posterior_backward(case, data):
    args = _posterior(case, data)
    out = torch.ops.gmflow.gm_posterior_mean(*args)
    return (_grad_like(out, case.seed), *args[:-1], out, 1e-6, _mask(data, 3))


def _ode_euler_substeps(case, data):
    means, logstds, logweights, _ = case.tensors()
    x_src = _extra(case, "samples", (case.C, case.H, case.W), 3)
    S = data.draw(st.integers(1, 6), label="S")
    final = data.draw(st.sampled_from([0.0, 0.05]), label="final_sigma")
    s_src = _extra(case, "logstds", (), 5, kind="uniform", low=0.3, high=0.95, dtype=torch.float64)
    frac = torch.linspace(1.0, 0.0, S + 1, dtype=torch.float64).reshape(S + 1, *([1] * s_src.dim()))
    sigmas = (final + (s_src - final) * frac).to(_acc(case.dtype))
    return means, logstds, logweights, x_src, sigmas, 1e-6


def _ode_euler_substeps_backward(case, data):
    args = _ode_euler_substeps(case, data)
    out = torch.ops.gmflow.gm_ode_euler_substeps(*args)
    return (_grad_like(out, case.seed), *args, _mask(data, 3))


def _gm1d(case, data):
    means, _, logweights, samples = case.tensors()
    logstds = _extra(case, "logstds", (1, 1, 1), 7, kind="uniform", low=-1.5, high=0.3)
    g = samples[..., 0, :, :]
    with_gaussian = data.draw(st.booleans(), label="with_gaussian")
    c = torch.erf(g.double() / math.sqrt(2)).to(case.dtype) if with_gaussian else torch.tanh(g)
    n_steps = data.draw(st.sampled_from([0, 1, 3, 8, 16]), label="n_steps")
    return (means[..., 0, :, :], logstds, logweights[..., 0, :, :], c, g if with_gaussian else None, n_steps,
            1e-6, 1.5)


def _gm1d_backward(case, data):
    m, s, w, c, _, _, eps, step = _gm1d(case, data)
    x = torch.ops.gmflow.gm1d_inverse_cdf(m, s, w, c, None, 8, eps, step)
    return _grad_like(x, case.seed), m, s, w, c, x, eps, _mask(data, 4)


def _kr(case, data):
    means, logstds, logweights, samples = case.tensors()
    n_axes = data.draw(st.integers(1, case.C), label="n_axes")
    rotation = _rotation(case, data.draw(st.booleans(), label="per_pixel_rotation"))
    uniforms = None
    if n_axes < case.C:
        uniforms = _extra(case, "samples", (case.N, 1, case.H, case.W), 8, kind="uniform", dtype=_acc(case.dtype))
    return means, logstds, logweights, samples, rotation, uniforms, n_axes


def _kr_inverse(case, data):
    n_steps = data.draw(st.sampled_from([0, 2, 16]), label="n_steps")
    return (*_kr(case, data), n_steps, 1e-6, 1.5)


def _kr_forward(case, data):
    means, logstds, logweights, samples, rotation, _, n_axes = _kr(case, data)
    return means, logstds, logweights, samples, rotation, n_axes, 1e-6


def _sample(case, data):
    means, logstds, logweights, samples = case.tensors()
    acc = _acc(case.dtype)
    u = _extra(case, "samples", (case.N, 1, case.H, case.W), 9, kind="uniform", dtype=acc)
    power = data.draw(st.sampled_from([1.0, 0.5, 2.0]), label="power")
    return means, logstds, logweights, u, samples.to(acc), power, data.draw(st.booleans(), label="cov_sharpen")


def _u_space(x: torch.Tensor) -> torch.Tensor:
    """erf(x / sqrt 2): KR outputs compared where erfinv's amplification of rounding is undone."""
    return torch.erf(x.double() / math.sqrt(2))


@dataclass
class OpSpec:
    build: Callable
    case_options: dict = field(default_factory=dict)  # gm_cases options besides the dtype
    factor: float = 1.0  # tolerance factor of the op's CPU-vs-reference suite
    float_view: Callable | None = None  # compare fp32/16-bit outputs through this map
    dtypes: tuple = tuple(DTYPES)


_SHARED = {"logstd_layouts": ("shared",)}
OPS: dict[str, OpSpec] = {
    "gm_logprob": OpSpec(_logprob),
    "gm_logprob_backward": OpSpec(_logprob_backward),
    "gm_to_mean": OpSpec(_to_mean),
    "gm_to_mean_backward": OpSpec(_to_mean_backward),
    "gm_to_iso_gaussian": OpSpec(_iso),
    "gm_mul_iso_gaussian": OpSpec(_mul_iso, factor=4.0),
    "gm_posterior_mean": OpSpec(_posterior, {"max_k": 33}, factor=4.0),
    "gm_posterior_mean_backward": OpSpec(_posterior_backward, {"max_k": 33}, factor=8.0),
    "gm_ode_euler_substeps": OpSpec(_ode_euler_substeps, {"max_k": 33}, factor=8.0),
    "gm_ode_euler_substeps_backward": OpSpec(_ode_euler_substeps_backward, {"max_k": 33}, factor=16.0),
    # Unconverged float Newton steps divide erf rounding differences by the pdf: the float
    # suites compare converged (or zero-step) solves, as the reference suite does.
    "gm1d_inverse_cdf": OpSpec(_gm1d, _SHARED, factor=5.0,
                               dtypes=(torch.float64, torch.float32, torch.bfloat16)),
    "gm1d_inverse_cdf_backward": OpSpec(_gm1d_backward, _SHARED, factor=10.0, dtypes=(torch.float64, torch.float32)),
    "gm_kr_inverse": OpSpec(_kr_inverse, {"max_k": 16, **_SHARED}, factor=10.0),
    "gm_kr_forward": OpSpec(_kr_forward, {"max_k": 16, **_SHARED}, factor=2.0, float_view=_u_space),
    "gm_sample": OpSpec(_sample),
}
PARITY = [(op, dtype) for op, spec in OPS.items() for dtype in spec.dtypes]


# Float Newton solves are compared at convergence (0 steps, or enough steps for both): an fp32
# trajectory through a flat stretch of the CDF depends on the last bits of each cdf evaluation,
# so the two kernels may reach the same root a few steps apart (found: K=16, C=3 KR inverse at
# 16 steps, emulated CUDA 0.014 off the fp64 root, CPU converged; both within 0.004 at 32+).
FLOAT_NEWTON_STEPS = 64


def _float_converged(op: str, args: tuple, dtype) -> tuple:
    if dtype == torch.float64:
        return args
    args = list(args)
    step_index = {"gm1d_inverse_cdf": 5, "gm_kr_inverse": 7}.get(op)
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
    assert set(OPS) == set(schemas), "every op needs a parity entry in OPS"


@requires_emulation
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("op,dtype", PARITY, ids=[f"{op}-{str(d).removeprefix('torch.')}" for op, d in PARITY])
@given(data=st.data())
@settings(max_examples=12)
def test_emulated_cuda_matches_cpu_kernels(op, dtype, grid, data):
    spec = OPS[op]
    case = data.draw(gm_cases(dtypes=[dtype], **spec.case_options), label="case")
    args = _float_converged(op, spec.build(case, data), case.dtype)
    expected = _as_tuple(getattr(torch.ops.gmflow, op)(*args))
    with testing.cuda_emulation_grid(*GRIDS[grid]):
        actual = _as_tuple(getattr(EMU, op)(*args))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.is_contiguous()
        _close(a, e, case.dtype, spec.factor, spec.float_view)
    CASES[(op, str(case.dtype).removeprefix("torch."), grid)] += 1


@requires_emulation
@pytest.mark.parametrize("grid", list(GRIDS))
def test_draws_pick_the_same_components(grid):
    """Well separated components: the same uniforms give the same component, bit for bit in fp64."""
    case = GmCase(batch=(2,), K=7, C=3, H=3, W=5, N=4, dtype=torch.float64, seed=11)
    means, logstds, logweights, normals = case.tensors()
    means = means * 40.0
    uniforms = torch.rand(2, 4, 1, 3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rotation = _rotation(case, per_pixel=False)
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
