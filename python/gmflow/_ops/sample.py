"""``gm_sample``: ancestral samples of a GM from given random numbers (the wrappers draw them with torch).

Op layout: GM; ``uniforms (..., N, 1, H, W)`` (the component) and ``normals (..., N, C, H, W)`` (the
noise) in the accumulation dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow import _validation as V
from gmflow._library import SampleInput, define, empty_like_means, register_wrapper_example
from gmflow.reference import algebra, flow
from gmflow.reference.common import acc_dtype, categorical_from_uniforms, check_gm, gm_batch_shape
from gmflow.types import GaussianMixture, GaussianMixtureCov

from .density import gm_to_mean
from .kr import gaussian_samples_to_gm_samples
from .sample_data import BOOLEANS, extra, gm_tensors
from .support import names_nan_inputs, needs_grad, same_dtype

#: The typed wrappers this module adds to :mod:`gmflow.ops`.
__all__ = ["gm_to_sample", "gm_spectral_sample", "gm_to_model_output"]

op = define(
    "gm_sample(Tensor means, Tensor logstds, Tensor logweights, Tensor uniforms, Tensor normals, "
    "float gm_power=1.0, bool cov_sharpen=False) -> Tensor"
)


def reference(means, logstds, logweights, uniforms, normals, gm_power=1.0, cov_sharpen=False):
    """Ancestral samples ``(batch, N, C, H, W)``: per (sample, pixel) the component
    ``k = categorical_from_uniforms(gm_power * logweights, u)`` (shared by the channels), then
    ``mu_k + std_k * normal`` with ``std_k = exp(logstd_k)`` (divided by ``sqrt(gm_power)`` when
    ``cov_sharpen``). Same law as :func:`gmflow.reference.algebra.gm_to_sample`, whose draws it
    replaces by the given ``uniforms (..., N, 1, H, W)`` and ``normals (..., N, C, H, W)``.
    """
    dtype = means.dtype
    work = acc_dtype(means.dtype, uniforms.dtype)
    batch = torch.broadcast_shapes(*(t.shape[:-4] for t in (means, logstds, logweights, uniforms, normals)))
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
    return out.expand(*batch, *out.shape[-4:]).to(dtype).contiguous()


@op.register_fallback
def _fallback(means, logstds, logweights, uniforms, normals, gm_power=1.0, cov_sharpen=False):
    V.sample_shape("gm_sample", means, logstds, logweights, uniforms, normals, gm_power, cov_sharpen)
    return reference(means, logstds, logweights, uniforms, normals, gm_power, cov_sharpen)


@op.register_fake
def _fake(means, logstds, logweights, uniforms, normals, gm_power=1.0, cov_sharpen=False):
    return empty_like_means(means, V.sample_shape("gm_sample", means, logstds, logweights, uniforms, normals,
                                                  gm_power, cov_sharpen))


@op.register_sample_inputs
def _inputs(device):
    for gm, samples in gm_tensors(device):
        acc = acc_dtype(gm.means.dtype)
        g = torch.Generator().manual_seed(3)
        u = torch.rand(*samples.shape[:-3], 1, *samples.shape[-2:], generator=g, dtype=acc).to(device)
        yield SampleInput((*gm, u, samples.to(acc), 2.0, True))
        yield SampleInput((*gm, u, samples.to(acc)))


@op.register_valid_call
def _valid_call(r):
    return dict(**r.gm, uniforms=r.rand(r.B, r.N, 1, r.H, r.W, dtype=r.acc, lo=0.0),
                normals=r.rand(r.B, r.N, r.C, r.H, r.W, dtype=r.acc), gm_power=1.0, cov_sharpen=False)


@op.register_parity_args()
def _parity_args(case, choose):
    means, logstds, logweights, samples = case.tensors()
    acc = acc_dtype(case.dtype)
    u = extra(case, "samples", (case.N, 1, case.H, case.W), 9, kind="uniform", dtype=acc)
    power = choose("power", (1.0, 0.5, 2.0))
    return means, logstds, logweights, u, samples.to(acc), power, choose("cov_sharpen", BOOLEANS)


def _check_n_samples(op: str, n_samples) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise V.GMFlowInputError(f"{op}(): 'n_samples' must be a positive integer (the N of the samples' "
                                 f"(..., N, C, H, W) layout); got {n_samples!r}")


@names_nan_inputs
def gm_to_sample(
    gm: GaussianMixture | GaussianMixtureCov,
    gm_power: float = 1.0,
    n_samples: int = 1,
    cov_sharpen: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral samples ``(..., N, C, H, W)`` (docs/ops.md#gm_sample): a component per (sample, pixel), shared by the
    channels, drawn from ``softmax_K(gm_power * lambda)``, then ``mu_k + std_k * z`` (``std`` divided by
    ``sqrt(gm_power)`` when ``cov_sharpen``).

    Iso layout: ``torch.rand`` (component) then ``torch.randn`` (noise), both from ``generator``, feed the
    native ``gm_sample`` kernel. Covs layout, or gradients required: the reference
    (:func:`gmflow.reference.algebra.gm_to_sample`; same law, other random stream).
    """
    _check_n_samples("gm_to_sample", n_samples)
    if isinstance(gm, GaussianMixtureCov) or needs_grad(*gm):
        return algebra.gm_to_sample(gm, gm_power, n_samples, cov_sharpen, generator)
    check_gm(gm)
    means = gm.means
    work = acc_dtype(*(t.dtype for t in gm))
    gm_d = gm if same_dtype(*gm) else gm.map(lambda t: t.to(work))
    batch = gm_batch_shape(gm)
    K, C, H, W = means.shape[-4:]
    acc = acc_dtype(gm_d.means.dtype)
    uniforms = torch.rand(*batch, n_samples, 1, H, W, generator=generator, dtype=acc, device=means.device)
    normals = torch.randn(*batch, n_samples, C, H, W, generator=generator, dtype=acc, device=means.device)
    out = torch.ops.gmflow.gm_sample(*gm_d, uniforms, normals, float(gm_power), bool(cov_sharpen))
    return out.to(means.dtype)


@names_nan_inputs
def gm_spectral_sample(
    gm: GaussianMixture,
    power_spectrum: Tensor | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Samples ``(..., N, C, H, W)`` of the per-pixel GM, spatially correlated by a power spectrum if one is
    given (docs/sampling.md#spectral-sampling).

    Without a spectrum: :func:`gm_to_sample`, returns ``(samples, None)``. With a log power spectrum
    ``P (..., C, H, W)`` (W even): ``(g, S) = spectral_gaussian_field(P)`` (PyTorch FFT), then
    ``samples = gaussian_samples_to_gm_samples(gm, g, axis_aligned=True)`` (native KR); returns
    ``(samples, S)``. Every draw uses ``generator``.
    """
    check_gm(gm)
    _check_n_samples("gm_spectral_sample", n_samples)
    if power_spectrum is None:
        return gm_to_sample(gm, n_samples=n_samples, generator=generator), None
    flow.check_power_spectrum(gm, power_spectrum)
    if gm.means.shape[-2] * gm.means.shape[-1] == 0:
        raise V.GMFlowInputError(
            f"gm_spectral_sample(): spectral sampling needs a non-empty pixel grid (H, W >= 1 in the GM's "
            f"(..., K, C, H, W) and the power spectrum's (..., C, H, W)); got means {list(gm.means.shape)}")
    field, spectral = flow.spectral_gaussian_field(power_spectrum, n_samples, generator)
    samples = gaussian_samples_to_gm_samples(gm, field, axis_aligned=True, generator=generator)
    return samples.to(gm.means.dtype), spectral


@names_nan_inputs
def gm_to_model_output(
    gm: GaussianMixture,
    output_mode: str,
    power_spectrum: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x0 estimate ``(..., C, H, W)``: the GM mean (``'mean'``) or one (spectral) sample (``'sample'``)."""
    if output_mode == "mean":
        check_gm(gm)
        return gm_to_mean(gm)
    if output_mode == "sample":
        return gm_spectral_sample(gm, power_spectrum, n_samples=1, generator=generator)[0].squeeze(-4)
    raise ValueError(f"output_mode must be 'mean' or 'sample', got {output_mode!r}")


@register_wrapper_example(gm_to_sample)
def _sample_example(gm, given):
    return gm_to_sample(gm, generator=torch.Generator().manual_seed(1))


@register_wrapper_example(gm_spectral_sample)
def _spectral_example(gm, given):
    return gm_spectral_sample(gm, generator=torch.Generator().manual_seed(1))


@register_wrapper_example(gm_to_model_output)
def _model_output_example(gm, given):
    return gm_to_model_output(gm, "mean")
