"""Pure-PyTorch reference of the density ops (``gm_logprob``, ``gm_to_mean``, ``gm_to_iso_gaussian``).

Each function has exactly the signature of its ``torch.ops.gmflow`` schema and
is (1) the fallback implementation registered for devices without a native
kernel, (2) the oracle of the parity tests. Forward functions are plain
differentiable PyTorch; the ``*_backward`` functions spell the gradients out
(they back the fallback of the backward ops and are tested against autograd of
the forward). 16-bit inputs are computed in fp32 and cast back, like the kernels.

The reference materialises ``(..., N, K, C, H, W)`` intermediates; the native
kernels never do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import LOG_2PI, acc_dtype, sum_to_shape

__all__ = [
    "gm_logprob",
    "gm_logprob_backward",
    "gm_to_mean",
    "gm_to_mean_backward",
    "gm_to_iso_gaussian",
    "gm_to_iso_gaussian_backward",
]


def _upcast(*tensors: Tensor) -> list[Tensor]:
    dtype = acc_dtype(tensors[0].dtype)
    return [t.to(dtype) for t in tensors]


def _component_log_densities(means, logstds, logweights, samples):
    """a[..., n, k, h, w] = log w_k + log N(x_n; mu_k, s_k^2 I), plus z = (x - mu) / s."""
    C = means.shape[-3]
    x = samples.unsqueeze(-4)  # (..., N, 1, C, H, W)
    mu = means.unsqueeze(-5)  # (..., 1, K, C, H, W)
    ls = logstds.unsqueeze(-5)  # (..., 1, K|1, 1, H|1, W|1)
    z = (x - mu) * torch.exp(-ls)
    a = (
        logweights.unsqueeze(-5).squeeze(-3)
        - C * ls.squeeze(-3)
        - 0.5 * C * LOG_2PI
        - 0.5 * z.square().sum(dim=-3)
    )
    return a, z, ls


def gm_logprob(means: Tensor, logstds: Tensor, logweights: Tensor, samples: Tensor) -> Tensor:
    """Log density of ``samples (..., N, C, H, W)`` under the GM, summed over channels: ``(..., N, H, W)``.

    ``log p = logsumexp_k [log w_k - sum_c (x_c - mu_kc)^2 / (2 s_k^2) - C log s_k - C/2 log 2pi]``.
    """
    dtype = samples.dtype
    means, logstds, logweights, samples = _upcast(means, logstds, logweights, samples)
    a, _, _ = _component_log_densities(means, logstds, logweights, samples)
    return torch.logsumexp(a, dim=-3).to(dtype)


def gm_logprob_backward(
    grad: Tensor,
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    samples: Tensor,
    logprob: Tensor,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`gm_logprob` (zero-size tensors where ``output_mask`` is False).

    With responsibilities ``r_nk = exp(a_nk - logprob_n) * grad_n`` and ``z = (x - mu) / s``:
    ``d/dlogweights = sum_n r``, ``d/dmeans = sum_n r z / s``, ``d/dsamples = -sum_k r z / s``,
    ``d/dlogstds = sum_n r (|z|^2 - C)`` (each reduced over broadcast dims).
    """
    dtype = means.dtype
    shapes = [means.shape, logstds.shape, logweights.shape, samples.shape]
    grad, means, logstds, logweights, samples, logprob = _upcast(grad, means, logstds, logweights, samples, logprob)
    C = means.shape[-3]
    a, z, ls = _component_log_densities(means, logstds, logweights, samples)
    lse = logprob.unsqueeze(-3)
    r = torch.where(lse == -math.inf, torch.zeros_like(a), torch.exp(a - lse)) * grad.unsqueeze(-3)
    rz = r.unsqueeze(-3) * z * torch.exp(-ls)  # (..., N, K, C, H, W)
    outputs = []
    if output_mask[0]:
        outputs.append(sum_to_shape(rz.sum(dim=-5), shapes[0]))
    else:
        outputs.append(means.new_empty(0))
    if output_mask[1]:
        g_ls = (r * (z.square().sum(dim=-3) - C)).unsqueeze(-3)  # (..., N, K, 1, H, W)
        g_ls = g_ls.sum(dim=-5)
        if logstds.shape[-4] == 1:
            g_ls = g_ls.sum(dim=-4, keepdim=True)
        outputs.append(sum_to_shape(g_ls, shapes[1]))
    else:
        outputs.append(means.new_empty(0))
    if output_mask[2]:
        outputs.append(sum_to_shape(r.sum(dim=-4).unsqueeze(-3), shapes[2]))
    else:
        outputs.append(means.new_empty(0))
    if output_mask[3]:
        outputs.append(sum_to_shape(-rz.sum(dim=-4), shapes[3]))
    else:
        outputs.append(means.new_empty(0))
    return tuple(o.to(dtype) for o in outputs)


def gm_to_mean(means: Tensor, logweights: Tensor, power: float = 1.0) -> Tensor:
    """Mean of the GM with sharpened weights: ``sum_k softmax_k(power * logweights) * means``."""
    dtype = means.dtype
    means, logweights = _upcast(means, logweights)
    weights = torch.softmax(power * logweights, dim=-4)
    return (weights * means).sum(dim=-4).to(dtype)


def gm_to_mean_backward(
    grad: Tensor, means: Tensor, logweights: Tensor, mean: Tensor, power: float, output_mask: list[bool]
) -> tuple[Tensor, Tensor]:
    """``d/dmeans_kc = grad_c pi_k``; ``d/dlogweights_k = power pi_k sum_c grad_c (mu_kc - mean_c)``."""
    dtype = means.dtype
    shapes = [means.shape, logweights.shape]
    grad, means, logweights, mean = _upcast(grad, means, logweights, mean)
    pi = torch.softmax(power * logweights, dim=-4)
    g = grad.unsqueeze(-4)
    g_means = sum_to_shape(g * pi, shapes[0]) if output_mask[0] else means.new_empty(0)
    if output_mask[1]:
        dot = (g * (means - mean.unsqueeze(-4))).sum(dim=-3, keepdim=True)
        g_logweights = sum_to_shape(power * pi * dot, shapes[1])
    else:
        g_logweights = means.new_empty(0)
    return g_means.to(dtype), g_logweights.to(dtype)


def _iso_moments(means, logstds, logweights):
    C = means.shape[-3]
    w = logweights.exp()
    mean = (w * means).sum(dim=-4)
    diffs = means - mean.unsqueeze(-4)
    between = (w * diffs.square()).sum(dim=(-4, -3), keepdim=True).squeeze(-4) / max(C, 1)
    if logstds.shape[-4] == 1:
        within = torch.exp(2 * logstds).squeeze(-4)
    else:
        within = (w * torch.exp(2 * logstds)).sum(dim=-4)
    return w, mean, diffs, between + within


def gm_to_iso_gaussian(means: Tensor, logstds: Tensor, logweights: Tensor) -> tuple[Tensor, Tensor]:
    """Moment-matched isotropic Gaussian: ``mean (..., C, H, W)``, ``var (..., 1, H, W)``.

    ``m = sum_k w_k mu_k``; ``v = mean_c sum_k w_k (mu_kc - m_c)^2 + s^2`` with ``w = exp(logweights)``
    (inputs are normalised, so no softmax, as upstream). Per-component stds contribute
    ``sum_k w_k s_k^2`` instead of ``s^2``.
    """
    dtype = means.dtype
    means, logstds, logweights = _upcast(means, logstds, logweights)
    _, mean, _, var = _iso_moments(means, logstds, logweights)
    batch = torch.broadcast_shapes(means.shape[:-4], logstds.shape[:-4], logweights.shape[:-4])
    mean = mean.expand(*batch, *mean.shape[-3:])
    var = var.expand(*batch, 1, means.shape[-2], means.shape[-1])
    return mean.to(dtype).contiguous(), var.to(dtype).contiguous()


def gm_to_iso_gaussian_backward(
    grad_mean: Tensor, grad_var: Tensor, means: Tensor, logstds: Tensor, logweights: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`gm_to_iso_gaussian` w.r.t. ``(means, logstds, logweights)``.

    With ``S_c = sum_k w_k (mu_kc - m_c)`` (zero for normalised weights), ``gm``/``gv`` the
    incoming gradients of mean/var:
    ``d/dmu_kc = w_k [gm_c + gv 2/C ((mu_kc - m_c) - S_c)]``,
    ``d/dlogweight_k = w_k [sum_c gm_c mu_kc + gv (1/C sum_c ((mu_kc - m_c)^2 - 2 S_c mu_kc) + s_k^2*)]``
    (``*`` per-component stds only), ``d/dlogstd = 2 gv s^2`` (shared) or ``2 gv w_k s_k^2``.
    """
    dtype = means.dtype
    shapes = [means.shape, logstds.shape, logweights.shape]
    grad_mean, grad_var, means, logstds, logweights = _upcast(grad_mean, grad_var, means, logstds, logweights)
    C = max(means.shape[-3], 1)
    w, mean, diffs, _ = _iso_moments(means, logstds, logweights)
    S = (w * diffs).sum(dim=-4, keepdim=True)  # (..., 1, C, H, W)
    gm = grad_mean.unsqueeze(-4)
    gv = grad_var.unsqueeze(-4)  # (..., 1, 1, H, W)
    g_means = w * (gm + gv * (2.0 / C) * (diffs - S))
    quad = (diffs.square() - 2 * S * means).sum(dim=-3, keepdim=True) / C
    g_logweights = w * ((gm * means).sum(dim=-3, keepdim=True) + gv * quad)
    var_k = torch.exp(2 * logstds)
    if logstds.shape[-4] == 1:
        g_logstds = 2 * gv * var_k
    else:
        g_logweights = g_logweights + w * gv * var_k
        g_logstds = 2 * gv * w * var_k
    return (
        sum_to_shape(g_means, shapes[0]).to(dtype),
        sum_to_shape(g_logstds, shapes[1]).to(dtype),
        sum_to_shape(g_logweights, shapes[2]).to(dtype),
    )
