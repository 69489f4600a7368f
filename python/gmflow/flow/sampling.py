"""The GMFlow sampling loop (docs/sampling.md#the-sampling-loop) and the flow-matching baseline samplers.

:func:`gmflow_sample` runs a u-GM network ``model(x, t) -> GaussianMixture`` (``x (B, C, H, W)``,
``t (B,)`` float in T-units) from noise to data:

- ``output_mode='sample'`` + :class:`GMFlowSDEScheduler` = **GM-SDE**: each step draws ``x0_hat`` from
  the (guided, corrected) x0-GM (spectrally correlated if a spectrum net is given), then takes the
  exact Gaussian posterior step.
- ``output_mode='mean'`` + :class:`FlowEulerODEScheduler` = **GM-ODE**: one network call per step,
  then ``num_substeps`` Euler sub-steps whose velocity comes analytically from the step's GM
  re-conditioned on the moving state (:func:`gmflow.ops.gm_posterior_mean`).
- ``order=2`` adds the second-order GM solver (:class:`GMSecondOrderSolver`); ``guidance_scale > 0``
  probabilistic guidance (the model is then called on ``cat([x, x])``: first half unconditional,
  second half conditional, as in the original ``forward_test``; ``cond_first=True`` swaps the halves,
  as the diffusers pipeline does).

Every random draw uses ``generator``: a seeded generator reproduces a sample exactly.

:func:`flow_euler_sample` and :func:`flow_heun_sample` are the plain flow-matching baselines for a
velocity model ``model(x, t) -> u``; :func:`gm_mean_velocity` turns a GM network into one (the mean
of its u-GM; with K = 1 that is a flow-matching model).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gmflow import GMFlowInputError, ops
from gmflow.info import native_kernel_serves
from gmflow.types import GaussianMixture, IsoGaussian

from .guidance import GMSecondOrderSolver, guide_gm
from .schedule import NUM_TIMESTEPS, flow_sigmas
from .schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler

__all__ = [
    "Intermediate",
    "SamplingOutput",
    "flow_euler_sample",
    "flow_heun_sample",
    "gm_mean_velocity",
    "gm_ode_substeps",
    "gmflow_sample",
]

GMModel = Callable[[Tensor, Tensor], GaussianMixture]
VelocityModel = Callable[[Tensor, Tensor], Tensor]


class Intermediate(NamedTuple):
    """One outer step: time, state, the x0-GM used, and the GM of ``x`` at the next outer time."""

    t: Tensor
    x_t: Tensor
    gm_x0: GaussianMixture
    gm_next: GaussianMixture


class SamplingOutput(NamedTuple):
    samples: Tensor
    intermediates: list[Intermediate] | None


def gm_ode_substeps(nfe: int, total: int = 128) -> int:
    """``ceil(total / nfe)``: the paper's GM-ODE sub-step count for a given NFE (toy: total 128)."""
    return math.ceil(total / nfe)


def _points_as_pixels(v: Tensor) -> Tensor:
    """``(B, A, D, 1, 1) -> (A, D, B, 1)`` or ``(B, D, 1, 1) -> (D, B, 1)``: the batch as a column of pixels."""
    return v.squeeze(-1).squeeze(-1).movedim(0, -1).unsqueeze(-1).contiguous()


def _posterior_mean_as_pixels(gm: GaussianMixture, x: Tensor, x_src: Tensor, t: Tensor, t_src: Tensor,
                              T: float) -> Tensor:
    """``gm_posterior_mean`` of a batch of 1x1 points with a per-sample std, computed as the pixels of one
    image. The op is per pixel, so this is exact; the reference then runs its elementwise work over long
    contiguous rows instead of C = 2 wide ones (~5x faster on a CPU for the toy)."""
    B = x.shape[0]
    gm_px = GaussianMixture(*(_points_as_pixels(v.expand(B, *v.shape[1:])) for v in gm))
    mean = ops.gm_posterior_mean(gm_px, _points_as_pixels(x_src), _points_as_pixels(x), t_src=t_src, t_tgt=t,
                                 num_timesteps=T)
    return mean.squeeze(-1).movedim(-1, 0).unsqueeze(-1).unsqueeze(-1)


def _posterior_mean(gm: GaussianMixture, x: Tensor, x_src: Tensor, t: Tensor, t_src: Tensor, T: float) -> Tensor:
    """``gm_posterior_mean`` of the GM-ODE sub-steps: a native kernel gets the original layout; where the
    op runs the reference, 1x1 points take :func:`_posterior_mean_as_pixels`."""
    points = x.shape[-2:] == (1, 1) and gm.logstds.shape[-4] == 1 and gm.means.shape[0] == x.shape[0]
    if points and not native_kernel_serves("gm_posterior_mean", x.device):
        return _posterior_mean_as_pixels(gm, x, x_src, t, t_src, T)
    return ops.gm_posterior_mean(gm, x_src, x, t_src=t_src, t_tgt=t, num_timesteps=T)


def _fused_substeps(scheduler, output_mode: str, x: Tensor) -> bool:
    """Whether each outer step's sub-steps run as one :func:`gmflow.ops.gm_ode_euler_substeps` call: a GM-ODE step
    (``'mean'`` output, the Euler ODE scheduler) with a native kernel for it on ``x``'s device. Equal to the
    per-sub-step loop up to rounding (docs/sampling.md#gm-ode-sub-steps)."""
    return (output_mode == "mean" and type(scheduler) is FlowEulerODEScheduler
            and native_kernel_serves("gm_ode_euler_substeps", x.device))


def _batch_time(t: Tensor, batch: int, dtype: torch.dtype) -> Tensor:
    return t.to(dtype).reshape(1).expand(batch)


def _check_common(noise: Tensor, num_steps: int) -> None:
    if not isinstance(noise, Tensor):
        raise GMFlowInputError(f"noise must be a tensor of shape (B, C, H, W), got {type(noise).__name__}")
    if noise.dim() != 4:
        raise GMFlowInputError(f"noise must have shape (B, C, H, W), got {tuple(noise.shape)}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise GMFlowInputError(f"num_steps must be a positive integer, got {num_steps!r}")


@torch.no_grad()
def gmflow_sample(
    model: GMModel,
    noise: Tensor,
    num_steps: int,
    output_mode: str = "mean",
    order: int = 1,
    num_substeps: int = 1,
    guidance_scale=0.0,
    orthogonal_guidance: float = 1.0,
    shift: float = 1.0,
    scheduler: FlowEulerODEScheduler | GMFlowSDEScheduler | None = None,
    gm2_coefs: tuple[float, float] = (0.005, 1.0),
    gm2_correction_steps: int = 0,
    spectrum_net: Callable[[IsoGaussian], Tensor] | None = None,
    generator: torch.Generator | None = None,
    return_intermediates: bool = False,
    progress: bool = False,
    cond_first: bool = False,
) -> SamplingOutput:
    """Samples ``x_0`` from noise ``x_T (B, C, H, W)`` with ``num_steps`` network calls
    (docs/sampling.md#the-sampling-loop).

    ``scheduler`` defaults to :class:`GMFlowSDEScheduler` for ``output_mode='sample'`` and
    :class:`FlowEulerODEScheduler` for ``'mean'`` (both with ``shift``); it is reset with
    ``set_timesteps(num_steps * num_substeps)``. Sub-steps (``num_substeps > 1``) require ``'mean'``.
    The second-order solver uses ``gm2_coefs = (ca, cb)`` and ``gm2_correction_steps``.
    ``guidance_scale`` (float or ``(B,)`` tensor in [0, 1)) > 0 enables probabilistic guidance with
    ``orthogonal_guidance``. The spectrum net (``'sample'`` mode only) maps the x0 Gaussian to a log
    power spectrum for spatially correlated draws. With guidance the model sees ``cat([x, x])`` and must
    condition the first half on nothing and the second on the labels, or the reverse with
    ``cond_first=True``. Returns the samples (input dtype) and, if
    ``return_intermediates``, one :class:`Intermediate` per step.
    """
    _check_common(noise, num_steps)
    if output_mode not in ("mean", "sample"):
        raise GMFlowInputError(f"output_mode must be 'mean' or 'sample', got {output_mode!r}")
    if order not in (1, 2):
        raise GMFlowInputError(f"order must be 1 or 2, got {order!r}")
    if not isinstance(num_substeps, int) or num_substeps < 1:
        raise GMFlowInputError(f"num_substeps must be a positive integer, got {num_substeps!r}")
    if num_substeps > 1 and output_mode != "mean":
        raise GMFlowInputError("num_substeps > 1 (GM-ODE sub-steps) requires output_mode='mean'")
    if spectrum_net is not None and output_mode == "sample" and noise.shape[-2] * noise.shape[-1] == 0:
        raise GMFlowInputError(f"gmflow_sample(): spectral sampling needs a non-empty pixel grid: 'noise' must have "
                               f"shape (B, C, H, W) with H, W >= 1, got {tuple(noise.shape)}")
    w = torch.as_tensor(guidance_scale, dtype=torch.float32)
    guided = bool((w > 0).any())
    if bool((w < 0).any()) or bool((w >= 1).any()):
        raise GMFlowInputError("guidance_scale must lie in [0, 1)")
    if scheduler is None:
        scheduler = (
            GMFlowSDEScheduler(shift=shift, output_mode="sample")
            if output_mode == "sample"
            else FlowEulerODEScheduler(shift=shift)
        )
    T = scheduler.num_train_timesteps
    dtype = noise.dtype
    x = noise.float() if dtype != torch.float64 else noise
    B = x.shape[0]
    S = num_substeps
    scheduler.set_timesteps(num_steps * S, device=x.device)
    timesteps = scheduler.timesteps
    solver = GMSecondOrderSolver(*gm2_coefs, correction_steps=gm2_correction_steps, num_timesteps=T)
    solver.reset()
    w_dev = w.to(x.device, x.dtype)
    fused = _fused_substeps(scheduler, output_mode, x)
    intermediates: list[Intermediate] | None = [] if return_intermediates else None
    for i in tqdm(range(num_steps), desc="gmflow sampling", disable=not progress, leave=False):
        t = timesteps[i * S]
        t_next = timesteps[(i + 1) * S] if i + 1 < num_steps else t.new_zeros(())
        x_in = torch.cat([x, x]) if guided else x
        gm_u = model(x_in, _batch_time(t, x_in.shape[0], x.dtype)).map(lambda v: v.to(x.dtype))
        gm = ops.u_to_x_0(gm_u, x_in, t, num_timesteps=T)
        if guided:
            first = gm.map(lambda v: v[:B] if v.shape[0] == 2 * B else v)
            second = gm.map(lambda v: v[B:] if v.shape[0] == 2 * B else v)
            gm_cond, gm_uncond = (first, second) if cond_first else (second, first)
            g = guide_gm(gm_cond, gm_uncond, w_dev, orthogonal_guidance)
            gm, gaussian_output = g.gm, g.gaussian_output
            extra = dict(w=w_dev, gm_cond=g.gm_cond, gaussian_cond=g.gaussian_cond, avg_var=g.avg_var,
                         cfg_bias=g.bias)
        else:
            gaussian_output = ops.gm_to_iso_gaussian(gm)
            extra = {}
        if order == 2:
            gm, gaussian_output = solver(gm, gaussian_output, x, t, t - t_next, **extra)
        if intermediates is not None:
            gm_next = ops.reverse_transition(gm, x, t_next, t, prediction_type="x0", num_timesteps=T)
            intermediates.append(Intermediate(t, x, gm, gm_next))
        if fused:
            # All S sub-steps in one native call: the first posterior mean (at x = x_base) is the GM mean.
            x = ops.gm_ode_euler_substeps(gm, x, sigmas=scheduler.sigmas[i * S:(i + 1) * S + 1])
            continue
        x_base, t_base = x, t
        for j in range(S):
            if j == 0:
                power = None
                if spectrum_net is not None and output_mode == "sample":
                    power = spectrum_net(gaussian_output)
                x0 = ops.gm_to_model_output(gm, output_mode, power, generator=generator)
                t_j = t
            else:
                t_j = timesteps[i * S + j]
                x0 = _posterior_mean(gm, x, x_base, t_j, t_base, T)
            x = scheduler.step(x0, t_j, x, generator=generator, prediction_type="x0").prev_sample
    return SamplingOutput(x.to(dtype), intermediates)


def gm_mean_velocity(model: GMModel) -> VelocityModel:
    """Velocity model ``(x, t) -> E[u]``: the mean of ``model``'s u-GM (K = 1: plain flow matching)."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return ops.gm_to_mean(model(x, t))

    return velocity


@torch.no_grad()
def flow_euler_sample(
    model: VelocityModel,
    noise: Tensor,
    num_steps: int,
    shift: float = 1.0,
    num_timesteps: float = NUM_TIMESTEPS,
    return_intermediates: bool = False,
    progress: bool = False,
):
    """Flow-matching Euler sampler (NFE = ``num_steps``): ``x <- x + u(x, t) (sigma' - sigma)``.

    Returns the samples, or ``(samples, [x after each step])`` with ``return_intermediates``.
    """
    _check_common(noise, num_steps)
    scheduler = FlowEulerODEScheduler(num_train_timesteps=num_timesteps, shift=shift)
    scheduler.set_timesteps(num_steps, device=noise.device)
    x = noise.float() if noise.dtype != torch.float64 else noise
    trajectory = []
    for t in tqdm(scheduler.timesteps, desc="flow euler", disable=not progress, leave=False):
        u = model(x, _batch_time(t, x.shape[0], x.dtype))
        x = scheduler.step(u.to(x.dtype), t, x, prediction_type="u").prev_sample
        trajectory.append(x)
    x = x.to(noise.dtype)
    return (x, trajectory) if return_intermediates else x


@torch.no_grad()
def flow_heun_sample(
    model: VelocityModel,
    noise: Tensor,
    num_steps: int,
    shift: float = 1.0,
    num_timesteps: float = NUM_TIMESTEPS,
    progress: bool = False,
) -> Tensor:
    """Flow-matching Heun (2nd-order) sampler; NFE = ``2 num_steps - 1`` (the last step, to sigma = 0,
    is a plain Euler step, as in EDM)."""
    _check_common(noise, num_steps)
    sigmas = flow_sigmas(num_steps, shift, device=noise.device, dtype=torch.float64)
    x = noise.double() if noise.dtype == torch.float64 else noise.float()
    for i in tqdm(range(num_steps), desc="flow heun", disable=not progress, leave=False):
        s, s_next = sigmas[i].to(x.dtype), sigmas[i + 1].to(x.dtype)
        d = model(x, _batch_time(s * num_timesteps, x.shape[0], x.dtype)).to(x.dtype)
        x_euler = x + d * (s_next - s)
        if float(s_next) == 0.0:
            x = x_euler
        else:
            d_next = model(x_euler, _batch_time(s_next * num_timesteps, x.shape[0], x.dtype)).to(x.dtype)
            x = x + 0.5 * (d + d_next) * (s_next - s)
    return x.to(noise.dtype)
