"""Probabilistic guidance and the second-order GM solver (docs/sampling.md#guidance-and-the-second-order-solver;
docs/testing.md#guidance-and-solver-oracles)."""

from __future__ import annotations

import pytest
import torch

from gmflow import GaussianMixture, IsoGaussian, ops
from gmflow.flow import GMSecondOrderSolver, guide_gm, probabilistic_guidance


pytestmark = pytest.mark.usefixtures("one_thread")


F64 = torch.float64


def _mean_nb(x):
    return x.mean(dim=tuple(range(1, x.dim())))


def _gm(B=3, K=4, C=3, H=2, W=2, seed=0, logstd=-0.7, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(
        spread * torch.randn(B, K, C, H, W, generator=g, dtype=F64),
        logstd + 0.1 * torch.randn(B, 1, 1, 1, 1, generator=g, dtype=F64),
        torch.log_softmax(torch.randn(B, K, 1, H, W, generator=g, dtype=F64), dim=1),
    )


def _guidance_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
    uncond = cond + 0.5 * torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
    var = torch.rand(3, 1, 1, 1, generator=g, dtype=F64) + 0.2
    return cond, var, uncond


@pytest.mark.parametrize("w", [0.1, 0.45, 0.9])
def test_guidance_invariants(w):
    cond, var, uncond = _guidance_inputs()
    out = probabilistic_guidance(cond, var, uncond, w, orthogonal=1.0)
    b = out.bias
    # orthogonal to the conditional mean
    torch.testing.assert_close(_mean_nb(b * cond), torch.zeros(3, dtype=F64), atol=1e-12, rtol=0)
    # RMS exactly w sqrt(v_bar)
    torch.testing.assert_close(_mean_nb(b.square()).sqrt(), w * _mean_nb(var).sqrt())
    torch.testing.assert_close(out.avg_var.flatten(), _mean_nb(var))
    torch.testing.assert_close(out.gaussian_output.mean, cond + b)
    torch.testing.assert_close(out.gaussian_output.var, (1 - w * w) * var)
    # total second moment is kept: (1 - w^2) v + <b^2> = v
    torch.testing.assert_close(_mean_nb(out.gaussian_output.var) + _mean_nb(b.square()), _mean_nb(var))


def test_guidance_partial_orthogonal_and_axis():
    cond, var, uncond = _guidance_inputs(1)
    axis = torch.randn_like(cond)
    full = probabilistic_guidance(cond, var, uncond, 0.5, orthogonal=1.0, orthogonal_axis=axis)
    torch.testing.assert_close(_mean_nb(full.bias * axis), torch.zeros(3, dtype=F64), atol=1e-12, rtol=0)
    none = probabilistic_guidance(cond, var, uncond, 0.5, orthogonal=0.0)
    direction = cond - uncond
    cos = _mean_nb(none.bias * direction) / (_mean_nb(none.bias.square()) * _mean_nb(direction.square())).sqrt()
    torch.testing.assert_close(cos, torch.ones(3, dtype=F64))


def test_guidance_tensor_scale():
    cond, var, uncond = _guidance_inputs(2)
    w = torch.tensor([0.1, 0.3, 0.6], dtype=F64)
    out = probabilistic_guidance(cond, var, uncond, w)
    for i in range(3):
        ref = probabilistic_guidance(cond[i:i + 1], var[i:i + 1], uncond[i:i + 1], float(w[i]))
        torch.testing.assert_close(out.bias[i:i + 1], ref.bias)


def test_guidance_rejects_bad_scale():
    cond, var, uncond = _guidance_inputs()
    for w in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            probabilistic_guidance(cond, var, uncond, w)


@pytest.mark.parametrize("w", [0.2, 0.6])
def test_guidance_mask_and_k1_exactness(w):
    gm_cond = _gm(K=1, seed=3)
    gm_uncond = _gm(K=1, seed=4)
    res = guide_gm(gm_cond, gm_uncond, w)
    g = ops.gm_to_iso_gaussian(gm_cond)
    v = g.var.mean(dim=(-2, -1), keepdim=True)
    mask = ops.iso_gaussian_mul_iso_gaussian(res.gaussian_output, res.gaussian_cond, 1.0, -1.0)
    torch.testing.assert_close(mask.mean, g.mean + res.bias / w**2)
    torch.testing.assert_close(mask.var.expand_as(v), v * (1 - w * w) / w**2)
    # K = 1: the guided GM is exactly N(cond_mean + b, (1 - w^2) v)
    torch.testing.assert_close(res.gm.means[:, 0], g.mean + res.bias)
    torch.testing.assert_close(torch.exp(2 * res.gm.logstds).expand(3, 1, 1, 1, 1).flatten(), ((1 - w * w) * v).flatten())


def test_guided_gm_mean_approximately_shifted():
    gm_cond, gm_uncond = _gm(K=6, seed=5, spread=0.3), _gm(K=6, seed=6, spread=0.3)
    res = guide_gm(gm_cond, gm_uncond, 0.3)
    err = ops.gm_to_mean(res.gm) - (res.gaussian_cond.mean + res.bias)
    assert float(err.abs().max()) < 0.5 * float(res.bias.abs().max())


# ----------------------------------------------------------------------------------------
# second-order solver


def _solver_inputs(seed=0):
    gm = _gm(seed=seed)
    x_t = torch.randn(3, 3, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(seed + 10))
    return gm, ops.gm_to_iso_gaussian(gm), x_t


def test_second_order_first_call_is_identity():
    gm, gauss, x_t = _solver_inputs()
    solver = GMSecondOrderSolver()
    out_gm, out_g = solver(gm, gauss, x_t, 800.0, 200.0)
    assert out_gm is gm and out_g is gauss
    assert solver.state.gm is gm and float(solver.state.t) == 800.0 and float(solver.state.h) == 200.0
    solver.reset()
    assert solver.state is None


def test_second_order_zero_difference_keeps_base_gm():
    """m_now == m_prev (same GM re-conditioned on the same state): Delta = 0 and the output GM equals the
    base GM up to the eps-mask effect (docs/ops.md#numerical-pitfalls)."""
    gm, gauss, x_t = _solver_inputs(1)
    solver = GMSecondOrderSolver()
    solver(gm, gauss, x_t, 600.0, 200.0)
    out_gm, out_g = solver(gm, gauss, x_t, 600.0, 200.0)  # prev GM moved to the same (x, t): m_prev == m_now
    torch.testing.assert_close(out_g.mean, gauss.mean)
    torch.testing.assert_close(out_gm.means, gm.means, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_gm.logweights, gm.logweights, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_gm.logstds.expand_as(gm.logstds), gm.logstds, atol=1e-5, rtol=0)


def test_second_order_step_formula():
    """The bias is Delta = (m_now - m_prev) sqrt(1 - v (g^2 + ca) / h_bar^2) h / (2 h_prev), RMS-capped."""
    gm_prev, _, x_prev = _solver_inputs(2)
    gm, gauss, x_t = _solver_inputs(3)
    gm = GaussianMixture(0.2 * gm.means, gm.logstds - 2.0, gm.logweights)  # small variance: no damping cut
    gauss = ops.gm_to_iso_gaussian(gm)
    solver = GMSecondOrderSolver(ca=0.005, cb=1.0)
    solver(gm_prev, ops.gm_to_iso_gaussian(gm_prev), x_prev, 700.0, 300.0)
    out_gm, out_g = solver(gm, gauss, x_t, 400.0, 250.0)
    m_prev = ops.gm_posterior_mean(gm_prev, x_prev, x_t, t_src=700.0, t_tgt=400.0)
    v = gauss.var.mean(dim=(-2, -1), keepdim=True)
    v_bar = v.mean(dim=(1, 2, 3), keepdim=True)
    damping = torch.sqrt(torch.clamp_min(1 - v_bar * 0.005 / 0.3**2, 0))
    delta = (gauss.mean - m_prev) * damping * (0.5 * 250.0 / 300.0)
    power = delta.square().mean(dim=(1, 2, 3), keepdim=True)
    capped = delta * torch.sqrt(torch.clamp(v_bar / power, max=1.0))
    torch.testing.assert_close(out_g.mean, gauss.mean + capped)
    torch.testing.assert_close(out_g.var, v * torch.clamp_min(1 - power / v_bar, 1e-6))
    # the state now holds this step's uncorrected GM
    assert solver.state.gm is gm


def test_second_order_damping_switches_off():
    """Huge x0 variance relative to the squared step: damping = 0, the output equals the base (eps mask)."""
    gm_prev, _, x_prev = _solver_inputs(4)
    gm, gauss, x_t = _solver_inputs(5)
    gm = GaussianMixture(gm.means, gm.logstds + 3.0, gm.logweights)
    gauss = ops.gm_to_iso_gaussian(gm)
    solver = GMSecondOrderSolver()
    solver(gm_prev, ops.gm_to_iso_gaussian(gm_prev), x_prev, 700.0, 10.0)
    out_gm, out_g = solver(gm, gauss, x_t, 690.0, 10.0)
    torch.testing.assert_close(out_g.mean, gauss.mean)
    torch.testing.assert_close(out_gm.means, gm.means, atol=1e-3, rtol=0)


def test_second_order_does_not_mutate_inputs():
    gm, gauss, x_t = _solver_inputs(6)
    copies = [t.clone() for t in (*gm, *gauss, x_t)]
    solver = GMSecondOrderSolver()
    solver(gm, gauss, x_t, 800.0, 200.0)
    solver(gm, gauss, x_t * 0.9, 600.0, 200.0)
    for a, b in zip(copies, (*gm, *gauss, x_t)):
        assert torch.equal(a, b)


def test_second_order_correction_steps_reduce_mean_error():
    """Correction steps drive the mean of the output GM to base mean + Delta (docs/sampling.md#second-order-gm-solver):
    for 1x1 pixels (a scalar gain per pixel) the iteration converges geometrically."""
    gm = _gm(B=4, K=4, C=2, H=1, W=1, seed=8, spread=0.5)
    x_t = torch.randn(4, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    gauss = ops.gm_to_iso_gaussian(gm)
    noise = torch.randn(gm.means.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    gm_prev = GaussianMixture(gm.means + 0.1 * noise, gm.logstds, gm.logweights)
    v_bar = gauss.var.mean(dim=(1, 2, 3), keepdim=True)
    # previous step at the same (x, t): m_prev is its plain mean
    delta = (gauss.mean - ops.gm_to_mean(gm_prev)) * torch.sqrt(1 - v_bar * 0.005 / 0.3**2) * (0.5 * 250.0 / 300.0)
    errors = []
    for steps in (0, 2, 8):
        solver = GMSecondOrderSolver(correction_steps=steps)
        solver(gm_prev, ops.gm_to_iso_gaussian(gm_prev), x_t, 400.0, 300.0)
        out_gm, _ = solver(gm, gauss, x_t, 400.0, 250.0)
        errors.append(float((ops.gm_to_mean(out_gm) - (gauss.mean + delta)).abs().max()))
    assert errors[2] < 0.01 * errors[0] and errors[1] < errors[0]


def test_second_order_with_guidance_fuses_bias():
    gm_c, gm_u = _gm(seed=9, spread=0.3), _gm(seed=10, spread=0.3)
    x_t = torch.randn(3, 3, 2, 2, dtype=F64)
    solver = GMSecondOrderSolver()
    w = 0.3
    g1 = guide_gm(gm_c, gm_u, w)
    out = solver(g1.gm, g1.gaussian_output, x_t, 800.0, 200.0, w, g1.gm_cond, g1.gaussian_cond, g1.avg_var, g1.bias)
    assert out[0] is g1.gm
    g2 = guide_gm(gm_c, gm_u, w)
    gm2, gauss2 = solver(g2.gm, g2.gaussian_output, x_t, 600.0, 200.0, w, g2.gm_cond, g2.gaussian_cond,
                         g2.avg_var, g2.bias)
    # the correction is applied to the unguided conditional GM, with the CFG bias fused in
    bias = gauss2.mean - g2.gaussian_cond.mean
    assert float(bias.square().mean(dim=(1, 2, 3)).max()) <= float(g2.avg_var.max()) * (1 + 1e-9)
    assert torch.isfinite(gm2.means).all()
    with pytest.raises(ValueError, match="gm_cond"):
        solver(g2.gm, g2.gaussian_output, x_t, 400.0, 200.0, w, cfg_bias=g2.bias)
