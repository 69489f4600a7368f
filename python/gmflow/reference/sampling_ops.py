"""Pure-PyTorch reference of the sampling-path ops, with exactly their ``torch.ops.gmflow`` signatures.

Like :mod:`gmflow.reference.core` for the density ops, each function here is (1) the fallback
registered for devices without a native kernel and (2) the oracle of the parity tests. They are
thin adapters over the container-level reference (:mod:`.algebra`, :mod:`.gm1d`,
:mod:`.transport`, :mod:`.flow`), whose semantics they keep; what the adapters add is the op
layout: every output has the full broadcast batch and is contiguous, random numbers come in as
tensors, and the ``*_backward`` functions spell the gradients out.

Layouts (``...`` = leading batch dims, broadcast against each other):

==========================  =============================================================
``gm_mul_iso_gaussian``     GM; ``gaussian_mean (..., C, H, W)``, ``gaussian_var (..., 1, H|1, W|1)``
``gm_posterior_mean``       GM (x0-space); ``x_src, x_tgt (..., C, H, W)``; ``sigma_src, sigma_tgt (...)``
                            in the accumulation dtype (float32 for 16-bit data)
``gm1d_inverse_cdf``        1-D GM ``means/logweights (..., K, H, W)``, ``logstds (..., 1, 1, 1)``;
                            ``scaled_cdfs``, ``gaussian_samples (..., N, H, W)``
``gm_kr_inverse/forward``   GM with a shared std; samples ``(..., N, C, H, W)``;
                            ``rotation (..., 1|H, 1|W, C, C)``; ``uniforms (..., N, 1, H, W)``
``gm_sample``               GM; ``uniforms (..., N, 1, H, W)``, ``normals (..., N, C, H, W)``
==========================  =============================================================

Rotations, sigmas and random numbers are in the accumulation dtype (float64 for float64
data, else float32); everything else shares the dtype of ``means``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow.types import GaussianMixture, GaussianMixture1D, IsoGaussian

from . import algebra, flow, gm1d, transport
from .core import sum_to_shape

__all__ = [
    "categorical_from_uniforms",
    "gm1d_inverse_cdf",
    "gm1d_inverse_cdf_backward",
    "gm_kr_forward",
    "gm_kr_inverse",
    "gm_mul_iso_gaussian",
    "gm_posterior_mean",
    "gm_posterior_mean_backward",
    "gm_sample",
]

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)


def _work(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _full(t: Tensor, batch: list[int] | tuple[int, ...], inner: int, dtype: torch.dtype) -> Tensor:
    """``t`` expanded to ``batch + its last inner dims``, contiguous, in ``dtype``."""
    return t.expand(*batch, *t.shape[t.dim() - inner:]).to(dtype).contiguous()


def _batch(*pairs: tuple[Tensor, int]) -> list[int]:
    return list(torch.broadcast_shapes(*(t.shape[: t.dim() - inner] for t, inner in pairs)))


def _sigma_like(sigma: Tensor, x: Tensor) -> Tensor:
    """A batch-only ``sigma (...)`` as a tensor broadcasting against ``x (..., C, H, W)`` from the right."""
    s = sigma.reshape(*sigma.shape, 1, 1, 1)
    if s.dim() < x.dim():
        s = s.reshape(*([1] * (x.dim() - s.dim())), *s.shape)
    return s


def categorical_from_uniforms(logits: Tensor, uniforms: Tensor, dim: int) -> Tensor:
    """Index along ``dim`` of the categorical ``softmax(logits)`` drawn by inverting its CDF at ``uniforms``.

    With ``e_k = exp(logits_k - max)`` and ``cum_k = e_0 + ... + e_k``: the first ``k`` with
    ``cum_k > u * cum_{K-1}``; if rounding leaves none, the last ``k`` with a non-zero weight.
    ``uniforms`` has size 1 along ``dim``; the result too.
    """
    e = torch.exp(logits - logits.amax(dim=dim, keepdim=True))
    cum = torch.cumsum(e, dim=dim)
    target = uniforms * cum.narrow(dim, cum.shape[dim] - 1, 1)
    idx = (cum <= target).sum(dim=dim, keepdim=True)
    K = logits.shape[dim]
    positions = torch.arange(K, device=logits.device).reshape(-1, *([1] * (logits.dim() - 1 - (dim % logits.dim()))))
    last_nonzero = torch.where(e > 0, positions, 0).amax(dim=dim, keepdim=True)
    return torch.minimum(idx, last_nonzero)


# ----------------------------------------------------------------------------------------------
# §1.5 product with an isotropic Gaussian


def gm_mul_iso_gaussian(
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    gaussian_mean: Tensor,
    gaussian_var: Tensor,
    gm_power: float = 1.0,
    gaussian_power: float = 1.0,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`gmflow.reference.algebra.gm_mul_iso_gaussian` in the op layout.

    Outputs ``means (batch, K, C, H, W)``, ``logstds (batch, K|1, 1, H|1, W|1)`` (per pixel when
    ``logstds`` or ``gaussian_var`` is) and ``logweights (batch, K, 1, H, W)``.
    """
    K, C, H, W = means.shape[-4:]
    gm = GaussianMixture(means, logstds, logweights)
    out = algebra.gm_mul_iso_gaussian(gm, IsoGaussian(gaussian_mean, gaussian_var), gm_power, gaussian_power, eps)
    batch = _batch((means, 4), (logstds, 4), (logweights, 4), (gaussian_mean, 3), (gaussian_var, 3))
    out_logstds = out.logstds
    if logstds.shape[-4] == 1 and out_logstds.shape[-4] != 1:
        out_logstds = out_logstds[..., :1, :, :, :]  # undo the reference's per-component expansion
    dtype = means.dtype
    return _full(out.means, batch, 4, dtype), _full(out_logstds, batch, 4, dtype), _full(out.logweights, batch, 4, dtype)


# ----------------------------------------------------------------------------------------------
# §4.5 posterior mean


def gm_posterior_mean(
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    x_src: Tensor,
    x_tgt: Tensor,
    sigma_src: Tensor,
    sigma_tgt: Tensor,
    eps: float = 1e-6,
) -> Tensor:
    """:func:`gmflow.reference.flow.gm_posterior_mean` (x0-prediction) in the op layout: ``(batch, C, H, W)``."""
    gm = GaussianMixture(means, logstds, logweights)
    out = flow.gm_posterior_mean(
        gm, x_tgt, x_src, sigma_t_src=_sigma_like(sigma_src, x_src), sigma_t=_sigma_like(sigma_tgt, x_tgt), eps=eps
    )
    batch = _batch((means, 4), (logstds, 4), (logweights, 4), (x_src, 3), (x_tgt, 3), (sigma_src, 0), (sigma_tgt, 0))
    return _full(out, batch, 3, means.dtype)


def gm_posterior_mean_backward(
    grad: Tensor,
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    x_src: Tensor,
    x_tgt: Tensor,
    sigma_src: Tensor,
    sigma_tgt: Tensor,
    mean: Tensor,
    eps: float,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`gm_posterior_mean` w.r.t. ``(means, logstds, logweights)``.

    With ``pi = softmax_K(logits)``, ``mu'_k`` the moved means, ``d_k = sum_c g_c (mu'_kc - mean_c)``
    and ``dden_k = zeta [var_k zeta + 1 > eps]`` (the clamp's derivative):
    ``d/dlogweight_k = pi_k d_k``; ``d/dmu_kc = pi_k (g_c + d_k (nu_c - zeta mu_kc)) / den_k``;
    ``d/dlogstd_k = 2 var_k [sum_c g_c pi_k (nu_c - mu'_kc dden_k) / den_k + pi_k d_k dlogit_k/dvar_k]``,
    where ``dlogit/dvar = -delta dden / den`` plus, for per-component stds, the normaliser terms
    ``S / (2 den) - var S dden / (2 den^2) - C dden / (2 den)`` (``S = sum_c nu_c^2``).
    Summed to each input's shape; an unrequested gradient is an empty tensor.
    """
    dtype = means.dtype
    work = _work(means)
    mu, ls, lw, xs, xt, ss, st, g, out = (
        t.to(work) for t in (means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, grad, mean)
    )
    C = mu.shape[-3]
    s_s = torch.clamp_min(_sigma_like(ss, xs), eps)
    s_t = torch.clamp_min(_sigma_like(st, xt), eps)
    a_s, a_t = 1 - s_s, 1 - s_t
    zeta = ((a_t / s_t).square() - (a_s / s_s).square()).unsqueeze(-4)
    nu = (a_t * xt / s_t.square() - a_s * xs / s_s.square()).unsqueeze(-4)
    var = torch.exp(2 * ls)
    raw = var * zeta + 1
    den = torch.clamp_min(raw, eps)
    dden = torch.where(raw > eps, zeta, torch.zeros_like(zeta))
    moved = (var * nu + mu) / den
    delta = (mu * (nu - 0.5 * zeta * mu)).sum(dim=-3, keepdim=True) / den
    per_component = ls.shape[-4] != 1
    sq = nu.square().sum(dim=-3, keepdim=True)
    logits = lw + delta
    if per_component:
        logits = logits + 0.5 * var * sq / den - 0.5 * C * torch.log(den)
    pi = torch.softmax(logits, dim=-4)
    g = g.unsqueeze(-4)
    d = (g * (moved - out.unsqueeze(-4))).sum(dim=-3, keepdim=True)
    g_means, g_logstds, g_logweights = (means.new_empty(0) for _ in range(3))  # distinct: outputs must not alias
    if output_mask[0]:
        g_means = sum_to_shape(pi * (g + d * (nu - zeta * mu)) / den, means.shape).to(dtype)
    if output_mask[1]:
        dlogit = -delta * dden / den
        if per_component:
            dlogit = dlogit + 0.5 * sq / den - 0.5 * var * sq * dden / den.square() - 0.5 * C * dden / den
        g_var = (g * pi * (nu - moved * dden)).sum(dim=-3, keepdim=True) / den + pi * d * dlogit
        g_logstds = sum_to_shape(2 * var * g_var, logstds.shape).to(dtype)
    if output_mask[2]:
        g_logweights = sum_to_shape(pi * d, logweights.shape).to(dtype)
    return g_means, g_logstds, g_logweights


# ----------------------------------------------------------------------------------------------
# §2.2 inverse CDF of a 1-D GM


def gm1d_inverse_cdf(
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    scaled_cdfs: Tensor,
    gaussian_samples: Tensor | None = None,
    n_steps: int = 8,
    eps: float = 1e-6,
    max_step_size: float = 1.5,
) -> Tensor:
    """:func:`gmflow.reference.gm1d.gm1d_inverse_cdf` in the op layout: ``(batch, N, H, W)``, no grad."""
    pairs = [(means, 3), (logstds, 3), (logweights, 3), (scaled_cdfs, 3)]
    if gaussian_samples is not None:
        pairs.append((gaussian_samples, 3))
    batch = _batch(*pairs)
    with torch.no_grad():
        x = gm1d.gm1d_inverse_cdf(
            GaussianMixture1D(means, logstds, logweights), scaled_cdfs, n_steps, eps, max_step_size, gaussian_samples
        )
    return _full(x, batch, 3, means.dtype)


def gm1d_inverse_cdf_backward(
    grad: Tensor,
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    scaled_cdfs: Tensor,
    samples: Tensor,
    eps: float,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Implicit-function gradients of the root ``x = samples`` of ``scaled_cdf(x) = c``.

    ``p = max(pdf(x), eps)``, ``N_k = w_k phi(z_k) / s``: ``dx/dc = 1 / (2p)``, ``dx/dmu_k = N_k / p``,
    ``dx/dlogstd = sum_k N_k (x - mu_k) / p``, ``dx/dlogweight_k = -w_k erf(z_k / sqrt 2) / (2p)``.
    Summed to each input's shape; an unrequested gradient is an empty tensor.
    """
    dtype = means.dtype
    work = _work(means)
    mu, ls, lw, x, g = (t.to(work) for t in (means, logstds, logweights, samples, grad))
    mu, ls, lw = mu.unsqueeze(-4), ls.unsqueeze(-4), lw.unsqueeze(-4)  # (..., 1, K|1, H|1, W|1)
    x, g = x.unsqueeze(-3), g.unsqueeze(-3)  # (..., N, 1, H, W)
    z = (x - mu) * torch.exp(-ls)
    comp = torch.exp(lw - 0.5 * z.square() - ls) * _INV_SQRT_2PI  # N_k, (..., N, K, H, W)
    p = torch.clamp_min(comp.sum(dim=-3, keepdim=True), eps)
    gp = g / p
    out = [means.new_empty(0) for _ in range(4)]  # distinct: outputs must not alias
    if output_mask[0]:
        out[0] = sum_to_shape((gp * comp).sum(dim=-4), means.shape).to(dtype)
    if output_mask[1]:
        out[1] = sum_to_shape((gp * comp * (x - mu)).sum(dim=-3).sum(dim=-3, keepdim=True), logstds.shape).to(dtype)
    if output_mask[2]:
        term = -0.5 * gp * torch.exp(lw) * torch.erf(z / _SQRT_2)
        out[2] = sum_to_shape(term.sum(dim=-4), logweights.shape).to(dtype)
    if output_mask[3]:
        out[3] = sum_to_shape((0.5 * gp).squeeze(-3), scaled_cdfs.shape).to(dtype)
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# §3 Knothe-Rosenblatt transport for a given rotation


def _rotated_means(means: Tensor, rotation: Tensor) -> Tensor:
    """``mu~ = mu V``: ``(..., K, C, H, W)`` with ``V (..., 1|H, 1|W, C, C)`` -> ``(..., K, H, W, C)``."""
    return (means.movedim(-3, -1).unsqueeze(-2) @ rotation.unsqueeze(-5)).squeeze(-2)


def gm_kr_inverse(
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    gaussian_samples: Tensor,
    rotation: Tensor,
    uniforms: Tensor | None = None,
    n_axes: int | None = None,
    n_steps: int = 16,
    eps: float = 1e-6,
    max_step_size: float = 1.5,
) -> Tensor:
    """KR map N(0, I) -> GM for a given rotation ``V``: ``(batch, N, C, H, W)``.

    ``gaussian_samples`` are standard normals in the rotated basis (``g~``). Axes ``a < n_axes``:
    the sequential inverse-CDF solves of :func:`gmflow.reference.transport.gaussian_samples_to_gm_samples`
    (``n_steps`` Newton steps each). Axes ``a >= n_axes``: ancestral draw from the GM conditioned
    on the first ``n_axes`` axes, the component chosen by :func:`categorical_from_uniforms` at
    ``uniforms`` and the noise taken from ``g~_a``: ``x~_a = mu~_{k a} + s g~_a``. Returns ``x~ V^T``.
    """
    C = means.shape[-3]
    A = C if n_axes is None else n_axes
    dtype = means.dtype
    work = _work(means)
    mu, ls, lw, g, V = (t.to(work) for t in (means, logstds, logweights, gaussian_samples, rotation))
    pairs = [(means, 4), (logstds, 4), (logweights, 4), (gaussian_samples, 4), (rotation, 4)]
    if A < C:
        pairs.append((uniforms, 4))
    batch = _batch(*pairs)
    with torch.no_grad():
        mu_rot = _rotated_means(mu, V)  # (..., K, H, W, C)
        g = g.movedim(-3, -1)  # (..., N, H, W, C)
        u = torch.erf(g / _SQRT_2)
        ls_1d, lw_1d = ls.squeeze(-1), lw.squeeze(-3)  # (..., 1, 1, 1), (..., K, H, W)
        coords = [
            gm1d.gm1d_inverse_cdf(GaussianMixture1D(mu_rot[..., 0], ls_1d, lw_1d), u[..., 0], n_steps, eps,
                                  max_step_size, gaussian_samples=g[..., 0])
        ]
        sq_sum = None
        for a in range(1, A):
            cond, sq_sum = transport.gm_kr_slice(coords[-1], mu_rot[..., a - 1], ls_1d, lw_1d, sq_sum)
            gm_a = GaussianMixture1D(mu_rot[..., a].unsqueeze(-4), ls_1d.unsqueeze(-4), cond)
            x_a = gm1d.gm1d_inverse_cdf(gm_a, u[..., a].unsqueeze(-3), n_steps, eps, max_step_size,
                                        gaussian_samples=g[..., a].unsqueeze(-3))
            coords.append(x_a.squeeze(-3))
        if A < C:
            cond, _ = transport.gm_kr_slice(coords[-1], mu_rot[..., A - 1], ls_1d, lw_1d, sq_sum)  # (..., N, K, H, W)
            idx = categorical_from_uniforms(cond, uniforms.to(work), dim=-3)  # (..., N, 1, H, W)
            rest = mu_rot[..., A:].unsqueeze(-5)  # (..., 1, K, H, W, C - A)
            cond_shape = torch.broadcast_shapes(idx.shape[:-3], rest.shape[:-4])
            rest = rest.expand(*cond_shape, *rest.shape[-4:])
            idx = idx.expand(*cond_shape, *idx.shape[-3:]).unsqueeze(-1).expand(*cond_shape, 1, *rest.shape[-3:])
            chosen = torch.gather(rest, -4, idx).squeeze(-4)  # (..., N, H, W, C - A)
            noise = torch.exp(ls) * g[..., A:]  # ls (..., 1, 1, 1, 1) against (..., N, H, W, C - A)
            coords.extend((chosen + noise).unbind(-1))
        shape = torch.broadcast_shapes(*(c.shape for c in coords))
        x_rot = torch.stack([c.expand(shape) for c in coords], dim=-1)
        x = (x_rot.unsqueeze(-2) @ V.transpose(-1, -2).unsqueeze(-5)).squeeze(-2)
    return _full(x.movedim(-1, -3), batch, 4, dtype)


def gm_kr_forward(
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    samples: Tensor,
    rotation: Tensor,
    n_axes: int | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """KR map GM -> N(0, I) for a given rotation ``V``, first ``n_axes`` rotated axes: ``(batch, N, n_axes, H, W)``.

    Same formulas as :func:`gmflow.reference.transport.gm_samples_to_gaussian_samples`
    (``axis_aligned=True``), without the random trailing axes.
    """
    C = means.shape[-3]
    A = C if n_axes is None else n_axes
    dtype = means.dtype
    work = _work(means)
    mu, ls, lw, x, V = (t.to(work) for t in (means, logstds, logweights, samples, rotation))
    batch = _batch((means, 4), (logstds, 4), (logweights, 4), (samples, 4), (rotation, 4))
    with torch.no_grad():
        Va = V[..., :A].unsqueeze(-5)
        x_rot = (x.movedim(-3, -1).unsqueeze(-2) @ Va).squeeze(-2)  # (..., N, H, W, A)
        mu_rot = (mu.movedim(-3, -1).unsqueeze(-2) @ Va).squeeze(-2)  # (..., K, H, W, A)
        z = (x_rot.unsqueeze(-4) - mu_rot.unsqueeze(-5)) * torch.exp(-ls).unsqueeze(-1)  # (..., N, K, H, W, A)
        sq = z.square()
        sq_before = torch.cat([torch.zeros_like(sq[..., :1]), sq[..., :-1].cumsum(dim=-1)], dim=-1)
        logits = lw.squeeze(-3).unsqueeze(-4).unsqueeze(-1) - 0.5 * sq_before
        u = (torch.softmax(logits, dim=-4) * torch.erf(z / _SQRT_2)).sum(dim=-4)  # (..., N, H, W, A)
        g = _SQRT_2 * torch.erfinv(torch.clamp(u, -1 + eps, 1 - eps))
    return _full(g.movedim(-1, -3), batch, 4, dtype)


# ----------------------------------------------------------------------------------------------
# §1.10 / §4.6 ancestral sampling from given random numbers


def gm_sample(
    means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    uniforms: Tensor,
    normals: Tensor,
    gm_power: float = 1.0,
    cov_sharpen: bool = False,
) -> Tensor:
    """Ancestral samples ``(batch, N, C, H, W)``: per (sample, pixel) the component
    ``k = categorical_from_uniforms(gm_power * logweights, u)`` (shared by the channels), then
    ``mu_k + std_k * normal`` with ``std_k = exp(logstd_k)`` (divided by ``sqrt(gm_power)`` when
    ``cov_sharpen``). Same law as :func:`gmflow.reference.algebra.gm_to_sample`, whose draws it
    replaces by the given ``uniforms (..., N, 1, H, W)`` and ``normals (..., N, C, H, W)``.
    """
    dtype = means.dtype
    work = _work(means, uniforms)
    batch = _batch((means, 4), (logstds, 4), (logweights, 4), (uniforms, 4), (normals, 4))
    K, C, H, W = means.shape[-4:]
    N = uniforms.shape[-4]
    mu = means.to(work).expand(*batch, K, C, H, W)
    ls = logstds.to(work)
    lw = logweights.to(work).expand(*batch, K, 1, H, W)
    u = uniforms.to(work).expand(*batch, N, 1, H, W)
    z = normals.to(work).expand(*batch, N, C, H, W)
    logits = (gm_power * lw).squeeze(-3).unsqueeze(-4)  # (batch, 1, K, H, W)
    idx = categorical_from_uniforms(logits, u, dim=-3)  # (batch, N, 1, H, W)
    chosen = torch.gather(mu.unsqueeze(-5).expand(*batch, N, K, C, H, W), -4,
                          idx.unsqueeze(-3).expand(*batch, N, 1, C, H, W)).squeeze(-4)
    if ls.shape[-4] != 1:
        lsk = ls.expand(*batch, K, 1, H, W).squeeze(-3).unsqueeze(-4).expand(*batch, N, K, H, W)
        std = torch.exp(torch.gather(lsk, -3, idx))  # (batch, N, 1, H, W)
    else:
        std = torch.exp(ls)
    if cov_sharpen:
        std = std / math.sqrt(gm_power)
    out = chosen + std * z
    return _full(out, batch, 4, dtype)
