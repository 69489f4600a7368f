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

from typing import NamedTuple

from torch import Tensor

__all__ = ["GaussianMixture", "IsoGaussian", "Gaussian", "GaussianMixtureCov", "GaussianMixture1D"]


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

