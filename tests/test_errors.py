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
    return _library._logprob_fallback(args["means"], args["logstds"], args["logweights"], args["samples"])


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
    to_mean = torch.ops.gmflow.gm_to_mean if call == "dispatcher" else _library._to_mean_fallback
    iso = torch.ops.gmflow.gm_to_iso_gaussian if call == "dispatcher" else _library._iso_fallback
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
