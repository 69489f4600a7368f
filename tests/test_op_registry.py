"""Tests that exist for every registered op by construction: they parametrize over the registry
(gmflow._library.OPS) and each op's own ``sample_inputs``, and over every gmflow.ops wrapper of a
native op."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.autograd import gradcheck
from torch.library import opcheck

import gmflow
from gmflow import _library, config, ops
from gmflow._ops.sample_data import wrapper_operands
from gmflow._validation import GMFlowInputError

OP_NAMES = list(_library.OPS)


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_has_sample_inputs(name):
    assert _library.OPS[name].sample_inputs("cpu"), f"{name} has no sample inputs"


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_has_its_suite_recipes(name):
    """A valid call (bad-input suite) and parity args (emulated-CUDA suite), next to the op."""
    missing = _library.missing_recipes(_library.OPS[name])
    assert not missing, f"{name} lacks: {', '.join(missing)}"


def test_a_missing_recipe_is_named():
    bare = _library.OpDef("gm_made_up", "gm_made_up(Tensor means) -> Tensor")
    assert _library.missing_recipes(bare) == ["fallback", "fake", "sample inputs", "valid call", "parity args"]


@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck_registered_op(device, name):
    op = _library.OPS[name]
    for sample in op.sample_inputs(device):
        opcheck(op.op().default, sample.args, sample.kwargs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_dispatcher_matches_fallback(device, name):
    """Whatever serves the op on this device (native kernel or fallback) agrees with the fallback."""
    op = _library.OPS[name]
    for sample in op.sample_inputs(device):
        got = op.op()(*sample.args, **sample.kwargs)
        expected = op.fallback(*sample.args, **sample.kwargs)
        for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else
                        (expected,)):
            assert g.shape == e.shape and g.dtype == e.dtype
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in OP_NAMES if _library.OPS[n].differentiable])
def test_gradcheck_registered_op(device, name):
    op = _library.OPS[name]
    checked = 0
    for sample in op.sample_inputs(device):
        if not sample.grad_argnums or sample.args[0].dtype != torch.float64:
            continue
        args = list(sample.args)

        def call(*diff, args=args, sample=sample):
            full = list(args)
            for i, t in zip(sample.grad_argnums, diff):
                full[i] = t
            out = op.op()(*full, **sample.kwargs)
            return out

        diff = [args[i].detach().clone().requires_grad_() for i in sample.grad_argnums]
        assert gradcheck(call, diff, eps=1e-6, atol=1e-5)
        checked += 1
    assert checked, f"{name} has no float64 sample input to gradcheck"


@pytest.mark.parametrize("name", OP_NAMES)
def test_compile_registered_op_matches_eager(device, name):
    """torch.compile(fullgraph=True) of a call of the op equals the eager call (first sample input)."""
    op = _library.OPS[name]
    sample = op.sample_inputs(device)[0]
    torch._dynamo.reset()
    compiled = torch.compile(lambda *args: op.op()(*args, **sample.kwargs), fullgraph=True)
    got, expected = compiled(*sample.args), op.op()(*sample.args, **sample.kwargs)
    for g, e in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)):
        torch.testing.assert_close(g, e)


def test_registry_matches_the_dispatcher():
    for name, op in _library.OPS.items():
        assert op.fallback is not None and op.fake is not None
        assert hasattr(torch.ops.gmflow, name)
    assert set(_library.DIFFERENTIABLE) <= set(_library.OPS)


# ------------------------------------------------------------------------------------------------
# Every gmflow.ops wrapper of a native op names the input carrying a NaN (on CPU)


def _wrapper_call(name):
    """The fixed GM and a call of wrapper ``name`` on a GM (its module's registered example)."""
    given = wrapper_operands()
    example = _library.WRAPPER_EXAMPLES[name]
    return given.gm, lambda gm: example(gm, given)


@pytest.mark.parametrize("name", ops.NATIVE_OPS)
def test_every_native_wrapper_has_an_example(name):
    assert name in _library.WRAPPER_EXAMPLES, f"gmflow.ops.{name} registers no example (register_wrapper_example)"


def test_every_native_wrapper_has_the_nan_check():
    for name in ops.NATIVE_OPS:
        assert getattr(getattr(ops, name), "checks_nan_inputs", False), name
        assert inspect.signature(getattr(ops, name)).parameters  # a real wrapper, not a re-export of an op


@pytest.mark.parametrize("name", ops.NATIVE_OPS)
def test_wrapper_names_the_nan_input(name, monkeypatch):
    monkeypatch.setattr(config, "_value_checks", "auto")
    gm, call = _wrapper_call(name)
    assert not any(torch.isnan(t).any() for t in torch.utils._pytree.tree_leaves(call(gm))
                   if isinstance(t, torch.Tensor))
    means = gm.means.clone()
    means[..., 0, 0, :, :] = float("nan")  # every component's first channel: reaches every output
    # a wrapper composed of others (gm_to_model_output) may report from the inner one
    with pytest.raises(GMFlowInputError, match=r"\w+\(\): 'means' contains NaN"):
        call(gmflow.GaussianMixture(means, gm.logstds, gm.logweights))


@pytest.mark.parametrize("name", ["gm_logprob", "gm_to_mean", "gm_to_iso_gaussian", "gm_to_model_output"])
def test_mixed_float_dtypes_are_computed_in_their_promotion(name):
    gm, call = _wrapper_call(name)
    mixed = gmflow.GaussianMixture(gm.means.double(), gm.logstds, gm.logweights)
    promoted = gmflow.GaussianMixture(*(t.double() for t in gm))
    for a, b in zip(torch.utils._pytree.tree_leaves(call(mixed)), torch.utils._pytree.tree_leaves(call(promoted))):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------
# The Knothe-Rosenblatt wrappers take an empty pixel grid: empty in, empty out


@pytest.mark.parametrize("hw", [(0, 4), (3, 0)])
@pytest.mark.parametrize("axis_aligned", [True, False])
@pytest.mark.parametrize("n_axes", [None, 1])
def test_kr_wrappers_take_an_empty_grid(hw, axis_aligned, n_axes):
    H, W = hw
    gen = torch.Generator().manual_seed(0)
    gm = gmflow.GaussianMixture(torch.randn(2, 3, 2, H, W, generator=gen), torch.full((2, 1, 1, 1, 1), -0.3),
                                torch.full((2, 3, 1, H, W), -1.0986))
    g = torch.randn(2, 4, 2, H, W, generator=gen)
    rotation = ops.gm_kr_rotation(gm, axis_aligned)
    assert rotation.shape == ((2, 1, 1, 2, 2) if axis_aligned else (2, H, W, 2, 2))
    if axis_aligned:  # no pixel to average over: the identity, as the reference
        torch.testing.assert_close(rotation, torch.eye(2).expand(2, 1, 1, 2, 2))
        torch.testing.assert_close(rotation, gmflow.reference.transport.gm_kr_rotation(gm, True))
    x = ops.gaussian_samples_to_gm_samples(gm, g, n_axes=n_axes, axis_aligned=axis_aligned)
    z = ops.gm_samples_to_gaussian_samples(gm, g, n_axes=n_axes, axis_aligned=axis_aligned)
    assert x.shape == z.shape == g.shape and x.dtype == z.dtype == g.dtype


@pytest.mark.parametrize("name", ops.NATIVE_OPS)
def test_wrapper_bad_input_is_a_gmflow_input_error(name):
    """Whichever backend finds it (a native kernel raises RuntimeError), the wrapper raises GMFlowInputError."""
    gm, call = _wrapper_call(name)
    bad = gmflow.GaussianMixture(gm.means, gm.logstds, gm.logweights[..., :-1])  # logweights one pixel short
    with pytest.raises(GMFlowInputError, match="logweights"):
        call(bad)


def test_nan_check_of_the_outputs():
    from gmflow._ops.support import has_nan, raise_for_nan

    inf = float("inf")
    assert not has_nan(torch.tensor([inf, -inf, 1.0]))  # the sum is NaN, the values are not
    assert has_nan(torch.tensor([1.0, float("nan")])) and not has_nan(torch.empty(0))
    asked = []

    def inputs():
        asked.append(True)
        return {"means": torch.tensor([inf, -inf])}

    raise_for_nan("gm_op", [torch.tensor([inf, -inf])], inputs)
    assert not asked  # the inputs are only gathered to name the one that carries a NaN
    with pytest.raises(GMFlowInputError, match="'means' contains infinite values that produced NaN"):
        raise_for_nan("gm_op", [torch.tensor([float("nan")])], inputs)
