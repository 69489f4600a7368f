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

__version__ = "0.1.0"

__all__ = [
    "GMFlowInputError",
    "Gaussian",
    "GaussianMixture",
    "GaussianMixture1D",
    "GaussianMixtureCov",
    "IsoGaussian",
    "ops",
]
