"""Knothe-Rosenblatt transport for a given rotation: ``gm_kr_inverse`` (N(0, I) -> GM) and ``gm_kr_forward``
(GM -> N(0, I)), inference only; the wrappers compute the eigen-rotation.

Op layout: GM with a shared std; samples ``(..., N, C, H, W)``; ``rotation (..., 1|H, 1|W, C, C)`` and
``uniforms (..., N, 1, H, W)`` in the accumulation dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow import _validation as V
from gmflow._library import SampleInput, define, empty_like_means, register_wrapper_example
from gmflow.reference import gm1d, transport
from gmflow.reference.common import acc_dtype, categorical_from_uniforms, check_gm, check_shared_logstds, result_dtype
from gmflow.types import GaussianMixture, GaussianMixture1D

from .sample_data import BOOLEANS, extra, gm_tensors, random_rotation
from .support import names_nan_inputs, needs_grad, same_dtype

#: The typed wrappers this module adds to :mod:`gmflow.ops`.
__all__ = ["gm_kr_rotation", "gaussian_samples_to_gm_samples", "gm_samples_to_gaussian_samples"]

_SQRT_2 = math.sqrt(2.0)

inverse_op = define(
    "gm_kr_inverse(Tensor means, Tensor logstds, Tensor logweights, Tensor gaussian_samples, Tensor rotation, "
    "Tensor? uniforms=None, int? n_axes=None, int n_steps=16, float eps=1e-06, float max_step_size=1.5) -> Tensor"
)
forward_op = define(
    "gm_kr_forward(Tensor means, Tensor logstds, Tensor logweights, Tensor samples, Tensor rotation, "
    "int? n_axes=None, float eps=1e-06) -> Tensor"
)


def _full_batch(t: Tensor, batch, dtype) -> Tensor:
    return t.expand(*batch, *t.shape[-4:]).to(dtype).contiguous()


def _rotated_means(means: Tensor, rotation: Tensor) -> Tensor:
    """``mu~ = mu V``: ``(..., K, C, H, W)`` with ``V (..., 1|H, 1|W, C, C)`` -> ``(..., K, H, W, C)``."""
    return (means.movedim(-3, -1).unsqueeze(-2) @ rotation.unsqueeze(-5)).squeeze(-2)


def reference_inverse(means, logstds, logweights, gaussian_samples, rotation, uniforms=None, n_axes=None, n_steps=16,
                      eps=1e-6, max_step_size=1.5):
    """KR map N(0, I) -> GM for a given rotation ``V``: ``(batch, N, C, H, W)``.

    ``gaussian_samples`` are standard normals in the rotated basis (``g~``). Axes ``a < n_axes``:
    the sequential inverse-CDF solves of :func:`gmflow.reference.transport.gaussian_samples_to_gm_samples`
    (``n_steps`` Newton steps each). Axes ``a >= n_axes``: ancestral draw from the GM conditioned
    on the first ``n_axes`` axes, the component chosen by
    :func:`gmflow.reference.common.categorical_from_uniforms` at ``uniforms`` and the noise taken
    from ``g~_a``: ``x~_a = mu~_{k a} + s g~_a``. Returns ``x~ V^T``.
    """
    C = means.shape[-3]
    A = C if n_axes is None else n_axes
    dtype = means.dtype
    work = acc_dtype(means.dtype)
    mu, ls, lw, g, V = (t.to(work) for t in (means, logstds, logweights, gaussian_samples, rotation))
    operands = [means, logstds, logweights, gaussian_samples, rotation] + ([uniforms] if A < C else [])
    batch = torch.broadcast_shapes(*(t.shape[:-4] for t in operands))
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
    return _full_batch(x.movedim(-1, -3), batch, dtype)


def reference_forward(means, logstds, logweights, samples, rotation, n_axes=None, eps=1e-6):
    """KR map GM -> N(0, I) for a given rotation ``V``, first ``n_axes`` rotated axes: ``(batch, N, n_axes, H, W)``.

    Same formulas as :func:`gmflow.reference.transport.gm_samples_to_gaussian_samples`
    (``axis_aligned=True``), without the random trailing axes.
    """
    C = means.shape[-3]
    A = C if n_axes is None else n_axes
    dtype = means.dtype
    work = acc_dtype(means.dtype)
    mu, ls, lw, x, V = (t.to(work) for t in (means, logstds, logweights, samples, rotation))
    batch = torch.broadcast_shapes(*(t.shape[:-4] for t in (means, logstds, logweights, samples, rotation)))
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
    return _full_batch(g.movedim(-1, -3), batch, dtype)


@inverse_op.register_fallback
def _inverse_fallback(means, logstds, logweights, gaussian_samples, rotation, uniforms=None, n_axes=None, n_steps=16,
                      eps=1e-6, max_step_size=1.5):
    V.kr_inverse_shape("gm_kr_inverse", means, logstds, logweights, gaussian_samples, rotation, uniforms, n_axes,
                       n_steps, eps, max_step_size)
    return reference_inverse(means, logstds, logweights, gaussian_samples, rotation, uniforms, n_axes, n_steps, eps,
                             max_step_size)


@inverse_op.register_fake
def _inverse_fake(means, logstds, logweights, gaussian_samples, rotation, uniforms=None, n_axes=None, n_steps=16,
                  eps=1e-6, max_step_size=1.5):
    return empty_like_means(means, V.kr_inverse_shape("gm_kr_inverse", means, logstds, logweights, gaussian_samples,
                                                      rotation, uniforms, n_axes, n_steps, eps, max_step_size))


def _rotation_and_uniforms(gm, samples):
    C, H, W = gm.means.shape[-3:]
    acc = acc_dtype(gm.means.dtype)
    g = torch.Generator().manual_seed(5)
    V_ = torch.linalg.qr(torch.randn(*gm.means.shape[:-4], 1, 1, C, C, generator=g, dtype=acc))[0]
    u = torch.rand(*samples.shape[:-3], 1, H, W, generator=g, dtype=acc)
    return V_.to(gm.means.device), u.to(gm.means.device)


@inverse_op.register_sample_inputs
def _inverse_inputs(device):
    for gm, samples in gm_tensors(device, shared_std_only=True):
        rotation, u = _rotation_and_uniforms(gm, samples)
        yield SampleInput((*gm, samples, rotation, u, 1, 4))
        yield SampleInput((*gm, samples, rotation))


def _identity_rotation(r):
    return torch.eye(r.C, dtype=r.acc).expand(r.B, 1, 1, r.C, r.C).contiguous()


@inverse_op.register_valid_call
def _inverse_valid_call(r):
    return dict(**r.gm, gaussian_samples=r.rand(r.B, r.N, r.C, r.H, r.W), rotation=_identity_rotation(r),
                uniforms=r.rand(r.B, r.N, 1, r.H, r.W, dtype=r.acc, lo=0.0), n_axes=max(r.C - 1, 1), n_steps=16,
                eps=1e-6, max_step_size=1.5)


_PARITY_CASES = {"max_k": 16, "logstd_layouts": ("shared",)}


def _parity_operands(case, choose):
    """GM, samples, rotation, uniforms (for the axes past ``n_axes``) and ``n_axes`` of a KR call."""
    means, logstds, logweights, samples = case.tensors()
    n_axes = choose("n_axes", range(1, case.C + 1))
    rotation = random_rotation(case, choose("per_pixel_rotation", BOOLEANS))
    uniforms = None
    if n_axes < case.C:
        uniforms = extra(case, "samples", (case.N, 1, case.H, case.W), 8, kind="uniform", dtype=acc_dtype(case.dtype))
    return means, logstds, logweights, samples, rotation, uniforms, n_axes


@inverse_op.register_parity_args(factor=10.0, case_options=_PARITY_CASES, newton_steps_arg=7)
def _inverse_parity_args(case, choose):
    n_steps = choose("n_steps", (0, 2, 16))
    return (*_parity_operands(case, choose), n_steps, 1e-6, 1.5)


@forward_op.register_fallback
def _forward_fallback(means, logstds, logweights, samples, rotation, n_axes=None, eps=1e-6):
    V.kr_forward_shape("gm_kr_forward", means, logstds, logweights, samples, rotation, n_axes, eps)
    return reference_forward(means, logstds, logweights, samples, rotation, n_axes, eps)


@forward_op.register_fake
def _forward_fake(means, logstds, logweights, samples, rotation, n_axes=None, eps=1e-6):
    return empty_like_means(means, V.kr_forward_shape("gm_kr_forward", means, logstds, logweights, samples, rotation,
                                                      n_axes, eps))


@forward_op.register_sample_inputs
def _forward_inputs(device):
    for gm, samples in gm_tensors(device, shared_std_only=True):
        rotation, _ = _rotation_and_uniforms(gm, samples)
        yield SampleInput((*gm, samples, rotation), {"n_axes": 1})
        yield SampleInput((*gm, samples, rotation))


@forward_op.register_valid_call
def _forward_valid_call(r):
    return dict(**r.gm, samples=r.rand(r.B, r.N, r.C, r.H, r.W), rotation=_identity_rotation(r), n_axes=None, eps=1e-6)


def _u_space(x: Tensor) -> Tensor:
    """erf(x / sqrt 2): KR outputs compared where erfinv's amplification of rounding is undone."""
    return torch.erf(x.double() / math.sqrt(2))


@forward_op.register_parity_args(factor=2.0, case_options=_PARITY_CASES, float_view=_u_space)
def _forward_parity_args(case, choose):
    means, logstds, logweights, samples, rotation, _, n_axes = _parity_operands(case, choose)
    return means, logstds, logweights, samples, rotation, n_axes, 1e-6


# ------------------------------------------------------------------------------------------------
# Wrappers


def _kr_rotation(gm: GaussianMixture, axis_aligned: bool, work: torch.dtype) -> Tensor:
    """:func:`gmflow.reference.transport.gm_kr_rotation` of a GM with a shared std, computing the
    (pixel-averaged) moment-matched covariance with one contraction over (K, H, W) instead of a
    ``(..., K, H, W, C, C)`` intermediate."""
    if axis_aligned and gm.means.shape[-2:].numel() == 0:  # no pixel to average over: the reference's identity
        return transport.gm_kr_rotation(gm, axis_aligned).to(work)
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
        return transport.rotation_from_covariance(cov)


@names_nan_inputs
def gm_kr_rotation(gm: GaussianMixture, axis_aligned: bool = True) -> Tensor:
    """Eigenvectors of the moment-matched covariance, columns by descending eigenvalue (docs/ops.md#the-rotation).

    ``axis_aligned=True``: one rotation ``(..., 1, 1, C, C)`` from the covariance averaged over pixels
    (the identity for an empty grid); ``False``: one per pixel ``(..., H, W, C, C)``. Working dtype (fp32, fp64 for fp64 inputs), no grad;
    each eigenvector's largest-magnitude entry is positive. Same as
    :func:`gmflow.reference.transport.gm_kr_rotation`.
    """
    check_gm(gm)
    if gm.logstds.shape[-4:] != (1, 1, 1, 1):
        return transport.gm_kr_rotation(gm, axis_aligned)
    return _kr_rotation(gm, axis_aligned, acc_dtype(*(t.dtype for t in gm)))


@register_wrapper_example(gm_kr_rotation)
def _rotation_example(gm, given):
    return gm_kr_rotation(gm)


def _kr_setup(gm, samples, samples_name, n_axes, axis_aligned, rotation):
    """Checks (same messages as the reference), working dtype, rotation; returns None if the native
    kernel cannot serve the call (then the caller runs the reference)."""
    check_gm(gm)
    check_shared_logstds(gm)
    C = gm.means.shape[-3]
    transport.check_samples(samples, C, samples_name)
    A = transport.resolve_n_axes(n_axes, C)
    if needs_grad(*gm, samples) or samples.shape[-2:] != gm.means.shape[-2:]:
        return None
    dtype = result_dtype(gm.means, samples)
    work = acc_dtype(samples.dtype, *(t.dtype for t in gm))
    data = dtype if dtype in (torch.float16, torch.bfloat16) and same_dtype(*gm, samples) else work
    if rotation is None:
        V_ = _kr_rotation(gm, axis_aligned, work)
    else:
        if rotation.dim() < 4 or rotation.shape[-2:] != (C, C):
            raise ValueError(f"rotation must have shape (..., 1|H, 1|W, C={C}, C={C}), got {tuple(rotation.shape)}")
        V_ = rotation.detach().to(work)
    if V_.shape[-4:-2] not in ((1, 1), tuple(gm.means.shape[-2:])):
        return None
    gm_d = gm.map(lambda t: t if t.dtype == data else t.to(data))
    return gm_d, samples if samples.dtype == data else samples.to(data), V_, A, dtype, work


@names_nan_inputs
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
    """Knothe-Rosenblatt map N(0, I) -> GM (docs/ops.md#gm_kr_inverse): standard normals ``(..., N, C, H, W)`` to GM
    samples.

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
    n_steps = V.check_steps("gaussian_samples_to_gm_samples", n_steps)
    if setup is None:
        return transport.gaussian_samples_to_gm_samples(
            gm, gaussian_samples, n_axes, n_steps, eps, max_step_size, axis_aligned, rotation, generator
        )
    gm_d, g, V_, A, dtype, work = setup
    C = gm.means.shape[-3]
    if not axis_aligned:
        g = (g.to(work).movedim(-3, -1).unsqueeze(-2) @ V_.unsqueeze(-5)).squeeze(-2).movedim(-1, -3).to(g.dtype)
    uniforms = None
    if A < C:
        rest = torch.randn(*g.shape[:-3], C - A, *g.shape[-2:], generator=generator, dtype=work, device=g.device)
        g = torch.cat([g[..., :A, :, :], rest.to(g.dtype)], dim=-3)
        uniforms = torch.rand(*g.shape[:-3], 1, *g.shape[-2:], generator=generator, dtype=work, device=g.device)
    x = torch.ops.gmflow.gm_kr_inverse(*gm_d, g, V_, uniforms, A, n_steps, float(eps), float(max_step_size))
    return x.to(dtype)


@register_wrapper_example(gaussian_samples_to_gm_samples)
def _inverse_example(gm, given):
    return gaussian_samples_to_gm_samples(gm, given.samples)


@names_nan_inputs
def gm_samples_to_gaussian_samples(
    gm: GaussianMixture,
    samples: Tensor,
    n_axes: int | None = None,
    eps: float = 1e-6,
    axis_aligned: bool = True,
    rotation: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Knothe-Rosenblatt map GM -> N(0, I) (docs/ops.md#gm_kr_forward): ``samples (..., N, C, H, W)`` to standard
    normals.

    One native kernel launch computes, per pixel and rotated axis ``a < n_axes``,
    ``g_a = sqrt 2 erfinv(clamp(sum_k softmax(lambda - S_a / 2)_k erf(z_ka / sqrt 2), +-(1 - eps)))``.
    Axes ``>= n_axes`` get ``torch.randn`` from ``generator``. ``axis_aligned=True`` returns ``g`` in the
    rotated basis; ``False`` returns ``g V^T``. Needs a shared std. Same semantics as
    :func:`gmflow.reference.transport.gm_samples_to_gaussian_samples`.
    """
    setup = _kr_setup(gm, samples, "samples", n_axes, axis_aligned, rotation)
    if setup is None:
        return transport.gm_samples_to_gaussian_samples(gm, samples, n_axes, eps, axis_aligned, rotation, generator)
    gm_d, x, V_, A, dtype, work = setup
    C = gm.means.shape[-3]
    g = torch.ops.gmflow.gm_kr_forward(*gm_d, x, V_, A, float(eps))
    if A < C or not axis_aligned:
        g = g.to(work)
    if A < C:
        extra = torch.randn(*g.shape[:-3], C - A, *g.shape[-2:], generator=generator, dtype=work, device=g.device)
        g = torch.cat([g, extra], dim=-3)
    if not axis_aligned:
        g = (g.movedim(-3, -1).unsqueeze(-2) @ V_.transpose(-1, -2).unsqueeze(-5)).squeeze(-2).movedim(-1, -3)
    return g.to(dtype)


@register_wrapper_example(gm_samples_to_gaussian_samples)
def _forward_example(gm, given):
    return gm_samples_to_gaussian_samples(gm, given.samples)
