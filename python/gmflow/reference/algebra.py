"""Pure-PyTorch reference of the GM / Gaussian algebra (docs/ops.md#gm-and-gaussian-algebra).

Every function takes and returns the containers of :mod:`gmflow.types` and uses only
negative dims, so any number of leading batch dims works. Nothing is ever written into
the caller's containers (upstream cached ``gm_vars``/``gm_weights``/``logstd``/
``invcov_trils`` in the input dicts); derived quantities are recomputed.
16-bit inputs are computed in fp32 and cast back; fp64 stays fp64.
Random functions take a ``generator`` that is used for every draw.

The ops already in :mod:`gmflow.reference.density` (``gm_logprob``, ``gm_to_mean``,
``gm_to_iso_gaussian``) are not repeated here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow._validation import check_floating
from gmflow.types import Gaussian, GaussianMixture, GaussianMixtureCov, IsoGaussian

from .common import (
    LOG_2PI,
    acc_dtype,
    check_channels,
    check_gm,
    check_shared_logstds,
    gm_batch_shape,
    gm_in_acc_dtype,
)

__all__ = [
    "gaussian_mul_gaussian",
    "gm_cov_logprob",
    "gm_mul_gaussian",
    "gm_mul_gm",
    "expand_pixel_logstds",
    "gm_mul_iso_gaussian",
    "gm_mul_iso_gaussian_compact",
    "gm_temperature",
    "gm_to_gaussian",
    "gm_to_sample",
    "gm_transpose_t_first",
    "iso_gaussian_logprob",
    "iso_gaussian_mul_iso_gaussian",
    "psd_inverse",
]

def _draw_component_indices(logits: Tensor, n_samples: int, generator: torch.Generator | None) -> Tensor:
    """Categorical draws with replacement along the LAST dim: ``(..., K) -> (..., N)``."""
    K = logits.shape[-1]
    probs = torch.softmax(logits, dim=-1).reshape(-1, K)
    idx = torch.multinomial(probs, n_samples, replacement=True, generator=generator)
    return idx.reshape(*logits.shape[:-1], n_samples)


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_to_gaussian, docs/ops.md#gm_to_mean, docs/ops.md#gm_to_iso_gaussian


def psd_inverse(x: Tensor) -> Tensor:
    """Inverse of SPD matrices ``(..., C, C)`` via Cholesky: ``X = L L^T``, return ``(L L^T)^-1``.

    Raises ``torch.linalg.LinAlgError`` if some matrix is not positive definite.
    """
    dtype = x.dtype
    L = torch.linalg.cholesky(x.to(acc_dtype(dtype)))
    return torch.cholesky_inverse(L).to(dtype)


def gm_to_gaussian(gm: GaussianMixture | GaussianMixtureCov, cov_scale: float = 1.0) -> tuple[Gaussian, Tensor, Tensor]:
    """Moment-matched full-covariance Gaussian per pixel (channels-last).

    ``m = sum_k w_k mu_k``; ``Sigma = cov_scale * (sum_k w_k d_k d_k^T + Sigma_within)`` with
    ``d_k = mu_k - m`` and ``Sigma_within = sum_k w_k Sigma_k`` (``s^2 I`` for a shared iso std).

    Accepts the iso layout or the covs layout. Returns ``(Gaussian(mean (..., H, W, C),
    cov (..., H, W, C, C)), diffs (..., K, H, W, C), within (..., 1, H|1, W|1, C, C))``;
    ``within`` is the (weight-averaged) within-component covariance before ``cov_scale``.
    """
    if isinstance(gm, GaussianMixtureCov):
        dtype = gm.means.dtype
        work = acc_dtype(*(t.dtype for t in gm))
        means, covs, logweights = (t.to(work) for t in gm)
        if covs.shape[-5] not in (1, means.shape[-4]):
            raise ValueError(f"gm.covs must have 1 or K={means.shape[-4]} components, got {covs.shape[-5]}")
        w = logweights.exp().unsqueeze(-1)  # (..., K, H, W, 1)
        if covs.shape[-5] == 1:
            within = covs
        else:
            within = (w.unsqueeze(-1) * covs).sum(dim=-5, keepdim=True)
    else:
        check_gm(gm)
        gm, dtype = gm_in_acc_dtype(gm)
        means = gm.means.movedim(-3, -1)  # (..., K, H, W, C)
        w = gm.weights.squeeze(-3).unsqueeze(-1)
        var = gm.variances.squeeze(-3)  # (..., 1|K, H|1, W|1)
        if var.shape[-3] != 1:
            var = (w.squeeze(-1) * var).sum(dim=-3, keepdim=True)
        eye = torch.eye(means.shape[-1], dtype=means.dtype, device=means.device)
        within = var[..., None, None] * eye
    mean = (w * means).sum(dim=-4)
    diffs = means - mean.unsqueeze(-4)
    between = (w.unsqueeze(-1) * diffs.unsqueeze(-1) * diffs.unsqueeze(-2)).sum(dim=-5)
    cov = (between + within.squeeze(-5)) * cov_scale
    return Gaussian(mean.to(dtype), cov.to(dtype)), diffs.to(dtype), within.to(dtype)


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_mul_iso_gaussian, docs/ops.md#gaussian-products products


def gm_mul_iso_gaussian(gm: GaussianMixture, gaussian: IsoGaussian, gm_power: float = 1.0,
                        gaussian_power: float = 1.0, eps: float = 1e-6) -> GaussianMixture:
    """:func:`gm_mul_iso_gaussian_compact` with a per-pixel std expanded to per-component logstds
    ``(..., K, 1, H, W)`` (:func:`expand_pixel_logstds`)."""
    return expand_pixel_logstds(gm_mul_iso_gaussian_compact(gm, gaussian, gm_power, gaussian_power, eps))


def gm_mul_iso_gaussian_compact(
    gm: GaussianMixture,
    gaussian: IsoGaussian,
    gm_power: float = 1.0,
    gaussian_power: float = 1.0,
    eps: float = 1e-6,
) -> GaussianMixture:
    """Normalised product ``GM(x) * G(x)^r``, ``r = gaussian_power / gm_power``, per component.

    With ``v = s^2`` and ``n = max(v_g + r v, eps)``:
    ``mu'_k = (v_g mu_k + r v m_g) / n``;
    ``lambda' = log_softmax_K(lambda_k - r/2 sum_c (mu_kc - m_gc)^2 / n)``;
    ``logstd' = logstd + 1/2 log v_g - 1/2 log n``  (``v' = v v_g / (v_g + r v)``).

    ``gaussian.var`` of shape ``(..., 1, 1, 1)`` keeps a shared output std; a per-pixel
    ``(..., 1, H, W)`` var gives a per-pixel std ``(..., 1, 1, H, W)`` (the compact layout of the
    op; :func:`gm_mul_iso_gaussian` expands it to per-component logstds).

    Upstream difference: returns only the GM (upstream also returned ``gm_power`` unchanged)
    and never caches ``logstd`` into the Gaussian or ``gm_vars`` into the GM. Per-component
    stds ``(..., K, 1, H, W)`` get the k-dependent normaliser term ``-C/2 log n_k`` that upstream
    dropped (it is constant, hence irrelevant, for a shared std).
    """
    check_gm(gm)
    check_channels(gaussian.mean, gm.means.shape[-3], "gaussian.mean")
    check_floating("gaussian.var", gaussian.var)
    if gm_power == 0:
        raise ValueError("gm_power must be non-zero")
    dtype = gm.means.dtype
    work = acc_dtype(*(t.dtype for t in gm), *(t.dtype for t in gaussian))
    means, logstds, logweights = (t.to(work) for t in gm)
    mean_g = gaussian.mean.to(work).unsqueeze(-4)
    var_g = gaussian.var.to(work).unsqueeze(-4)
    r = gaussian_power / gm_power
    var = torch.exp(2 * logstds)
    norm = torch.clamp_min(var_g + r * var, eps)
    out_means = (var_g * means + r * var * mean_g) / norm
    delta = -0.5 * r * (means - mean_g).square().sum(dim=-3, keepdim=True) / norm
    if logstds.shape[-4] != 1:
        # the normaliser's determinant only cancels in the softmax for a shared std
        delta = delta - 0.5 * means.shape[-3] * torch.log(norm)
    out_logweights = torch.log_softmax(logweights + delta, dim=-4)
    out_logstds = logstds + 0.5 * torch.log(var_g) - 0.5 * torch.log(norm)
    return GaussianMixture(out_means.to(dtype), out_logstds.to(dtype), out_logweights.to(dtype))


def expand_pixel_logstds(gm: GaussianMixture) -> GaussianMixture:
    """``gm`` with a per-pixel shared std ``(..., 1, 1, H, W)`` expanded to the per-component layout
    ``(..., K, 1, H, W)``, the only GM layout that represents it; other GMs are returned as they are."""
    logstds = gm.logstds
    if logstds.shape[-2:] == (1, 1) or logstds.shape[-4] != 1:
        return gm
    K = gm.means.shape[-4]
    return GaussianMixture(gm.means, logstds.expand(*logstds.shape[:-4], K, 1, *logstds.shape[-2:]), gm.logweights)


def iso_gaussian_mul_iso_gaussian(
    gaussian_1: IsoGaussian,
    gaussian_2: IsoGaussian,
    power_1: float = 1.0,
    power_2: float = 1.0,
    eps: float = 1e-6,
) -> IsoGaussian:
    """Normalised product ``N1^p1 * N2^p2`` of isotropic Gaussians (p2 = -1: the ratio N1/N2).

    ``n = max(p1 v2 + p2 v1, eps)``; ``v = v1 v2 / n``; ``m = (p1 v2 m1 + p2 v1 m2) / n``.
    Only ``n`` is clamped: an improper ratio (p2 < 0, v1 >= v2) silently becomes a very broad
    Gaussian ``v1 v2 / eps``, as upstream.
    """
    dtype = gaussian_1.mean.dtype
    work = acc_dtype(*(t.dtype for t in (*gaussian_1, *gaussian_2)))
    m1, v1 = (t.to(work) for t in gaussian_1)
    m2, v2 = (t.to(work) for t in gaussian_2)
    norm = torch.clamp_min(power_1 * v2 + power_2 * v1, eps)
    var = v1 * v2 / norm
    mean = (power_1 * v2 * m1 + power_2 * v1 * m2) / norm
    return IsoGaussian(mean.to(dtype), var.to(dtype))


def gaussian_mul_gaussian(
    gaussian_1: Gaussian, gaussian_2: Gaussian, power_1: float = 1.0, power_2: float = 1.0
) -> Gaussian:
    """Normalised product ``N1^p1 * N2^p2`` of full-covariance Gaussians (channels-last).

    ``Sigma = (p1 Sigma1^-1 + p2 Sigma2^-1)^-1``, ``m = Sigma (p1 Sigma1^-1 m1 + p2 Sigma2^-1 m2)``;
    every inverse via :func:`psd_inverse` (raises if the product is improper).
    """
    dtype = gaussian_1.mean.dtype
    work = acc_dtype(*(t.dtype for t in (*gaussian_1, *gaussian_2)))
    m1, c1 = (t.to(work) for t in gaussian_1)
    m2, c2 = (t.to(work) for t in gaussian_2)
    p1 = power_1 * psd_inverse(c1)
    p2 = power_2 * psd_inverse(c2)
    cov = psd_inverse(p1 + p2)
    rhs = p1 @ m1.unsqueeze(-1) + p2 @ m2.unsqueeze(-1)
    mean = (cov @ rhs).squeeze(-1)
    return Gaussian(mean.to(dtype), cov.to(dtype))


def gm_mul_gaussian(
    gm: GaussianMixture, gaussian: Gaussian, gm_power: float = 1.0, gaussian_power: float = 1.0
) -> GaussianMixtureCov:
    """Iso-GM times a full-covariance Gaussian to the power ``r = b / a``; covs-layout output.

    With ``a = gm_power``, ``b = gaussian_power``, ``P_g = r Sigma_g^-1`` and ``d_k = mu_k - m_g``:
    ``Sigma' = (I / s^2 + P_g)^-1`` (shared by all k, ``(..., 1, H, W, C, C)``);
    ``mu'_k = Sigma' (mu_k / s^2 + P_g m_g)``;
    ``lambda' = log_softmax_K(lambda_k - b/2 d_k^T (b s^2 I + a Sigma_g)^-1 d_k)``.
    Requires a shared std (the k-independent normaliser cancels only then).

    Upstream difference: the ``gm_diffs``/``gm_covs`` shortcuts (only valid when the Gaussian is
    the GM's own moment match) are dropped; ``d_k`` is always recomputed. Returns only the GM.
    """
    check_gm(gm)
    check_shared_logstds(gm)
    if gm_power == 0:
        raise ValueError("gm_power must be non-zero")
    dtype = gm.means.dtype
    work = acc_dtype(*(t.dtype for t in gm), *(t.dtype for t in gaussian))
    means, logstds, logweights = (t.to(work) for t in gm)
    mean_g, cov_g = (t.to(work) for t in gaussian)
    C = means.shape[-3]
    if mean_g.shape[-1] != C or cov_g.shape[-2:] != (C, C):
        raise ValueError(f"gaussian must have C={C} channels (channels-last), got mean {tuple(mean_g.shape)}")
    r = gaussian_power / gm_power
    eye = torch.eye(C, dtype=work, device=means.device)
    var = torch.exp(2 * logstds).unsqueeze(-1)  # (..., 1, 1, 1, 1, 1)
    means_cl = means.movedim(-3, -1)  # (..., K, H, W, C)
    prec_g = (r * psd_inverse(cov_g)).unsqueeze(-5)  # (..., 1, H, W, C, C)
    mean_g = mean_g.unsqueeze(-4)  # (..., 1, H, W, C)
    cov = psd_inverse(eye / var + prec_g)
    rhs = means_cl / var.squeeze(-1) + (prec_g @ mean_g.unsqueeze(-1)).squeeze(-1)
    out_means = (cov @ rhs.unsqueeze(-1)).squeeze(-1)
    diffs = means_cl - mean_g
    mix = gaussian_power * var * eye + gm_power * cov_g.unsqueeze(-5)
    quad = (diffs * torch.linalg.solve(mix, diffs.unsqueeze(-1)).squeeze(-1)).sum(dim=-1)
    out_logweights = torch.log_softmax(logweights.squeeze(-3) - 0.5 * gaussian_power * quad, dim=-3)
    return GaussianMixtureCov(out_means.to(dtype), cov.to(dtype), out_logweights.to(dtype))


def gm_mul_gm(gm_1: GaussianMixture, gm_2: GaussianMixture) -> GaussianMixture:
    """Normalised product of two GMs: ``K1 * K2`` components, pair ``(i, j)`` at index ``i K2 + j``.

    ``mu_ij = (v2 mu_i + v1 nu_j) / (v1 + v2)``;
    ``lambda_ij = log_softmax(lambda_i + lambda'_j - 1/2 sum_c (mu_i - nu_j)^2 / (v1 + v2)
    - C/2 log(v1 + v2))``; ``logstd_ij = logstd_i + logstd'_j - 1/2 logaddexp(2 logstd_i, 2 logstd'_j)``.

    Upstream difference: per-component stds are supported (the ``-C/2 log(v1 + v2)`` normaliser
    term, constant and hence omitted upstream for shared stds, is then k-dependent).
    """
    check_gm(gm_1, "gm_1")
    check_gm(gm_2, "gm_2")
    if gm_1.means.shape[-3] != gm_2.means.shape[-3]:
        raise ValueError(
            f"gm_1 and gm_2 must have the same channel count, got {gm_1.means.shape[-3]} and {gm_2.means.shape[-3]}"
        )
    dtype = gm_1.means.dtype
    work = acc_dtype(*(t.dtype for t in (*gm_1, *gm_2)))
    m1, ls1, lw1 = (t.to(work).unsqueeze(-4) for t in gm_1)  # (..., K1, 1, ...)
    m2, ls2, lw2 = (t.to(work).unsqueeze(-5) for t in gm_2)  # (..., 1, K2, ...)
    v1, v2 = torch.exp(2 * ls1), torch.exp(2 * ls2)
    vsum = v1 + v2
    means = (v2 * m1 + v1 * m2) / vsum
    logweights = lw1 + lw2 - 0.5 * (m1 - m2).square().sum(dim=-3, keepdim=True) / vsum
    per_component = ls1.shape[-5] != 1 or ls2.shape[-4] != 1
    if per_component:
        logweights = logweights - 0.5 * m1.shape[-3] * torch.log(vsum)
    logstds = ls1 + ls2 - 0.5 * torch.logaddexp(2 * ls1, 2 * ls2)
    K1, K2 = gm_1.means.shape[-4], gm_2.means.shape[-4]
    logweights = logweights.expand(*logweights.shape[:-5], K1, K2, *logweights.shape[-3:])
    logweights = torch.log_softmax(logweights.flatten(-5, -4), dim=-4)
    if per_component:
        logstds = logstds.expand(*logstds.shape[:-5], K1, K2, *logstds.shape[-3:])
    logstds = logstds.flatten(-5, -4)
    return GaussianMixture(means.flatten(-5, -4).to(dtype), logstds.to(dtype), logweights.to(dtype))


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_sample sampling


def gm_to_sample(
    gm: GaussianMixture | GaussianMixtureCov,
    gm_power: float = 1.0,
    n_samples: int = 1,
    cov_sharpen: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral samples ``(..., N, C, H, W)``: a component per (sample, pixel), then Gaussian noise.

    Component index ``k ~ Categorical(softmax_K(gm_power * lambda))`` per pixel, shared by all
    channels; sample ``= mu_k + std_k * z`` (iso) or ``mu_k + chol(Sigma_k) z`` (covs layout,
    permuted back to channels-first). ``cov_sharpen`` divides the std by ``sqrt(gm_power)``.
    Draws: one ``torch.multinomial`` then one ``torch.randn``, both from ``generator``.

    Upstream difference: uses ``generator`` for every draw (upstream used the global RNG), and
    ``cov_sharpen`` also applies to a single shared covariance in the covs layout (upstream
    ignored it on that path).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if isinstance(gm, GaussianMixtureCov):
        return _gm_cov_to_sample(gm, gm_power, n_samples, cov_sharpen, generator)
    check_gm(gm)
    gm, dtype = gm_in_acc_dtype(gm)
    means, logstds, logweights = gm
    batch = gm_batch_shape(gm)
    K, C, H, W = means.shape[-4:]
    logits = (gm_power * logweights).expand(*batch, K, 1, H, W).squeeze(-3).movedim(-3, -1)
    idx = _draw_component_indices(logits, n_samples, generator)  # (..., H, W, N)
    idx = idx.movedim(-1, -3).unsqueeze(-3)  # (..., N, 1, H, W)
    chosen = torch.gather(means.expand(*batch, K, C, H, W), -4, idx.expand(*batch, n_samples, C, H, W))
    if logstds.shape[-4] != 1:
        logstds = torch.gather(logstds.expand(*batch, K, 1, H, W), -4, idx)
    std = torch.exp(logstds)
    if cov_sharpen:
        std = std / math.sqrt(gm_power)
    noise = torch.randn(chosen.shape, generator=generator, dtype=chosen.dtype, device=chosen.device)
    return (chosen + std * noise).to(dtype)


def _gm_cov_to_sample(gm, gm_power, n_samples, cov_sharpen, generator):
    dtype = gm.means.dtype
    work = acc_dtype(*(t.dtype for t in gm))
    means, covs, logweights = (t.to(work) for t in gm)
    K, H, W, C = means.shape[-4:]
    if covs.shape[-5] not in (1, K):
        raise ValueError(f"gm.covs must have 1 or K={K} components, got {covs.shape[-5]}")
    batch = torch.broadcast_shapes(means.shape[:-4], covs.shape[:-5], logweights.shape[:-3])
    logits = (gm_power * logweights).expand(*batch, K, H, W).movedim(-3, -1)
    idx = _draw_component_indices(logits, n_samples, generator).movedim(-1, -3)  # (..., N, H, W)
    chosen = torch.gather(means.expand(*batch, K, H, W, C), -4, idx.unsqueeze(-1).expand(*batch, n_samples, H, W, C))
    chol = torch.linalg.cholesky(covs)
    if covs.shape[-5] != 1:
        chol = torch.gather(
            chol.expand(*batch, K, H, W, C, C),
            -5,
            idx[..., None, None].expand(*batch, n_samples, H, W, C, C),
        )
    if cov_sharpen:
        chol = chol / math.sqrt(gm_power)
    noise = torch.randn(chosen.shape, generator=generator, dtype=work, device=chosen.device)
    samples = chosen + (chol @ noise.unsqueeze(-1)).squeeze(-1)
    return samples.movedim(-1, -3).to(dtype)


# ----------------------------------------------------------------------------------------
# docs/ops.md#log-densities-kl-and-entropy, docs/ops.md#gm_logprob densities


def iso_gaussian_logprob(gaussian: IsoGaussian, samples: Tensor) -> Tensor:
    """Log density of ``samples (..., N, C, H, W)`` summed over channels: ``(..., N, H, W)``.

    ``log p = -1/2 sum_c (x_c - m_c)^2 / v - C/2 log v - C/2 log 2pi``.
    """
    dtype = samples.dtype
    work = acc_dtype(samples.dtype, *(t.dtype for t in gaussian))
    mean = gaussian.mean.to(work).unsqueeze(-4)
    var = gaussian.var.to(work).unsqueeze(-4)
    x = samples.to(work)
    C = x.shape[-3]
    logprob = -0.5 * ((x - mean).square() / var).sum(dim=-3, keepdim=True) - 0.5 * C * (torch.log(var) + LOG_2PI)
    return logprob.squeeze(-3).to(dtype)


def gm_cov_logprob(gm: GaussianMixtureCov, samples: Tensor) -> Tensor:
    """Log density of ``samples (..., N, C, H, W)`` under a covs-layout GM: ``(..., N, H, W)``.

    ``c_k = -1/2 (|L_k^-1 (x - mu_k)|^2 + log det Sigma_k) - C/2 log 2pi`` with
    ``Sigma_k = L_k L_k^T``; ``log p = logsumexp_K(lambda_k + c_k)``.

    Upstream difference: solves with the Cholesky factor of ``Sigma`` instead of factoring
    ``psd_inverse(Sigma)`` (better conditioned), caches nothing in the input, and returns only
    the mixture log density (not the per-component terms).
    """
    dtype = samples.dtype
    work = acc_dtype(samples.dtype, *(t.dtype for t in gm))
    means, covs, logweights = (t.to(work) for t in gm)
    C = means.shape[-1]
    if samples.shape[-3] != C:
        raise ValueError(f"samples must have C={C} channels at dim -3, got {tuple(samples.shape)}")
    x = samples.to(work).movedim(-3, -1).unsqueeze(-4)  # (..., N, 1, H, W, C)
    chol = torch.linalg.cholesky(covs).unsqueeze(-6)  # (..., 1, 1|K, H, W, C, C)
    diffs = x - means.unsqueeze(-5)  # (..., N, K, H, W, C)
    y = torch.linalg.solve_triangular(chol, diffs.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=-1)
    comp = logweights.unsqueeze(-4) - 0.5 * (y.square().sum(dim=-1) + logdet) - 0.5 * C * LOG_2PI
    return torch.logsumexp(comp, dim=-3).to(dtype)


# ----------------------------------------------------------------------------------------
# docs/ops.md#gm_temperature


def gm_temperature(gm: GaussianMixture, temperature: float | Tensor, eps: float = 1e-6) -> GaussianMixture:
    """Tempered GM: ``T = max(T, eps)``; ``lambda' = log_softmax_K(lambda / T)``; ``logstd' = logstd + 1/2 log T``.

    ``temperature`` is a float or a tensor broadcastable against ``(..., K, 1, H, W)`` and
    ``logstds``.
    """
    check_gm(gm)
    gm_w, dtype = gm_in_acc_dtype(gm)
    if isinstance(temperature, Tensor):
        t = torch.clamp_min(temperature.to(gm_w.means.dtype), eps)
        log_t = torch.log(t)
    else:
        t = max(float(temperature), eps)
        log_t = math.log(t)
    logweights = torch.log_softmax(gm_w.logweights / t, dim=-4)
    logstds = gm_w.logstds + 0.5 * log_t
    return GaussianMixture(gm.means, logstds.to(dtype), logweights.to(dtype))


def gm_transpose_t_first(gm: GaussianMixture) -> GaussianMixture:
    """Video layout ``(..., K, C, F, H, W) -> (..., F, K, C, H, W)`` for means, logstds, logweights."""
    for name, t in zip(gm._fields, gm):
        if t.dim() < 5:
            raise ValueError(f"gm.{name} must have shape (..., K, C|1, F, H, W), got {tuple(t.shape)}")
    return gm.map(lambda t: t.movedim(-3, -5))
