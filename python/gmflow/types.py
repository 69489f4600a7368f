"""Typed containers for Gaussian mixtures and Gaussians.

They are immutable ``NamedTuple``s of tensors: they work as pytrees under
``torch.compile`` and ``torch.utils._pytree``, unpack like tuples, and no op ever
writes a cached value into them (the upstream dicts grew ``gm_vars`` /
``gm_weights`` keys behind the caller's back; we recompute instead).

Shape conventions (``...`` = any number of leading batch dims):

=====================  =======================================================
``GaussianMixture``    means ``(..., K, C, H, W)``, logstds ``(..., 1, 1, 1, 1)``
                       or ``(..., K, 1, H, W)``, logweights ``(..., K, 1, H, W)``
                       (normalised over K)
``IsoGaussian``        mean ``(..., C, H, W)``, var ``(..., 1, H, W)`` or
                       ``(..., 1, 1, 1)``
``Gaussian``           channels-last: mean ``(..., H, W, C)``,
                       cov ``(..., H, W, C, C)``
``GaussianMixtureCov`` channels-last: means ``(..., K, H, W, C)``,
                       covs ``(..., 1 or K, H, W, C, C)``, logweights
                       ``(..., K, H, W)``
``GaussianMixture1D``  means ``(..., K, H, W)``, logstds ``(..., 1, 1, 1)``,
                       logweights ``(..., K, H, W)``
=====================  =======================================================
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor

from ._validation import GMFlowInputError

__all__ = ["GaussianMixture", "IsoGaussian", "Gaussian", "GaussianMixtureCov", "GaussianMixture1D",
           "check_iso_gaussian"]

ISO_GAUSSIAN_LAYOUT = "mean (..., C, H, W), var (..., 1, H, W) or (..., 1, 1, 1)"


class GaussianMixture(NamedTuple):
    """Isotropic Gaussian mixture per pixel; components share their weights over channels."""

    means: Tensor
    logstds: Tensor
    logweights: Tensor

    @property
    def num_components(self) -> int:
        return self.means.shape[-4]

    @property
    def num_channels(self) -> int:
        return self.means.shape[-3]

    @property
    def weights(self) -> Tensor:
        return self.logweights.exp()

    @property
    def variances(self) -> Tensor:
        """Within-component variance ``exp(2 * logstds)``."""
        return (2 * self.logstds).exp()

    def map(self, fn) -> "GaussianMixture":
        """Applies ``fn`` to every tensor (e.g. ``gm.map(lambda t: t.float())``)."""
        return GaussianMixture(fn(self.means), fn(self.logstds), fn(self.logweights))

    def to(self, *args, **kwargs) -> "GaussianMixture":
        return self.map(lambda t: t.to(*args, **kwargs))


class IsoGaussian(NamedTuple):
    """Isotropic Gaussian per pixel: one variance shared by the channels."""

    mean: Tensor
    var: Tensor

    @property
    def logstd(self) -> Tensor:
        return 0.5 * self.var.log()

    def map(self, fn) -> "IsoGaussian":
        return IsoGaussian(fn(self.mean), fn(self.var))

    def to(self, *args, **kwargs) -> "IsoGaussian":
        return self.map(lambda t: t.to(*args, **kwargs))


def _describe(value: Any) -> str:
    return f"shape {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def check_iso_gaussian(where: str, name: str, gaussian: Any) -> None:
    """Raises :class:`gmflow.GMFlowInputError` naming ``where`` and ``name`` unless ``gaussian`` is an
    :class:`IsoGaussian` of tensors in its layout (the containers themselves accept anything, as pytrees must)."""
    if not isinstance(gaussian, IsoGaussian):
        raise GMFlowInputError(f"{where}: '{name}' must be an IsoGaussian ({ISO_GAUSSIAN_LAYOUT}); "
                               f"got {type(gaussian).__name__}")
    mean, var = gaussian
    for field, value in (("mean", mean), ("var", var)):
        if not isinstance(value, Tensor) or value.dim() < 3:
            raise GMFlowInputError(f"{where}: '{name}.{field}' must be a tensor of the layout {ISO_GAUSSIAN_LAYOUT}; "
                                   f"got {_describe(value)}")
    if var.shape[-3] != 1 or var.shape[-2:] not in ((1, 1), mean.shape[-2:]):
        raise GMFlowInputError(f"{where}: '{name}' must have the layout {ISO_GAUSSIAN_LAYOUT}; got mean "
                               f"{list(mean.shape)}, var {list(var.shape)}")


class Gaussian(NamedTuple):
    """Full-covariance Gaussian per pixel, channels-last."""

    mean: Tensor
    cov: Tensor


class GaussianMixtureCov(NamedTuple):
    """Full-covariance Gaussian mixture per pixel, channels-last (output of ``gm_mul_gaussian``)."""

    means: Tensor
    covs: Tensor
    logweights: Tensor


class GaussianMixture1D(NamedTuple):
    """One-dimensional Gaussian mixture per element (the iso mixture with the channel dim removed)."""

    means: Tensor
    logstds: Tensor
    logweights: Tensor

    @property
    def weights(self) -> Tensor:
        return self.logweights.exp()

