"""One module per op family: schema, checks, reference-backed fallback, fake kernel, autograd, sample
inputs and the typed :mod:`gmflow.ops` wrapper, side by side. Importing this package defines every
``torch.ops.gmflow`` op (:mod:`gmflow._library` is the registry)."""

from gmflow import _library

from . import density, gm1d_inverse_cdf, kr, mul_iso_gaussian, posterior_mean, sample

_library.check_complete()

__all__ = ["density", "gm1d_inverse_cdf", "kr", "mul_iso_gaussian", "posterior_mean", "sample"]
