"""Bad input raises an exception naming the argument and its expected layout, on
every backend (native kernel, reference fallback, fake kernel) - never a crash."""

from __future__ import annotations

import pytest
import torch

import gmflow
from gmflow import _library, config, ops
from gmflow._validation import GMFlowInputError

B, K, C, H, W, N = 2, 3, 4, 5, 6, 2


def good():
    return dict(
        means=torch.randn(B, K, C, H, W),
        logstds=torch.zeros(B, 1, 1, 1, 1),
        logweights=torch.randn(B, K, 1, H, W).log_softmax(1),
        samples=torch.randn(B, N, C, H, W),
    )


def with_(**changes):
    args = good()
    args.update(changes)
    return args


LOGPROB_CASES = [
    # (changes, regex the message must match)
    (dict(means=torch.randn(K, C, H)), r"'means' must have layout \(\.\.\., K, C, H, W\)"),
    (dict(means=torch.randint(0, 3, (B, K, C, H, W))), r"'means' must be a floating tensor"),
    (dict(samples=torch.randn(B, N, C, H, W, dtype=torch.float64)), r"'samples' has dtype torch.float64 but 'means'"),
    (dict(logweights=torch.randn(B, K + 1, 1, H, W)), r"'logweights' must have layout \(\.\.\., K, 1, H, W\) with K=3"),
    (dict(logweights=torch.randn(B, K, 1, H, W + 1)), r"'logweights' must have layout"),
    (dict(logstds=torch.zeros(B, 2, 1, 1, 1)), r"'logstds' must have layout \(\.\.\., 1, 1, 1, 1\) or \(\.\.\., K, 1, H, W\)"),
    (dict(logstds=torch.zeros(B, 1, 1, H, 1)), r"'logstds' must have layout"),
    (dict(logstds=torch.zeros(B, 1, C, 1, 1)), r"'logstds' must have layout"),
    (dict(samples=torch.randn(B, N, C + 1, H, W)), r"'samples' must have layout \(\.\.\., N, C, H, W\) with C=4"),
    (dict(samples=torch.randn(B, N, C, H)), r"'samples' must have layout"),
    (dict(samples=torch.randn(B + 1, N, C, H, W)), r"the batch dims of 'samples' .* do not broadcast"),
    (dict(logstds=torch.zeros(3, 1, 1, 1, 1)), r"the batch dims of 'logstds' .* do not broadcast"),
    (dict(means=torch.randn(B, 0, C, H, W), logweights=torch.randn(B, 0, 1, H, W)), r"'means' .* must have at least one component"),
]


def call_native(args):
    return torch.ops.gmflow.gm_logprob(args["means"], args["logstds"], args["logweights"], args["samples"])


def call_fallback(args):
    return _library.OPS["gm_logprob"].fallback(args["means"], args["logstds"], args["logweights"], args["samples"])


def call_fake(args):
    return torch.ops.gmflow.gm_logprob(*(args[k].to("meta") for k in ("means", "logstds", "logweights", "samples")))


@pytest.mark.parametrize("call", [call_native, call_fallback, call_fake], ids=["dispatcher", "fallback", "fake"])
@pytest.mark.parametrize("changes,pattern", LOGPROB_CASES)
def test_gm_logprob_bad_input(call, changes, pattern):
    with pytest.raises(RuntimeError, match="gm_logprob\\(\\): " + pattern):
        call(with_(**changes))


def test_python_checks_raise_value_error_too():
    with pytest.raises(ValueError, match="'logweights'"):
        call_fallback(with_(logweights=torch.randn(B, K + 1, 1, H, W)))
    assert issubclass(GMFlowInputError, RuntimeError) and issubclass(GMFlowInputError, ValueError)


def test_mixed_devices_name_the_argument():
    args = good()
    args["samples"] = args["samples"].to("meta")
    with pytest.raises(RuntimeError, match="'samples' is on meta but 'means' is on cpu"):
        call_native(args)


@pytest.mark.parametrize("call", ["dispatcher", "fallback"])
def test_gm_to_mean_and_iso_bad_input(call):
    args = good()
    bad_w = torch.randn(B, K, 2, H, W)
    to_mean = torch.ops.gmflow.gm_to_mean if call == "dispatcher" else _library.OPS["gm_to_mean"].fallback
    iso = torch.ops.gmflow.gm_to_iso_gaussian if call == "dispatcher" else _library.OPS["gm_to_iso_gaussian"].fallback
    with pytest.raises(RuntimeError, match=r"gm_to_mean\(\): 'logweights' must have layout"):
        to_mean(args["means"], bad_w, 1.0)
    with pytest.raises(RuntimeError, match=r"gm_to_iso_gaussian\(\): 'logstds' must have layout"):
        iso(args["means"], torch.zeros(B, 1, 1, 2, 2), args["logweights"])
    with pytest.raises(RuntimeError, match=r"gm_to_mean\(\): 'logweights' has dtype torch.float64"):
        to_mean(args["means"], args["logweights"].double(), 1.0)


def test_backward_ops_check_grad_shape_and_mask():
    args = good()
    out = call_native(args)
    ins = [args[k] for k in ("means", "logstds", "logweights", "samples")]
    with pytest.raises(RuntimeError, match=r"'grad' and 'logprob' must have the output shape"):
        torch.ops.gmflow.gm_logprob_backward(out[:1], *ins, out, [True] * 4)
    with pytest.raises(RuntimeError, match=r"'output_mask' must have 4 entries"):
        torch.ops.gmflow.gm_logprob_backward(out, *ins, out, [True] * 3)
    mean = torch.ops.gmflow.gm_to_mean(args["means"], args["logweights"], 1.0)
    with pytest.raises(RuntimeError, match=r"'grad' and 'mean' must have the output shape"):
        torch.ops.gmflow.gm_to_mean_backward(mean[..., :1], args["means"], args["logweights"], mean, 1.0, [True] * 2)


@pytest.mark.parametrize("name", ["means", "logstds", "logweights", "samples"])
def test_nan_input_is_named_by_the_typed_api(name):
    args = good()
    args[name] = args[name].clone()
    args[name].view(-1)[0] = float("nan")
    gm = gmflow.GaussianMixture(args["means"], args["logstds"], args["logweights"])
    with pytest.raises(GMFlowInputError, match=f"gm_logprob\\(\\): '{name}' contains NaN"):
        ops.gm_logprob(gm, args["samples"])
    if name != "samples":
        with pytest.raises(GMFlowInputError, match=f"gm_to_iso_gaussian\\(\\): '{name}' contains NaN"):
            ops.gm_to_iso_gaussian(gm)


def test_nan_checks_can_be_turned_off():
    args = good()
    args["means"].view(-1)[0] = float("nan")
    gm = gmflow.GaussianMixture(args["means"], args["logstds"], args["logweights"])
    config.set_value_checks("never")
    try:
        assert torch.isnan(ops.gm_to_mean(gm)).any()
    finally:
        config.set_value_checks("auto")
    with pytest.raises(ValueError, match="value checks mode"):
        config.set_value_checks("sometimes")


def test_infinite_means_are_named():
    args = good()
    args["means"][0, 0, 0, 0, 0] = float("inf")
    args["samples"][0, 0, 0, 0, 0] = float("inf")
    gm = gmflow.GaussianMixture(args["means"], args["logstds"], args["logweights"])
    with pytest.raises(GMFlowInputError, match="'means' contains infinite values"):
        ops.gm_logprob(gm, args["samples"])


# ------------------------------------------------------------------------------------------------
# Sampling-path ops


def _sampling_args():
    a = good()
    acc = torch.float32
    return dict(
        a,
        g_mean=torch.randn(B, C, H, W),
        g_var=torch.ones(B, 1, 1, 1),
        x_src=torch.randn(B, C, H, W),
        x_tgt=torch.randn(B, C, H, W),
        s_src=torch.full((B,), 0.5, dtype=acc),
        s_tgt=torch.full((B,), 0.3, dtype=acc),
        m1=torch.randn(B, K, H, W),
        s1=torch.zeros(B, 1, 1, 1),
        w1=torch.randn(B, K, H, W).log_softmax(1),
        c1=torch.rand(B, N, H, W) * 2 - 1,
        rot=torch.eye(C).expand(B, 1, 1, C, C),
        u=torch.rand(B, N, 1, H, W),
        z=torch.randn(B, N, C, H, W),
    )


SAMPLING_CALLS = {
    "gm_mul_iso_gaussian": lambda a: (a["means"], a["logstds"], a["logweights"], a["g_mean"], a["g_var"], 1.0, 1.0),
    "gm_posterior_mean": lambda a: (a["means"], a["logstds"], a["logweights"], a["x_src"], a["x_tgt"], a["s_src"],
                                    a["s_tgt"]),
    "gm1d_inverse_cdf": lambda a: (a["m1"], a["s1"], a["w1"], a["c1"]),
    "gm_kr_inverse": lambda a: (a["means"], a["logstds"], a["logweights"], a["samples"], a["rot"], a.get("uu"),
                                a.get("n_axes")),
    "gm_kr_forward": lambda a: (a["means"], a["logstds"], a["logweights"], a["samples"], a["rot"]),
    "gm_sample": lambda a: (a["means"], a["logstds"], a["logweights"], a["u"], a["z"]),
}

SAMPLING_CASES = [
    ("gm_mul_iso_gaussian", dict(g_mean=torch.randn(B, C + 1, H, W)), r"'gaussian_mean' must have layout \(\.\.\., C, H, W\) with C=4"),
    ("gm_mul_iso_gaussian", dict(g_var=torch.ones(B, 1, H, 1)), r"'gaussian_var' must have layout \(\.\.\., 1, H, W\) or"),
    ("gm_mul_iso_gaussian", dict(g_var=torch.ones(B + 1, 1, 1, 1)), r"the batch dims of 'gaussian_var' .* do not broadcast"),
    ("gm_posterior_mean", dict(x_tgt=torch.randn(B, C, H, W + 1)), r"'x_tgt' must have layout \(\.\.\., C, H, W\)"),
    ("gm_posterior_mean", dict(s_src=torch.full((B,), 0.5, dtype=torch.float64)),
     r"'sigma_src' must have dtype torch.float32 \(the accumulation dtype of 'means' torch.float32\)"),
    ("gm_posterior_mean", dict(s_tgt=torch.full((3,), 0.5)), r"the batch dims of 'sigma_tgt' .* do not broadcast"),
    ("gm1d_inverse_cdf", dict(s1=torch.zeros(B, K, H, W)), r"'logstds' must have layout \(\.\.\., 1, 1, 1\)"),
    ("gm1d_inverse_cdf", dict(w1=torch.randn(B, K + 1, H, W)), r"'logweights' must have layout \(\.\.\., K, H, W\) with K=3"),
    ("gm1d_inverse_cdf", dict(c1=torch.rand(B, N, H + 1, W)), r"'scaled_cdfs' must have layout \(\.\.\., N, H, W\) with H=5"),
    ("gm_kr_inverse", dict(logstds=torch.zeros(B, K, 1, H, W)), r"'logstds' must have layout \(\.\.\., 1, 1, 1, 1\) \(one std shared"),
    ("gm_kr_inverse", dict(rot=torch.eye(C, dtype=torch.float64).expand(B, 1, 1, C, C)),
     r"'rotation' must have dtype torch.float32"),
    ("gm_kr_inverse", dict(rot=torch.eye(C).expand(B, 2, 2, C, C)), r"'rotation' must have layout \(\.\.\., 1\|H, 1\|W, C, C\)"),
    ("gm_kr_inverse", dict(n_axes=2), r"'uniforms' \(\.\.\., N, 1, H, W\) are required when n_axes=2 < C=4"),
    ("gm_kr_inverse", dict(n_axes=5), r"'n_axes' must be in \[1, C=4\]; got 5"),
    ("gm_kr_inverse", dict(n_axes=2, uu=torch.rand(B, N, 1, H, W, dtype=torch.float64)), r"'uniforms' must have dtype torch.float32"),
    ("gm_kr_forward", dict(samples=torch.randn(B, N, C - 1, H, W)), r"'samples' must have layout \(\.\.\., N, C, H, W\) with C=4"),
    ("gm_sample", dict(u=torch.rand(B, N, 2, H, W)), r"'uniforms' must have layout \(\.\.\., N, 1, H, W\)"),
    ("gm_sample", dict(z=torch.randn(B, N + 1, C, H, W)), r"'normals' must have layout \(\.\.\., N, C, H, W\) with N=2"),
    ("gm_sample", dict(u=torch.rand(B, N, 1, H, W, dtype=torch.float16)), r"'uniforms' must have dtype torch.float32"),
]


def _sampling_call(how, op, a):
    args = SAMPLING_CALLS[op](a)
    if how == "fallback":
        return _library.OPS[op].fallback(*args)
    if how == "fake":
        args = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in args)
    return getattr(torch.ops.gmflow, op)(*args)


@pytest.mark.parametrize("how", ["dispatcher", "fallback", "fake"])
@pytest.mark.parametrize("op,changes,pattern", SAMPLING_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_sampling_ops_bad_input(how, op, changes, pattern):
    a = _sampling_args()
    a.update(changes)
    with pytest.raises(RuntimeError, match=f"{op}\\(\\): " + pattern):
        _sampling_call(how, op, a)


def test_sampling_ops_good_input_passes_every_backend():
    for op in SAMPLING_CALLS:
        for how in ("dispatcher", "fallback", "fake"):
            _sampling_call(how, op, _sampling_args())


def test_sampling_backward_ops_check_shapes_and_mask():
    a = _sampling_args()
    args = SAMPLING_CALLS["gm_posterior_mean"](a)
    mean = torch.ops.gmflow.gm_posterior_mean(*args)
    with pytest.raises(RuntimeError, match=r"'grad' and 'mean' must have the output shape"):
        torch.ops.gmflow.gm_posterior_mean_backward(mean[..., :1], *args, mean, 1e-6, [True] * 3)
    with pytest.raises(RuntimeError, match=r"'output_mask' must have 3 entries"):
        torch.ops.gmflow.gm_posterior_mean_backward(mean, *args, mean, 1e-6, [True] * 2)
    args = SAMPLING_CALLS["gm1d_inverse_cdf"](a)
    x = torch.ops.gmflow.gm1d_inverse_cdf(*args)
    with pytest.raises(RuntimeError, match=r"'grad' and 'samples' must have the output shape"):
        torch.ops.gmflow.gm1d_inverse_cdf_backward(x[:1], *args, x, 1e-6, [True] * 4)
    with pytest.raises(RuntimeError, match=r"'n_steps' must be an integer in \[0, 10000\]; got -1"):
        torch.ops.gmflow.gm1d_inverse_cdf(*args, None, -1)


def test_posterior_mean_gradients_for_x_and_sigma_are_refused():
    a = _sampling_args()
    x_tgt = a["x_tgt"].requires_grad_()
    means = a["means"].requires_grad_()
    out = torch.ops.gmflow.gm_posterior_mean(means, a["logstds"], a["logweights"], a["x_src"], x_tgt, a["s_src"],
                                             a["s_tgt"])
    with pytest.raises(RuntimeError, match=r"gm_posterior_mean\(\): gradients w.r.t. 'x_src', 'x_tgt'"):
        out.sum().backward()


def test_spectral_sampling_rejects_odd_width():
    gm = gmflow.GaussianMixture(torch.randn(1, 2, 2, 4, 5), torch.zeros(1, 1, 1, 1, 1),
                                torch.randn(1, 2, 1, 4, 5).log_softmax(1))
    with pytest.raises(ValueError, match=r"width W must be even for spectral sampling, got W=5"):
        ops.gm_spectral_sample(gm, torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match=r"W must be even"):
        ops.spectral_gaussian_field(torch.zeros(1, 2, 4, 5))
