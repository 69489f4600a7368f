"""The strongest pure-PyTorch formulations of the GM ops, the `torch.compile` baseline of bench_ops.py.

A user who does not take the native library writes the op in PyTorch and compiles it. These are the
formulations such a user would write for the benchmark's GM layout: one logstd per distribution shared
by all K components (``logstds (B, 1, 1, 1, 1)``), so every per-component std term collapses to a
per-batch scalar; log-sum-exp / softmax over K; and the shapes of the call specialised (N = 1 samples,
batch-only sigmas). Each is checked against the op's reference at setup (``check_formulation``), so a
faster baseline is never a wrong one. Each returns exactly what the native op returns (same shapes,
contiguous), so its time includes the same output writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Formulation:
    label: str  # short name printed in the benchmark row
    fn: Callable


def logprob_shared_std(means, logstds, logweights, samples):
    """N = 1 samples broadcast against the K means; the shared std's terms leave the log-sum-exp."""
    C = means.shape[-3]
    inv_var = torch.exp(-2 * logstds)  # (B, 1, 1, 1, 1)
    sq = (samples - means).square().sum(dim=-3, keepdim=True)  # (B, K, 1, H, W)
    lse = torch.logsumexp(logweights - 0.5 * inv_var * sq, dim=-4)  # (B, 1, H, W)
    return lse - C * logstds.squeeze(-4) - 0.5 * C * LOG_2PI


def to_mean_softmax(means, logweights, power=1.0):
    return (torch.softmax(power * logweights, dim=-4) * means).sum(dim=-4)


def to_iso_shared_std(means, logstds, logweights):
    """Weights used as given (normalised input); the within-component variance is the shared s^2."""
    C = means.shape[-3]
    w = logweights.exp()
    mean = (w * means).sum(dim=-4)
    between = (w * (means - mean.unsqueeze(-4)).square()).sum(dim=(-4, -3))  # (B, H, W)
    var = between.unsqueeze(-3) / C + torch.exp(2 * logstds).squeeze(-4)
    return mean, var


def mul_iso_shared_std(means, logstds, logweights, gaussian_mean, gaussian_var, gm_power=1.0, gaussian_power=1.0,
                       eps=1e-6):
    """A shared std makes the normaliser n = max(v_g + r v, eps) one value per pixel for all K components:
    one reciprocal per pixel, the moved means an affine map of mu_k, and log n out of the softmax."""
    r = gaussian_power / gm_power
    var = torch.exp(2 * logstds)  # (B, 1, 1, 1, 1)
    var_g = gaussian_var.unsqueeze(-4)  # (B, 1, 1, H, W)
    mean_g = gaussian_mean.unsqueeze(-4)  # (B, 1, C, H, W)
    inv_n = 1 / torch.clamp_min(var_g + r * var, eps)
    out_means = means * (var_g * inv_n) + mean_g * (r * var * inv_n)
    logits = logweights - (0.5 * r) * inv_n * (means - mean_g).square().sum(dim=-3, keepdim=True)
    out_logweights = torch.log_softmax(logits, dim=-4)
    out_logstds = logstds + 0.5 * torch.log(var_g * inv_n)  # (B, 1, 1, H, W)
    return out_means, out_logstds, out_logweights


def posterior_mean_shared_std(means, logstds, logweights, x_src, x_tgt, sigma_src, sigma_tgt, eps=1e-6):
    """A shared std makes den = max(s^2 zeta + 1, eps) per batch element, so the moved means
    (s^2 nu + mu_k) / den average to (s^2 nu + sum_k pi_k mu_k) / den: a plain softmax-weighted sum."""
    s_s = sigma_src.clamp_min(eps).reshape(-1, 1, 1, 1)
    s_t = sigma_tgt.clamp_min(eps).reshape(-1, 1, 1, 1)
    a_s, a_t = 1 - s_s, 1 - s_t
    zeta = (a_t / s_t).square() - (a_s / s_s).square()  # (B, 1, 1, 1)
    nu = (a_t / s_t.square()) * x_tgt - (a_s / s_s.square()) * x_src  # (B, C, H, W)
    var = torch.exp(2 * logstds).squeeze(-4)  # (B, 1, 1, 1)
    inv_den = 1 / torch.clamp_min(var * zeta + 1, eps)
    quad = (means * (nu.unsqueeze(-4) - (0.5 * zeta.unsqueeze(-4)) * means)).sum(dim=-3, keepdim=True)
    pi = torch.softmax(logweights + quad * inv_den.unsqueeze(-4), dim=-4)
    return ((pi * means).sum(dim=-4) + var * nu) * inv_den


def check_formulation(name: str, label: str, fn, reference, args, rtol=1e-4, atol=1e-4) -> None:
    """Raise unless fn(*args) equals reference(*args) (every output, same shape)."""
    with torch.no_grad():
        got, want = fn(*args), reference(*args)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    if len(got) != len(want):
        raise AssertionError(f"{name} [{label}]: {len(got)} outputs, the reference has {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol,
                                   msg=lambda m, i=i: f"{name} [{label}] output {i} differs from the reference: {m}")
