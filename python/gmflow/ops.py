"""Typed Python API of every GM operation (OPS_AND_SAMPLERS.md §1-§4).

Functions here take and return the containers of :mod:`gmflow.types`.

- Native-kernel ops (``gm_logprob``, ``gm_to_mean``, ``gm_to_iso_gaussian``) dispatch
  to ``torch.ops.gmflow.*``: the native CPU/CUDA kernel where loaded, the
  pure-PyTorch reference otherwise.
- Every other op is the pure-PyTorch reference (``gmflow.reference``) re-exported
  here; later releases move them onto native kernels behind the same signatures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import config
from ._validation import GMFlowInputError
from .types import GaussianMixture, GaussianMixtureCov, IsoGaussian

# Reference-only ops, re-exported with the same API as the native ones.
from .reference.algebra import (
    gaussian_mul_gaussian,
    gm_cov_logprob,
    gm_entropy,
    gm_kl_div,
    gm_mul_gaussian,
    gm_mul_gm,
    gm_mul_iso_gaussian,
    gm_temperature,
    gm_to_gaussian,
    gm_to_sample,
    gm_transpose_t_first,
    iso_gaussian_logprob,
    iso_gaussian_mul_iso_gaussian,
    psd_inverse,
)
from .reference.flow import (
    TransitionCoefficients,
    denoising_gm_convert_to_mean,
    forward_transition,
    gm_posterior_mean,
    gm_sample,
    gm_to_model_output,
    inverse_hartley2,
    reverse_transition,
    reverse_transition_coefficients,
    sample_forward_diffusion,
    sample_forward_transition,
    spectral_gaussian_field,
    u_to_x_0,
)
from .reference.gm1d import gm1d_inverse_cdf, gm1d_moments, gm1d_pdf_cdf
from .reference.transport import (
    gaussian_samples_to_gm_samples,
    gm_kr_rotation,
    gm_kr_slice,
    gm_samples_to_gaussian_samples,
    gm_spectral_logprobs,
    hartley2,
)

NATIVE_OPS = ("gm_logprob", "gm_to_mean", "gm_to_iso_gaussian")

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
