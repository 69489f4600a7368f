"""Native kernels of the sampling-path ops vs their pure-PyTorch reference
(the ``reference`` functions of the gmflow._ops modules), over hypothesis-drawn shapes, K, dtypes (16-bit computed
in fp32), broadcasting, strides and empty inputs; and the reference's spelled-out backward
formulas vs autograd of the reference forward."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NATIVE_CPU, NATIVE_CUDA
from gmflow import _library
from gmflow._ops import gm1d_inverse_cdf as icdf_op
from gmflow._ops import kr as kr_op
from gmflow._ops import mul_iso_gaussian as mul_op
from gmflow._ops import posterior_mean as posterior_op
from gmflow._ops import sample as sample_op
from gmflow._ops.sample_data import extra
from gmflow.reference.common import acc_dtype
from strategies import GmCase, gm_cases, tolerances


def _require_native(device):
    if not (NATIVE_CPU if device == "cpu" else NATIVE_CUDA):
        pytest.skip(f"no native {device} library loaded")


def _close(actual, expected, dtype, scale=None, factor=1.0):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tol = tolerances(dtype)
    ref_scale = scale if scale is not None else (expected.detach().abs().max().item() if expected.numel() else 1.0)
    tol = dict(rtol=tol["rtol"] * factor, atol=tol["atol"] * factor * max(1.0, ref_scale))
    torch.testing.assert_close(actual, expected, **tol)


def _acc(dtype):
    return acc_dtype(dtype)


def _extra(case: GmCase, name: str, tail, seed: int, low=None, high=None, kind="normal"):
    """An extra operand with the batch of `name` in the case, trailing dims `tail` and the case's layout."""
    g = torch.Generator().manual_seed(case.seed + seed)
    shape = case.batch_of(name) + list(tail)
    if kind == "normal":
        t = torch.randn(shape, generator=g, dtype=torch.float64)
    else:
        t = low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)
    return t


def _data(case, name, tail, seed, device, dtype=None, **kw):
    return extra(case, name, tail, seed, dtype=dtype, **kw).to(device)


# ------------------------------------------------------------------------------------------------
# gm_mul_iso_gaussian


@given(case=gm_cases(), per_pixel_var=st.booleans(), powers=st.sampled_from([(1.0, 1.0), (0.5, 1.0), (2.0, 0.3)]))
@settings(max_examples=30)
def test_gm_mul_iso_gaussian(device, case, per_pixel_var, powers):
    _require_native(device)
    means, logstds, logweights, samples = case.tensors(device)
    C, H, W = case.C, case.H, case.W
    g_mean = samples[..., 0, :, :, :] if case.N else _data(case, "samples", (C, H, W), 1, device)
    g_var = _data(case, "logweights", (1, H, W) if per_pixel_var else (1, 1, 1), 2, device, kind="uniform",
                  low=0.2, high=2.0)
    args = (means, logstds, logweights, g_mean, g_var, *powers)
    out = torch.ops.gmflow.gm_mul_iso_gaussian(*args)
    expected = mul_op.reference(*args)
    for a, e in zip(out, expected):
        assert a.dtype == case.dtype and a.is_contiguous()
        _close(a, e, case.dtype)


def test_gm_mul_iso_gaussian_eps_clamp(device):
    """gaussian_power < 0 with a narrow Gaussian drives v_g + r v below eps: both clamp it."""
    _require_native(device)
    means, logstds, logweights, _ = GmCase(batch=(2,), K=3, C=2, H=3, W=4, N=1, dtype=torch.float64).tensors(device)
    g_mean = torch.randn(2, 2, 3, 4, dtype=torch.float64, device=device)
    g_var = torch.full((2, 1, 1, 1), 1e-3, dtype=torch.float64, device=device)
    out = torch.ops.gmflow.gm_mul_iso_gaussian(means, logstds, logweights, g_mean, g_var, 1.0, -1.0, 1e-6)
    for a, e in zip(out, mul_op.reference(means, logstds, logweights, g_mean, g_var, 1.0, -1.0, 1e-6)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# gm_posterior_mean (+ backward)


def _posterior_inputs(case, device, same_time=False):
    means, logstds, logweights, samples = case.tensors(device)
    C, H, W = case.C, case.H, case.W
    x_src = _data(case, "samples", (C, H, W), 3, device)
    x_tgt = _data(case, "means", (C, H, W), 4, device)
    acc = _acc(case.dtype)
    s_src = _extra(case, "logstds", (), 5, low=0.3, high=0.95, kind="uniform")
    s_tgt = s_src.clone() if same_time else s_src * _extra(case, "logstds", (), 6, low=0.05, high=0.95, kind="uniform")
    return means, logstds, logweights, x_src, x_tgt, s_src.to(acc).to(device), s_tgt.to(acc).to(device)


@given(case=gm_cases(max_k=33), same_time=st.booleans())
@settings(max_examples=30)
def test_gm_posterior_mean(device, case, same_time):
    _require_native(device)
    args = _posterior_inputs(case, device, same_time)
    out = torch.ops.gmflow.gm_posterior_mean(*args, 1e-6)
    expected = posterior_op.reference(*args, 1e-6)
    assert out.dtype == case.dtype and out.is_contiguous()
    _close(out, expected, case.dtype, factor=4.0)


@given(case=gm_cases(max_k=33), mask=st.lists(st.booleans(), min_size=3, max_size=3))
@settings(max_examples=30)
def test_gm_posterior_mean_backward(device, case, mask):
    _require_native(device)
    args = _posterior_inputs(case, device)
    mean = torch.ops.gmflow.gm_posterior_mean(*args, 1e-6)
    grad = torch.randn(mean.shape, generator=torch.Generator().manual_seed(case.seed), dtype=torch.float64)
    grad = grad.to(device=device, dtype=case.dtype)
    grads = torch.ops.gmflow.gm_posterior_mean_backward(grad, *args, mean, 1e-6, mask)
    expected = posterior_op.reference_backward(grad, *args, mean, 1e-6, mask)
    for g, e, m, x in zip(grads, expected, mask, args[:3]):
        if not m:
            assert g.numel() == 0
            continue
        assert g.shape == x.shape and g.dtype == x.dtype
        _close(g, e, case.dtype, factor=8.0)


@given(case=gm_cases(dtypes=[torch.float64], max_k=9))
@settings(max_examples=15)
def test_reference_posterior_backward_matches_autograd(case):
    args = [t.detach().requires_grad_(i < 3) for i, t in enumerate(_posterior_inputs(case, "cpu"))]
    out = posterior_op.reference(*args, 1e-6)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * weight).sum().backward()
    explicit = posterior_op.reference_backward(weight, *(a.detach() for a in args), out.detach(), 1e-6, [True] * 3)
    for e, a in zip(explicit, args[:3]):
        torch.testing.assert_close(e, a.grad, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# gm1d_inverse_cdf (+ backward)


def _gm1d_inputs(case, device, with_gaussian):
    """1-D GM (..., K, H, W) from the case's channel 0, targets (..., N, H, W)."""
    means, _, logweights, samples = case.tensors(device)
    logstds = _data(case, "logstds", (1, 1, 1), 7, device, kind="uniform", low=-1.5, high=0.3)
    g = samples[..., 0, :, :]
    c = torch.erf(g.double() / math.sqrt(2)).to(case.dtype) if with_gaussian else torch.tanh(g)
    return means[..., 0, :, :], logstds, logweights[..., 0, :, :], c, (g if with_gaussian else None)


@given(case=gm_cases(dtypes=[torch.float64, torch.float32, torch.bfloat16], logstd_layouts=("shared",)),
       with_gaussian=st.booleans(), n_steps=st.sampled_from([0, 1, 3, 8, 16]))
@settings(max_examples=30)
def test_gm1d_inverse_cdf(device, case, with_gaussian, n_steps):
    """Every iteration count in fp64; in float32 the initialisation and the converged root (an
    unconverged Newton step divides the erf rounding differences by the pdf, which can be tiny)."""
    _require_native(device)
    if case.dtype != torch.float64 and n_steps not in (0, 16):
        n_steps = 16
    m, s, w, c, g = _gm1d_inputs(case, device, with_gaussian)
    out = torch.ops.gmflow.gm1d_inverse_cdf(m, s, w, c, g, n_steps, 1e-6, 1.5)
    expected = icdf_op.reference(m, s, w, c, g, n_steps, 1e-6, 1.5)
    assert out.dtype == case.dtype and out.is_contiguous()
    _close(out, expected, case.dtype, factor=5.0)


@given(case=gm_cases(dtypes=[torch.float64, torch.float32], logstd_layouts=("shared",)),
       mask=st.lists(st.booleans(), min_size=4, max_size=4))
@settings(max_examples=25)
def test_gm1d_inverse_cdf_backward(device, case, mask):
    _require_native(device)
    m, s, w, c, _ = _gm1d_inputs(case, device, False)
    x = torch.ops.gmflow.gm1d_inverse_cdf(m, s, w, c, None, 8, 1e-6, 1.5)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(case.seed), dtype=torch.float64)
    grad = grad.to(device=device, dtype=case.dtype)
    grads = torch.ops.gmflow.gm1d_inverse_cdf_backward(grad, m, s, w, c, x, 1e-6, mask)
    expected = icdf_op.reference_backward(grad, m, s, w, c, x, 1e-6, mask)
    for got, e, msk, inp in zip(grads, expected, mask, (m, s, w, c)):
        if not msk:
            assert got.numel() == 0
            continue
        assert got.shape == inp.shape
        _close(got, e, case.dtype, factor=10.0)


# ------------------------------------------------------------------------------------------------
# Knothe-Rosenblatt transport


def random_rotation(batch, C, pixels=(1, 1), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(*batch, *pixels, C, C, generator=g, dtype=torch.float64))
    return q.to(dtype)


def _kr_inputs(case, device, per_pixel, n_axes):
    means, logstds, logweights, samples = case.tensors(device)
    acc = _acc(case.dtype)
    rot_batch = case.batch_of("means")
    V = random_rotation(rot_batch, case.C, (case.H, case.W) if per_pixel else (1, 1), seed=case.seed).to(acc)
    uniforms = None
    if n_axes < case.C:
        uniforms = _extra(case, "samples", (case.N, 1, case.H, case.W), 8, low=0.0, high=1.0, kind="uniform")
        uniforms = uniforms.to(acc).to(device)
    return means, logstds, logweights, samples, V.to(device), uniforms


@given(case=gm_cases(max_k=16, logstd_layouts=("shared",)), per_pixel=st.booleans(), data=st.data(),
       n_steps=st.sampled_from([0, 2, 16]))
@settings(max_examples=30)
def test_gm_kr_inverse(device, case, per_pixel, data, n_steps):
    _require_native(device)
    n_axes = data.draw(st.integers(1, case.C))
    means, logstds, logweights, g, V, u = _kr_inputs(case, device, per_pixel, n_axes)
    out = torch.ops.gmflow.gm_kr_inverse(means, logstds, logweights, g, V, u, n_axes, n_steps, 1e-6, 1.5)
    expected = kr_op.reference_inverse(means, logstds, logweights, g, V, u, n_axes, n_steps, 1e-6, 1.5)
    assert out.dtype == case.dtype and out.is_contiguous()
    _close(out, expected, case.dtype, factor=10.0)


@given(case=gm_cases(max_k=16, logstd_layouts=("shared",)), per_pixel=st.booleans(), data=st.data())
@settings(max_examples=30)
def test_gm_kr_forward(device, case, per_pixel, data):
    _require_native(device)
    n_axes = data.draw(st.integers(1, case.C))
    means, logstds, logweights, x, V, _ = _kr_inputs(case, device, per_pixel, n_axes)
    out = torch.ops.gmflow.gm_kr_forward(means, logstds, logweights, x, V, n_axes, 1e-6)
    expected = kr_op.reference_forward(means, logstds, logweights, x, V, n_axes, 1e-6)
    assert out.dtype == case.dtype and out.is_contiguous()
    # erfinv near +-1 amplifies the float erf differences (d erfinv/du ~ 1/pdf): compare in u.
    if case.dtype == torch.float64:
        _close(out, expected, case.dtype)
    else:
        _close(torch.erf(out.double() / math.sqrt(2)), torch.erf(expected.double() / math.sqrt(2)), case.dtype,
               scale=1.0, factor=2.0)


# ------------------------------------------------------------------------------------------------
# gm_sample


@given(case=gm_cases(), power=st.sampled_from([1.0, 0.5, 2.0]), cov_sharpen=st.booleans())
@settings(max_examples=30)
def test_gm_sample(device, case, power, cov_sharpen):
    _require_native(device)
    means, logstds, logweights, samples = case.tensors(device)
    acc = _acc(case.dtype)
    u = _extra(case, "samples", (case.N, 1, case.H, case.W), 9, low=0.0, high=1.0, kind="uniform").to(acc).to(device)
    z = samples.to(acc)
    out = torch.ops.gmflow.gm_sample(means, logstds, logweights, u, z, power, cov_sharpen)
    expected = sample_op.reference(means, logstds, logweights, u, z, power, cov_sharpen)
    assert out.dtype == case.dtype and out.is_contiguous()
    _close(out, expected, case.dtype)


def test_many_components_and_zero_weights(device):
    """K above one tile of lanes' worth of components, and -inf logweights, in every op."""
    _require_native(device)
    case = GmCase(batch=(2,), K=70, C=3, H=3, W=5, N=2)
    means, logstds, logweights, samples = case.tensors(device)
    logweights = logweights.clone()
    logweights[:, 3] = -float("inf")
    logweights = torch.log_softmax(logweights, dim=-4)
    V = random_rotation((2,), 3).float().to(device)
    u = torch.rand(2, 2, 1, 3, 5, device=device)
    for op, args in [
        ("gm_kr_inverse", (means, logstds, logweights, samples, V, u, 2, 16, 1e-6, 1.5)),
        ("gm_kr_forward", (means, logstds, logweights, samples, V, 3, 1e-6)),
        ("gm_sample", (means, logstds, logweights, u, samples, 1.0, False)),
        ("gm_mul_iso_gaussian", (means, logstds, logweights, samples[:, 0], logstds.exp()[:, 0], 1.0, 1.0, 1e-6)),
    ]:
        out = getattr(torch.ops.gmflow, op)(*args)
        expected = _library.OPS[op].fallback(*args)
        for a, e in zip(out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)):
            assert not torch.isnan(a).any(), op
            _close(a, e, torch.float32, factor=10.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("batch,K", [((64,), 64), ((3, 5), 17), ((37,), 1), ((2,), 65)])
def test_single_pixel_items(device, dtype, C, batch, K):
    """1x1 images with one std per item (the toy): the item-chunk kernels of gm_to_mean,
    gm_to_iso_gaussian, gm_mul_iso_gaussian and gm_posterior_mean (K up to one 64-component block,
    C 1-4; partial chunks of 16 items; K = 65 and C = 5 take the general path), with a zero-weight
    component and a batch broadcast over the std."""
    _require_native(device)
    case = GmCase(batch=batch, K=K, C=C, H=1, W=1, N=1, dtype=dtype)
    means, logstds, logweights, samples = case.tensors(device)
    if K > 2:
        logweights = logweights.clone()
        logweights[..., 1, :, :, :] = -float("inf")
        logweights = torch.log_softmax(logweights.float(), dim=-4).to(dtype)
    logstds = logstds[..., :1, :, :, :].expand(*logstds.shape[:-4], 1, 1, 1, 1)
    g_var = _data(case, "logweights", (1, 1, 1), 2, device, kind="uniform", low=0.2, high=2.0)
    x_src, x_tgt = samples[..., 0, :, :, :], _data(case, "means", (C, 1, 1), 4, device)
    s_src = _extra(case, "logstds", (), 5, low=0.3, high=0.95, kind="uniform").to(_acc(dtype)).to(device)
    calls = [
        ("gm_to_mean", (means, logweights, 1.5)),
        ("gm_to_iso_gaussian", (means, logstds, logweights)),
        ("gm_mul_iso_gaussian", (means, logstds, logweights, x_tgt, g_var, 1.0, 0.5, 1e-6)),
        ("gm_posterior_mean", (means, logstds, logweights, x_src, x_tgt, s_src, s_src * 0.6, 1e-6)),
    ]
    for op, args in calls:
        out = getattr(torch.ops.gmflow, op)(*args)
        expected = _library.OPS[op].fallback(*args)
        for a, e in zip(out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)):
            assert not torch.isnan(a).any(), op
            _close(a, e, dtype, factor=4.0)


def _shared_std_images(device, dtype, C, batch, K, HW):
    """A case with one std per batch element and, for K > 2, component 1 of zero weight."""
    _require_native(device)
    case = GmCase(batch=batch, K=K, C=C, H=HW[0], W=HW[1], N=1, dtype=dtype)
    means, logstds, logweights, samples = case.tensors(device)
    if K > 2:
        logweights = logweights.clone()
        logweights[..., 1, :, :, :] = -float("inf")
        logweights = torch.log_softmax(logweights.float(), dim=-4).to(dtype)
    logstds = logstds[..., :1, :1, :1].expand(*logstds.shape[:-4], 1, 1, 1, 1)
    return case, means, logstds, logweights, samples


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("batch,K,HW", [((2,), 8, (5, 30)), ((3,), 64, (16, 16)), ((2,), 8, (32, 32)),
                                        ((1, 2), 1, (16, 48))])
def test_mul_iso_gaussian_channel_pass(device, dtype, C, batch, K, HW):
    """Images with one std per batch element: gm_mul_iso_gaussian's one pass per component over its C <= 4
    channels (C = 5 takes the per-channel loops), on 64-lane tiles (150 pixels: a partial tile) and on wide
    tiles (pixels a multiple of 256), a zero-weight component and a NaN mean: that pixel's weights are all
    NaN, every other output as the fallback's."""
    case, means, logstds, logweights, samples = _shared_std_images(device, dtype, C, batch, K, HW)
    g_mean = _data(case, "means", (C, *HW), 4, device)
    g_var = _extra(case, "logstds", (1, *HW), 5, low=0.1, high=2.0, kind="uniform").to(dtype).to(device)
    means = means.clone()
    means.view(-1)[-1] = math.nan  # the last pixel of the last item, last component and channel
    args = (means, logstds, logweights, g_mean, g_var, 1.0, 0.5, 1e-6)
    out = torch.ops.gmflow.gm_mul_iso_gaussian(*args)
    expected = _library.OPS["gm_mul_iso_gaussian"].fallback(*args)
    nan_weights = torch.isnan(out[2])
    assert nan_weights.sum() == K and nan_weights.view(-1, HW[0] * HW[1])[-1, -1]
    assert torch.isnan(out[0]).sum() == 1
    for a, e in zip(out, expected):
        assert torch.equal(torch.isnan(a), torch.isnan(e))
        keep = ~torch.isnan(e)
        _close(a[keep], e[keep], dtype, factor=4.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("batch,K,HW", [((2,), 8, (5, 30)), ((3,), 64, (4, 4)), ((1, 2), 1, (8, 9))])
def test_posterior_mean_register_blocks(device, dtype, C, batch, K, HW):
    """Images with one std per batch element: gm_posterior_mean's lane tiles in register blocks (fp32
    arithmetic, C 1-4; C = 5 takes the general path), partial tiles (150 pixels), K = 64, a zero-weight
    component, against the fallback."""
    case, means, logstds, logweights, samples = _shared_std_images(device, dtype, C, batch, K, HW)
    x_src, x_tgt = samples[..., 0, :, :, :], _data(case, "means", (C, *HW), 4, device)
    s_src = _extra(case, "logstds", (), 5, low=0.3, high=0.95, kind="uniform").to(_acc(dtype)).to(device)
    args = (means, logstds, logweights, x_src, x_tgt, s_src, s_src * 0.6, 1e-6)
    out = torch.ops.gmflow.gm_posterior_mean(*args)
    expected = _library.OPS["gm_posterior_mean"].fallback(*args)
    assert not torch.isnan(out).any()
    _close(out, expected, dtype, factor=4.0)


def test_empty_inputs(device):
    _require_native(device)
    for case in (GmCase(batch=(0,), K=3, C=2, H=4, W=4, N=1), GmCase(batch=(2,), K=3, C=2, H=4, W=4, N=0),
                 GmCase(batch=(2,), K=3, C=2, H=0, W=4, N=1)):
        means, logstds, logweights, samples = case.tensors(device)
        V = random_rotation(case.batch, case.C).float().to(device)
        u = torch.rand(*case.batch, case.N, 1, case.H, case.W, device=device)
        calls = [
            ("gm_kr_inverse", (means, logstds, logweights, samples, V, u, 1, 4, 1e-6, 1.5)),
            ("gm_kr_forward", (means, logstds, logweights, samples, V, None, 1e-6)),
            ("gm_sample", (means, logstds, logweights, u, samples, 1.0, False)),
            ("gm1d_inverse_cdf", (means[..., 0, :, :], logstds[..., 0, :, :, :], logweights[..., 0, :, :],
                                  samples[..., 0, :, :], None, 4, 1e-6, 1.5)),
        ]
        for op, args in calls:
            out = getattr(torch.ops.gmflow, op)(*args)
            assert out.shape == _library.OPS[op].fallback(*args).shape, op
        m1, s1, w1, c1 = calls[3][1][:4]
        x = torch.ops.gmflow.gm1d_inverse_cdf(m1, s1, w1, c1, None, 4, 1e-6, 1.5)
        grads = torch.ops.gmflow.gm1d_inverse_cdf_backward(x, m1, s1, w1, c1, x, 1e-6, [True] * 4)
        for g, e in zip(grads, icdf_op.reference_backward(x, m1, s1, w1, c1, x, 1e-6, [True] * 4)):
            torch.testing.assert_close(g, e)  # N == 0: zero gradients for the GM
