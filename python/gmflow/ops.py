"""Typed Python API of every GM operation (docs/ops.md).

Functions here take and return the containers of :mod:`gmflow.types`.

- Native-kernel ops dispatch to ``torch.ops.gmflow.*``: the native CPU/CUDA kernel
  where loaded, the pure-PyTorch reference otherwise. Density ops: ``gm_logprob``,
  ``gm_to_mean``, ``gm_to_iso_gaussian``. Sampling path: ``gm_mul_iso_gaussian``,
  ``gm_posterior_mean``, ``gm1d_inverse_cdf``, ``gaussian_samples_to_gm_samples`` /
  ``gm_samples_to_gaussian_samples`` (Knothe-Rosenblatt kernels composed with the
  eigen-rotation computed here), ``gm_to_sample`` / ``gm_spectral_sample`` / ``gm_to_model_output``
  (random numbers drawn here with torch from the caller's ``generator``, passed to the
  kernel). Where a call needs what a kernel does not provide (gradients through sampling
  or transport, layouts outside the op's), these functions run the reference instead,
  with the same semantics; mixed float dtypes are computed in their promotion.
  Each is defined, next to its op, in a module of :mod:`gmflow._ops`.
- On CPU (:func:`gmflow.config.value_checks`) every function of ``NATIVE_OPS`` raises a
  ``GMFlowInputError`` naming the input that carries a NaN when its result has one.
- Every other op is the pure-PyTorch reference (``gmflow.reference``) re-exported here.
"""

from __future__ import annotations

from . import _ops
from ._validation import GMFlowInputError

# Reference-only ops, re-exported with the same API as the native ones.
from .reference.algebra import (
    gaussian_mul_gaussian,
    gm_cov_logprob,
    gm_mul_gaussian,
    gm_mul_gm,
    gm_temperature,
    gm_to_gaussian,
    gm_transpose_t_first,
    iso_gaussian_logprob,
    iso_gaussian_mul_iso_gaussian,
    psd_inverse,
)
from .reference.divergence import gm_entropy, gm_kl_div
from .reference.flow import (
    TransitionCoefficients,
    denoising_gm_convert_to_mean,
    forward_transition,
    inverse_hartley2,
    reverse_transition,
    reverse_transition_coefficients,
    sample_forward_diffusion,
    sample_forward_transition,
    spectral_gaussian_field,
    u_to_x_0,
)
from .reference.gm1d import gm1d_moments, gm1d_pdf_cdf
from .reference.transport import gm_kr_slice, gm_spectral_logprobs, hartley2

#: The wrappers defined next to a native op in :mod:`gmflow._ops` (each module's ``__all__``), re-exported here.
NATIVE_OPS = tuple(name for module in _ops.MODULES for name in module.__all__)
globals().update({name: getattr(module, name) for module in _ops.MODULES for name in module.__all__})

__all__ = [
    "GMFlowInputError",
    "NATIVE_OPS",
    *NATIVE_OPS,
    # reference-only
    # docs/ops.md#gm-and-gaussian-algebra algebra
    "psd_inverse",
    "gm_to_gaussian",
    "iso_gaussian_mul_iso_gaussian",
    "gaussian_mul_gaussian",
    "gm_mul_gaussian",
    "gm_mul_gm",
    "iso_gaussian_logprob",
    "gm_cov_logprob",
    "gm_kl_div",
    "gm_entropy",
    "gm_temperature",
    "gm_transpose_t_first",
    # docs/ops.md#one-dimensional-mixtures 1-D mixtures
    "gm1d_pdf_cdf",
    "gm1d_moments",
    # docs/ops.md#knothe-rosenblatt-transport Knothe-Rosenblatt transport
    "gm_kr_slice",
    "hartley2",
    "gm_spectral_logprobs",
    # docs/ops.md#flow-level-ops flow-level
    "sample_forward_diffusion",
    "forward_transition",
    "sample_forward_transition",
    "u_to_x_0",
    "TransitionCoefficients",
    "reverse_transition_coefficients",
    "reverse_transition",
    "denoising_gm_convert_to_mean",
    "inverse_hartley2",
    "spectral_gaussian_field",
]
