"""Pure-PyTorch reference of the 1-D GM pdf/cdf and the Newton inverse CDF (docs/ops.md#one-dimensional-mixtures).

A 1-D GM (:class:`gmflow.types.GaussianMixture1D`) has means/logweights ``(..., K, H, W)`` and
one std ``logstds (..., 1, 1, 1)``; samples are ``(..., N, H, W)``. The GM tensors are
unsqueezed at dim -4 to broadcast against the sample dim, so a GM whose batch already holds
the sample dim (per-sample logweights ``(..., N, K, H, W)`` with samples ``(..., N, 1, H, W)``,
as in KR transport) works too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow._validation import GMFlowInputError, check_floating, check_steps
from gmflow.types import GaussianMixture1D

from .common import acc_dtype, result_dtype

__all__ = ["check_gm1d", "gm1d_inverse_cdf", "gm1d_moments", "gm1d_pdf_cdf"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)
_SQRT_2 = math.sqrt(2.0)


def check_gm1d(gm1d) -> None:
    if not isinstance(gm1d, GaussianMixture1D):
        raise TypeError(f"gm1d must be a GaussianMixture1D, got {type(gm1d).__name__}")
    for part, t in zip(("means", "logstds", "logweights"), gm1d):
        check_floating(f"gm1d.{part}", t)
    means, logstds, logweights = gm1d
    if means.dim() < 3 or logweights.dim() < 3 or logweights.shape[-3] != means.shape[-3]:
        raise ValueError(
            f"gm1d.means and gm1d.logweights must have shape (..., K, H, W) with the same K, "
            f"got {tuple(means.shape)} and {tuple(logweights.shape)}"
        )
    if logstds.dim() < 3 or logstds.shape[-3:] != (1, 1, 1):
        raise ValueError(f"gm1d.logstds must have shape (..., 1, 1, 1), got {tuple(logstds.shape)}")


def check_broadcast(op: str, gm1d, scaled_cdfs: Tensor, gaussian_samples: Tensor | None) -> None:
    """The dims of the GM and the samples other than -3 (K, N) broadcast, as the solver needs."""
    named = {"gm1d.means": gm1d.means, "gm1d.logweights": gm1d.logweights, "scaled_cdfs": scaled_cdfs}
    if gaussian_samples is not None:
        named["gaussian_samples"] = gaussian_samples
    check_floating("scaled_cdfs", scaled_cdfs)
    if gaussian_samples is not None:
        check_floating("gaussian_samples", gaussian_samples)
    if scaled_cdfs.dim() < 3:
        raise GMFlowInputError(f"{op}(): 'scaled_cdfs' must have layout (..., N, H, W); got {list(scaled_cdfs.shape)}")
    try:
        torch.broadcast_shapes(*(t.shape[:-3] + t.shape[-2:] for t in named.values()))
    except RuntimeError:
        shapes = ", ".join(f"'{name}' {list(t.shape)}" for name, t in named.items())
        raise GMFlowInputError(
            f"{op}(): the batch and pixel dims (all but dim -3) of 'scaled_cdfs' (..., N, H, W) must broadcast with "
            f"the GM's (..., K, H, W): {shapes}"
        ) from None


def _pdf_cdf(means: Tensor, logstds: Tensor, logweights: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """pdf and scaled cdf; GM tensors ``(..., K, H, W)``, x ``(..., N, H, W)``."""
    mu = means.unsqueeze(-4)
    ls = logstds.unsqueeze(-4)
    lw = logweights.unsqueeze(-4)
    z = (x.unsqueeze(-3) - mu) * torch.exp(-ls)  # (..., N, K, H, W)
    pdf = torch.exp(-0.5 * z.square() - ls + lw).sum(dim=-3) * _INV_SQRT_2PI
    cdf = (torch.exp(lw) * torch.erf(z / _SQRT_2)).sum(dim=-3)
    return pdf, cdf


def gm1d_pdf_cdf(gm1d: GaussianMixture1D, samples: Tensor) -> tuple[Tensor, Tensor]:
    """Density and *scaled* CDF ``2 F(x) - 1`` of ``samples (..., N, H, W)``; both ``(..., N, H, W)``.

    ``z_k = (x - mu_k) / s``; ``pdf = (2 pi)^-1/2 sum_k exp(-z_k^2 / 2 - log s + lambda_k)``;
    ``scaled_cdf = sum_k w_k erf(z_k / sqrt 2)`` in ``[-1, 1]`` (``d scaled_cdf / dx = 2 pdf``),
    with ``w = exp(lambda)`` (no renormalisation, as upstream).
    """
    check_gm1d(gm1d)
    dtype = result_dtype(gm1d.means, samples)
    work = acc_dtype(samples.dtype, *(t.dtype for t in gm1d))
    pdf, cdf = _pdf_cdf(*(t.to(work) for t in gm1d), samples.to(work))
    return pdf.to(dtype), cdf.to(dtype)


def gm1d_moments(gm1d: GaussianMixture1D) -> tuple[Tensor, Tensor]:
    """Moment-matched Gaussian of a 1-D GM: ``m = sum w mu``, ``v = sum w (mu - m)^2 + s^2``; both ``(..., 1, H, W)``."""
    means, logstds, logweights = gm1d
    w = logweights.exp()
    mean = (w * means).sum(dim=-3, keepdim=True)
    var = (w * (means - mean).square()).sum(dim=-3, keepdim=True) + torch.exp(2 * logstds)
    return mean, var


def gm1d_inverse_cdf(
    gm1d: GaussianMixture1D,
    scaled_cdfs: Tensor,
    n_steps: int = 8,
    eps: float = 1e-6,
    max_step_size: float = 1.5,
    gaussian_samples: Tensor | None = None,
) -> Tensor:
    """Solves ``scaled_cdf(x) = c`` for ``c = scaled_cdfs (..., N, H, W)`` by clamped Newton steps.

    Init: quantile of the moment-matched Gaussian, ``x = g sqrt(v) + m`` with
    ``g = sqrt 2 erfinv(clamp(c, -1 + eps, 1 - eps))`` (or the given ``gaussian_samples``, which
    must satisfy ``c = erf(g / sqrt 2)``). Then exactly ``n_steps`` iterations of
    ``delta = clamp((F(x) - c) / (2 max(p(x), eps)), +-max_step_size * s)``, ``x -= delta``.

    Gradient: the implicit-function gradient at the returned root (``dx/dc = 1 / (2p)``,
    ``dx/dmu_k = r_k``, ``dx/dlogstd = sum_k r_k (x - mu_k)``, ``dx/dlambda_k =
    -w_k erf(z_k / sqrt 2) / (2p)``, ``p`` floored at ``eps``), obtained from one Newton step
    taken at the detached root with a detached denominator; its value is subtracted again, so
    the output equals the no-grad result exactly.

    Upstream difference: upstream ran ``n_steps - backward_steps`` kernel iterations plus
    ``n_steps`` (not ``backward_steps``) unrolled autograd iterations (14 with the defaults) and
    differentiated through the unrolled clamped steps; here exactly ``n_steps`` iterations run,
    the gradient is the implicit one without unrolling, and nothing (``gm_weights``,
    ``gm_vars``) is cached into ``gm1d``.
    """
    check_gm1d(gm1d)
    check_broadcast("gm1d_inverse_cdf", gm1d, scaled_cdfs, gaussian_samples)
    check_steps("gm1d_inverse_cdf", n_steps)
    dtype = result_dtype(gm1d.means, scaled_cdfs)
    work = acc_dtype(scaled_cdfs.dtype, *(t.dtype for t in gm1d))
    means, logstds, logweights = (t.to(work) for t in gm1d)
    c = scaled_cdfs.to(work)
    with torch.no_grad():
        mean, var = gm1d_moments(GaussianMixture1D(means, logstds, logweights))
        if gaussian_samples is None:
            g = _SQRT_2 * torch.erfinv(torch.clamp(c, -1 + eps, 1 - eps))
        else:
            g = gaussian_samples.to(work)
        x = g * var.sqrt() + mean
        bound = max_step_size * torch.exp(logstds)
        for _ in range(n_steps):
            pdf, cdf = _pdf_cdf(means, logstds, logweights, x)
            delta = 0.5 * (cdf - c) / torch.clamp_min(pdf, eps)
            x_new = x - torch.clamp(delta, -bound, bound)
            # Every lane at a fixed point (or NaN, which stays NaN): the remaining steps change nothing.
            settled = bool(((x_new == x) | torch.isnan(x_new)).all())
            x = x_new
            if settled:
                break
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (means, logstds, logweights, c))
    if needs_grad:
        pdf, cdf = _pdf_cdf(means, logstds, logweights, x)
        step = 0.5 * (cdf - c) / torch.clamp_min(pdf.detach(), eps)
        x = x - (step - step.detach())
    return x.to(dtype)
