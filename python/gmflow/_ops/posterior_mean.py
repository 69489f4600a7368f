"""``gm_posterior_mean``: the posterior mean ``E[x_0 | x_tgt]`` of an x0-GM predicted at ``x_src``.

Op layout: GM (x0-space); ``x_src, x_tgt (..., C, H, W)``; ``sigma_src, sigma_tgt (...)`` in the
accumulation dtype (float32 for 16-bit data). Differentiable w.r.t. the GM (``gm_posterior_mean_backward``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from gmflow import _validation as V
from gmflow._library import SampleInput, define, empty_grads, empty_like_means, register_wrapper_example
from gmflow.reference import flow
from gmflow.reference.common import acc_dtype, check_channels, check_gm, sum_to_shape
from gmflow.types import GaussianMixture

from .sample_data import acc_full, extra, gm_tensors, grad_like, output_mask
from .support import names_nan_inputs, needs_grad, same_dtype

#: The typed wrappers this module adds to :mod:`gmflow.ops`.
__all__ = ["gm_posterior_mean"]

op = define(
    "gm_posterior_mean(Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, Tensor x_tgt, "
    "Tensor sigma_src, Tensor sigma_tgt, float eps=1e-06) -> Tensor"
)
backward_op = define(
    "gm_posterior_mean_backward(Tensor grad, Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, "
    "Tensor x_tgt, Tensor sigma_src, Tensor sigma_tgt, Tensor mean, float eps, bool[] output_mask) "
    "-> (Tensor, Tensor, Tensor)"
)


def _sigma_like(sigma: Tensor, x: Tensor) -> Tensor:
    """A batch-only ``sigma (...)`` as a tensor broadcasting against ``x (..., C, H, W)`` from the right."""
    s = sigma.reshape(*sigma.shape, 1, 1, 1)
    if s.dim() < x.dim():
        s = s.reshape(*([1] * (x.dim() - s.dim())), *s.shape)
    return s


def reference(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps=1e-6):
    """:func:`gmflow.reference.flow.gm_posterior_mean` (x0-prediction) in the op layout: ``(batch, C, H, W)``."""
    gm = GaussianMixture(means, logstds, logweights)
    out = flow.gm_posterior_mean(
        gm, x_tgt, x_src, sigma_t_src=_sigma_like(sigma_src, x_src), sigma_t=_sigma_like(sigma_tgt, x_tgt), eps=eps
    )
    batch = torch.broadcast_shapes(means.shape[:-4], logstds.shape[:-4], logweights.shape[:-4], x_src.shape[:-3],
                                   x_tgt.shape[:-3], sigma_src.shape, sigma_tgt.shape)
    return out.expand(*batch, *out.shape[-3:]).to(means.dtype).contiguous()


class PosteriorTerms(NamedTuple):
    """The per-component terms of the posterior mean (K at dim -4): ``c_tgt = a_t / s_t^2``, ``zeta``, ``nu``,
    ``var``, ``den = max(var zeta + 1, eps)``, the moved means ``mu'``, ``delta`` (the logit shift),
    ``sq = sum_c nu_c^2`` and the softmax weights ``pi``."""

    c_tgt: Tensor
    zeta: Tensor
    nu: Tensor
    var: Tensor
    den: Tensor
    moved: Tensor
    delta: Tensor
    sq: Tensor
    pi: Tensor


def posterior_terms(mu, ls, lw, x_tgt, x_src, sigma_src, sigma_tgt, eps) -> PosteriorTerms:
    """The terms of :func:`gmflow.reference.flow.gm_posterior_mean` at ``x_tgt``, for the analytic gradients;
    the sigmas broadcast against ``x (..., C, H, W)`` and are clamped to ``eps`` here."""
    C = mu.shape[-3]
    s_s, s_t = torch.clamp_min(sigma_src, eps), torch.clamp_min(sigma_tgt, eps)
    a_s, a_t = 1 - s_s, 1 - s_t
    zeta = ((a_t / s_t).square() - (a_s / s_s).square()).unsqueeze(-4)
    nu = (a_t * x_tgt / s_t.square() - a_s * x_src / s_s.square()).unsqueeze(-4)
    var = torch.exp(2 * ls)
    den = torch.clamp_min(var * zeta + 1, eps)
    moved = (var * nu + mu) / den
    delta = (mu * (nu - 0.5 * zeta * mu)).sum(dim=-3, keepdim=True) / den
    sq = nu.square().sum(dim=-3, keepdim=True)
    logits = lw + delta
    if ls.shape[-4] != 1:
        logits = logits + 0.5 * var * sq / den - 0.5 * C * torch.log(den)
    return PosteriorTerms(a_t / s_t.square(), zeta, nu, var, den, moved, delta, sq, torch.softmax(logits, dim=-4))


def reference_backward(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps, output_mask):
    """Gradients of :func:`reference` w.r.t. ``(means, logstds, logweights)``.

    With ``pi = softmax_K(logits)``, ``mu'_k`` the moved means, ``d_k = sum_c g_c (mu'_kc - mean_c)``
    and ``dden_k = zeta [var_k zeta + 1 > eps]`` (the clamp's derivative):
    ``d/dlogweight_k = pi_k d_k``; ``d/dmu_kc = pi_k (g_c + d_k (nu_c - zeta mu_kc)) / den_k``;
    ``d/dlogstd_k = 2 var_k [sum_c g_c pi_k (nu_c - mu'_kc dden_k) / den_k + pi_k d_k dlogit_k/dvar_k]``,
    where ``dlogit/dvar = -delta dden / den`` plus, for per-component stds, the normaliser terms
    ``S / (2 den) - var S dden / (2 den^2) - C dden / (2 den)`` (``S = sum_c nu_c^2``).
    Summed to each input's shape; an unrequested gradient is an empty tensor.
    """
    dtype = means.dtype
    work = acc_dtype(means.dtype)
    mu, ls, lw, xs, xt, ss, st, g, out = (
        t.to(work) for t in (means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, grad, mean)
    )
    t = posterior_terms(mu, ls, lw, xt, xs, _sigma_like(ss, xs), _sigma_like(st, xt), eps)
    C, zeta, nu, var, den, moved, delta, sq, pi = (mu.shape[-3], t.zeta, t.nu, t.var, t.den, t.moved, t.delta,
                                                   t.sq, t.pi)
    dden = torch.where(var * zeta + 1 > eps, zeta, torch.zeros_like(zeta))
    per_component = ls.shape[-4] != 1
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


def _shape(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps):
    name = "gm_posterior_mean"
    shape = V.posterior_mean_shape(name, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt)
    V.check_scalar(name, "eps", eps, V.FINITE_POSITIVE)
    return shape


@op.register_fallback
def _fallback(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps=1e-6):
    _shape(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps)
    return reference(means, logstds, logweights, x_src, x_tgt, V.batch_only_sigma(sigma_src),
                     V.batch_only_sigma(sigma_tgt), eps)


@op.register_fake
def _fake(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps=1e-6):
    return empty_like_means(means, _shape(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps))


def _setup_context(ctx, inputs, output):
    *tensors, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(*tensors, output)


@op.register_autograd(_setup_context, backward_op="gm_posterior_mean_backward")
def _backward(ctx, grad):
    means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean = ctx.saved_tensors
    if any(ctx.needs_input_grad[3:7]):
        V.fail("gm_posterior_mean", "gradients w.r.t. 'x_src', 'x_tgt', 'sigma_src' and 'sigma_tgt' are not "
                                    "implemented (only the GM is differentiable); detach them")
    mask = list(ctx.needs_input_grad[:3])
    grads = torch.ops.gmflow.gm_posterior_mean_backward(grad, means, logstds, logweights, x_src, x_tgt, sigma_src,
                                                        sigma_tgt, mean, ctx.eps, mask)
    return (*(g if m else None for g, m in zip(grads, mask)), None, None, None, None, None)


def _args(gm, samples):
    batch = torch.broadcast_shapes(*(t.shape[:-4] for t in gm))
    s_src = acc_full(batch, 0.6, gm.means)
    return (*gm, samples[..., 0, :, :, :], samples[..., -1, :, :, :].flip(-1), s_src, 0.5 * s_src)


@op.register_sample_inputs
def _inputs(device):
    for gm, samples in gm_tensors(device):
        yield SampleInput(_args(gm, samples), grad_argnums=(0, 1, 2))


@op.register_valid_call
def _valid_call(r):
    return dict(**r.gm, x_src=r.rand(r.B, r.C, r.H, r.W), x_tgt=r.rand(r.B, r.C, r.H, r.W),
                sigma_src=r.rand(r.B, dtype=r.acc, lo=0.6, hi=0.9), sigma_tgt=r.rand(r.B, dtype=r.acc, lo=0.1, hi=0.5),
                eps=1e-6)


@op.register_parity_args(factor=4.0, case_options={"max_k": 33})
def _parity_args(case, choose):
    means, logstds, logweights, _ = case.tensors()
    x_src = extra(case, "samples", (case.C, case.H, case.W), 3)
    x_tgt = extra(case, "means", (case.C, case.H, case.W), 4)
    s_src = extra(case, "logstds", (), 5, kind="uniform", low=0.3, high=0.95, dtype=torch.float64)
    s_tgt = s_src * extra(case, "logstds", (), 6, kind="uniform", low=0.05, high=0.95, dtype=torch.float64)
    acc = acc_dtype(case.dtype)
    return means, logstds, logweights, x_src, x_tgt, s_src.to(acc), s_tgt.to(acc), 1e-6


def _backward_checks(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps, output_mask):
    name = "gm_posterior_mean_backward"
    shape = V.posterior_mean_shape(name, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt)
    V.check_backward_args(name, output_mask, 3, ("grad", "mean"), (grad, mean), means, shape)
    V.check_scalar(name, "eps", eps, V.FINITE_POSITIVE)


@backward_op.register_fallback
def _backward_fallback(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps, output_mask):
    _backward_checks(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps, output_mask)
    grads = reference_backward(grad, means, logstds, logweights, x_src, x_tgt, V.batch_only_sigma(sigma_src),
                               V.batch_only_sigma(sigma_tgt), mean, eps, output_mask)
    return tuple(g.contiguous() for g in grads)


@backward_op.register_fake
def _backward_fake(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps, output_mask):
    _backward_checks(grad, means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, mean, eps, output_mask)
    return empty_grads(means, (means, logstds, logweights), output_mask)


@backward_op.register_sample_inputs
def _backward_inputs(device):
    for gm, samples in gm_tensors(device):
        args = _args(gm, samples)
        mean = torch.ops.gmflow.gm_posterior_mean(*args)
        for mask in ([True] * 3, [False, True, False]):
            yield SampleInput((torch.randn_like(mean), *args, mean, 1e-6, mask))


@backward_op.register_valid_call
def _backward_valid_call(r):
    return dict(grad=r.rand(r.B, r.C, r.H, r.W), **r.gm, x_src=r.rand(r.B, r.C, r.H, r.W),
                x_tgt=r.rand(r.B, r.C, r.H, r.W), sigma_src=r.rand(r.B, dtype=r.acc, lo=0.6, hi=0.9),
                sigma_tgt=r.rand(r.B, dtype=r.acc, lo=0.1, hi=0.5), mean=r.rand(r.B, r.C, r.H, r.W), eps=1e-6,
                output_mask=[True] * 3)


@backward_op.register_parity_args(factor=8.0, case_options={"max_k": 33})
def _backward_parity_args(case, choose):
    args = _parity_args(case, choose)
    out = torch.ops.gmflow.gm_posterior_mean(*args)
    return (grad_like(out, case.seed), *args[:-1], out, 1e-6, output_mask(choose, 3))


def _batch_sigma(sigma: Tensor) -> Tensor | None:
    """A sigma broadcastable against data ``(..., C, H, W)`` as a batch-only tensor, or None if it varies
    over channels or pixels."""
    if sigma.dim() == 0:
        return sigma
    if sigma.dim() >= 3 and sigma.shape[-3:] == (1, 1, 1):
        return sigma.reshape(sigma.shape[:-3])
    return None


@names_nan_inputs
def gm_posterior_mean(
    gm: GaussianMixture,
    x_src: Tensor,
    x_tgt: Tensor,
    t_src=None,
    t_tgt=None,
    sigma_src=None,
    sigma_tgt=None,
    eps: float = 1e-6,
    prediction_type: str = "x0",
    num_timesteps: float = 1000.0,
) -> Tensor:
    """Posterior mean ``E[x_0 | x_tgt]`` of an x0-GM predicted at ``(x_src, t_src)`` (docs/ops.md#gm_posterior_mean),
    ``(..., C, H, W)``.

    Arguments in the op's order: source then target. Each sigma is ``sigma`` if given, else ``t / num_timesteps``.
    Natural-parameter form (both sigmas clamped at ``eps``): ``zeta = (alpha_t / sigma_t)^2 - (alpha_s /
    sigma_s)^2``, ``nu = alpha_t x_tgt / sigma_t^2 - alpha_s x_src / sigma_s^2``, ``den = max(s^2 zeta + 1, eps)``;
    ``mu'_k = (s^2 nu + mu_k) / den``, ``dlambda_k = sum_c mu_kc (nu_c - zeta mu_kc / 2) / den``; output
    ``sum_k softmax_K(lambda + dlambda)_k mu'_k``, fused in one pass over K per pixel (native kernel).
    Exactly ``gm_to_mean`` at ``t_tgt = t_src, x_tgt = x_src``. ``prediction_type='u'`` converts the u-GM with
    :func:`gmflow.reference.flow.u_to_x_0` first. Differentiable w.r.t. the GM (native backward); gradients
    w.r.t. ``x_src``, ``x_tgt`` or the times use the reference. Same semantics as
    :func:`gmflow.reference.flow.gm_posterior_mean` (which takes the target first).
    """
    check_gm(gm)
    flow.check_prediction_type(prediction_type)
    C = gm.means.shape[-3]
    check_channels(x_tgt, C, "x_tgt")
    check_channels(x_src, C, "x_src")
    dtype = gm.means.dtype
    native = (
        same_dtype(*gm, x_tgt, x_src)
        and x_tgt.shape[-2:] == gm.means.shape[-2:]
        and x_src.shape[-2:] == gm.means.shape[-2:]
        and not needs_grad(x_tgt, x_src, t_tgt, t_src, sigma_tgt, sigma_src)
    )
    if native:
        acc = acc_dtype(dtype)
        s_src = _batch_sigma(flow.sigma_from_time(t_src, sigma_src, x_src, acc, num_timesteps, ("t_src", "sigma_src")))
        s_tgt = _batch_sigma(flow.sigma_from_time(t_tgt, sigma_tgt, x_tgt, acc, num_timesteps, ("t_tgt", "sigma_tgt")))
        native = s_src is not None and s_tgt is not None
    if not native:
        return flow.gm_posterior_mean(gm, x_tgt, x_src, t_tgt, t_src, sigma_src, sigma_tgt, eps, prediction_type,
                                      num_timesteps)
    if prediction_type == "u":
        gm = flow.u_to_x_0(gm, x_src, sigma=s_src.reshape(*s_src.shape, 1, 1, 1) if s_src.dim() else s_src, eps=eps)
        if not same_dtype(*gm):
            gm = gm.map(lambda v: v.to(dtype))
    return torch.ops.gmflow.gm_posterior_mean(*gm, x_src, x_tgt, s_src, s_tgt, float(eps))


@register_wrapper_example(gm_posterior_mean)
def _example(gm, given):
    return gm_posterior_mean(gm, given.x, given.x.flip(-1), t_src=700.0, t_tgt=400.0)
