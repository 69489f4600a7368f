"""gm_ode_euler_substeps (docs/ops.md#gm_ode_euler_substeps): the S GM-ODE sub-steps of one outer step in one call,
against the per-sub-step loop it replaces (gm_posterior_mean + the Euler scheduler's step), a closed-form
oracle (the exact probability-flow ODE of a Gaussian), its gradients, the emulated CUDA kernel's
channel and recompute paths, bad input and the sampler's use of it. The registry suites (opcheck,
gradcheck, compile, fallback vs dispatcher, bad-input classes, emulated CUDA parity) cover it by
construction."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gmflow import GaussianMixture, GMFlowInputError, ops, testing
from gmflow.flow import FlowEulerODEScheduler, gmflow_sample
from gmflow.flow import sampling

from conftest import NATIVE_CPU
from strategies import gm_cases

G = torch.ops.gmflow


def _grid(batch, S: int, final: float, seed: int, dtype) -> torch.Tensor:
    """``(S+1, *batch)``: from a sigma in [0.3, 0.95) per batch element down to ``final``, unevenly spaced."""
    g = torch.Generator().manual_seed(seed)
    start = 0.3 + 0.65 * torch.rand(batch, generator=g, dtype=torch.float64)
    cuts = torch.sort(torch.rand(S - 1, generator=g, dtype=torch.float64), descending=True).values
    frac = torch.cat([torch.ones(1, dtype=torch.float64), cuts, torch.zeros(1, dtype=torch.float64)])
    return (final + (start - final) * frac.reshape(S + 1, *([1] * len(batch)))).to(dtype)


def _loop(gm: GaussianMixture, x_src: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The per-sub-step loop of gmflow_sample: the GM mean, then ops.gm_posterior_mean at each later sub-step,
    each followed by the Euler ODE step written as FlowEulerODEScheduler takes it."""
    batch = torch.broadcast_shapes(*(t.shape[:-4] for t in gm), x_src.shape[:-3], sigmas.shape[1:])
    x_src = x_src.expand(*batch, *x_src.shape[-3:])  # the wrapper reads a (B,) sigma against x's batch dims
    x = x_src
    for j in range(sigmas.shape[0] - 1):
        s, s_next = sigmas[j], sigmas[j + 1]
        x0 = ops.gm_to_mean(gm) if j == 0 else ops.gm_posterior_mean(gm, x_src, x, sigma_src=sigmas[0], sigma_tgt=s)
        shape = (*s.shape, 1, 1, 1)
        x = x0 if float(s_next.max()) == 0.0 else x + (x - x0) / s.reshape(shape) * (s_next - s).reshape(shape)
    return x


def _scale(*tensors) -> float:
    return max(1.0, *(float(t.abs().max()) for t in tensors if t.numel()))


# ------------------------------------------------------------------------------------------------
# Parity with the per-sub-step loop


@settings(max_examples=40, deadline=None)
@given(case=gm_cases(dtypes=[torch.float32, torch.float64], max_k=33, allow_empty=False), data=st.data())
def test_matches_the_per_substep_loop(case, data):
    """Within 1e-5 (relative to the largest value) in float32, over shapes, K, S, broadcast batches,
    per-batch or shared grids and strided operands."""
    means, logstds, logweights, samples = case.tensors()
    gm = GaussianMixture(means, logstds, logweights)
    x_src = samples[..., 0, :, :, :]
    if data.draw(st.booleans(), label="transposed_x_src"):
        x_src = x_src.transpose(-1, -2).contiguous().transpose(-1, -2)
    S = data.draw(st.sampled_from([1, 2, 5, 16]), label="S")
    final = data.draw(st.sampled_from([0.0, 0.1]), label="final_sigma")
    batch = torch.broadcast_shapes(*(t.shape[:-4] for t in gm), x_src.shape[:-3])
    shared = data.draw(st.booleans(), label="shared_grid")
    acc = torch.float64 if case.dtype == torch.float64 else torch.float32
    sigmas = _grid(() if shared else batch, S, final, case.seed, acc)
    fused = ops.gm_ode_euler_substeps(gm, x_src, sigmas=sigmas)
    loop = _loop(gm, x_src, sigmas if not shared else sigmas.reshape(S + 1, *([1] * len(batch))).expand(
        S + 1, *batch))
    assert fused.shape == loop.shape and fused.dtype == loop.dtype
    tol = 1e-5 if case.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(fused, loop, rtol=0, atol=tol * _scale(loop))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("K,batch,HW", [(64, (37,), (1, 1)), (64, (130,), (1, 1)), (1, (2, 5), (1, 1)),
                                        (8, (3,), (5, 6))])
def test_register_block_path(dtype, C, K, batch, HW):
    """The CPU kernel's register-block path (one std per lane, fp32 arithmetic, C <= 4; C = 5 takes the
    general path) at the toy's K = 64 with partial lane tiles, at K = 1 and on images: the per-sub-step loop
    within 1e-5 (relative to the largest value) in float32, a zero-weight component included."""
    _check_against_loop(dtype, C, K, batch, HW, seed=C * 1000 + K, means_scale=2.0, final_sigma=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 2, 4, 5])
@pytest.mark.parametrize("K,batch,HW", [(8, (3,), (16, 16)), (4, (2,), (32, 32)), (8, (2,), (16, 24))])
def test_wide_tiles(dtype, C, K, batch, HW):
    """Images whose pixels are a multiple of 256 run the register blocks on wide lane tiles (16 x 24: 384
    pixels, 64-lane tiles): the per-sub-step loop within 1e-5 in float32. The sub-steps stop at sigma 0.3, as
    at 0.05 a few of these thousands of pixels sit where the posterior mean flips between components, and
    there any two fp32 summation orders differ by more."""
    _check_against_loop(dtype, C, K, batch, HW, seed=C * 100 + K, means_scale=1.0, final_sigma=0.3)


def _check_against_loop(dtype, C, K, batch, HW, seed, means_scale, final_sigma):
    """One std per item, component 1 of zero weight (K > 1), 16 sub-steps down to final_sigma: the fused op
    against the per-sub-step loop, within 1e-5 of the largest value in float32 (1e-2 in 16-bit)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(*batch, K, C, *HW, generator=gen) * means_scale
    logweights = torch.log_softmax(torch.randn(*batch, K, 1, *HW, generator=gen), dim=-4)
    if K > 1:
        logweights[..., 1, :, :, :] = -math.inf
    gm = GaussianMixture(means.to(dtype), torch.full((*batch, 1, 1, 1, 1), -0.6).to(dtype), logweights.to(dtype))
    x_src = torch.randn(*batch, C, *HW, generator=gen).to(dtype)
    sigmas = _grid(batch, 16, final_sigma, C, torch.float32)
    fused = ops.gm_ode_euler_substeps(gm, x_src, sigmas=sigmas)
    loop = _loop(gm, x_src, sigmas)
    assert fused.dtype == dtype and torch.isfinite(fused).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(fused.float(), loop.float(), rtol=0, atol=tol * _scale(loop.float()))


@pytest.mark.parametrize("operand", ["means", "logweights", "x_src"])
def test_nan_reaches_only_its_items_result(operand):
    """A NaN in one item's operand makes that item's result NaN (the wrappers' value checks find the input
    by it) and leaves the other items' results as they were (70 items: two lane tiles at the toy's shape)."""
    gen = torch.Generator().manual_seed(3)
    call = dict(means=torch.randn(70, 64, 2, 1, 1, generator=gen), logstds=torch.full((70, 1, 1, 1, 1), -0.6),
                logweights=torch.log_softmax(torch.randn(70, 64, 1, 1, 1, generator=gen), dim=-4),
                x_src=torch.randn(70, 2, 1, 1, generator=gen))
    sigmas = _grid((), 4, 0.0, 0, torch.float32)
    clean = G.gm_ode_euler_substeps(*call.values(), sigmas)
    call[operand] = call[operand].clone()
    call[operand][66].view(-1)[1] = math.nan
    out = G.gm_ode_euler_substeps(*call.values(), sigmas)
    assert torch.isnan(out[66]).all()
    others = torch.arange(70) != 66
    torch.testing.assert_close(out[others], clean[others], rtol=0, atol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("outer", [0, 2, 3])
def test_matches_the_scheduler_loop(shift, outer):
    """The sub-steps of outer step ``outer`` of 4 (S = 16) as gmflow_sample's loop takes them: t in T-units,
    the posterior mean from those times, FlowEulerODEScheduler.step (shifted schedule; the last step ends at 0)."""
    S, T = 16, 1000.0
    gen = torch.Generator().manual_seed(outer)
    gm = GaussianMixture(torch.randn(3, 8, 4, 5, 6, generator=gen), torch.full((3, 1, 1, 1, 1), -0.7),
                         torch.log_softmax(torch.randn(3, 8, 1, 5, 6, generator=gen), dim=-4))
    x_src = torch.randn(3, 4, 5, 6, generator=gen)
    scheduler = FlowEulerODEScheduler(shift=shift)
    scheduler.set_timesteps(4 * S)
    scheduler.set_begin_index(outer * S)
    t_src = scheduler.timesteps[outer * S]
    x = x_src
    for j in range(S):
        t_j = scheduler.timesteps[outer * S + j]
        x0 = ops.gm_to_mean(gm) if j == 0 else ops.gm_posterior_mean(gm, x_src, x, t_src=t_src, t_tgt=t_j,
                                                                      num_timesteps=T)
        x = scheduler.step(x0, t_j, x, prediction_type="x0").prev_sample
    fused = ops.gm_ode_euler_substeps(gm, x_src, sigmas=scheduler.sigmas[outer * S:(outer + 1) * S + 1])
    torch.testing.assert_close(fused, x, rtol=0, atol=1e-5 * _scale(x))
    by_time = ops.gm_ode_euler_substeps(gm, x_src, t=scheduler.sigmas[outer * S:(outer + 1) * S + 1] * T)
    torch.testing.assert_close(by_time, fused, rtol=0, atol=1e-5 * _scale(x))


# ------------------------------------------------------------------------------------------------
# Oracle: Gaussian data, whose probability-flow ODE has a closed form


def test_converges_to_the_exact_flow_of_a_gaussian():
    """Data x0 ~ N(m, v I): the flow ODE keeps z = (x_sigma - a m) / sqrt(a^2 v + sigma^2) fixed (a = 1 - sigma).
    The x0-GM given (x_src, sigma_src) is the Gaussian posterior; the Euler sub-steps converge to the exact
    solution at rate 1 / S."""
    m, v, s_src, s_end = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3, 0.8, 0.05
    x_src = torch.tensor([[0.4, 0.9], [-1.5, 0.2]], dtype=torch.float64).reshape(2, 2, 1, 1)
    a_src = 1 - s_src
    post_var = 1 / (1 / v + a_src**2 / s_src**2)
    post_mean = post_var * (m.reshape(1, 2, 1, 1) / v + a_src * x_src / s_src**2)
    gm = GaussianMixture(post_mean.unsqueeze(1), torch.full((2, 1, 1, 1, 1), 0.5 * math.log(post_var),
                                                           dtype=torch.float64), torch.zeros(2, 1, 1, 1, 1,
                                                                                             dtype=torch.float64))
    a_end = 1 - s_end
    z = (x_src - a_src * m.reshape(1, 2, 1, 1)) / math.sqrt(a_src**2 * v + s_src**2)
    exact = a_end * m.reshape(1, 2, 1, 1) + math.sqrt(a_end**2 * v + s_end**2) * z
    errors = []
    for S in (16, 256, 4096):
        x = ops.gm_ode_euler_substeps(gm, x_src, sigmas=torch.linspace(s_src, s_end, S + 1, dtype=torch.float64))
        errors.append(float((x - exact).abs().max()))
    assert all(12 < coarse / fine < 20 for coarse, fine in zip(errors, errors[1:])), errors  # 16x steps: 16x closer
    assert errors[2] < 5e-4, errors


# ------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("per_component", [False, True])
def test_gm_gradients_match_autograd_through_the_loop(per_component):
    """The native backward (by recompute) equals autograd through the per-sub-step loop of ops.gm_posterior_mean
    (whose own backward is native) in float64."""
    gen = torch.Generator().manual_seed(7)
    B, K, C, H, W, S = 2, 4, 3, 3, 5, 6
    ls_shape = (B, K, 1, H, W) if per_component else (1, 1, 1, 1, 1)
    tensors = [torch.randn(B, K, C, H, W, generator=gen, dtype=torch.float64),
               -0.6 + 0.4 * torch.rand(ls_shape, generator=gen, dtype=torch.float64),
               torch.log_softmax(torch.randn(B, K, 1, H, W, generator=gen, dtype=torch.float64), dim=-4)]
    x_src = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    sigmas = _grid((B,), S, 0.0, 3, torch.float64)
    grad = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lambda gm: ops.gm_ode_euler_substeps(gm, x_src, sigmas=sigmas), lambda gm: _loop(gm, x_src, sigmas)):
        leaves = [t.clone().requires_grad_() for t in tensors]
        grads.append(torch.autograd.grad(fn(GaussianMixture(*leaves)), leaves, grad))
    for fused, loop in zip(*grads):
        torch.testing.assert_close(fused, loop, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_gradients_are_summed_in_float32(dtype):
    """The S sub-steps' gradient terms are summed in float32 and rounded once: the 16-bit backward is the
    float32 backward of the same values, rounded (on the emulated CUDA kernel too, which sums in its outputs)."""
    gen = torch.Generator().manual_seed(5)
    B, K, C, H, W, S = 2, 3, 2, 2, 3, 16
    args = [torch.randn(B, K, C, H, W, generator=gen).to(dtype), torch.full((1, 1, 1, 1, 1), -0.5).to(dtype),
            torch.log_softmax(torch.randn(B, K, 1, H, W, generator=gen), dim=-4).to(dtype),
            torch.randn(B, C, H, W, generator=gen).to(dtype)]
    sigmas, grad = _grid((B,), S, 0.0, 1, torch.float32), torch.randn(B, C, H, W, generator=gen).to(dtype)
    as_float = [t.float() for t in (grad, *args)]
    kernels = [G] + ([EMU] if EMU is not None else [])
    for ops_ns in kernels:
        got = ops_ns.gm_ode_euler_substeps_backward(grad, *args, sigmas, 1e-6, [True] * 3)
        want = ops_ns.gm_ode_euler_substeps_backward(*as_float, sigmas, 1e-6, [True] * 3)
        for g, w in zip(got, want):
            assert g.dtype == dtype and torch.equal(g, w.to(dtype))


def test_gradients_wrt_x_src_and_sigmas_refused_by_the_op():
    sample = next(iter(__import__("gmflow")._library.OPS["gm_ode_euler_substeps"].sample_inputs("cpu")))
    args = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
    args[3].requires_grad_()
    with pytest.raises(GMFlowInputError, match="'x_src' and 'sigmas'"):
        G.gm_ode_euler_substeps(*args).sum().backward()


def test_wrapper_differentiates_x_src_through_the_reference():
    gen = torch.Generator().manual_seed(2)
    gm = GaussianMixture(torch.randn(1, 3, 2, 1, 1, generator=gen, dtype=torch.float64),
                         torch.full((1, 1, 1, 1, 1), -0.5, dtype=torch.float64),
                         torch.log_softmax(torch.randn(1, 3, 1, 1, 1, generator=gen, dtype=torch.float64), dim=-4))
    x_src = torch.randn(1, 2, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    sigmas = torch.tensor([0.7, 0.4, 0.2], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ops.gm_ode_euler_substeps(gm, x, sigmas=sigmas), (x_src,))


# ------------------------------------------------------------------------------------------------
# The emulated CUDA kernel: its register, local-memory and recompute paths


try:
    EMU = testing.load_cuda_emulation()
except RuntimeError as error:
    EMU, EMU_REASON = None, str(error)
else:
    EMU_REASON = ""


@pytest.mark.skipif(EMU is None or not NATIVE_CPU, reason=EMU_REASON or "the native CPU library is not loaded")
@pytest.mark.parametrize("C, S", [(4, 16), (4, 40), (9, 3), (3, 64)])
def test_emulated_cuda_paths_match_cpu(C, S):
    """C <= 8: registers; C = 9: the 64-channel local-memory kernel; S C > 128: the backward recomputes each
    state from x_src instead of keeping it."""
    gen = torch.Generator().manual_seed(C * 100 + S)
    B, K, H, W = 2, 5, 3, 4
    args = (torch.randn(B, K, C, H, W, generator=gen, dtype=torch.float64),
            -0.6 + 0.4 * torch.rand(B, K, 1, H, W, generator=gen, dtype=torch.float64),
            torch.log_softmax(torch.randn(B, K, 1, H, W, generator=gen, dtype=torch.float64), dim=-4),
            torch.randn(B, C, H, W, generator=gen, dtype=torch.float64), _grid((B,), S, 0.0, S, torch.float64), 1e-6)
    with testing.cuda_emulation_grid(3, 37):
        torch.testing.assert_close(EMU.gm_ode_euler_substeps(*args), G.gm_ode_euler_substeps(*args), rtol=1e-9,
                                   atol=1e-9)
        grad = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
        for a, e in zip(EMU.gm_ode_euler_substeps_backward(grad, *args, [True] * 3),
                        G.gm_ode_euler_substeps_backward(grad, *args, [True] * 3)):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(EMU is None, reason=EMU_REASON)
def test_emulated_cuda_refuses_more_than_64_channels():
    args = (torch.zeros(1, 2, 65, 1, 1), torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1),
            torch.zeros(1, 65, 1, 1), torch.tensor([0.5, 0.0]), 1e-6)
    with pytest.raises(RuntimeError, match=r"gm_ode_euler_substeps\(\): the CUDA kernel supports at most 64 channels"):
        EMU.gm_ode_euler_substeps(*args)


# ------------------------------------------------------------------------------------------------
# Bad input names the argument


def _small():
    gm = GaussianMixture(torch.randn(2, 3, 2, 2, 2), torch.full((1, 1, 1, 1, 1), -0.5),
                         torch.log_softmax(torch.randn(2, 3, 1, 2, 2), dim=-4))
    return gm, torch.randn(2, 2, 2, 2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(sigmas=torch.tensor([0.5, -0.1])), "sigmas"),
        (dict(sigmas=torch.tensor([0.5, math.nan])), "sigmas"),
        (dict(sigmas=torch.tensor([math.inf, 0.2])), "sigmas"),
        (dict(sigmas=torch.tensor([0.5])), "sigmas"),
        (dict(sigmas=torch.tensor(0.5)), "sigmas"),
        (dict(t=torch.tensor([500.0, -3.0])), "t"),
        (dict(sigmas=torch.tensor([[0.5], [0.2]]).expand(2, 3)), "sigmas"),  # batch 3 vs 2
        (dict(sigmas=torch.tensor([0.5, 0.2]), t=torch.tensor([500.0, 200.0])), "sigmas"),
    ],
)
def test_bad_sigmas_name_the_argument(kwargs, name):
    gm, x = _small()
    with pytest.raises(GMFlowInputError, match=f"gm_ode_euler_substeps\\(\\): .*'{name}'"):
        ops.gm_ode_euler_substeps(gm, x, **kwargs)


def test_bad_x_src_and_eps_name_the_argument():
    gm, x = _small()
    with pytest.raises(GMFlowInputError, match="x_src"):
        ops.gm_ode_euler_substeps(gm, x[:, :1], sigmas=torch.tensor([0.5, 0.2]))
    with pytest.raises(GMFlowInputError, match="'eps'"):
        ops.gm_ode_euler_substeps(gm, x, sigmas=torch.tensor([0.5, 0.2]), eps=0.0)
    with pytest.raises(RuntimeError, match="'x_src' has dtype"):  # the op: the native check's RuntimeError
        G.gm_ode_euler_substeps(*gm, x.double(), torch.tensor([0.5, 0.2]))


# ------------------------------------------------------------------------------------------------
# gmflow_sample uses it for GM-ODE sub-steps


class _PointGM(torch.nn.Module):
    """A fixed-parameter GM network on 2-D points ``(B, 2, 1, 1)`` (a u-GM depending on x and t)."""

    def __init__(self, K=6):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.centres = torch.randn(K, 2, generator=gen) * 2

    def forward(self, x, t):
        B = x.shape[0]
        s = (t / 1000.0).reshape(B, 1, 1)
        x0 = self.centres.to(x.dtype).unsqueeze(0).expand(B, -1, -1)
        means_u = (x.reshape(B, 1, 2) - x0) / s.clamp_min(1e-3)
        logits = -((x.reshape(B, 1, 2) - (1 - s) * x0) ** 2).sum(-1) / 2
        return GaussianMixture(means_u.reshape(B, -1, 2, 1, 1), torch.full((B, 1, 1, 1, 1), -1.0, dtype=x.dtype),
                               torch.log_softmax(logits, dim=1).reshape(B, -1, 1, 1, 1))


@pytest.mark.skipif(not NATIVE_CPU, reason="the native CPU library is not loaded")
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("S", [1, 4, 16])
def test_gmflow_sample_fused_matches_the_loop(order, S, monkeypatch):
    model = _PointGM()
    noise = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(S))
    kw = dict(output_mode="mean", order=order, num_substeps=S, shift=2.0)
    assert sampling._fused_substeps(FlowEulerODEScheduler(), "mean", noise)
    fused = gmflow_sample(model, noise, 3, **kw).samples
    monkeypatch.setattr(sampling, "_fused_substeps", lambda *a: False)
    loop = gmflow_sample(model, noise, 3, **kw).samples
    torch.testing.assert_close(fused, loop, rtol=0, atol=1e-5 * _scale(loop))


def test_fused_only_for_the_euler_ode_in_mean_mode():
    x = torch.zeros(1, 2, 1, 1)
    assert not sampling._fused_substeps(FlowEulerODEScheduler(), "sample", x)
    assert not sampling._fused_substeps(sampling.GMFlowSDEScheduler(output_mode="mean"), "mean", x)
