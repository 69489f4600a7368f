"""``gm_mul_iso_gaussian``: the normalised product of a GM and an isotropic Gaussian (inference only).

Op layout: GM; ``gaussian_mean (..., C, H, W)``, ``gaussian_var (..., 1, H|1, W|1)``; outputs
``means (batch, K, C, H, W)``, ``logstds (batch, K|1, 1, H|1, W|1)`` (per pixel when ``logstds`` or
``gaussian_var`` is) and ``logweights (batch, K, 1, H, W)``.
"""

from __future__ import annotations

import torch

from gmflow import _validation as V
from gmflow._library import SampleInput, define, empty_like_means, register_wrapper_example
from gmflow.reference import algebra
from gmflow.reference.common import check_channels, check_gm
from gmflow.types import GaussianMixture, IsoGaussian, check_iso_gaussian

from .sample_data import BOOLEANS, extra, gm_tensors
from .support import broadcast_view, names_nan_inputs, needs_grad, same_dtype

#: The typed wrappers this module adds to :mod:`gmflow.ops`.
__all__ = ["gm_mul_iso_gaussian"]

op = define(
    "gm_mul_iso_gaussian(Tensor means, Tensor logstds, Tensor logweights, Tensor gaussian_mean, "
    "Tensor gaussian_var, float gm_power=1.0, float gaussian_power=1.0, float eps=1e-06) -> (Tensor, Tensor, Tensor)"
)


def reference(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power=1.0, gaussian_power=1.0, eps=1e-6):
    """:func:`gmflow.reference.algebra.gm_mul_iso_gaussian_compact` in the op layout (full batch, contiguous)."""
    gm = GaussianMixture(means, logstds, logweights)
    out = algebra.gm_mul_iso_gaussian_compact(gm, IsoGaussian(gaussian_mean, gaussian_var), gm_power,
                                              gaussian_power, eps)
    batch = torch.broadcast_shapes(means.shape[:-4], logstds.shape[:-4], logweights.shape[:-4],
                                   gaussian_mean.shape[:-3], gaussian_var.shape[:-3])
    return tuple(t.expand(*batch, *t.shape[-4:]).to(means.dtype).contiguous() for t in out)


def _shapes(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power, gaussian_power, eps):
    name = "gm_mul_iso_gaussian"
    shapes = V.mul_iso_gaussian_shapes(name, means, logstds, logweights, gaussian_mean, gaussian_var)
    V.check_scalar(name, "gm_power", gm_power, V.FINITE_NONZERO)
    V.check_scalar(name, "gaussian_power", gaussian_power, V.FINITE)
    V.check_scalar(name, "eps", eps, V.FINITE_POSITIVE)
    return shapes


@op.register_fallback
def _fallback(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power=1.0, gaussian_power=1.0, eps=1e-6):
    _shapes(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power, gaussian_power, eps)
    return reference(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power, gaussian_power, eps)


@op.register_fake
def _fake(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power=1.0, gaussian_power=1.0, eps=1e-6):
    shapes = _shapes(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power, gaussian_power, eps)
    return tuple(empty_like_means(means, s) for s in shapes)


@op.register_sample_inputs
def _inputs(device):
    for gm, samples in gm_tensors(device):
        g_mean = samples[..., 0, :, :, :]
        yield SampleInput((*gm, g_mean, gm.logstds.exp()[..., 0, :, :, :] + 0.1, 1.0, 0.5))
        yield SampleInput((*gm, g_mean, torch.full_like(g_mean[..., :1, :, :], 0.7)), {"gm_power": 2.0})


@op.register_valid_call
def _valid_call(r):
    return dict(**r.gm, gaussian_mean=r.rand(r.B, r.C, r.H, r.W), gaussian_var=r.rand(r.B, 1, 1, 1, lo=0.5),
                gm_power=1.0, gaussian_power=1.0, eps=1e-6)


@op.register_parity_args(factor=4.0)
def _parity_args(case, choose):
    means, logstds, logweights, _ = case.tensors()
    per_pixel = choose("per_pixel_var", BOOLEANS)
    g_mean = extra(case, "samples", (case.C, case.H, case.W), 3)
    var_tail = (1, case.H, case.W) if per_pixel else (1, 1, 1)
    g_var = extra(case, "logweights", var_tail, 4, kind="uniform", low=0.05, high=2.0)
    powers = choose("powers", ((1.0, 1.0), (0.5, 1.0), (2.0, 0.3)))
    return means, logstds, logweights, g_mean, g_var, *powers, 1e-6


@names_nan_inputs
def gm_mul_iso_gaussian(
    gm: GaussianMixture,
    gaussian: IsoGaussian,
    gm_power: float = 1.0,
    gaussian_power: float = 1.0,
    eps: float = 1e-6,
) -> GaussianMixture:
    """Normalised product ``GM(x) * G(x)^r``, ``r = gaussian_power / gm_power``, per component
    (docs/ops.md#gm_mul_iso_gaussian).

    With ``v = s^2`` and ``n = max(v_g + r v, eps)``: ``mu'_k = (v_g mu_k + r v m_g) / n``;
    ``lambda' = log_softmax_K(lambda_k - r/2 sum_c (mu_kc - m_gc)^2 / n)``;
    ``logstd' = logstd + 1/2 log v_g - 1/2 log n``. ``gaussian.var`` ``(..., 1, 1, 1)`` keeps a shared
    std; ``(..., 1, H, W)`` gives per-component logstds ``(..., K, 1, H, W)``. One pass over K per
    pixel (native kernel); same semantics as :func:`gmflow.reference.algebra.gm_mul_iso_gaussian`.
    """
    check_gm(gm)
    check_iso_gaussian("gm_mul_iso_gaussian()", "gaussian", gaussian)
    check_channels(gaussian.mean, gm.means.shape[-3], "gaussian.mean")
    if gm_power == 0:
        raise ValueError("gm_power must be non-zero")
    means, logstds, logweights = gm
    mean_g, var_g = gaussian
    H, W = means.shape[-2:]
    native = (
        same_dtype(means, logstds, logweights, mean_g, var_g)
        and not needs_grad(*gm, *gaussian)
        and mean_g.shape[-2:] == (H, W)
        and var_g.dim() >= 3
        and tuple(var_g.shape[-3:]) in ((1, 1, 1), (1, H, W))
        and logstds.shape[-3] == 1
    )
    if not native:
        return algebra.gm_mul_iso_gaussian(gm, gaussian, gm_power, gaussian_power, eps)
    out_means, out_logstds, out_logweights = torch.ops.gmflow.gm_mul_iso_gaussian(
        means, logstds, logweights, mean_g, var_g, float(gm_power), float(gaussian_power), float(eps)
    )
    # The container-level result's logstds have the batch of (logstds, var) only.
    out_logstds = broadcast_view(out_logstds, torch.broadcast_shapes(logstds.shape[:-4], var_g.shape[:-3]), 4)
    return algebra.expand_pixel_logstds(GaussianMixture(out_means, out_logstds, out_logweights))


@register_wrapper_example(gm_mul_iso_gaussian)
def _example(gm, given):
    return gm_mul_iso_gaussian(gm, IsoGaussian(given.x, torch.ones(2, 1, 1, 1)))
