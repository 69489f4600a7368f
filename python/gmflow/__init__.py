"""gmflow: Gaussian Mixture Flow Matching operators, samplers and models for PyTorch.

``import gmflow`` defines the ``torch.ops.gmflow`` library (schemas, reference
fallback, fake kernels, autograd) and loads the native CPU/CUDA kernels that
apply to the installed torch. ``python -m gmflow.info`` reports what loaded.
"""

from . import _ops  # noqa: F401  (defines torch.ops.gmflow before native kernels register)
from . import _native
from ._validation import GMFlowInputError
from .types import Gaussian, GaussianMixture, GaussianMixture1D, GaussianMixtureCov, IsoGaussian

_native.load()

from . import ops  # noqa: E402


def _installed_version() -> str:
    # pyproject.toml is the one place the version is written; the installed metadata carries it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gmflow")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

__all__ = [
    "GMFlowInputError",
    "Gaussian",
    "GaussianMixture",
    "GaussianMixture1D",
    "GaussianMixtureCov",
    "IsoGaussian",
    "ops",
]
