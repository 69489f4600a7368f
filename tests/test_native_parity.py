"""Native kernels vs the pure-PyTorch reference, over hypothesis-drawn shapes, K,
dtypes, broadcasting, strides and empty inputs; and the reference backward
formulas vs autograd of the reference forward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conftest import NATIVE_CPU, NATIVE_CUDA
from gmflow.reference import density as ref
from strategies import GmCase, gm_cases, tolerances


def _require_native(device):
    loaded = NATIVE_CPU if device == "cpu" else NATIVE_CUDA
    if not loaded:
        pytest.skip(f"no native {device} library loaded")


def _close(actual, expected, dtype, scale_atol=True):
    tol = tolerances(dtype)
    if scale_atol and expected.numel():
        tol = dict(tol, atol=tol["atol"] * max(1.0, expected.detach().abs().max().item()))
    torch.testing.assert_close(actual, expected, **tol)


def _reference_grads(case: GmCase, fn, device, grad_seed=1):
    """Gradients of sum(out * r) by autograd through the reference, in fp64 for 16-bit inputs."""
    inputs = case.tensors(device, requires_grad=True)
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    (out.double() * weight.to(device)).sum().backward()
    return out, [t.grad for t in inputs], weight


def _record_paths(case: GmCase) -> None:
    """Hypothesis statistics (--hypothesis-show-statistics) show which kernel paths were hit."""
    event("pixel tiles" if case.H * case.W >= 4 else "packed components")
    event(f"logstds {case.logstd_layout}")
    event(f"dtype {case.dtype}")
    for name, kind in case.layout.items():
        if kind:
            event(f"{name} layout {kind}")


@given(case=gm_cases())
@settings(max_examples=120)
def test_gm_logprob_forward(device, case):
    _require_native(device)
    _record_paths(case)
    means, logstds, logweights, samples = case.tensors(device)
    out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    expected = ref.gm_logprob(means, logstds, logweights, samples)
    assert out.shape == expected.shape and out.dtype == case.dtype and out.is_contiguous()
    _close(out, expected, case.dtype)


@given(case=gm_cases(), mask=st.lists(st.booleans(), min_size=4, max_size=4))
@settings(max_examples=120)
def test_gm_logprob_backward(device, case, mask):
    _require_native(device)
    _record_paths(case)
    means, logstds, logweights, samples = case.tensors(device)
    logprob = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    grad = torch.randn(logprob.shape, generator=torch.Generator().manual_seed(case.seed), dtype=torch.float64)
    grad = grad.to(device=device, dtype=case.dtype)
    grads = torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, mask)
    expected = ref.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, mask)
    for g, e, m, x in zip(grads, expected, mask, (means, logstds, logweights, samples)):
        if not m:
            assert g.numel() == 0
            continue
        assert g.shape == x.shape and g.dtype == x.dtype
        _close(g, e, case.dtype)


@given(case=gm_cases(dtypes=[torch.float64]))
def test_reference_logprob_backward_matches_autograd(case):
    """The spelled-out gradients of the reference (the fallback backward) equal autograd."""
    out, grads, weight = _reference_grads(case, ref.gm_logprob, "cpu")
    explicit = ref.gm_logprob_backward(weight.to(out.dtype), *case.tensors(), out.detach(), [True] * 4)
    for e, g in zip(explicit, grads):
        torch.testing.assert_close(e, g, rtol=1e-9, atol=1e-9)


@given(case=gm_cases(), power=st.sampled_from([1.0, 0.5, 2.0, 0.0]))
def test_gm_to_mean_forward(device, case, power):
    _require_native(device)
    means, _, logweights, _ = case.tensors(device)
    out = torch.ops.gmflow.gm_to_mean(means, logweights, power)
    expected = ref.gm_to_mean(means, logweights, power)
    assert out.shape == expected.shape and out.is_contiguous()
    _close(out, expected, case.dtype)


@given(case=gm_cases(), power=st.sampled_from([1.0, 0.7, 3.0]), mask=st.lists(st.booleans(), min_size=2, max_size=2))
def test_gm_to_mean_backward(device, case, power, mask):
    _require_native(device)
    means, _, logweights, _ = case.tensors(device)
    mean = torch.ops.gmflow.gm_to_mean(means, logweights, power)
    grad = torch.randn(mean.shape, generator=torch.Generator().manual_seed(case.seed), dtype=torch.float64)
    grad = grad.to(device=device, dtype=case.dtype)
    grads = torch.ops.gmflow.gm_to_mean_backward(grad, means, logweights, mean, power, mask)
    expected = ref.gm_to_mean_backward(grad, means, logweights, mean, power, mask)
    for g, e, m, x in zip(grads, expected, mask, (means, logweights)):
        if not m:
            assert g.numel() == 0
            continue
        assert g.shape == x.shape
        _close(g, e, case.dtype)


@given(case=gm_cases(dtypes=[torch.float64]), power=st.sampled_from([1.0, 0.6, 2.5]))
def test_reference_to_mean_backward_matches_autograd(case, power):
    out, grads, weight = _reference_grads(case, lambda m, s, w, x: ref.gm_to_mean(m, w, power), "cpu")
    means, _, logweights, _ = case.tensors()
    explicit = ref.gm_to_mean_backward(weight.to(out.dtype), means, logweights, out.detach(), power, [True, True])
    torch.testing.assert_close(explicit[0], grads[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(explicit[1], grads[2], rtol=1e-9, atol=1e-9)


@given(case=gm_cases())
def test_gm_to_iso_gaussian_forward(device, case):
    _require_native(device)
    means, logstds, logweights, _ = case.tensors(device)
    mean, var = torch.ops.gmflow.gm_to_iso_gaussian(means, logstds, logweights)
    e_mean, e_var = ref.gm_to_iso_gaussian(means, logstds, logweights)
    assert mean.shape == e_mean.shape and var.shape == e_var.shape
    _close(mean, e_mean, case.dtype)
    _close(var, e_var, case.dtype)


@given(case=gm_cases(dtypes=[torch.float64]))
@settings(max_examples=25)
def test_reference_iso_gaussian_backward_matches_autograd(case):
    inputs = case.tensors(requires_grad=True)
    mean, var = ref.gm_to_iso_gaussian(*inputs[:3])
    g = torch.Generator().manual_seed(3)
    gm, gv = torch.randn(mean.shape, generator=g, dtype=torch.float64), torch.randn(var.shape, generator=g, dtype=torch.float64)
    ((mean * gm).sum() + (var * gv).sum()).backward()
    explicit = ref.gm_to_iso_gaussian_backward(gm, gv, *case.tensors()[:3])
    for e, t in zip(explicit, inputs[:3]):
        torch.testing.assert_close(e, t.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 4, 5])
@pytest.mark.parametrize("shape", [(2, 8, 32, 32, 1), (3, 8, 5, 7, 2), (64, 64, 1, 1, 1), (3, 65, 1, 1, 2)])
def test_shared_std_fast_paths_at_benchmark_shapes(device, dtype, C, shape):
    """One std per distribution at the benchmark shapes (B, K, H, W, N): full 32x32 pixel tiles, a
    partial tile, and the packed single-pixel order (K at and above its 64-component block), with
    the cached tile weights and the channel-specialised packed order of gm_to_iso_gaussian."""
    _require_native(device)
    B, K, H, W, N = shape
    means, logstds, logweights, samples = GmCase(batch=(B,), K=K, C=C, H=H, W=W, N=N, dtype=dtype).tensors(device)
    out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    _close(out.double(), ref.gm_logprob(*(t.double() for t in (means, logstds, logweights, samples))), dtype)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device, dtype)
    grads = torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, out, [True] * 4)
    expected = ref.gm_logprob_backward(grad, means, logstds, logweights, samples, out, [True] * 4)
    for a, b in zip(grads, expected):
        _close(a, b, dtype)
    for a, b in zip(torch.ops.gmflow.gm_to_iso_gaussian(means, logstds, logweights),
                    ref.gm_to_iso_gaussian(means, logstds, logweights)):
        _close(a, b, dtype)


@pytest.mark.parametrize("K", [65, 130])
@pytest.mark.parametrize("HW", [(1, 1), (4, 5)])
def test_many_components_cross_block_boundaries(device, K, HW):
    """K above the kernels' 64-component block: the online logsumexp merges blocks."""
    _require_native(device)
    case = GmCase(batch=(2,), K=K, C=3, H=HW[0], W=HW[1], N=2, logstd_layout="per_component_pixel")
    means, logstds, logweights, samples = case.tensors(device)
    _close(torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples),
           ref.gm_logprob(means, logstds, logweights, samples), torch.float32)
    _close(torch.ops.gmflow.gm_to_mean(means, logweights, 1.5), ref.gm_to_mean(means, logweights, 1.5), torch.float32)
    for a, b in zip(torch.ops.gmflow.gm_to_iso_gaussian(means, logstds, logweights),
                    ref.gm_to_iso_gaussian(means, logstds, logweights)):
        _close(a, b, torch.float32)
    logprob = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    grad = torch.ones_like(logprob)
    for a, b in zip(torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, [True] * 4),
                    ref.gm_logprob_backward(grad, means, logstds, logweights, samples, logprob, [True] * 4)):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("K,N,layout", [(8, 1, "shared"), (16, 2, "per_pixel"), (17, 1, "shared"),
                                        (1, 1, "per_pixel"), (3, 2, "per_component_pixel")])
def test_logprob_pixel_tiles_at_edge_pixels(device, dtype, C, K, N, layout):
    """gm_logprob's pixel tiles (two-pass logsumexp for K <= 16, the online one above) and its backward,
    on 150-pixel images (a full tile and a partial one), with a pixel whose weights are all zero (-inf,
    zero gradients) and one with a NaN mean (NaN there, and in a shared std's gradient), against the
    reference."""
    _require_native(device)
    case = GmCase(batch=(2,), K=K, C=C, H=10, W=15, N=N, dtype=dtype, logstd_layout=layout)
    means, logstds, logweights, samples = case.tensors(device)
    logweights = logweights.clone()
    logweights[0, :, :, 2, 3] = -float("inf")
    means = means.clone()
    means[1, K - 1, C - 1, 1, 2] = float("nan")
    out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    expected = ref.gm_logprob(means, logstds, logweights, samples)
    assert (out[0, :, 2, 3] == -float("inf")).all()
    assert torch.isnan(out[1, :, 1, 2]).all()
    finite = torch.ones_like(out, dtype=torch.bool)
    finite[0, :, 2, 3] = False
    finite[1, :, 1, 2] = False
    assert torch.isfinite(out[finite]).all()
    _close(out[finite], expected[finite], dtype)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device, dtype)
    grads = torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, out, [True] * 4)
    expected = ref.gm_logprob_backward(grad, means, logstds, logweights, samples, out, [True] * 4)
    for g, e in zip(grads, expected):
        # NaN exactly where the reference has it (the NaN pixel's rows; a shared std's whole batch element)
        assert torch.equal(torch.isnan(g), torch.isnan(e))
        assert torch.isnan(g).any()
        scale = max(1.0, e.nan_to_num(0.0).abs().max().item())
        tol = tolerances(dtype)
        torch.testing.assert_close(g, e, equal_nan=True, rtol=tol["rtol"], atol=tol["atol"] * scale)
    for g in (grads[0], grads[2]):
        assert (g[0, ..., 2, 3] == 0).all()  # the zero-weight pixel: no responsibility anywhere


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 3, 4])
@pytest.mark.parametrize("mask", [[True, True, True, True], [True, False, False, False], [False, True, True, False],
                                  [False, False, False, True], [True, True, False, True]])
def test_logprob_backward_channel_pass_gradient_subsets(device, dtype, C, mask):
    """The backward's one pass per component (full pixel tiles, one std per pixel, N = 1, C <= 4) with
    any subset of the gradients requested: the requested ones as the reference's."""
    _require_native(device)
    case = GmCase(batch=(2,), K=8, C=C, H=16, W=16, N=1, dtype=dtype, logstd_layout="per_pixel")
    means, logstds, logweights, samples = case.tensors(device)
    out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(device, dtype)
    grads = torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, out, mask)
    expected = ref.gm_logprob_backward(grad, means, logstds, logweights, samples, out, mask)
    for g, e, wanted in zip(grads, expected, mask):
        if wanted:
            _close(g, e, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 4])
@pytest.mark.parametrize("K", [1, 17, 64])
@pytest.mark.parametrize("mask", [[True, True, True, True], [False, True, False, True], [True, False, True, False]])
def test_logprob_single_pixel_items(device, dtype, C, K, mask):
    """gm_logprob and its backward on single-pixel items (the toy's 1x1 images, one std per item,
    N = 1) in chunks of 16 (37 items: a partial chunk), with an item whose weights are all zero (-inf;
    zero gradients), one with a NaN mean (NaN where the reference has it) and one whose sample lies so
    far from every component that the forward's one-pass sum underflows (its two-pass fallback),
    against the reference."""
    _require_native(device)
    means, logstds, logweights, samples = GmCase(batch=(37,), K=K, C=C, H=1, W=1, N=1, dtype=dtype).tensors(device)
    logweights = logweights.clone()
    logweights[3] = -float("inf")
    means = means.clone()
    means[20, K - 1, C - 1] = float("nan")
    samples = samples.clone()
    samples[30] += 40.0
    out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    expected_out = ref.gm_logprob(*(t.double() for t in (means, logstds, logweights, samples)))
    assert (out[3] == -float("inf")).all() and torch.isnan(out[20]).all() and (out[30] < -500).all()
    keep = torch.isfinite(expected_out)
    assert torch.equal(keep, torch.isfinite(out))
    _close(out[keep].double(), expected_out[keep], dtype)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(device, dtype)
    grads = torch.ops.gmflow.gm_logprob_backward(grad, means, logstds, logweights, samples, out, mask)
    expected = ref.gm_logprob_backward(grad, means, logstds, logweights, samples, out, mask)
    tol = tolerances(dtype)
    for g, e, wanted in zip(grads, expected, mask):
        if not wanted:
            continue
        assert torch.equal(torch.isnan(g), torch.isnan(e)) and torch.isnan(g[20]).any()
        assert (g[3] == 0).all()
        # The far item's gradients are ill-conditioned (|z|^2 ~ 1e4, exp of a difference of two large
        # log densities): finite, and compared only where the fp32 reference can be trusted.
        assert torch.isfinite(g[30]).all()
        g, e = torch.cat([g[:30], g[31:]]), torch.cat([e[:30], e[31:]])
        scale = max(1.0, e.nan_to_num(0.0).abs().max().item())
        torch.testing.assert_close(g, e, equal_nan=True, rtol=tol["rtol"], atol=tol["atol"] * scale)


def test_zero_weight_component_gives_no_nan(device):
    """One logweight at -inf (others finite): finite log density and gradients (docs/testing.md#algebra-oracles)."""
    _require_native(device)
    means, logstds, logweights, samples = GmCase(batch=(2,), K=4, C=2, H=3, W=4, N=2).tensors(device)
    logweights = logweights.clone()
    logweights[:, 1] = -float("inf")
    out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    assert torch.isfinite(out).all()
    _close(out, ref.gm_logprob(means, logstds, logweights, samples), torch.float32)
    grads = torch.ops.gmflow.gm_logprob_backward(torch.ones_like(out), means, logstds, logweights, samples, out, [True] * 4)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[2][:, 1] == 0).all()  # no responsibility for the zero-weight component
    assert torch.isfinite(torch.ops.gmflow.gm_to_mean(means, logweights)).all()


def test_all_weights_zero_gives_minus_inf_and_zero_grads(device):
    _require_native(device)
    means, logstds, logweights, samples = GmCase(batch=(1,), K=3, C=2, H=2, W=5, N=1).tensors(device)
    logweights = torch.full_like(logweights, -float("inf"))
    out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    assert (out == -float("inf")).all()
    grads = torch.ops.gmflow.gm_logprob_backward(torch.ones_like(out), means, logstds, logweights, samples, out, [True] * 4)
    assert all((g == 0).all() for g in grads)


def test_empty_inputs_give_empty_outputs(device):
    _require_native(device)
    for case in (GmCase(batch=(0,), K=3, C=2, H=4, W=4, N=1), GmCase(batch=(2,), K=3, C=2, H=4, W=4, N=0),
                 GmCase(batch=(2,), K=3, C=2, H=0, W=4, N=1)):
        means, logstds, logweights, samples = case.tensors(device)
        out = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
        assert out.shape == ref.gm_logprob(means, logstds, logweights, samples).shape
        grads = torch.ops.gmflow.gm_logprob_backward(out, means, logstds, logweights, samples, out, [True] * 4)
        expected = ref.gm_logprob_backward(out, means, logstds, logweights, samples, out, [True] * 4)
        for g, e in zip(grads, expected):
            assert g.shape == e.shape
            torch.testing.assert_close(g, e)  # N == 0: zero gradients for the GM
        assert torch.ops.gmflow.gm_to_mean(means, logweights).shape == ref.gm_to_mean(means, logweights).shape
