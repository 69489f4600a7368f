"""Pure-PyTorch reference of the flow-level GM operations (docs/ops.md#flow-level-ops).

Rectified-flow schedule: ``sigma_t = t / T``, ``alpha_t = 1 - sigma_t``, ``x_t = alpha x_0 + sigma eps``,
velocity ``u = eps - x_0``. ``t`` is in T-units (``num_timesteps = T``, default 1000) and may be a
float, a 0-d tensor or a ``(B,)`` tensor (reshaped to ``(B, 1, 1, 1)`` against ``(B, C, H, W)``
data and unsqueezed at -4 against GM tensors). Explicit ``sigma`` arguments follow the same rule.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from gmflow._validation import GMFlowInputError
from gmflow.types import GaussianMixture, IsoGaussian, check_iso_gaussian

from .algebra import gm_to_sample
from .common import acc_dtype, check_channels, check_gm, gm_in_acc_dtype, result_dtype
from .density import gm_to_mean
from .transport import gaussian_samples_to_gm_samples

__all__ = [
    "TransitionCoefficients",
    "check_power_spectrum",
    "check_prediction_type",
    "denoising_gm_convert_to_mean",
    "forward_transition",
    "gm_posterior_mean",
    "gm_spectral_sample",
    "gm_to_model_output",
    "inverse_hartley2",
    "reverse_transition",
    "reverse_transition_coefficients",
    "sample_forward_diffusion",
    "sample_forward_transition",
    "sigma_from_time",
    "spectral_gaussian_field",
    "u_to_x_0",
]

_PREDICTION_TYPES = ("u", "x0")


def _as_time(value, ref: Tensor, work: torch.dtype) -> Tensor:
    """``value`` as a tensor broadcastable against ``ref (..., C, H, W)``; ``(B,)`` -> ``(B, 1, 1, 1)``."""
    v = torch.as_tensor(value, dtype=work, device=ref.device)
    if 0 < v.dim() < ref.dim():
        v = v.reshape(*v.shape, *([1] * (ref.dim() - v.dim())))
    return v


def sigma_from_time(t, sigma, ref: Tensor, work: torch.dtype, num_timesteps: float, names=("t", "sigma")) -> Tensor:
    """``sigma`` if given, else ``t / T``; ``names`` are the caller's argument names for the error."""
    if sigma is not None:
        return _as_time(sigma, ref, work)
    if t is None:
        raise ValueError(f"either {names[0]} or {names[1]} must be given")
    return _as_time(t, ref, work) / num_timesteps


def _gm_dim(v: Tensor) -> Tensor:
    """Inserts the K dim (-4) so data-shaped tensors broadcast against GM tensors; 0-d passes through."""
    return v.unsqueeze(-4) if v.dim() > 0 else v


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {_PREDICTION_TYPES}, got {prediction_type!r}")


# ----------------------------------------------------------------------------------------
# docs/ops.md#forward-process, docs/ops.md#u_to_x_0


def sample_forward_diffusion(
    x_0: Tensor, t, noise: Tensor, num_timesteps: float = 1000.0
) -> tuple[Tensor, Tensor, Tensor]:
    """``x_t = (1 - sigma) x_0 + sigma noise`` with ``sigma = t / T``; returns ``(x_t, alpha, sigma)``."""
    work = acc_dtype(x_0.dtype, noise.dtype)
    sigma = _as_time(t, x_0, work) / num_timesteps
    alpha = 1 - sigma
    x_t = alpha * x_0.to(work) + sigma * noise.to(work)
    return x_t.to(x_0.dtype), alpha.to(x_0.dtype), sigma.to(x_0.dtype)


def forward_transition(x_src: Tensor, t_src, t_tgt, eps: float = 1e-6, num_timesteps: float = 1000.0) -> IsoGaussian:
    """Gaussian ``q(x_tgt | x_src)`` for ``t_tgt >= t_src``: mean ``a x_src``, var ``max(sigma_t^2 - (a sigma_s)^2, 0)``.

    ``a = alpha_t / max(alpha_s, eps)``; var has shape ``(..., 1, 1, 1)``.
    """
    work = acc_dtype(x_src.dtype)
    sigma_s = _as_time(t_src, x_src, work) / num_timesteps
    sigma_t = _as_time(t_tgt, x_src, work) / num_timesteps
    a = (1 - sigma_t) / torch.clamp_min(1 - sigma_s, eps)
    var = torch.clamp_min(sigma_t.square() - (a * sigma_s).square(), 0)
    mean = a * x_src.to(work)
    var = var.expand(*x_src.shape[:-3], 1, 1, 1)
    return IsoGaussian(mean.to(x_src.dtype), var.to(x_src.dtype))


def sample_forward_transition(
    x_src: Tensor, noise: Tensor, t_src, t_tgt, eps: float = 1e-6, num_timesteps: float = 1000.0
) -> Tensor:
    """Sample of :func:`forward_transition`: ``mean + noise sqrt(var)``."""
    work = acc_dtype(x_src.dtype, noise.dtype)
    g = forward_transition(x_src.to(work), t_src, t_tgt, eps, num_timesteps)
    return (g.mean + noise.to(work) * g.var.sqrt()).to(x_src.dtype)


def u_to_x_0(
    out: GaussianMixture | IsoGaussian | Tensor,
    x_t: Tensor,
    t=None,
    sigma=None,
    eps: float = 1e-6,
    num_timesteps: float = 1000.0,
):
    """Velocity prediction -> x0 prediction through ``x_0 = x_t - sigma u``.

    GM: ``means = x_t - sigma means_u``, ``logstds = logstds_u + log max(sigma, eps)``, logweights kept.
    IsoGaussian: ``mean = x_t - sigma mean_u``, ``var = var_u sigma^2``. Tensor: ``x_t - sigma u``.
    ``sigma`` (float, ``(B,)`` or broadcastable to ``x_t``) overrides ``t / T``.
    """
    if isinstance(out, GaussianMixture):
        check_gm(out, "out")
        check_channels(x_t, out.means.shape[-3], "x_t")
        gm, dtype = gm_in_acc_dtype(out)
        work = acc_dtype(gm.means.dtype, x_t.dtype)
        gm = gm.map(lambda v: v.to(work))
        s = _gm_dim(sigma_from_time(t, sigma, x_t, work, num_timesteps))
        means = x_t.to(work).unsqueeze(-4) - s * gm.means
        logstds = gm.logstds + torch.log(torch.clamp_min(s, eps))
        return GaussianMixture(means.to(dtype), logstds.to(dtype), out.logweights)
    if isinstance(out, IsoGaussian):
        check_iso_gaussian("u_to_x_0()", "out", out)
        dtype = out.mean.dtype
        work = acc_dtype(dtype, out.var.dtype, x_t.dtype)
        s = sigma_from_time(t, sigma, x_t, work, num_timesteps)
        mean = x_t.to(work) - s * out.mean.to(work)
        var = out.var.to(work) * s.square()
        return IsoGaussian(mean.to(dtype), var.to(dtype))
    if isinstance(out, Tensor):
        work = acc_dtype(out.dtype, x_t.dtype)
        s = sigma_from_time(t, sigma, x_t, work, num_timesteps)
        return (x_t.to(work) - s * out.to(work)).to(out.dtype)
    raise TypeError(f"out must be a GaussianMixture, IsoGaussian or Tensor, got {type(out).__name__}")


# ----------------------------------------------------------------------------------------
# docs/ops.md#reverse_transition


class TransitionCoefficients(NamedTuple):
    """``q(x_low | x_high, x_0) = N(c1 x_high + c2 x_0, c3)``; all broadcastable against data."""

    c1: Tensor
    c2: Tensor
    c3: Tensor
    beta_bar: Tensor
    sigma_high: Tensor
    sigma_low: Tensor


def reverse_transition_coefficients(
    t_low, t_high, ref: Tensor, eps: float = 1e-6, num_timesteps: float = 1000.0
) -> TransitionCoefficients:
    """Coefficients of the Gaussian posterior ``q(x_low | x_high, x_0)`` (shapes broadcast against ``ref``).

    ``rho = sigma' / max(sigma, eps)``, ``kappa = alpha / max(alpha', eps)``, ``beta_bar = 1 - (rho kappa)^2``,
    ``c1 = rho^2 kappa``, ``c2 = beta_bar alpha'``, ``c3 = beta_bar sigma'^2``
    (identities: ``c1 alpha + c2 = alpha'``, ``c1^2 sigma^2 + c3 = sigma'^2``).
    """
    work = acc_dtype(ref.dtype)
    sigma = _as_time(t_high, ref, work) / num_timesteps
    sigma_low = _as_time(t_low, ref, work) / num_timesteps
    alpha, alpha_low = 1 - sigma, 1 - sigma_low
    rho = sigma_low / torch.clamp_min(sigma, eps)
    kappa = alpha / torch.clamp_min(alpha_low, eps)
    beta_bar = 1 - (rho * kappa).square()
    return TransitionCoefficients(
        c1=rho.square() * kappa,
        c2=beta_bar * alpha_low,
        c3=beta_bar * sigma_low.square(),
        beta_bar=beta_bar,
        sigma_high=sigma,
        sigma_low=sigma_low,
    )


def reverse_transition(
    out: GaussianMixture | Tensor,
    x_high: Tensor,
    t_low,
    t_high,
    eps: float = 1e-6,
    prediction_type: str = "u",
    num_timesteps: float = 1000.0,
    generator: torch.Generator | None = None,
) -> GaussianMixture | Tensor:
    """Distribution (GM) or sample (tensor) of ``x_low`` given ``x_high``, from a u- or x0-prediction.

    GM ('u'): ``means = c1 x + c2 (x - sigma mu_u)``,
    ``logstd' = 1/2 logaddexp(2 (logstd_u + log max(sigma c2, eps)), log max(c3, eps))``;
    GM ('x0'): ``means = c1 x + c2 mu``, ``logstd' = 1/2 logaddexp(2 (logstd + log max(c2, eps)), log max(c3, eps))``;
    logweights unchanged (differentiable w.r.t. means and logstds). Tensor: ``x_low = c1 x + c2 x0_hat
    + sqrt(beta_bar) sigma' randn`` (``randn`` from ``generator``).

    Upstream difference: ``beta_bar`` is clamped at 0 inside the sqrt of the sample case (rounding
    can make it ~-1e-16 at ``t_low = t_high``).
    """
    check_prediction_type(prediction_type)
    if isinstance(out, GaussianMixture):
        check_gm(out, "out")
        check_channels(x_high, out.means.shape[-3], "x_high")
        gm, dtype = gm_in_acc_dtype(out)
        work = acc_dtype(gm.means.dtype, x_high.dtype)
        means, logstds, _ = (v.to(work) for v in gm)
        x = x_high.to(work)
        co = reverse_transition_coefficients(t_low, t_high, x, eps, num_timesteps)
        c1, c2, c3, sigma = (_gm_dim(v) for v in (co.c1, co.c2, co.c3, co.sigma_high))
        x = x.unsqueeze(-4)
        if prediction_type == "u":
            out_means = c1 * x + c2 * (x - sigma * means)
            scale = sigma * c2
        else:
            out_means = c1 * x + c2 * means
            scale = c2
        out_logstds = 0.5 * torch.logaddexp(
            2 * (logstds + torch.log(torch.clamp_min(scale, eps))), torch.log(torch.clamp_min(c3, eps))
        )
        return GaussianMixture(out_means.to(dtype), out_logstds.to(dtype), out.logweights)
    if isinstance(out, Tensor):
        dtype = out.dtype
        work = acc_dtype(dtype, x_high.dtype)
        x = x_high.to(work)
        co = reverse_transition_coefficients(t_low, t_high, x, eps, num_timesteps)
        x0 = x - co.sigma_high * out.to(work) if prediction_type == "u" else out.to(work)
        noise = torch.randn(x.shape, generator=generator, dtype=work, device=x.device)
        std = torch.clamp_min(co.beta_bar, 0).sqrt() * co.sigma_low
        return (co.c1 * x + co.c2 * x0 + std * noise).to(dtype)
    raise TypeError(f"out must be a GaussianMixture or Tensor, got {type(out).__name__}")


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_posterior_mean posterior mean


def _posterior_setup(gm, x_t, x_t_src, t, t_src, sigma_t, sigma_t_src, eps, prediction_type, num_timesteps, names):
    """Validates, casts to the working dtype and converts a u-prediction to x0; ``names`` (for errors)
    are the caller's ``(x_t, x_t_src, t, t_src, sigma_t, sigma_t_src)`` argument names."""
    check_gm(gm)
    check_prediction_type(prediction_type)
    check_channels(x_t, gm.means.shape[-3], names[0])
    check_channels(x_t_src, gm.means.shape[-3], names[1])
    dtype = result_dtype(gm.means, x_t)
    work = acc_dtype(x_t.dtype, x_t_src.dtype, *(v.dtype for v in gm))
    gm = gm.map(lambda v: v.to(work))
    x_t, x_t_src = x_t.to(work), x_t_src.to(work)
    s_src = sigma_from_time(t_src, sigma_t_src, x_t_src, work, num_timesteps, (names[3], names[5]))
    s_tgt = sigma_from_time(t, sigma_t, x_t, work, num_timesteps, (names[2], names[4]))
    if prediction_type == "u":
        gm = u_to_x_0(gm, x_t_src, sigma=s_src, eps=eps)
    return gm, x_t, x_t_src, s_tgt, s_src, dtype


def _normaliser_terms(gm, sq_terms, log_norm):
    """Logit terms ``sq_terms - C/2 log_norm`` of the per-component normaliser; 0 for a shared std
    (they are k-independent then and cancel in the softmax, so skipping them avoids rounding)."""
    if gm.logstds.shape[-4] == 1:
        return 0
    C = gm.means.shape[-3]
    return sq_terms - 0.5 * C * log_norm


def denoising_gm_convert_to_mean(
    gm_src: GaussianMixture,
    x_t_tgt: Tensor,
    x_t_src: Tensor,
    t_tgt=None,
    t_src=None,
    sigma_src=None,
    sigma_tgt=None,
    eps: float = 1e-6,
    prediction_type: str = "x0",
    num_timesteps: float = 1000.0,
) -> Tensor:
    """Posterior mean ``E[x_0 | x_t_tgt]`` of an x0-GM predicted at ``(x_t_src, t_src)``, Gaussian-ratio form.

    The ratio ``N(x_t; alpha_t x_0, sigma_t^2) / N(x_src; alpha_s x_0, sigma_s^2)`` is the Gaussian
    ``N(x_0; m_g, v_g)`` with ``D = max((alpha_t sigma_s)^2 - (alpha_s sigma_t)^2, eps)``,
    ``m_g = (alpha_t sigma_s^2 x_t - alpha_s sigma_t^2 x_src) / D``, ``v_g = (sigma_t sigma_s)^2 / D``;
    then with ``n = max(v_g + s^2, eps)``: ``mu'_k = (v_g mu_k + s^2 m_g) / n``,
    ``pi = softmax_K(lambda_k - 1/2 |mu_k - m_g|^2 / n)``, output ``sum_k pi_k mu'_k (..., C, H, W)``.
    Valid for ``t_tgt < t_src``; prefer the better-conditioned :func:`gm_posterior_mean`.

    Upstream difference: per-component stds get their k-dependent normaliser
    ``-C/2 log n_k`` (upstream assumed a shared std); nothing is cached into ``gm_src``.
    """
    gm, x_t, x_src, s_t, s_s, dtype = _posterior_setup(
        gm_src,
        x_t_tgt,
        x_t_src,
        t_tgt,
        t_src,
        sigma_tgt,
        sigma_src,
        eps,
        prediction_type,
        num_timesteps,
        ("x_t_tgt", "x_t_src", "t_tgt", "t_src", "sigma_tgt", "sigma_src"),
    )
    a_t, a_s = 1 - s_t, 1 - s_s
    den = torch.clamp_min((a_t * s_s).square() - (a_s * s_t).square(), eps)
    mean_g = _gm_dim((a_t * s_s.square() * x_t - a_s * s_t.square() * x_src) / den)
    var_g = _gm_dim((s_t * s_s).square() / den)
    var = gm.variances
    norm = torch.clamp_min(var_g + var, eps)
    means = (var_g * gm.means + var * mean_g) / norm
    logits = gm.logweights - 0.5 * (gm.means - mean_g).square().sum(dim=-3, keepdim=True) / norm
    logits = logits + _normaliser_terms(gm, 0.0, torch.log(norm))
    weights = torch.softmax(logits, dim=-4)
    return (weights * means).sum(dim=-4).to(dtype)


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
    """Posterior mean ``E[x_0 | x_t]`` of an x0-GM predicted at ``(x_t_src, t_src)``, natural-parameter form.

    Both sigmas clamped at ``eps``; ``zeta = (alpha_t / sigma_t)^2 - (alpha_s / sigma_s)^2``,
    ``nu = alpha_t x_t / sigma_t^2 - alpha_s x_src / sigma_s^2``, ``den = max(s^2 zeta + 1, eps)``:
    ``mu'_k = (s^2 nu + mu_k) / den``, ``dlambda_k = sum_c mu_kc (nu_c - zeta mu_kc / 2) / den``,
    output ``sum_k softmax_K(lambda + dlambda)_k mu'_k (..., C, H, W)``. Exactly ``gm_to_mean`` at
    ``t = t_src, x_t = x_src`` (``zeta = nu = 0``). Equals :func:`denoising_gm_convert_to_mean`
    away from the clamps.

    Upstream difference: per-component stds get their k-dependent normaliser terms
    ``sum_c s_k^2 nu_c^2 / (2 den_k) - C/2 log den_k`` (upstream assumed a shared std).
    """
    gm, x_t, x_src, s_t, s_s, dtype = _posterior_setup(
        gm,
        x_t,
        x_t_src,
        t,
        t_src,
        sigma_t,
        sigma_t_src,
        eps,
        prediction_type,
        num_timesteps,
        ("x_t", "x_t_src", "t", "t_src", "sigma_t", "sigma_t_src"),
    )
    s_t, s_s = torch.clamp_min(s_t, eps), torch.clamp_min(s_s, eps)
    a_t, a_s = 1 - s_t, 1 - s_s
    zeta = _gm_dim((a_t / s_t).square() - (a_s / s_s).square())
    nu = _gm_dim(a_t * x_t / s_t.square() - a_s * x_src / s_s.square())
    var = gm.variances
    den = torch.clamp_min(var * zeta + 1, eps)
    means = (var * nu + gm.means) / den
    delta = (gm.means * (nu - 0.5 * zeta * gm.means)).sum(dim=-3, keepdim=True) / den
    sq_terms = 0.5 * var * nu.square().sum(dim=-3, keepdim=True) / den
    logits = gm.logweights + delta + _normaliser_terms(gm, sq_terms, torch.log(den))
    weights = torch.softmax(logits, dim=-4)
    return (weights * means).sum(dim=-4).to(dtype)


# ----------------------------------------------------------------------------------------
# docs/sampling.md#spectral-sampling, docs/ops.md#gm_to_model_output sampling


def inverse_hartley2(spectral: Tensor) -> Tensor:
    """Inverse orthonormal 2-D Hartley transform over (H, W) through ``irfft2``; W must be even.

    With ``S_rev[k, l] = S[-k mod H, -l mod W]`` the Fourier half-spectrum is
    ``(S + S_rev) / 2 + i (S - S_rev) / 2`` on the first ``W // 2 + 1`` columns; ``irfft2``
    (ortho) of it is the real field ``g`` with ``Re fft2(g) + Im fft2(g) = S``.
    """
    H, W = spectral.shape[-2:]
    if W % 2:
        raise ValueError(f"spectral width W must be even for the irfft2 construction, got W={W}")
    dtype = spectral.dtype
    s = spectral.to(acc_dtype(dtype))
    s_rev = torch.roll(torch.flip(s, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    half = W // 2 + 1
    spectrum = torch.complex(0.5 * (s + s_rev)[..., :half], 0.5 * (s - s_rev)[..., :half])
    return torch.fft.irfft2(spectrum, s=(H, W), norm="ortho").to(dtype)


def spectral_gaussian_field(
    log_power_spectrum: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Spatially correlated standard-normal-ish field from a log power spectrum ``P (..., C, H, W)``.

    ``S = randn(..., N, C, H, W) * exp(P / 2)`` (Hartley coefficients with variance ``e^P``, drawn
    in fp32/fp64 from ``generator``), ``g = inverse_hartley2(S)``. Per-pixel variance averages
    ``mean(e^P)`` (1 for a normalised spectrum); ``P = 0`` gives i.i.d. N(0, 1) pixels.
    Returns ``(g, S)``, both ``(..., N, C, H, W)``. W must be even (ValueError otherwise).
    """
    if log_power_spectrum.dim() < 3:
        raise ValueError(f"log_power_spectrum must have shape (..., C, H, W), got {tuple(log_power_spectrum.shape)}")
    H, W = log_power_spectrum.shape[-2:]
    if H * W == 0:
        raise GMFlowInputError(f"spectral_gaussian_field(): 'log_power_spectrum' (..., C, H, W) needs a non-empty "
                               f"pixel grid (H, W >= 1); got {list(log_power_spectrum.shape)}")
    if W % 2:
        raise ValueError(f"log_power_spectrum width W must be even for spectral sampling, got W={W}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    log_power = log_power_spectrum.to(acc_dtype(log_power_spectrum.dtype)).unsqueeze(-4)
    shape = (*log_power.shape[:-4], n_samples, *log_power.shape[-3:])
    noise = torch.randn(shape, generator=generator, dtype=log_power.dtype, device=log_power.device)
    spectral = noise * torch.exp(0.5 * log_power)
    if spectral.numel() == 0:  # an empty batch or no channel: nothing to transform (the FFT refuses it)
        return spectral.clone(), spectral
    return inverse_hartley2(spectral), spectral


def check_power_spectrum(gm: GaussianMixture, power_spectrum: Tensor) -> None:
    """A log power spectrum for spectral sampling must be ``(..., C, H, W)`` like the GM's data."""
    C, H, W = gm.means.shape[-3:]
    if power_spectrum.shape[-3:] != (C, H, W):
        raise ValueError(
            f"power_spectrum must have shape (..., C={C}, H={H}, W={W}), got {tuple(power_spectrum.shape)}"
        )


def gm_spectral_sample(
    gm: GaussianMixture,
    power_spectrum: Tensor | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Samples ``(..., N, C, H, W)`` of the per-pixel GM, spatially correlated by a power spectrum if one is given.

    Without a spectrum: ancestral sampling (:func:`gm_to_sample`), returns ``(samples, None)``.
    With a log power spectrum ``P (..., C, H, W)``: ``(g, S) = spectral_gaussian_field(P)``, then
    ``samples = gaussian_samples_to_gm_samples(gm, g, axis_aligned=True)`` (channel c of ``g`` is
    principal axis c); returns ``(samples, S)``. Every draw uses ``generator``.

    Upstream difference: the generator also drives component/ancestral draws (upstream only
    seeded the spectral noise).
    """
    check_gm(gm)
    if power_spectrum is None:
        return gm_to_sample(gm, n_samples=n_samples, generator=generator), None
    check_power_spectrum(gm, power_spectrum)
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
        check_gm(gm)
        return gm_to_mean(gm.means, gm.logweights)
    if output_mode == "sample":
        return gm_spectral_sample(gm, power_spectrum, n_samples=1, generator=generator)[0].squeeze(-4)
    raise ValueError(f"output_mode must be 'mean' or 'sample', got {output_mode!r}")
