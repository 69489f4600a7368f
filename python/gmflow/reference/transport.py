"""Pure-PyTorch reference of Knothe–Rosenblatt transport between N(0, I) and an iso-GM
(docs/ops.md#knothe-rosenblatt-transport).

Per pixel, across channels, in the eigenbasis ``V`` of the GM's moment-matched covariance.
Because every component has the same isotropic std ``s``, the conditional of rotated axis
``a`` given axes ``< a`` is a 1-D GM with the rotated means, std ``s`` and logits
``lambda_k - 1/2 sum_{a' < a} z_{k, a'}^2``.

Both directions accept a precomputed ``rotation`` (from :func:`gm_kr_rotation`) so a
forward/inverse pair can share exactly the same eigenvectors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow._validation import GMFlowInputError, check_floating
from gmflow.types import GaussianMixture, GaussianMixture1D

from .algebra import gm_to_gaussian, gm_to_sample
from .common import acc_dtype, check_gm, check_shared_logstds, gm_in_acc_dtype, result_dtype
from .density import gm_logprob
from .gm1d import gm1d_inverse_cdf

__all__ = [
    "check_samples",
    "gaussian_samples_to_gm_samples",
    "gm_kr_rotation",
    "gm_kr_slice",
    "gm_samples_to_gaussian_samples",
    "gm_spectral_logprobs",
    "hartley2",
    "resolve_n_axes",
    "rotation_from_covariance",
]

_SQRT_2 = math.sqrt(2.0)


def gm_kr_rotation(gm: GaussianMixture, axis_aligned: bool = True) -> Tensor:
    """Eigenvectors of the moment-matched covariance, columns by descending eigenvalue.

    ``axis_aligned=True``: covariance averaged over H, W -> ``(..., 1, 1, C, C)`` (one rotation
    shared by all pixels; the identity for an empty grid); ``False``: one per pixel, ``(..., H, W, C, C)``.
    Computed without grad in the working dtype (fp32, or fp64 for fp64 inputs).

    Upstream difference: each eigenvector's sign is fixed (largest-magnitude entry positive),
    which removes the sign ambiguity of ``eigh`` across devices/batches.
    """
    check_gm(gm)
    with torch.no_grad():
        gm_w, _ = gm_in_acc_dtype(gm)
        cov = gm_to_gaussian(gm_w)[0].cov
        if axis_aligned:
            cov = cov.mean(dim=(-4, -3), keepdim=True)
            if gm.means.shape[-2:].numel() == 0:  # no pixel to average over: no preferred axes
                return torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand(cov.shape).clone()
        return rotation_from_covariance(cov)


def rotation_from_covariance(cov: Tensor) -> Tensor:
    """Eigenvectors of symmetric ``cov (..., C, C)`` as columns, by descending eigenvalue, each
    with its largest-magnitude entry positive (the convention of :func:`gm_kr_rotation`)."""
    with torch.no_grad():
        try:
            _, vecs = torch.linalg.eigh(cov)
        except torch.linalg.LinAlgError:
            what = "NaN/Inf values" if not torch.isfinite(cov).all() else "values too large"
            raise GMFlowInputError(
                f"gm_kr_rotation(): the moment-matched covariance (..., C, C) of 'gm' has {what} for {cov.dtype}; "
                "'gm.means', 'gm.logstds' and 'gm.logweights' must be finite and their squared spread must fit it"
            ) from None
        vecs = vecs.flip(-1)
        pivot = torch.gather(vecs, -2, vecs.abs().argmax(dim=-2, keepdim=True))
        return vecs * torch.where(pivot < 0, -1.0, 1.0).to(vecs.dtype)


def _row_times(x: Tensor, matrix: Tensor) -> Tensor:
    """Row vectors times matrices: ``x (..., C) @ matrix (..., C, A) -> (..., A)`` with broadcasting."""
    return (x.unsqueeze(-2) @ matrix).squeeze(-2)


def _resolve_rotation(gm, rotation, axis_aligned, work):
    C = gm.means.shape[-3]
    if rotation is None:
        return gm_kr_rotation(gm, axis_aligned).to(work)
    if rotation.dim() < 4 or rotation.shape[-2:] != (C, C):
        raise ValueError(f"rotation must have shape (..., 1|H, 1|W, C={C}, C={C}), got {tuple(rotation.shape)}")
    return rotation.detach().to(work)


def resolve_n_axes(n_axes, C):
    if n_axes is None:
        return C
    if not 1 <= n_axes <= C:
        raise ValueError(f"n_axes must be in [1, C={C}], got {n_axes}")
    return n_axes


def check_samples(samples, C, name):
    check_floating(name, samples)
    if samples.dim() < 4 or samples.shape[-3] != C:
        raise ValueError(f"{name} must have shape (..., N, C={C}, H, W), got {tuple(samples.shape)}")


def gm_samples_to_gaussian_samples(
    gm: GaussianMixture,
    samples: Tensor,
    n_axes: int | None = None,
    eps: float = 1e-6,
    axis_aligned: bool = True,
    rotation: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """KR map GM -> N(0, I): ``samples (..., N, C, H, W)`` to standard normals of the same shape.

    With ``x~ = x V[:, :A]``, ``mu~_k = mu_k V[:, :A]`` (``A = n_axes``), ``z_ka = (x~_a - mu~_ka) / s``
    and conditional weights ``pi_ka = softmax_K(lambda_k - 1/2 sum_{a' < a} z_ka'^2)``:
    ``u_a = sum_k pi_ka erf(z_ka / sqrt 2)``, ``g_a = sqrt 2 erfinv(clamp(u_a, -1 + eps, 1 - eps))``.
    Axes ``>= A`` get fresh ``randn`` from ``generator``. ``axis_aligned=True`` returns ``g`` in the
    rotated basis; ``False`` returns ``g V^T``.

    Requires a shared std ``logstds (..., 1, 1, 1, 1)``. fp64 inputs are computed in fp64.
    Upstream difference: precomputed ``rotation`` accepted; ``generator`` used for the draws.
    """
    check_gm(gm)
    check_shared_logstds(gm)
    C = gm.means.shape[-3]
    check_samples(samples, C, "samples")
    A = resolve_n_axes(n_axes, C)
    dtype = result_dtype(gm.means, samples)
    work = acc_dtype(samples.dtype, *(t.dtype for t in gm))
    means, logstds, logweights = (t.to(work) for t in gm)
    V = _resolve_rotation(gm, rotation, axis_aligned, work)
    Va = V[..., :A].unsqueeze(-5)  # (..., 1, 1|H, 1|W, C, A)
    x_rot = _row_times(samples.to(work).movedim(-3, -1), Va)  # (..., N, H, W, A)
    mu_rot = _row_times(means.movedim(-3, -1), Va)  # (..., K, H, W, A)
    z = (x_rot.unsqueeze(-4) - mu_rot.unsqueeze(-5)) * torch.exp(-logstds).unsqueeze(-1)  # (..., N, K, H, W, A)
    sq = z.square()
    # exclusive cumulative sum: axis a is conditioned on axes < a only
    sq_before = torch.cat([torch.zeros_like(sq[..., :1]), sq[..., :-1].cumsum(dim=-1)], dim=-1)
    logits = logweights.squeeze(-3).unsqueeze(-4).unsqueeze(-1) - 0.5 * sq_before
    weights = torch.softmax(logits, dim=-4)
    u = (weights * torch.erf(z / _SQRT_2)).sum(dim=-4)  # (..., N, H, W, A)
    g = _SQRT_2 * torch.erfinv(torch.clamp(u, -1 + eps, 1 - eps))
    if A < C:
        extra = torch.randn(*g.shape[:-1], C - A, generator=generator, dtype=work, device=g.device)
        g = torch.cat([g, extra], dim=-1)
    if not axis_aligned:
        g = _row_times(g, V.transpose(-1, -2).unsqueeze(-5))
    return g.movedim(-1, -3).to(dtype)


def gm_kr_slice(
    last_x: Tensor,
    last_means: Tensor,
    logstds: Tensor,
    logweights: Tensor,
    sq_sum: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One KR conditioning step: weights of the next axis given the previous rotated coordinate.

    ``last_x (..., N, H, W)``, ``last_means (..., K, H, W)`` (rotated means of that axis),
    ``logstds (..., 1, 1, 1)``, ``logweights (..., K, H, W)`` (unconditional), ``sq_sum``
    ``(..., N, K, H, W)`` or None (zero). ``S = sq_sum + ((last_x - last_means) / s)^2``;
    returns ``(log_softmax_K(logweights - S / 2) (..., N, K, H, W), S)``.
    """
    z = (last_x.unsqueeze(-3) - last_means.unsqueeze(-4)) * torch.exp(-logstds.unsqueeze(-4))
    total = z.square() if sq_sum is None else sq_sum + z.square()
    return torch.log_softmax(logweights.unsqueeze(-4) - 0.5 * total, dim=-3), total


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
    """KR map N(0, I) -> GM: standard normals ``(..., N, C, H, W)`` to GM samples of the same shape.

    ``g~ = g`` (``axis_aligned=True``: g is already in the rotated basis) or ``g V[:, :A]``;
    ``u = erf(g~ / sqrt 2)``. For each rotated axis ``a < A`` in turn: invert the scaled CDF of
    the conditional 1-D GM (rotated means of axis a, std s, logits from :func:`gm_kr_slice`)
    with :func:`gm1d_inverse_cdf` (``n_steps`` Newton steps from the per-sample moment-matched
    quantile ``g~_a sqrt(v) + m``). Axes ``>= A`` are drawn from the GM conditioned on the first
    ``A`` axes (one component per pixel + ``s * randn``, from ``generator``). Finally ``x = x~ V^T``.
    K = 1 reduces to the affine map ``x = mu + s g~ V^T``.

    Requires a shared std. Differentiable w.r.t. the GM through the implicit inverse-CDF
    gradient (the rotation is treated as a constant).

    Upstream difference: no ``backward_steps``/``force_fp32`` (16-bit is computed in fp32, fp64
    in fp64); precomputed ``rotation`` accepted; ``generator`` used for the draws.
    """
    check_gm(gm)
    check_shared_logstds(gm)
    C = gm.means.shape[-3]
    check_samples(gaussian_samples, C, "gaussian_samples")
    A = resolve_n_axes(n_axes, C)
    dtype = result_dtype(gm.means, gaussian_samples)
    work = acc_dtype(gaussian_samples.dtype, *(t.dtype for t in gm))
    means, logstds, logweights = (t.to(work) for t in gm)
    V = _resolve_rotation(gm, rotation, axis_aligned, work)
    mu_rot = _row_times(means.movedim(-3, -1), V.unsqueeze(-5))  # (..., K, H, W, C)
    g = gaussian_samples.to(work).movedim(-3, -1)  # (..., N, H, W, C)
    g_rot = g[..., :A] if axis_aligned else _row_times(g, V[..., :A].unsqueeze(-5))
    u = torch.erf(g_rot / _SQRT_2)
    logstds_1d = logstds.squeeze(-1)  # (..., 1, 1, 1)
    logweights_1d = logweights.squeeze(-3)  # (..., K, H, W)

    gm1d = GaussianMixture1D(mu_rot[..., 0], logstds_1d, logweights_1d)
    coords = [gm1d_inverse_cdf(gm1d, u[..., 0], n_steps, eps, max_step_size, gaussian_samples=g_rot[..., 0])]
    sq_sum = None
    for a in range(1, A):
        cond_logweights, sq_sum = gm_kr_slice(coords[-1], mu_rot[..., a - 1], logstds_1d, logweights_1d, sq_sum)
        # the GM batch now includes the sample dim: kernel-N = 1 per sample
        gm1d = GaussianMixture1D(mu_rot[..., a].unsqueeze(-4), logstds_1d.unsqueeze(-4), cond_logweights)
        x_a = gm1d_inverse_cdf(
            gm1d,
            u[..., a].unsqueeze(-3),
            n_steps,
            eps,
            max_step_size,
            gaussian_samples=g_rot[..., a].unsqueeze(-3),
        )
        coords.append(x_a.squeeze(-3))
    x_rot = torch.stack(coords, dim=-1)  # (..., N, H, W, A)
    if A < C:
        cond_logweights, _ = gm_kr_slice(coords[-1], mu_rot[..., A - 1], logstds_1d, logweights_1d, sq_sum)
        rest_gm = GaussianMixture(
            mu_rot[..., A:].movedim(-1, -3).unsqueeze(-5),  # (..., 1, K, C - A, H, W)
            logstds.unsqueeze(-5),
            cond_logweights.unsqueeze(-3),  # (..., N, K, 1, H, W)
        )
        rest = gm_to_sample(rest_gm, n_samples=1, generator=generator).squeeze(-4)
        x_rot = torch.cat([x_rot, rest.movedim(-3, -1)], dim=-1)
    x = _row_times(x_rot, V.transpose(-1, -2).unsqueeze(-5))
    return x.movedim(-1, -3).to(dtype)


def hartley2(x: Tensor) -> Tensor:
    """Orthonormal 2-D Hartley transform over (H, W): ``Re fft2(x) + Im fft2(x)`` (self-inverse)."""
    dtype = x.dtype
    f = torch.fft.fft2(x.to(acc_dtype(dtype)), norm="ortho")
    return (f.real + f.imag).to(dtype)


def gm_spectral_logprobs(
    gm: GaussianMixture,
    samples: Tensor,
    power_spectrum: Tensor | None = None,
    spectral_samples: Tensor | None = None,
    n_axes: int | None = None,
    eps: float = 1e-6,
    axis_aligned: bool = True,
    rotation: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-likelihood of whole images ``samples (..., N, C, H, W)``: ``(..., N)``.

    ``base = sum_{h,w} gm_logprob(gm, samples)``. With a log power spectrum ``P (..., C, H, W)``,
    adds the Hartley-domain density ratio ``N(S; 0, diag e^P) / N(S; 0, I)``:
    ``sum_{c,h,w} [-1/2 S^2 (e^-P - 1) - 1/2 P]`` with ``S = hartley2(z)``,
    ``z = gm_samples_to_gaussian_samples(gm, samples)`` (or the given ``spectral_samples = S``).

    Upstream difference: implements this intended formula; upstream summed ``S^2`` over channels
    before multiplying by the channel-indexed ``e^-P - 1``, used ``-C/2 P`` and left a stray
    channel dim (only worked for N = 1).
    """
    check_gm(gm)
    dtype = result_dtype(gm.means, samples)
    gm_w, _ = gm_in_acc_dtype(gm)
    work = acc_dtype(samples.dtype, gm_w.means.dtype)
    gm_w = gm_w.map(lambda t: t.to(work))
    x = samples.to(work)
    logprob = gm_logprob(*gm_w, x).sum(dim=(-2, -1))
    if power_spectrum is None:
        return logprob.to(dtype)
    log_power = power_spectrum.to(work).unsqueeze(-4)
    if spectral_samples is None:
        z = gm_samples_to_gaussian_samples(
            gm_w, x, n_axes=n_axes, eps=eps, axis_aligned=axis_aligned, rotation=rotation, generator=generator
        )
        spectral = hartley2(z)
    else:
        spectral = spectral_samples.to(work)
    correction = -0.5 * spectral.square() * torch.expm1(-log_power) - 0.5 * log_power
    return (logprob + correction.sum(dim=(-3, -2, -1))).to(dtype)
