"""Bad input at the op level (``torch.ops.gmflow.*``): every class of hostile input gets a
``GMFlowInputError`` naming the argument (the same message from the native kernel, the fake kernel
and the reference fallback), or a documented result; never a hang and never uninitialised output.

Each case runs under a watchdog (``faulthandler.dump_traceback_later``: a budget that ends a hung
process, not a timing assertion) and with the allocator's fresh memory poisoned (deterministic mode
fills ``torch.empty`` with NaN), so an output a kernel forgot to write shows up as NaN against the
reference fallback.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmflow import _library
from gmflow._ops.sample_data import RandomOperands
from gmflow._validation import MAX_N_STEPS, GMFlowInputError

from conftest import NATIVE_CPU, requires_native_cpu

G = torch.ops.gmflow
BUDGET_S = 120  # per case; the calls below take milliseconds


@contextlib.contextmanager
def watchdog(seconds: int = BUDGET_S):
    """Ends the process with a traceback if the block runs past ``seconds`` (native loops ignore signals)."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def poisoned_memory():
    """Fresh allocations come back NaN-filled (torch's deterministic mode), so unwritten output is NaN."""
    old_mode = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_mode, warn_only=old_warn)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


# ------------------------------------------------------------------------------------------------
# A valid call of every op, as an ordered {argument: value} of its schema (each op module registers
# its recipe: OpDef.register_valid_call)


def valid_call(op: str, B=2, K=2, C=2, H=2, W=3, N=2, dtype=torch.float32, seed=0) -> dict:
    return _library.OPS[op].valid_call(RandomOperands(B, K, C, H, W, N, dtype, seed))


OPS = sorted(_library.SCHEMAS)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("K", [0, 2])
def test_every_op_has_a_valid_call_of_its_schema(op, K):
    """The recipe names every schema argument, in order, and the call passes the op's checks."""
    assert _library.OPS[op].valid_call_fn is not None, f"{op} registers no valid call"
    call = valid_call(op, K=K)
    schema = getattr(G, op).default._schema
    assert list(call) == [a.name for a in schema.arguments], op
    if K:
        assert assert_same(op, call)[0] == "ok", op


def _gm_power_ok(value: float, call: dict) -> bool:
    if not math.isfinite(value):
        return False
    if "cov_sharpen" not in call:  # gm_mul_iso_gaussian divides by it
        return value != 0
    return value > 0 or not call["cov_sharpen"]  # gm_sample takes its square root with cov_sharpen


# What each scalar accepts (a predicate), as the checks document it.
SCALAR_RULES = {
    "power": lambda v, call: math.isfinite(v),
    "gm_power": _gm_power_ok,
    "gaussian_power": lambda v, call: math.isfinite(v),
    "eps": lambda v, call: math.isfinite(v) and v > 0,
    "max_step_size": lambda v, call: v > 0,
}


def run(fn, call: dict):
    with watchdog():
        return fn(*call.values())


def outcome(fn, call: dict):
    """('ok', outputs as a tuple) or ('error', message); anything but GMFlowInputError propagates."""
    try:
        out = run(fn, call)
    except GMFlowInputError as e:
        return "error", str(e)
    return "ok", out if isinstance(out, tuple) else (out,)


def native_outcome(op: str, call: dict):
    """The registered op; a native kernel's RuntimeError is re-raised as the Python checks' type."""
    try:
        return outcome(getattr(G, op), call)
    except RuntimeError as e:
        if isinstance(e, GMFlowInputError):
            raise
        return "error", str(e)


def tensor_args(call: dict) -> list[str]:
    return [k for k, v in call.items() if isinstance(v, torch.Tensor)]


def assert_same(op: str, call: dict, expect_error: str | None = None):
    """Native (if loaded), fake and reference fallback agree: the same message, or the same outputs."""
    ref = outcome(_library.OPS[op].fallback, call)
    fake = outcome(_library.OPS[op].fake, call)
    assert ref[0] == fake[0], (ref, fake)
    if ref[0] == "error":
        assert ref[1] == fake[1]
    if expect_error is not None:
        assert ref[0] == "error", f"{op} accepted bad '{expect_error}'"
        assert f"'{expect_error}'" in ref[1], ref[1]
    if NATIVE_CPU and all(t.device.type == "cpu" for t in call.values() if isinstance(t, torch.Tensor)):
        with poisoned_memory():
            nat = native_outcome(op, call)
        assert nat[0] == ref[0], (nat, ref)
        if nat[0] == "error":
            assert nat[1] == ref[1]
        else:
            assert len(nat[1]) == len(ref[1])
            for n, r, f in zip(nat[1], ref[1], fake[1]):
                assert n.shape == r.shape == f.shape and n.dtype == r.dtype == f.dtype
                # Unwritten (poisoned) output is NaN where the reference is finite.
                assert not (torch.isnan(n) & torch.isfinite(r)).any(), f"{op}: unwritten output"
    return ref


# ------------------------------------------------------------------------------------------------
# Property test: each op against each class of bad input

CLASSES = ("dtype", "device", "shape", "scalar", "non_finite", "empty", "huge_n_steps")


@st.composite
def bad_calls(draw, op: str, cls: str):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    dims = dict(B=draw(st.integers(2, 3)), K=draw(st.integers(1, 3)), C=draw(st.integers(1, 3)),
                H=draw(st.integers(2, 3)), W=draw(st.integers(2, 3)), N=draw(st.integers(1, 2)))
    if cls == "empty":
        dims[draw(st.sampled_from(["B", "C", "H", "W", "N"]))] = 0
    call = valid_call(op, dtype=dtype, seed=draw(st.integers(0, 3)), **dims)
    names = tensor_args(call)
    bad = None
    if cls == "dtype":
        bad = draw(st.sampled_from(names))
        call[bad] = call[bad].to(draw(st.sampled_from([torch.complex64, torch.int64, torch.bool, torch.int32])))
    elif cls == "device":
        bad = draw(st.sampled_from(names))
        call[bad] = call[bad].to("meta")
    elif cls == "shape":
        bad = draw(st.sampled_from(names))
        t = call[bad]
        call[bad] = torch.zeros(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype) if t.dim() else t.reshape(1, 1)
        bad = "*"  # the message may name the operand it is checked against
    elif cls == "scalar":
        scalars = [k for k in call if k in SCALAR_RULES]
        if scalars:
            name = draw(st.sampled_from(scalars))
            value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-3, 2.0]))
            call[name] = value
            bad = None if SCALAR_RULES[name](value, call) else name
    elif cls == "non_finite":
        name = draw(st.sampled_from([n for n in names if call[n].numel()]))
        t = call[name].clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        call[name] = t
    elif cls == "huge_n_steps" and "n_steps" in call:
        call["n_steps"] = draw(st.sampled_from([MAX_N_STEPS, MAX_N_STEPS + 1, 2**31 - 1, 2**62, -1]))
        bad = None if call["n_steps"] == MAX_N_STEPS else "n_steps"
    return cls, call, bad


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("op", OPS)
@settings(max_examples=12)
@given(data=st.data())
def test_bad_input_classes(op, cls, data):
    cls, call, bad = data.draw(bad_calls(op, cls))
    if bad == "*":
        ref = assert_same(op, call)
        assert ref[0] == "error" and re.search(r"'\w+'", ref[1]), ref
    else:
        ref = assert_same(op, call, expect_error=bad)
    if cls == "device" and ref[0] == "ok":
        pytest.fail(f"{op} accepted tensors on two devices")


# ------------------------------------------------------------------------------------------------
# Regression tests: the examples of the issue


@requires_native_cpu
def test_mul_iso_empty_grid_writes_pixel_free_logstds():
    d = torch.float64
    means, logweights = torch.randn(1, 13, 1, 3, 0, dtype=d), torch.zeros(1, 13, 1, 3, 0, dtype=d)
    logstds, gaussian_var = torch.full((1, 1, 1, 1, 1), -0.5, dtype=d), torch.full((1, 1, 1, 1), 0.7, dtype=d)
    gaussian_mean = torch.zeros(1, 1, 3, 0, dtype=d)
    with poisoned_memory():
        out = G.gm_mul_iso_gaussian(means, logstds, logweights, gaussian_mean, gaussian_var)
    assert out[1].shape == (1, 1, 1, 1, 1)
    var = math.exp(-1.0)  # logstd' = logstd + log(v_g) / 2 - log(v_g + v) / 2
    expected = -0.5 + 0.5 * math.log(0.7) - 0.5 * math.log(0.7 + var)
    torch.testing.assert_close(out[1].flatten(), torch.tensor([expected], dtype=d))
    ref = _library.OPS["gm_mul_iso_gaussian"].fallback(means, logstds, logweights, gaussian_mean, gaussian_var)
    torch.testing.assert_close(out[1], ref[1])


@pytest.mark.parametrize("n_axes", [None, 2])
def test_kr_inverse_uniforms_on_another_device(n_axes):
    call = valid_call("gm_kr_inverse", C=2)
    call["n_axes"] = n_axes
    call["uniforms"] = call["uniforms"].to("meta")
    with pytest.raises(GMFlowInputError, match="'uniforms' is on meta but 'means' is on cpu"):
        G.gm_kr_inverse(*call.values())


@requires_native_cpu
def test_inverse_cdf_backward_float16_reduces_in_float32():
    # Per-element gradients w.r.t. the broadcast scaled_cdfs of about +-2e5 (beyond float16) cancel.
    B = 64
    means = torch.zeros(B, 1, 1, 1, dtype=torch.float16)
    logstds = torch.full((B, 1, 1, 1), 12.0, dtype=torch.float16)
    logweights = torch.zeros(B, 1, 1, 1, dtype=torch.float16)
    cdfs = torch.zeros(1, 1, 1, 1, dtype=torch.float16)
    samples = torch.zeros(B, 1, 1, 1, dtype=torch.float16)
    grad = torch.ones(B, 1, 1, 1, dtype=torch.float16)
    grad[1::2] = -1
    grad[-1] = -0.75  # the sum of the partials: a quarter of one, about 5e4
    mask = [False, False, False, True]
    out = G.gm1d_inverse_cdf_backward(grad, means, logstds, logweights, cdfs, samples, 1e-6, mask)[3]
    args32 = [t.float() for t in (grad, means, logstds, logweights, cdfs, samples)]
    want = G.gm1d_inverse_cdf_backward(*args32, 1e-6, mask)[3]
    assert torch.isfinite(want).all() and want.abs().max() < 6e4
    torch.testing.assert_close(out, want.half(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("op", ["gm1d_inverse_cdf", "gm_kr_inverse"])
@pytest.mark.parametrize("n_steps", [MAX_N_STEPS + 1, 2**31 - 1])
def test_n_steps_has_a_documented_maximum(op, n_steps):
    call = valid_call(op)
    call["n_steps"] = n_steps
    message = f"{op}(): 'n_steps' must be an integer in [0, {MAX_N_STEPS}]; got {n_steps}"
    for fn in (getattr(G, op), _library.OPS[op].fake, _library.OPS[op].fallback):
        with pytest.raises(GMFlowInputError if fn is not getattr(G, op) else RuntimeError, match=re.escape(message)):
            fn(*call.values())


@requires_native_cpu
@pytest.mark.parametrize("op", ["gm1d_inverse_cdf", "gm_kr_inverse"])
def test_nan_lanes_leave_the_newton_loop(op):
    # 2**14 NaN lanes x MAX_N_STEPS steps would be minutes of work; retired at once they take milliseconds.
    call = valid_call(op, B=1, K=4, C=2, H=128, W=128, N=1)
    call["means"] = torch.full_like(call["means"], math.nan)
    call["n_steps"] = MAX_N_STEPS
    out = run(getattr(G, op), call)
    assert torch.isnan(out).all()


@pytest.mark.parametrize(
    "op, changes, name",
    [
        ("gm_to_mean", dict(power=math.nan), "power"),
        ("gm_to_mean", dict(power=math.inf), "power"),
        ("gm_mul_iso_gaussian", dict(gm_power=math.nan), "gm_power"),
        ("gm_mul_iso_gaussian", dict(eps=0.0), "eps"),
        ("gm_posterior_mean", dict(eps=-1.0), "eps"),
        ("gm1d_inverse_cdf", dict(eps=0.0), "eps"),
        ("gm1d_inverse_cdf", dict(max_step_size=math.nan), "max_step_size"),
        ("gm_kr_forward", dict(eps=0.0), "eps"),
        ("gm_sample", dict(gm_power=math.inf), "gm_power"),
    ],
)
def test_scalars_are_checked(op, changes, name):
    call = {**valid_call(op), **changes}
    assert_same(op, call, expect_error=name)


@pytest.mark.parametrize("bad", [torch.complex64, torch.int64, torch.bool])
def test_non_float_means_rejected(bad):
    call = valid_call("gm_to_mean")
    call["means"] = call["means"].to(bad)
    assert_same("gm_to_mean", call, expect_error="means")


def test_zero_components_rejected():
    call = valid_call("gm_mul_iso_gaussian", K=0)
    assert_same("gm_mul_iso_gaussian", call, expect_error="means")


def test_n_steps_must_be_an_int():
    call = valid_call("gm1d_inverse_cdf")
    call["n_steps"] = 2.5
    for fn in (_library.OPS["gm1d_inverse_cdf"].fake, _library.OPS["gm1d_inverse_cdf"].fallback):
        with pytest.raises(GMFlowInputError, match=r"'n_steps' must be an integer in \[0, 10000\]; got 2.5"):
            fn(*call.values())


@pytest.mark.parametrize("op", ["gm_kr_inverse", "gm_posterior_mean", "gm1d_inverse_cdf"])
def test_none_for_a_tensor_names_the_argument(op):
    call = valid_call(op)
    name = [n for n in tensor_args(call) if n not in ("means", "gaussian_samples", "uniforms")][1]
    call[name] = None
    assert_same(op, call, expect_error=name)
    with pytest.raises(RuntimeError, match=re.escape(f"{op}(): '{name}' must be a tensor; got None")):
        getattr(G, op)(*call.values())


def test_inverse_cdf_pixel_mismatch_names_the_argument():
    call = valid_call("gm1d_inverse_cdf", H=2, W=3)
    call["scaled_cdfs"] = call["scaled_cdfs"].reshape(2, 2, 6, 1)
    call["gaussian_samples"] = None
    assert_same("gm1d_inverse_cdf", call, expect_error="scaled_cdfs")


# ------------------------------------------------------------------------------------------------
# gm_posterior_mean: sigma (B, 1, 1, 1), the upstream convention, broadcasts against x (B, C, H, W)


def test_posterior_sigma_upstream_layout():
    call = valid_call("gm_posterior_mean", B=3)
    batch_only = assert_same("gm_posterior_mean", call)[1][0]
    upstream = dict(call, sigma_src=call["sigma_src"].reshape(3, 1, 1, 1),
                    sigma_tgt=call["sigma_tgt"].reshape(3, 1, 1, 1))
    out = assert_same("gm_posterior_mean", upstream)[1][0]
    assert out.shape == (3, 2, 2, 3)
    torch.testing.assert_close(out, batch_only)
    # The backward reads the sigmas through the same layout.
    grads = []
    for args in (call, upstream):
        means = args["means"].clone().requires_grad_()
        G.gm_posterior_mean(*dict(args, means=means).values()).square().sum().backward()
        grads.append(means.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_posterior_sigma_other_layouts_rejected():
    call = valid_call("gm_posterior_mean", B=3)
    call["sigma_src"] = torch.ones(2, 1, 1, 1, dtype=torch.float32)  # batch (2,): does not broadcast with (3,)
    assert_same("gm_posterior_mean", call, expect_error="sigma_src")


# ------------------------------------------------------------------------------------------------
# The typed wrappers inherit the checks: no complex, integer or bool tensor is converted silently


@pytest.mark.parametrize("bad", [torch.complex64, torch.int64, torch.bool])
def test_wrappers_refuse_non_float_tensors(bad):
    from gmflow import ops
    from gmflow.types import GaussianMixture, GaussianMixture1D, IsoGaussian

    K, C, H, W = 2, 3, 2, 2
    gm = GaussianMixture(torch.randn(K, C, H, W), torch.zeros(1, 1, 1, 1), torch.zeros(K, 1, H, W).log_softmax(0))
    x = torch.ones(C, H, W).to(bad)
    gm1d = GaussianMixture1D(torch.zeros(2, H, W), torch.zeros(1, 1, 1), torch.zeros(2, H, W))
    calls = {
        "gaussian.mean": lambda: ops.gm_mul_iso_gaussian(gm, IsoGaussian(x, torch.ones(1, 1, 1))),
        "gaussian.var": lambda: ops.gm_mul_iso_gaussian(gm, IsoGaussian(torch.ones(C, H, W),
                                                                        torch.ones(1, 1, 1).to(bad))),
        "x_tgt": lambda: ops.gm_posterior_mean(gm, torch.randn(C, H, W), x, sigma_src=torch.tensor(0.8),
                                               sigma_tgt=torch.tensor(0.5)),
        "scaled_cdfs": lambda: ops.gm1d_inverse_cdf(gm1d, x[:1]),
        "gaussian_samples": lambda: ops.gaussian_samples_to_gm_samples(gm, x[None]),
        "samples": lambda: ops.gm_samples_to_gaussian_samples(gm, x[None]),
        "gm.means": lambda: ops.gm_to_gaussian(GaussianMixture(x[None].expand(K, C, H, W), gm.logstds, gm.logweights)),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=re.escape(f"{name} must be a floating tensor")):
            call()


def test_kr_rotation_of_non_finite_gm_names_it():
    from gmflow import ops
    from gmflow.types import GaussianMixture

    gm = GaussianMixture(torch.full((2, 3, 2, 2), math.nan), torch.zeros(1, 1, 1, 1), torch.zeros(2, 1, 2, 2))
    with pytest.raises(GMFlowInputError, match=r"gm_kr_rotation\(\): the moment-matched covariance .* of 'gm'"):
        ops.gm_kr_rotation(gm)
    with pytest.raises(GMFlowInputError, match="at least one component"):
        ops.gm_kr_rotation(GaussianMixture(torch.zeros(0, 3, 2, 2), gm.logstds, torch.zeros(0, 1, 2, 2)))


def test_inverse_cdf_wrapper_pixel_mismatch_names_the_argument():
    from gmflow import ops
    from gmflow.types import GaussianMixture1D

    gm1d = GaussianMixture1D(torch.zeros(2, 2, 3), torch.zeros(1, 1, 1), torch.zeros(2, 2, 3))
    with pytest.raises(GMFlowInputError, match=r"gm1d_inverse_cdf\(\): .* of 'scaled_cdfs' \(\.\.\., N, H, W\) must "
                                               r"broadcast with the GM's"):
        ops.gm1d_inverse_cdf(gm1d, torch.zeros(1, 6, 1))
