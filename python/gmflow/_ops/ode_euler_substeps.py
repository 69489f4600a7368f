"""``gm_ode_euler_substeps``: all S analytic sub-steps of one outer GM-ODE step, per pixel, in one call.

Op layout: GM (x0-space) predicted at ``(x_src, sigmas[0])``; ``x_src (..., C, H, W)``; ``sigmas (S+1, ...)`` in the
accumulation dtype (float32 for 16-bit data), ``sigmas[j]`` the batch-only sigma of sub-step j (shared by every
pixel). Sub-step j (``sigmas[j] -> sigmas[j+1]``): ``x0 = gm_posterior_mean(gm, x_src, x, sigmas[0], sigmas[j])``,
then the Euler step ``x <- x0 + sigmas[j+1] / max(sigmas[j], eps) (x - x0)``; ``x`` starts at ``x_src``, so the
first posterior mean is the GM mean. Differentiable w.r.t. the GM (``gm_ode_euler_substeps_backward``, by recompute).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gmflow import _validation as V
from gmflow._library import SampleInput, define, empty_grads, empty_like_means, register_wrapper_example
from gmflow.reference import flow
from gmflow.reference.common import acc_dtype, check_gm, result_dtype
from gmflow.types import GaussianMixture

from . import posterior_mean as pm
from .sample_data import extra, gm_tensors, grad_like, output_mask
from .support import names_nan_inputs, needs_grad, same_dtype, should_check_values

#: The typed wrappers this module adds to :mod:`gmflow.ops`.
__all__ = ["gm_ode_euler_substeps"]

SIGMAS_LAYOUT = "(S+1, ...)"

op = define("gm_ode_euler_substeps(Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, Tensor sigmas, "
            "float eps=1e-06) -> Tensor")
backward_op = define(
    "gm_ode_euler_substeps_backward(Tensor grad, Tensor means, Tensor logstds, Tensor logweights, Tensor x_src, "
    "Tensor sigmas, float eps, bool[] output_mask) -> (Tensor, Tensor, Tensor)"
)


def _substep_sigmas(sigmas: Tensor, j: int, x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(sigma_src, sigma_j, ratio_j)`` of sub-step j, each broadcasting against ``x (..., C, H, W)``."""
    lead = (None,) * max(x.dim() - 3 - sigmas.dim() + 1, 0)  # batch dims x has and the sigmas lack
    s_src, s_j, s_next = (sigmas[i][(*lead, ..., None, None, None)] for i in (0, j, j + 1))
    return s_src, s_j, s_next / torch.clamp_min(s_j, eps)


def _batch_shape(means, logstds, logweights, x_src, sigmas) -> list[int]:
    return list(torch.broadcast_shapes(means.shape[:-4], logstds.shape[:-4], logweights.shape[:-4],
                                       x_src.shape[:-3], sigmas.shape[1:]))


def reference(means, logstds, logweights, x_src, sigmas, eps=1e-6):
    """The per-sub-step loop in the accumulation dtype: :func:`gmflow.reference.flow.gm_posterior_mean`, then the
    Euler step; ``(batch, C, H, W)`` in the dtype of ``means``. Differentiable (plain PyTorch)."""
    work = acc_dtype(means.dtype)
    gm = GaussianMixture(means.to(work), logstds.to(work), logweights.to(work))
    x_src = x_src.to(work)
    sigmas = sigmas.to(work)
    x = x_src
    for j in range(sigmas.shape[0] - 1):
        s_src, s_j, ratio = _substep_sigmas(sigmas, j, x_src, eps)
        x0 = flow.gm_posterior_mean(gm, x, x_src, sigma_t_src=s_src, sigma_t=s_j, eps=eps)
        x = x0 + ratio * (x - x0)
    batch = _batch_shape(means, logstds, logweights, x_src, sigmas)
    return x.expand(*batch, *x.shape[-3:]).to(means.dtype).contiguous()


def reference_backward(grad, means, logstds, logweights, x_src, sigmas, eps, output_mask):
    """Gradients of :func:`reference` w.r.t. ``(means, logstds, logweights)``, by recompute.

    The forward loop keeps each state ``x_j``; sub-step j maps it to ``x_{j+1} = (1 - r_j) x0_j + r_j x_j``.
    Backwards from ``g = grad``: ``h = (1 - r_j) g`` is the gradient of the posterior mean ``x0_j``, whose GM
    gradients (:func:`gmflow._ops.posterior_mean.reference_backward` at ``x_tgt = x_j``) are summed over j, and
    ``g <- r_j g + c_tgt (sum_k pi_k var_k / den_k h + sum_k pi_k d_k (mu'_k - x0_j))`` with
    ``d_k = h . (mu'_k - x0_j)`` (``d logit_k / d nu = mu'_k`` up to a term shared by every k).
    """
    dtype = means.dtype
    work = acc_dtype(dtype)
    mu, ls, lw, xs, s, g = (t.to(work) for t in (means, logstds, logweights, x_src, sigmas, grad))
    S = s.shape[0] - 1
    states, x = [], xs
    for j in range(S):
        states.append(x)
        s_src, s_j, ratio = _substep_sigmas(s, j, xs, eps)
        x0 = flow.gm_posterior_mean(GaussianMixture(mu, ls, lw), x, xs, sigma_t_src=s_src, sigma_t=s_j, eps=eps)
        x = x0 + ratio * (x - x0)
    totals = [None, None, None]
    for j in reversed(range(S)):
        x = states[j]
        s_src, s_j, ratio = _substep_sigmas(s, j, xs, eps)
        t = pm.posterior_terms(mu, ls, lw, x, xs, s_src, s_j, eps)
        c_tgt, var_den, moved, pi = t.c_tgt, t.var / t.den, t.moved, t.pi
        x0 = (pi * moved).sum(dim=-4)
        h = (1 - ratio) * g
        grads = pm.reference_backward(h, mu, ls, lw, xs, x.expand_as(h), s[0], s[j], x0, eps, output_mask)
        totals = [t if not m else (gr if t is None else t + gr) for t, gr, m in zip(totals, grads, output_mask)]
        diff = moved - x0.unsqueeze(-4)
        d = (h.unsqueeze(-4) * diff).sum(dim=-3, keepdim=True)
        g = ratio * g + c_tgt * ((pi * var_den).sum(dim=-4) * h + (pi * d * diff).sum(dim=-4))
    return tuple(t.to(dtype) if m else means.new_empty(0) for t, m in zip(totals, output_mask))


def _shape(name, means, logstds, logweights, x_src, sigmas):
    K, C, H, W = V.check_gm(name, means, logstds, logweights)
    V.check_like(name, "x_src", x_src, "means", means)
    V.check_tail(name, "x_src", x_src, means, "(..., C, H, W)", (C, H, W), f"C={C}, H={H}, W={W}")
    V.check_acc_like(name, "sigmas", sigmas, "means", means)
    V.check_min_dim(name, "sigmas", sigmas, 1, SIGMAS_LAYOUT)
    if sigmas.shape[0] < 2:
        V.fail(name, f"'sigmas' must have layout {SIGMAS_LAYOUT} with S >= 1 sub-steps (at least 2 sigmas along "
                     f"dim 0); got shape {list(sigmas.shape)}")
    batch = V.broadcast_batch(name, [("means", means, 4), ("logstds", logstds, 4), ("logweights", logweights, 4),
                                     ("x_src", x_src, 3), ("sigmas", sigmas[0], 0)])
    return batch + [C, H, W]


def _checks(means, logstds, logweights, x_src, sigmas, eps):
    name = "gm_ode_euler_substeps"
    shape = _shape(name, means, logstds, logweights, x_src, sigmas)
    V.check_scalar(name, "eps", eps, V.FINITE_POSITIVE)
    return shape


@op.register_fallback
def _fallback(means, logstds, logweights, x_src, sigmas, eps=1e-6):
    _checks(means, logstds, logweights, x_src, sigmas, eps)
    return reference(means, logstds, logweights, x_src, sigmas, eps)


@op.register_fake
def _fake(means, logstds, logweights, x_src, sigmas, eps=1e-6):
    return empty_like_means(means, _checks(means, logstds, logweights, x_src, sigmas, eps))


def _setup_context(ctx, inputs, output):
    *tensors, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(*tensors)


@op.register_autograd(_setup_context, backward_op="gm_ode_euler_substeps_backward")
def _backward(ctx, grad):
    means, logstds, logweights, x_src, sigmas = ctx.saved_tensors
    if any(ctx.needs_input_grad[3:5]):
        V.fail("gm_ode_euler_substeps", "gradients w.r.t. 'x_src' and 'sigmas' are not implemented (only the GM is "
                                  "differentiable); detach them")
    mask = list(ctx.needs_input_grad[:3])
    grads = torch.ops.gmflow.gm_ode_euler_substeps_backward(grad, means, logstds, logweights, x_src, sigmas, ctx.eps,
                                                            mask)
    return (*(g if m else None for g, m in zip(grads, mask)), None, None, None)


def _sigma_grid(batch, S: int, final: float, like: Tensor) -> Tensor:
    """``(S+1, *batch)`` decreasing sigmas from about 0.8 to ``final``, a little different per batch element."""
    start = 0.8 - 0.1 * torch.arange(int(torch.tensor(batch).prod()) if batch else 1, dtype=torch.float64)
    start = start.reshape(batch) if batch else start.reshape(())
    frac = torch.linspace(1.0, 0.0, S + 1, dtype=torch.float64).reshape(S + 1, *([1] * len(batch)))
    grid = final + (start - final) * frac
    return grid.to(dtype=acc_dtype(like.dtype), device=like.device)


def _args(gm, samples, case: int):
    batch = tuple(torch.broadcast_shapes(*(t.shape[:-4] for t in gm)))
    S, final = ((3, 0.0), (2, 0.25), (4, 0.1))[case % 3]
    sigmas = _sigma_grid(batch, S, final, gm.means)
    if case % 3 == 1:  # one grid shared by the batch
        sigmas = sigmas.reshape(S + 1, -1)[:, 0].contiguous()
    return (*gm, samples[..., 0, :, :, :], sigmas)


@op.register_sample_inputs
def _inputs(device):
    for case, (gm, samples) in enumerate(gm_tensors(device)):
        yield SampleInput(_args(gm, samples, case), grad_argnums=(0, 1, 2))


def _valid_sigmas(r):
    """(S+1, B): three sub-steps from about 0.8 to 0."""
    return r.rand(r.B, dtype=r.acc, lo=0.6, hi=0.9) * torch.tensor([1.0, 0.6, 0.3, 0.0], dtype=r.acc)[:, None]


@op.register_valid_call
def _valid_call(r):
    return dict(**r.gm, x_src=r.rand(r.B, r.C, r.H, r.W), sigmas=_valid_sigmas(r), eps=1e-6)


@op.register_parity_args(factor=8.0, case_options={"max_k": 33})
def _parity_args(case, choose):
    means, logstds, logweights, _ = case.tensors()
    x_src = extra(case, "samples", (case.C, case.H, case.W), 3)
    S = choose("S", range(1, 7))
    final = choose("final_sigma", (0.0, 0.05))
    s_src = extra(case, "logstds", (), 5, kind="uniform", low=0.3, high=0.95, dtype=torch.float64)
    frac = torch.linspace(1.0, 0.0, S + 1, dtype=torch.float64).reshape(S + 1, *([1] * s_src.dim()))
    sigmas = (final + (s_src - final) * frac).to(acc_dtype(case.dtype))
    return means, logstds, logweights, x_src, sigmas, 1e-6


def _backward_checks(grad, means, logstds, logweights, x_src, sigmas, eps, output_mask):
    name = "gm_ode_euler_substeps_backward"
    shape = _shape(name, means, logstds, logweights, x_src, sigmas)
    V.check_backward_args(name, output_mask, 3, ("grad",), (grad,), means, shape)
    V.check_scalar(name, "eps", eps, V.FINITE_POSITIVE)


@backward_op.register_fallback
def _backward_fallback(grad, means, logstds, logweights, x_src, sigmas, eps, output_mask):
    _backward_checks(grad, means, logstds, logweights, x_src, sigmas, eps, output_mask)
    return tuple(g.contiguous() for g in reference_backward(grad, means, logstds, logweights, x_src, sigmas, eps,
                                                            output_mask))


@backward_op.register_fake
def _backward_fake(grad, means, logstds, logweights, x_src, sigmas, eps, output_mask):
    _backward_checks(grad, means, logstds, logweights, x_src, sigmas, eps, output_mask)
    return empty_grads(means, (means, logstds, logweights), output_mask)


@backward_op.register_sample_inputs
def _backward_inputs(device):
    for case, (gm, samples) in enumerate(gm_tensors(device)):
        args = _args(gm, samples, case)
        out = torch.ops.gmflow.gm_ode_euler_substeps(*args)
        for mask in ([True] * 3, [False, True, False]):
            yield SampleInput((torch.randn_like(out), *args, 1e-6, mask))


@backward_op.register_valid_call
def _backward_valid_call(r):
    return dict(grad=r.rand(r.B, r.C, r.H, r.W), **r.gm, x_src=r.rand(r.B, r.C, r.H, r.W), sigmas=_valid_sigmas(r),
                eps=1e-6, output_mask=[True] * 3)


@backward_op.register_parity_args(factor=16.0, case_options={"max_k": 33})
def _backward_parity_args(case, choose):
    args = _parity_args(case, choose)
    out = torch.ops.gmflow.gm_ode_euler_substeps(*args)
    return (grad_like(out, case.seed), *args, output_mask(choose, 3))


@names_nan_inputs
def gm_ode_euler_substeps(
    gm: GaussianMixture,
    x_src: Tensor,
    sigmas=None,
    t=None,
    eps: float = 1e-6,
    num_timesteps: float = 1000.0,
) -> Tensor:
    """The state after the S GM-ODE sub-steps of one outer step (docs/ops.md#gm_ode_euler_substeps), ``(..., C, H, W)``.

    ``gm`` is the x0-GM predicted at ``(x_src, sigmas[0])``; ``sigmas (S+1,)`` (shared) or ``(S+1, ...)`` (per batch
    element), or times ``t`` (``sigma = t / num_timesteps``), the sub-step grid from ``x_src``'s sigma down. Sub-step
    j: ``x0 = gm_posterior_mean(gm, x_src, x, sigmas[0], sigmas[j])`` (the GM mean at j = 0), then the Euler step
    ``x <- x + (x - x0) / sigma_j (sigma_{j+1} - sigma_j)`` (``x0`` exactly at ``sigma_{j+1} = 0``), one native pass
    per pixel. Sigmas must be finite and >= 0 (checked on CPU; each is clamped at ``eps`` where it divides).
    Differentiable w.r.t. the GM (native backward, by recompute); gradients w.r.t. ``x_src`` or the sigmas, and
    mixed dtypes or a grid varying over pixels, run the reference loop instead.
    """
    name = "gm_ode_euler_substeps"
    check_gm(gm)
    C = gm.means.shape[-3]
    if not isinstance(x_src, Tensor) or x_src.dim() < 3 or x_src.shape[-3] != C:
        got = list(x_src.shape) if isinstance(x_src, Tensor) else type(x_src).__name__
        V.fail(name, f"'x_src' must have layout (..., C, H, W) with C={C} taken from 'means'; got {got}")
    if (sigmas is None) == (t is None):
        V.fail(name, "give exactly one of 'sigmas' and 't'")
    dtype = result_dtype(*gm, x_src)
    acc = acc_dtype(dtype)
    grid = torch.as_tensor(sigmas if sigmas is not None else t, dtype=acc, device=x_src.device)
    if t is not None:
        grid = grid / num_timesteps
    arg = "sigmas" if sigmas is not None else "t"
    if grid.dim() < 1 or grid.shape[0] < 2:
        V.fail(name, f"'{arg}' must have layout {SIGMAS_LAYOUT} with S >= 1 sub-steps (at least 2 values along "
                     f"dim 0); got shape {list(grid.shape)}")
    if should_check_values(grid) and not bool(((grid >= 0) & torch.isfinite(grid)).all()):
        V.fail(name, f"'{arg}' must be finite and >= 0")
    native = (
        same_dtype(*gm, x_src)
        and x_src.shape[-2:] == gm.means.shape[-2:]
        and not needs_grad(x_src, sigmas, t)
    )
    if not native:
        return reference(*(v.to(dtype) for v in gm), x_src.to(dtype), grid, eps)
    return torch.ops.gmflow.gm_ode_euler_substeps(*gm, x_src, grid, float(eps))


@register_wrapper_example(gm_ode_euler_substeps)
def _example(gm, given):
    return gm_ode_euler_substeps(gm, given.x, sigmas=torch.tensor([0.7, 0.4, 0.0]))
