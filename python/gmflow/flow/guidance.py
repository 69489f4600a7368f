"""Probabilistic guidance (docs/sampling.md#probabilistic-guidance) and the second-order GM solver
(docs/sampling.md#second-order-gm-solver), inference only.

Everything here is in x0-space. ``<X>`` denotes the mean over the non-batch dims ``(C, H, W)``
(all dims after the first) per batch element.

- :func:`probabilistic_guidance`: shifts the conditional mean along the (orthogonalised) CFG
  direction by an RMS of exactly ``w sqrt(v_bar)`` and shrinks the variance by ``1 - w^2``, keeping
  the total second moment of the conditional distribution.
- :func:`guide_gm`: applies it to a conditional GM through one Gaussian mask
  ``N(cond_mean + b, (1 - w^2) v) / N(cond_mean, v)``.
- :class:`GMSecondOrderSolver`: the DPM-Solver++(2M)-like multistep correction whose "previous x0"
  is the previous step's GM re-conditioned on the current state (docs/ops.md#gm_posterior_mean), applied through a
  Gaussian mask. It holds its state (previous GM, state, time, step) explicitly; :meth:`reset` starts a new
  trajectory. The first call after a reset returns its inputs unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from gmflow import GMFlowInputError, ops
from gmflow.types import GaussianMixture, IsoGaussian, check_iso_gaussian

from .schedule import NUM_TIMESTEPS

__all__ = ["GMSecondOrderSolver", "GuidanceOutput", "GuidedGM", "guide_gm", "probabilistic_guidance"]


def _mean_nonbatch(x: Tensor) -> Tensor:
    """Mean over every dim but the first, kept as size-1 dims: ``(B, 1, ..., 1)``."""
    return x.mean(dim=tuple(range(1, x.dim())), keepdim=True)


def _as_scale(w, ref: Tensor) -> Tensor:
    """Guidance scale as a float or ``(B,)`` tensor, broadcastable against ``ref (B, ...)``."""
    w = torch.as_tensor(w, dtype=ref.dtype, device=ref.device)
    if w.dim() > 0:
        w = w.reshape(-1, *([1] * (ref.dim() - 1)))
    return w


class GuidanceOutput(NamedTuple):
    gaussian_output: IsoGaussian  # mean cond_mean + b, var (1 - w^2) total_var
    bias: Tensor  # b (B, C, H, W)
    avg_var: Tensor  # v_bar (B, 1, 1, 1)


def probabilistic_guidance(
    cond_mean: Tensor,
    total_var: Tensor,
    uncond_mean: Tensor,
    w,
    orthogonal: float = 1.0,
    orthogonal_axis: Tensor | None = None,
) -> GuidanceOutput:
    """Probabilistic guidance of an x0 distribution (docs/sampling.md#probabilistic-guidance).

    ``b = cond_mean - uncond_mean``; if ``orthogonal > 0``: ``b -= orthogonal <b a> / max(<a a>, 1e-6) a``
    with ``a = orthogonal_axis`` (default ``cond_mean``); ``b *= w sqrt(v_bar / max(<b^2>, 1e-6))`` with
    ``v_bar = <total_var>``. Returns ``(IsoGaussian(cond_mean + b, (1 - w^2) total_var), b, v_bar)``.
    ``w`` is a float or a ``(B,)`` tensor in ``[0, 1)``.
    """
    w = _as_scale(w, cond_mean)
    if bool((w < 0).any()) or bool((w >= 1).any()):
        raise GMFlowInputError("guidance scale w must lie in [0, 1) (w >= 1 makes the guided variance non-positive)")
    if not 0 <= orthogonal <= 1:
        raise GMFlowInputError(f"orthogonal must be in [0, 1], got {orthogonal}")
    bias = cond_mean - uncond_mean
    if orthogonal > 0:
        axis = cond_mean if orthogonal_axis is None else orthogonal_axis
        coef = _mean_nonbatch(bias * axis) / torch.clamp_min(_mean_nonbatch(axis * axis), 1e-6)
        bias = bias - orthogonal * coef * axis
    power = _mean_nonbatch(bias.square())
    avg_var = _mean_nonbatch(total_var)
    bias = bias * torch.sqrt(avg_var / torch.clamp_min(power, 1e-6)) * w
    return GuidanceOutput(IsoGaussian(cond_mean + bias, total_var * (1 - w * w)), bias, avg_var)


class GuidedGM(NamedTuple):
    gm: GaussianMixture  # the guided x0-GM
    gaussian_output: IsoGaussian  # the guided Gaussian (target moments)
    gm_cond: GaussianMixture  # the unguided conditional x0-GM
    gaussian_cond: IsoGaussian  # its moment match, var averaged over (H, W): (B, 1, 1, 1)
    bias: Tensor
    avg_var: Tensor


def guide_gm(gm_cond: GaussianMixture, gm_uncond: GaussianMixture, w, orthogonal: float = 1.0) -> GuidedGM:
    """Probabilistic guidance applied to the conditional x0-GM (docs/sampling.md#probabilistic-guidance).

    ``gaussian_cond = gm_to_iso_gaussian(gm_cond)`` with its var averaged over (H, W); guidance with
    the unconditional GM's mean; mask ``M = gaussian_output / gaussian_cond`` (powers 1, -1);
    ``gm = gm_mul_iso_gaussian(gm_cond, M)``. For K = 1 the result is exactly
    ``N(cond_mean + b, (1 - w^2) v)``.
    """
    g = ops.gm_to_iso_gaussian(gm_cond)
    gaussian_cond = IsoGaussian(g.mean, g.var.mean(dim=(-2, -1), keepdim=True))
    guided = probabilistic_guidance(gaussian_cond.mean, gaussian_cond.var, ops.gm_to_mean(gm_uncond), w, orthogonal)
    mask = ops.iso_gaussian_mul_iso_gaussian(guided.gaussian_output, gaussian_cond, 1.0, -1.0)
    gm = ops.gm_mul_iso_gaussian(gm_cond, mask, 1.0, 1.0)
    return GuidedGM(gm, guided.gaussian_output, gm_cond, gaussian_cond, guided.bias, guided.avg_var)


class SolverState(NamedTuple):
    gm: GaussianMixture  # the previous step's (guided, uncorrected) x0-GM
    x_t: Tensor
    t: Tensor
    h: Tensor


class GMSecondOrderSolver:
    """Second-order GM solver (docs/sampling.md#second-order-gm-solver) with explicit state.

    Call once per outer sampling step with the step's x0-GM, its Gaussian moments, the state ``x_t``,
    time ``t`` and step size ``h = t - t_next`` (T-units). Later calls compute
    ``m_prev = gm_posterior_mean(prev_gm, prev_x_t, x_t, prev_t, t)``, the damped 2nd-order term
    ``Delta = (m_now - m_prev) sqrt(max(1 - v_bar (g'^2 + ca) / h_bar^2, 0)) h / (2 h_prev)``
    (``h_bar = h_prev / T``, ``g' = w cb``), fuse it with the CFG bias (if guidance), cap its RMS at
    ``sqrt(v_bar)``, and apply it to the base GM as one Gaussian mask; ``correction_steps`` further
    iterations make the GM mean hit the target.

    Upstream fixes: no in-place averaging of the caller's variance; without guidance the scale is 0
    (upstream LakonLab raised a NameError there, docs/sampling.md#upstream-differences).
    """

    def __init__(
        self,
        ca: float = 0.005,
        cb: float = 1.0,
        correction_steps: int = 0,
        num_timesteps: float = NUM_TIMESTEPS,
    ) -> None:
        if correction_steps < 0:
            raise GMFlowInputError(f"correction_steps must be >= 0, got {correction_steps}")
        self.ca = float(ca)
        self.cb = float(cb)
        self.correction_steps = int(correction_steps)
        self.num_timesteps = float(num_timesteps)
        self.state: SolverState | None = None

    def reset(self) -> None:
        """Forgets the previous step (call at the start of every trajectory)."""
        self.state = None

    def __call__(
        self,
        gm_output: GaussianMixture,
        gaussian_output: IsoGaussian,
        x_t: Tensor,
        t,
        h,
        w=0.0,
        gm_cond: GaussianMixture | None = None,
        gaussian_cond: IsoGaussian | None = None,
        avg_var: Tensor | None = None,
        cfg_bias: Tensor | None = None,
    ) -> tuple[GaussianMixture, IsoGaussian]:
        """Returns the corrected ``(gm_output, gaussian_output)`` and records this step as the state.

        Without guidance pass only the first five arguments; with guidance pass ``w`` and the
        :class:`GuidedGM` fields ``gm_cond``, ``gaussian_cond``, ``avg_var``, ``cfg_bias`` (= ``bias``).
        """
        check_iso_gaussian("GMSecondOrderSolver()", "gaussian_output", gaussian_output)
        if gaussian_cond is not None:
            check_iso_gaussian("GMSecondOrderSolver()", "gaussian_cond", gaussian_cond)
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        h = torch.as_tensor(h, dtype=x_t.dtype, device=x_t.device)
        prev = self.state
        reference = gm_output  # the guided but uncorrected GM is the next step's reference
        if prev is not None:
            gm_output, gaussian_output = self._correct(
                prev, gm_output, gaussian_output, x_t, t, h, w, gm_cond, gaussian_cond, avg_var, cfg_bias
            )
        self.state = SolverState(reference, x_t, t, h)
        return gm_output, gaussian_output

    def _correct(self, prev, gm_output, gaussian_output, x_t, t, h, w, gm_cond, gaussian_cond, avg_var, cfg_bias):
        if cfg_bias is not None:
            if gm_cond is None or gaussian_cond is None or avg_var is None:
                raise GMFlowInputError("with cfg_bias, gm_cond, gaussian_cond and avg_var must be given too")
            m_now = ops.gm_to_mean(gm_output)
            base_gaussian, base_gm, v_bar = gaussian_cond, gm_cond, avg_var
        else:
            w = 0.0
            m_now = gaussian_output.mean
            base_gaussian = IsoGaussian(gaussian_output.mean, gaussian_output.var.mean(dim=(-2, -1), keepdim=True))
            base_gm = gm_output
            v_bar = _mean_nonbatch(base_gaussian.var)
        m_prev = ops.gm_posterior_mean(prev.gm, prev.x_t, x_t, t_src=prev.t, t_tgt=t,
                                       num_timesteps=self.num_timesteps)
        w = _as_scale(w, m_now)
        k = 0.5 * h / prev.h
        h_bar = prev.h / self.num_timesteps
        excess = v_bar * ((w * self.cb).square() + self.ca)
        damping = torch.sqrt(torch.clamp_min(1 - excess / h_bar.square(), 0))
        delta = (m_now - m_prev) * damping * k
        bias = delta if cfg_bias is None else delta + cfg_bias
        gm_output, gaussian_output, bias = self._apply_bias(base_gm, base_gaussian, bias, v_bar)
        target = delta + m_now - base_gaussian.mean
        for _ in range(self.correction_steps):
            out_bias = ops.gm_to_mean(gm_output) - base_gaussian.mean
            error = out_bias - target
            ratio = torch.clamp(
                bias.norm(dim=-3, keepdim=True) / torch.clamp_min(out_bias.norm(dim=-3, keepdim=True), 1e-6), max=1.0
            )
            gm_output, gaussian_output, bias = self._apply_bias(base_gm, base_gaussian, bias - error * ratio, v_bar)
        return gm_output, gaussian_output

    @staticmethod
    def _apply_bias(base_gm, base_gaussian, bias, v_bar):
        """Caps the bias RMS at sqrt(v_bar), builds the target Gaussian and masks the base GM with it."""
        power = _mean_nonbatch(bias.square())  # pre-cap power sets the variance (upstream behaviour)
        bias = bias * torch.sqrt(torch.clamp(v_bar / torch.clamp_min(power, 1e-6), max=1.0))
        var = base_gaussian.var * torch.clamp_min(1 - power / torch.clamp_min(v_bar, 1e-6), 1e-6)
        gaussian_output = IsoGaussian(base_gaussian.mean + bias, var)
        mask = ops.iso_gaussian_mul_iso_gaussian(gaussian_output, base_gaussian, 1.0, -1.0)
        return ops.gm_mul_iso_gaussian(base_gm, mask, 1.0, 1.0), gaussian_output, bias
