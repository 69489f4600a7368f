"""Typed Python API of every GM operation (OPS_AND_SAMPLERS.md §1-§4).

Functions here take and return the containers of :mod:`gmflow.types`.

- Native-kernel ops dispatch to ``torch.ops.gmflow.*``: the native CPU/CUDA kernel
  where loaded, the pure-PyTorch reference otherwise. Density ops: ``gm_logprob``,
  ``gm_to_mean``, ``gm_to_iso_gaussian``. Sampling path: ``gm_mul_iso_gaussian``,
  ``gm_posterior_mean``, ``gm1d_inverse_cdf``, ``gaussian_samples_to_gm_samples`` /
  ``gm_samples_to_gaussian_samples`` (Knothe-Rosenblatt kernels composed with the
  eigen-rotation computed here), ``gm_to_sample`` / ``gm_sample`` / ``gm_to_model_output``
  (random numbers drawn here with torch from the caller's ``generator``, passed to the
  kernel). Where a call needs what a kernel does not provide (gradients through sampling
  or transport, mixed dtypes, layouts outside the op's), these functions run the
  reference instead, with the same semantics.
- Every other op is the pure-PyTorch reference (``gmflow.reference``) re-exported here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _validation, config
from ._validation import GMFlowInputError
from .types import GaussianMixture, GaussianMixtureCov, IsoGaussian

from .reference import algebra as _ref_algebra
from .reference import flow as _ref_flow
from .reference import gm1d as _ref_gm1d
from .reference import transport as _ref_transport
from .types import GaussianMixture1D

# Reference-only ops, re-exported with the same API as the native ones.
from .reference.algebra import (
    gaussian_mul_gaussian,
    gm_cov_logprob,
    gm_entropy,
    gm_kl_div,
    gm_mul_gaussian,
    gm_mul_gm,
    gm_temperature,
    gm_to_gaussian,
    gm_transpose_t_first,
    iso_gaussian_logprob,
    iso_gaussian_mul_iso_gaussian,
    psd_inverse,
)
from .reference.flow import (
    TransitionCoefficients,
    denoising_gm_convert_to_mean,
    forward_transition,
    inverse_hartley2,
    reverse_transition,
    reverse_transition_coefficients,
    sample_forward_diffusion,
    sample_forward_transition,
    spectral_gaussian_field,
    u_to_x_0,
)
from .reference.gm1d import gm1d_moments, gm1d_pdf_cdf
from .reference.transport import gm_kr_slice, gm_spectral_logprobs, hartley2

NATIVE_OPS = (
    "gm_logprob",
    "gm_to_mean",
    "gm_to_iso_gaussian",
    "gm_mul_iso_gaussian",
    "gm_posterior_mean",
    "gm1d_inverse_cdf",
    "gaussian_samples_to_gm_samples",
    "gm_samples_to_gaussian_samples",
    "gm_to_sample",
    "gm_sample",
)

__all__ = [
    "GMFlowInputError",
    "NATIVE_OPS",
    # native kernels
    "gm_logprob",
    "gm_to_mean",
    "gm_to_iso_gaussian",
    # §1 algebra
    "psd_inverse",
    "gm_to_gaussian",
    "gm_mul_iso_gaussian",
    "iso_gaussian_mul_iso_gaussian",
    "gaussian_mul_gaussian",
    "gm_mul_gaussian",
    "gm_mul_gm",
    "gm_to_sample",
    "iso_gaussian_logprob",
    "gm_cov_logprob",
    "gm_kl_div",
    "gm_entropy",
    "gm_temperature",
    "gm_transpose_t_first",
    # §2 1-D mixtures
    "gm1d_pdf_cdf",
    "gm1d_moments",
    "gm1d_inverse_cdf",
    # §3 Knothe-Rosenblatt transport
    "gm_kr_rotation",
    "gm_samples_to_gaussian_samples",
    "gaussian_samples_to_gm_samples",
    "gm_kr_slice",
    "hartley2",
    "gm_spectral_logprobs",
    # §4 flow-level
    "sample_forward_diffusion",
    "forward_transition",
    "sample_forward_transition",
    "u_to_x_0",
    "TransitionCoefficients",
    "reverse_transition_coefficients",
    "reverse_transition",
    "denoising_gm_convert_to_mean",
    "gm_posterior_mean",
    "inverse_hartley2",
    "spectral_gaussian_field",
    "gm_sample",
    "gm_to_model_output",
]


def _should_check_values(t: Tensor) -> bool:
    mode = config.value_checks()
    if mode == "never" or torch.compiler.is_compiling():
        return False
    return mode == "always" or t.device.type == "cpu"


def _check_no_nan(op: str, output: Tensor, inputs: dict[str, Tensor]) -> None:
    """Raises if ``output`` has NaN, naming the input that caused it."""
    if not _should_check_values(output) or not torch.isnan(output).any():
        return
    for name, t in inputs.items():
        if torch.isnan(t).any():
            raise GMFlowInputError(f"{op}(): '{name}' contains NaN")
    for name, t in inputs.items():
        if not torch.isfinite(t).all():
            raise GMFlowInputError(f"{op}(): '{name}' contains infinite values that produced NaN")
    raise GMFlowInputError(f"{op}(): produced NaN from finite inputs; please report this as a gmflow bug")


def _as_iso_layout(gm: GaussianMixture | GaussianMixtureCov) -> tuple[Tensor, Tensor]:
    """(means (..., K, C, H, W), logweights (..., K, 1, H, W)) of either GM layout."""
    if isinstance(gm, GaussianMixtureCov):
        return gm.means.movedim(-1, -3), gm.logweights.unsqueeze(-3)
    return gm.means, gm.logweights


def gm_logprob(gm: GaussianMixture, samples: Tensor) -> Tensor:
    """Log density of ``samples (..., N, C, H, W)`` per pixel, summed over channels: ``(..., N, H, W)``.

    Includes the ``-C/2 log 2pi`` constant. Differentiable w.r.t. the GM and the samples;
    the native kernels loop over K with an online logsumexp (no ``(N, K, C, H, W)`` tensor).
    """
    out = torch.ops.gmflow.gm_logprob(gm.means, gm.logstds, gm.logweights, samples)
    _check_no_nan("gm_logprob", out, {"means": gm.means, "logstds": gm.logstds, "logweights": gm.logweights,
                                       "samples": samples})
    return out


def gm_to_mean(gm: GaussianMixture | GaussianMixtureCov, power: float = 1.0) -> Tensor:
    """Mean of the GM, ``sum_k softmax_k(power * logweights) mu_k``: ``(..., C, H, W)``.

    ``power != 1`` sharpens (``> 1``) or flattens (``< 1``) the weights. Differentiable.
    """
    means, logweights = _as_iso_layout(gm)
    out = torch.ops.gmflow.gm_to_mean(means, logweights, float(power))
    _check_no_nan("gm_to_mean", out, {"means": means, "logweights": logweights})
    return out


def gm_to_iso_gaussian(gm: GaussianMixture) -> IsoGaussian:
    """Moment-matched isotropic Gaussian per pixel: mean ``(..., C, H, W)``, var ``(..., 1, H, W)``.

    ``var = mean_c sum_k w_k (mu_kc - m_c)^2 + s^2``. Differentiable.
    """
    mean, var = torch.ops.gmflow.gm_to_iso_gaussian(gm.means, gm.logstds, gm.logweights)
    _check_no_nan("gm_to_iso_gaussian", var, {"means": gm.means, "logstds": gm.logstds,
                                               "logweights": gm.logweights})
    return IsoGaussian(mean, var)


# ------------------------------------------------------------------------------------------------
# Sampling path: native kernels behind the reference signatures


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _same_dtype(*tensors: Tensor) -> bool:
    return all(t.dtype == tensors[0].dtype for t in tensors)


def _broadcast_view(t: Tensor, batch: torch.Size, inner: int) -> Tensor:
    """``t (full_batch..., *inner dims)`` whose values repeat along broadcast dims, as ``batch + inner``."""
    lead = t.dim() - inner - len(batch)
    index = [0] * lead + [slice(0, 1) if b == 1 else slice(None) for b in batch] + [slice(None)] * inner
    return t[tuple(index)]


def gm_mul_iso_gaussian(
    gm: GaussianMixture,
    gaussian: IsoGaussian,
    gm_power: float = 1.0,
    gaussian_power: float = 1.0,
    eps: float = 1e-6,
) -> GaussianMixture:
    """Normalised product ``GM(x) * G(x)^r``, ``r = gaussian_power / gm_power``, per component (spec §1.5).

    With ``v = s^2`` and ``n = max(v_g + r v, eps)``: ``mu'_k = (v_g mu_k + r v m_g) / n``;
    ``lambda' = log_softmax_K(lambda_k - r/2 sum_c (mu_kc - m_gc)^2 / n)``;
    ``logstd' = logstd + 1/2 log v_g - 1/2 log n``. ``gaussian.var`` ``(..., 1, 1, 1)`` keeps a shared
    std; ``(..., 1, H, W)`` gives per-component logstds ``(..., K, 1, H, W)``. One pass over K per
    pixel (native kernel); same semantics as :func:`gmflow.reference.algebra.gm_mul_iso_gaussian`.
    """
    _ref_algebra._check_gm(gm)
    _ref_algebra._check_channels(gaussian.mean, gm.means.shape[-3], "gaussian.mean")
    if gm_power == 0:
        raise ValueError("gm_power must be non-zero")
    means, logstds, logweights = gm
    mean_g, var_g = gaussian
    K, C, H, W = means.shape[-4:]
    native = (
        _same_dtype(means, logstds, logweights, mean_g, var_g)
        and not _needs_grad(*gm, *gaussian)
        and mean_g.shape[-2:] == (H, W)
        and var_g.dim() >= 3
        and tuple(var_g.shape[-3:]) in ((1, 1, 1), (1, H, W))
        and logstds.shape[-3] == 1
    )
    if not native:
        return _ref_algebra.gm_mul_iso_gaussian(gm, gaussian, gm_power, gaussian_power, eps)
    out_means, out_logstds, out_logweights = torch.ops.gmflow.gm_mul_iso_gaussian(
        means, logstds, logweights, mean_g, var_g, float(gm_power), float(gaussian_power), float(eps)
    )
    # The reference's logstds have the batch of (logstds, var) only, and a per-pixel std is
    # expanded to the per-component layout.
    ls_batch = torch.broadcast_shapes(logstds.shape[:-4], var_g.shape[:-3])
    out_logstds = _broadcast_view(out_logstds, ls_batch, 4)
    if out_logstds.shape[-2:] != (1, 1) and out_logstds.shape[-4] == 1:
        out_logstds = out_logstds.expand(*out_logstds.shape[:-4], K, 1, *out_logstds.shape[-2:])
    _check_no_nan("gm_mul_iso_gaussian", out_logweights, {"means": means, "logstds": logstds,
                                                           "logweights": logweights, "gaussian.mean": mean_g,
                                                           "gaussian.var": var_g})
    return GaussianMixture(out_means, out_logstds, out_logweights)


def _batch_sigma(sigma: Tensor) -> Tensor | None:
    """A sigma broadcastable against data ``(..., C, H, W)`` as a batch-only tensor, or None if it varies
    over channels or pixels."""
    if sigma.dim() == 0:
        return sigma
    if sigma.dim() >= 3 and sigma.shape[-3:] == (1, 1, 1):
        return sigma.reshape(sigma.shape[:-3])
    return None


def gm_posterior_mean(
    gm: GaussianMixture,
    x_t: Tensor,
    x_t_src: Tensor,
    t=None,
    t_src=None,
    sigma_t_src=None,
    sigma_t=None,
    eps: float = 1e-6,
    prediction_type: str = "x0",
    num_timesteps: float = 1000.0,
) -> Tensor:
    """Posterior mean ``E[x_0 | x_t]`` of an x0-GM predicted at ``(x_t_src, t_src)`` (spec §4.5), ``(..., C, H, W)``.

    Natural-parameter form (both sigmas clamped at ``eps``): ``zeta = (alpha_t / sigma_t)^2 - (alpha_s /
    sigma_s)^2``, ``nu = alpha_t x_t / sigma_t^2 - alpha_s x_src / sigma_s^2``, ``den = max(s^2 zeta + 1, eps)``;
    ``mu'_k = (s^2 nu + mu_k) / den``, ``dlambda_k = sum_c mu_kc (nu_c - zeta mu_kc / 2) / den``; output
    ``sum_k softmax_K(lambda + dlambda)_k mu'_k``, fused in one pass over K per pixel (native kernel).
    Exactly ``gm_to_mean`` at ``t = t_src, x_t = x_src``. ``prediction_type='u'`` converts the u-GM with
    :func:`u_to_x_0` first. Differentiable w.r.t. the GM (native backward); gradients w.r.t. ``x_t``,
    ``x_t_src`` or the times use the reference. Same semantics as
    :func:`gmflow.reference.flow.gm_posterior_mean`.
    """
    F = _ref_flow
    names = ("x_t", "x_t_src", "t", "t_src", "sigma_t", "sigma_t_src")
    _ref_algebra._check_gm(gm)
    F._check_prediction_type(prediction_type)
    C = gm.means.shape[-3]
    _ref_algebra._check_channels(x_t, C, "x_t")
    _ref_algebra._check_channels(x_t_src, C, "x_t_src")
    dtype = gm.means.dtype
    native = (
        _same_dtype(*gm, x_t, x_t_src)
        and x_t.shape[-2:] == gm.means.shape[-2:]
        and x_t_src.shape[-2:] == gm.means.shape[-2:]
        and not _needs_grad(x_t, x_t_src, t, t_src, sigma_t, sigma_t_src)
    )
    if native:
        acc = _acc(dtype)
        s_src = _batch_sigma(F._sigma(t_src, sigma_t_src, x_t_src, acc, num_timesteps, (names[3], names[5])))
        s_tgt = _batch_sigma(F._sigma(t, sigma_t, x_t, acc, num_timesteps, (names[2], names[4])))
        native = s_src is not None and s_tgt is not None
    if not native:
        return F.gm_posterior_mean(gm, x_t, x_t_src, t, t_src, sigma_t_src, sigma_t, eps, prediction_type,
                                   num_timesteps)
    if prediction_type == "u":
        gm = u_to_x_0(gm, x_t_src, sigma=s_src.reshape(*s_src.shape, 1, 1, 1) if s_src.dim() else s_src, eps=eps)
        if not _same_dtype(*gm):
            gm = gm.map(lambda v: v.to(dtype))
    out = torch.ops.gmflow.gm_posterior_mean(*gm, x_t_src, x_t, s_src, s_tgt, float(eps))
    _check_no_nan("gm_posterior_mean", out, {"means": gm.means, "logstds": gm.logstds, "logweights": gm.logweights,
                                              "x_t": x_t, "x_t_src": x_t_src})
    return out


def gm1d_inverse_cdf(
    gm1d: GaussianMixture1D,
    scaled_cdfs: Tensor,
    n_steps: int = 8,
    eps: float = 1e-6,
    max_step_size: float = 1.5,
    gaussian_samples: Tensor | None = None,
) -> Tensor:
    """Solves ``scaled_cdf(x) = c`` for ``c = scaled_cdfs (..., N, H, W)`` by exactly ``n_steps`` clamped
    Newton steps from the moment-matched quantile (spec §2.2); ``(..., N, H, W)``.

    ``delta = clamp((F(x) - c) / (2 max(p(x), eps)), +-max_step_size * s)``. Differentiable w.r.t. the
    GM and ``scaled_cdfs`` by the implicit-function theorem at the returned root (native backward op,
    no unrolling). Same semantics as :func:`gmflow.reference.gm1d.gm1d_inverse_cdf`.
    """
    _ref_gm1d._check_gm1d(gm1d)
    _ref_gm1d._check_broadcast("gm1d_inverse_cdf", gm1d, scaled_cdfs, gaussian_samples)
    n_steps = _validation.check_steps("gm1d_inverse_cdf", n_steps)
    means, logstds, logweights = gm1d
    tensors = [means, logstds, logweights, scaled_cdfs] + ([gaussian_samples] if gaussian_samples is not None else [])
    common = _ref_algebra._result_dtype(*tensors)  # mixed dtypes: computed in their promotion
    tensors = [t if t.dtype == common else t.to(common) for t in tensors]
    H, W = tensors[3].shape[-2:]
    pixels_ok = all(tuple(t.shape[-2:]) in ((H, W), (1, 1)) for t in (means, logweights)) and (
        gaussian_samples is None or gaussian_samples.shape[-2:] == (H, W))
    if not pixels_ok:  # the op needs every operand on the samples' pixels
        return _ref_gm1d.gm1d_inverse_cdf(gm1d, scaled_cdfs, n_steps, eps, max_step_size, gaussian_samples)
    for i in (0, 2):
        if tensors[i].shape[-2:] != (H, W):
            tensors[i] = tensors[i].expand(*tensors[i].shape[:-2], H, W)
    g = tensors[4] if gaussian_samples is not None else None
    x = torch.ops.gmflow.gm1d_inverse_cdf(*tensors[:4], g, n_steps, float(eps), float(max_step_size))
    return x.to(_ref_algebra._result_dtype(means, scaled_cdfs))


def _kr_rotation(gm: GaussianMixture, axis_aligned: bool, work: torch.dtype) -> Tensor:
    """:func:`gmflow.reference.transport.gm_kr_rotation` of a GM with a shared std, computing the
    (pixel-averaged) moment-matched covariance with one contraction over (K, H, W) instead of a
    ``(..., K, H, W, C, C)`` intermediate."""
    with torch.no_grad():
        means, logstds, logweights = (t.detach().to(work) for t in gm)
        w = logweights.exp()  # (..., K, 1, H, W), as the reference: no renormalisation
        mean = (w * means).sum(dim=-4, keepdim=True)
        d = means - mean
        C, H, W = means.shape[-3:]
        eye = torch.eye(C, dtype=work, device=means.device)
        within = torch.exp(2 * logstds).reshape(*logstds.shape[:-4], 1, 1, 1, 1)
        if axis_aligned:
            cov = torch.einsum("...kchw,...kdhw->...cd", w * d, d).unsqueeze(-3).unsqueeze(-3) / (H * W)
        else:
            cov = torch.einsum("...kchw,...kdhw->...hwcd", w * d, d)
        cov = cov + within * eye
        return _ref_transport.rotation_from_covariance(cov)


def gm_kr_rotation(gm: GaussianMixture, axis_aligned: bool = True) -> Tensor:
    """Eigenvectors of the moment-matched covariance, columns by descending eigenvalue (spec §3.1).

    ``axis_aligned=True``: one rotation ``(..., 1, 1, C, C)`` from the covariance averaged over pixels;
    ``False``: one per pixel ``(..., H, W, C, C)``. Working dtype (fp32, fp64 for fp64 inputs), no grad;
    each eigenvector's largest-magnitude entry is positive. Same as
    :func:`gmflow.reference.transport.gm_kr_rotation`.
    """
    _ref_algebra._check_gm(gm)
    if gm.logstds.shape[-4:] != (1, 1, 1, 1):
        return _ref_transport.gm_kr_rotation(gm, axis_aligned)
    return _kr_rotation(gm, axis_aligned, _ref_algebra._work_dtype(*(t.dtype for t in gm)))


def _kr_setup(gm, samples, samples_name, n_axes, axis_aligned, rotation):
    """Checks (same messages as the reference), working dtype, rotation; returns None if the native
    kernel cannot serve the call (then the caller runs the reference)."""
    _ref_algebra._check_gm(gm)
    _ref_algebra._check_shared_logstds(gm)
    C = gm.means.shape[-3]
    _ref_transport._check_samples(samples, C, samples_name)
    A = _ref_transport._resolve_n_axes(n_axes, C)
    if _needs_grad(*gm, samples) or samples.shape[-2:] != gm.means.shape[-2:]:
        return None
    dtype = _ref_algebra._result_dtype(gm.means, samples)
    work = _ref_algebra._work_dtype(samples.dtype, *(t.dtype for t in gm))
    data = dtype if dtype in (torch.float16, torch.bfloat16) and _same_dtype(*gm, samples) else work
    if rotation is None:
        V = _kr_rotation(gm, axis_aligned, work)
    else:
        if rotation.dim() < 4 or rotation.shape[-2:] != (C, C):
            raise ValueError(f"rotation must have shape (..., 1|H, 1|W, C={C}, C={C}), got {tuple(rotation.shape)}")
        V = rotation.detach().to(work)
    if V.shape[-4:-2] not in ((1, 1), tuple(gm.means.shape[-2:])):
        return None
    gm_d = gm.map(lambda t: t if t.dtype == data else t.to(data))
    return gm_d, samples if samples.dtype == data else samples.to(data), V, A, dtype, work


def gaussian_samples_to_gm_samples(
    gm: GaussianMixture,
    gaussian_samples: Tensor,
    n_axes: int | None = None,
    n_steps: int = 16,
    eps: float = 1e-6,
    max_step_size: float = 1.5,
    axis_aligned: bool = True,
    rotation: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Knothe-Rosenblatt map N(0, I) -> GM (spec §3.4): standard normals ``(..., N, C, H, W)`` to GM samples.

    The eigen-rotation ``V`` (:func:`gm_kr_rotation`, or the given ``rotation``) is computed here; one
    native kernel launch then runs the whole per-pixel axis loop (conditional weights + ``n_steps``
    Newton steps per rotated axis) and rotates back, ``x = x~ V^T``. ``axis_aligned=True``: ``g`` is
    already in the rotated basis; ``False``: ``g~ = g V``. Axes ``>= n_axes`` are drawn from the GM
    conditioned on the first ``n_axes`` (component from ``torch.rand``, noise from ``torch.randn``, both
    from ``generator``). Needs a shared std. With gradients required w.r.t. the GM this runs the
    (differentiable) reference. Same semantics as
    :func:`gmflow.reference.transport.gaussian_samples_to_gm_samples`.
    """
    setup = _kr_setup(gm, gaussian_samples, "gaussian_samples", n_axes, axis_aligned, rotation)
    n_steps = _validation.check_steps("gaussian_samples_to_gm_samples", n_steps)
    if setup is None:
        return _ref_transport.gaussian_samples_to_gm_samples(
            gm, gaussian_samples, n_axes, n_steps, eps, max_step_size, axis_aligned, rotation, generator
        )
    gm_d, g, V, A, dtype, work = setup
    C = gm.means.shape[-3]
    if not axis_aligned:
        g = (g.to(work).movedim(-3, -1).unsqueeze(-2) @ V.unsqueeze(-5)).squeeze(-2).movedim(-1, -3).to(g.dtype)
    uniforms = None
    if A < C:
        rest = torch.randn(*g.shape[:-3], C - A, *g.shape[-2:], generator=generator, dtype=work, device=g.device)
        g = torch.cat([g[..., :A, :, :], rest.to(g.dtype)], dim=-3)
        uniforms = torch.rand(*g.shape[:-3], 1, *g.shape[-2:], generator=generator, dtype=work, device=g.device)
    x = torch.ops.gmflow.gm_kr_inverse(*gm_d, g, V, uniforms, A, n_steps, float(eps), float(max_step_size))
    return x.to(dtype)


def gm_samples_to_gaussian_samples(
    gm: GaussianMixture,
    samples: Tensor,
    n_axes: int | None = None,
    eps: float = 1e-6,
    axis_aligned: bool = True,
    rotation: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Knothe-Rosenblatt map GM -> N(0, I) (spec §3.2): ``samples (..., N, C, H, W)`` to standard normals.

    One native kernel launch computes, per pixel and rotated axis ``a < n_axes``,
    ``g_a = sqrt 2 erfinv(clamp(sum_k softmax(lambda - S_a / 2)_k erf(z_ka / sqrt 2), +-(1 - eps)))``.
    Axes ``>= n_axes`` get ``torch.randn`` from ``generator``. ``axis_aligned=True`` returns ``g`` in the
    rotated basis; ``False`` returns ``g V^T``. Needs a shared std. Same semantics as
    :func:`gmflow.reference.transport.gm_samples_to_gaussian_samples`.
    """
    setup = _kr_setup(gm, samples, "samples", n_axes, axis_aligned, rotation)
    if setup is None:
        return _ref_transport.gm_samples_to_gaussian_samples(gm, samples, n_axes, eps, axis_aligned, rotation,
                                                             generator)
    gm_d, x, V, A, dtype, work = setup
    C = gm.means.shape[-3]
    g = torch.ops.gmflow.gm_kr_forward(*gm_d, x, V, A, float(eps))
    if A < C or not axis_aligned:
        g = g.to(work)
    if A < C:
        extra = torch.randn(*g.shape[:-3], C - A, *g.shape[-2:], generator=generator, dtype=work, device=g.device)
        g = torch.cat([g, extra], dim=-3)
    if not axis_aligned:
        g = (g.movedim(-3, -1).unsqueeze(-2) @ V.transpose(-1, -2).unsqueeze(-5)).squeeze(-2).movedim(-1, -3)
    return g.to(dtype)


def _check_n_samples(op: str, n_samples) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise GMFlowInputError(f"{op}(): 'n_samples' must be a positive integer (the N of the samples' "
                               f"(..., N, C, H, W) layout); got {n_samples!r}")


def gm_to_sample(
    gm: GaussianMixture | GaussianMixtureCov,
    gm_power: float = 1.0,
    n_samples: int = 1,
    cov_sharpen: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral samples ``(..., N, C, H, W)`` (spec §1.10): a component per (sample, pixel), shared by the
    channels, drawn from ``softmax_K(gm_power * lambda)``, then ``mu_k + std_k * z`` (``std`` divided by
    ``sqrt(gm_power)`` when ``cov_sharpen``).

    Iso layout: ``torch.rand`` (component) then ``torch.randn`` (noise), both from ``generator``, feed the
    native ``gm_sample`` kernel. Covs layout, or gradients required: the reference
    (:func:`gmflow.reference.algebra.gm_to_sample`; same law, other random stream).
    """
    _check_n_samples("gm_to_sample", n_samples)
    if isinstance(gm, GaussianMixtureCov) or _needs_grad(*gm):
        return _ref_algebra.gm_to_sample(gm, gm_power, n_samples, cov_sharpen, generator)
    _ref_algebra._check_gm(gm)
    means = gm.means
    work = _ref_algebra._work_dtype(*(t.dtype for t in gm))
    gm_d = gm if _same_dtype(*gm) else gm.map(lambda t: t.to(work))
    batch = _ref_algebra._gm_batch_shape(gm)
    K, C, H, W = means.shape[-4:]
    acc = _acc(gm_d.means.dtype)
    uniforms = torch.rand(*batch, n_samples, 1, H, W, generator=generator, dtype=acc, device=means.device)
    normals = torch.randn(*batch, n_samples, C, H, W, generator=generator, dtype=acc, device=means.device)
    out = torch.ops.gmflow.gm_sample(*gm_d, uniforms, normals, float(gm_power), bool(cov_sharpen))
    return out.to(means.dtype)


def gm_sample(
    gm: GaussianMixture,
    power_spectrum: Tensor | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Samples ``(..., N, C, H, W)`` of the per-pixel GM, optionally spatially correlated (spec §4.6).

    Without a spectrum: :func:`gm_to_sample`, returns ``(samples, None)``. With a log power spectrum
    ``P (..., C, H, W)`` (W even): ``(g, S) = spectral_gaussian_field(P)`` (PyTorch FFT), then
    ``samples = gaussian_samples_to_gm_samples(gm, g, axis_aligned=True)`` (native KR); returns
    ``(samples, S)``. Every draw uses ``generator``.
    """
    _ref_algebra._check_gm(gm)
    _check_n_samples("gm_sample", n_samples)
    if power_spectrum is None:
        return gm_to_sample(gm, n_samples=n_samples, generator=generator), None
    _ref_flow.check_power_spectrum(gm, power_spectrum)
    if gm.means.shape[-2] * gm.means.shape[-1] == 0:
        raise GMFlowInputError(f"gm_sample(): spectral sampling needs a non-empty pixel grid (H, W >= 1 in the GM's "
                               f"(..., K, C, H, W) and the power spectrum's (..., C, H, W)); got means "
                               f"{list(gm.means.shape)}")
    field, spectral = spectral_gaussian_field(power_spectrum, n_samples, generator)
    samples = gaussian_samples_to_gm_samples(gm, field, axis_aligned=True, generator=generator)
    return samples.to(gm.means.dtype), spectral


def gm_to_model_output(
    gm: GaussianMixture,
    output_mode: str,
    power_spectrum: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x0 estimate ``(..., C, H, W)``: the GM mean (``'mean'``) or one (spectral) sample (``'sample'``)."""
    if output_mode == "mean":
        _ref_algebra._check_gm(gm)
        return gm_to_mean(gm)
    if output_mode == "sample":
        return gm_sample(gm, power_spectrum, n_samples=1, generator=generator)[0].squeeze(-4)
    raise ValueError(f"output_mode must be 'mean' or 'sample', got {output_mode!r}")
