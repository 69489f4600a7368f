"""FID, Inception Score and improved precision / recall on Inception-v3 features (docs/training.md#metrics).

The maths works on feature arrays and is independent of any network:

- :func:`frechet_distance` — ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2`` in float64. The
  trace of the matrix square root comes from two symmetric eigendecompositions (exact for PSD inputs,
  no complex round-off as with a general ``sqrtm``);
- :func:`inception_score` — ``exp E_x KL(p(y|x) || p(y))`` per split, mean and std over the splits;
- :func:`precision_recall` — improved P&R (Kynkäänniemi et al. 2019): a generated feature is *precise*
  if it lies within the k-NN radius (the distance to its k-th nearest other real feature) of at least one
  real feature; recall swaps the roles.

:class:`InceptionFeatureNet` wraps the NVIDIA StyleGAN2-ADA TorchScript Inception-v3
(``inception-2015-12-05.pt``) from a **local file**: ``net(uint8 images, return_features=True)`` gives the
2048-d pool features, and the class probabilities are ``softmax(features @ output.weight^T)``.
:class:`InceptionMetrics` feeds images in [-1, 1] in chunks, gathers the features of every rank and
scores them against :class:`ReferenceStats` loaded from a local file.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmflow import distributed as gdist

__all__ = [
    "InceptionFeatureNet",
    "InceptionMetrics",
    "ReferenceStats",
    "feature_statistics",
    "frechet_distance",
    "images_to_uint8",
    "inception_score",
    "knn_radii",
    "load_reference_stats",
    "precision_recall",
    "save_reference_stats",
]

logger = logging.getLogger(__name__)


# -- metric maths --------------------------------------------------------------------------------------------
def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (D,), covariance (D, D))`` in float64, covariance with the unbiased ``1 / (N - 1)``."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N >= 2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    root = _psd_sqrt(s1)
    inner = root @ s2 @ root
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """``(mean, std)`` over ``splits`` equal parts of ``exp(mean_x KL(p(y|x) || p(y)))``."""
    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    if p.dim() != 2 or p.shape[0] < splits:
        raise ValueError(f"probs must have shape (N >= splits, classes), got {tuple(p.shape)} with {splits} splits")
    n = p.shape[0]
    scores = []
    for i in range(splits):
        part = p[i * n // splits: (i + 1) * n // splits]
        marginal = part.mean(dim=0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist_if_necessary")


def knn_radii(features: Tensor, k: int = 3, batch_size: int = 1024) -> Tensor:
    """Distance of each feature to its ``k``-th nearest *other* feature (the ``(k+1)``-th incl. itself)."""
    if features.shape[0] <= k:
        raise ValueError(f"need more than k = {k} features, got {features.shape[0]}")
    out = []
    for s in range(0, features.shape[0], batch_size):
        d = _pairwise(features[s: s + batch_size], features)
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(query: Tensor, ref: Tensor, radii: Tensor, batch_size: int) -> float:
    hits = 0
    for s in range(0, query.shape[0], batch_size):
        d = _pairwise(query[s: s + batch_size], ref)
        hits += int((d <= radii[None, :]).any(dim=1).sum())
    return hits / query.shape[0]


def precision_recall(real, fake, k: int = 3, batch_size: int = 1024, device=None,
                     dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds, default k = 3) of ``fake (M, D)`` against ``real (N, D)``."""
    real = torch.as_tensor(np.asarray(real) if not isinstance(real, Tensor) else real).to(device=device, dtype=dtype)
    fake = torch.as_tensor(np.asarray(fake) if not isinstance(fake, Tensor) else fake).to(device=device, dtype=dtype)
    precision = _coverage(fake, real, knn_radii(real, k, batch_size), batch_size)
    recall = _coverage(real, fake, knn_radii(fake, k, batch_size), batch_size)
    return precision, recall


# -- reference statistics -------------------------------------------------------------------------------------
@dataclass
class ReferenceStats:
    """Inception statistics of the real images: ``mean (D,)``, ``cov (D, D)`` and, for precision / recall,
    the real ``features (N, D)`` (``None`` if the file has none)."""

    mean: np.ndarray
    cov: np.ndarray
    features: np.ndarray | None = None
    source: str = ""

    @classmethod
    def from_features(cls, features, source: str = "") -> "ReferenceStats":
        f = np.asarray(features, dtype=np.float32)
        mean, cov = feature_statistics(f)
        return cls(mean, cov, f, source)


def load_reference_stats(path: str | os.PathLike, feature_net: "InceptionFeatureNet | None" = None,
                         batch_size: int = 64) -> ReferenceStats:
    """Reads reference statistics from a local file.

    - ``.pkl``: a pickle with ``mean``, ``cov`` and optionally ``real_feats_np`` (the format of the
      ``imagenet256_inception_adm.pkl`` used upstream; only load pickles you trust);
    - ``.npz``: ``mean``/``mu``, ``cov``/``sigma``, optionally ``features``; or an ADM reference batch whose
      ``arr_0`` holds uint8 images ``(N, H, W, 3)``, whose features are then computed with ``feature_net``;
    - ``.pt``/``.pth``: a dict with the ``.npz`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference statistics not found (a local .pkl / .npz / .pt file; gmflow "
                                "never downloads)")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        with open(path, "rb") as f:
            data = pickle.load(f)
    elif suffix == ".npz":
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
    elif suffix in (".pt", ".pth"):
        data = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path}: unknown reference format {suffix!r} (expected .pkl, .npz, .pt)")

    def get(*names):
        for n in names:
            if n in data and data[n] is not None:
                v = data[n]
                return v.numpy() if isinstance(v, Tensor) else np.asarray(v)
        return None

    feats = get("real_feats_np", "features", "feats")
    mean, cov = get("mean", "mu"), get("cov", "sigma")
    if mean is None and feats is None and "arr_0" in data:
        if feature_net is None:
            raise ValueError(f"{path}: holds images (arr_0) but no statistics; pass the Inception network to compute "
                             "their features")
        feats = feature_net.features_of_uint8(np.asarray(data["arr_0"]), batch_size).numpy()
    if mean is None or cov is None:
        if feats is None:
            raise ValueError(f"{path}: no mean/cov and no features (keys: {sorted(data)})")
        mean, cov = feature_statistics(feats)
    return ReferenceStats(np.asarray(mean, np.float64), np.asarray(cov, np.float64),
                          None if feats is None else np.asarray(feats, np.float32), str(path))


def save_reference_stats(path: str | os.PathLike, stats: ReferenceStats) -> Path:
    """Writes ``mean``, ``cov`` and (if any) ``features`` to an ``.npz`` file (atomic rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mean": stats.mean, "cov": stats.cov}
    if stats.features is not None:
        arrays["features"] = stats.features
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


# -- the feature network --------------------------------------------------------------------------------------
def images_to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 ``floor(x 127.5 + 128)`` clamped to [0, 255] (the "StyleGAN" convention)."""
    return torch.floor(images.float() * 127.5 + 128).clamp_(0, 255).to(torch.uint8)


class InceptionFeatureNet:
    """The TorchScript Inception-v3 of NVIDIA's StyleGAN2-ADA metrics (``inception-2015-12-05.pt``), or any
    TorchScript module with the same interface: ``forward(uint8 (N, 3, H, W), return_features=True) ->
    (N, D)`` pool features, and an ``output`` linear layer whose ``weight (classes, D)`` gives the
    logits of the Inception Score. Loaded from a local file; a missing file is a clear error."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: Inception feature network not found. Put NVIDIA's TorchScript Inception-v3 "
                "(inception-2015-12-05.pt, from the StyleGAN2-ADA metrics) there and pass its path; gmflow never "
                "downloads it")
        self.path = path
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # the reference network only exists as TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as exc:  # noqa: BLE001 - report what is wrong with the file
            raise ValueError(f"{path}: not a loadable TorchScript module ({type(exc).__name__}: {exc})") from None
        output = getattr(self.net, "output", None)
        weight = getattr(output, "weight", None) if output is not None else None
        self.logit_weight = weight.detach().float() if isinstance(weight, Tensor) else None

    @torch.no_grad()
    def __call__(self, images_uint8: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(features (N, D) float32, class probabilities (N, classes) or None)`` on this device."""
        x = images_uint8.to(self.device)
        feats = self.net(x, return_features=True).float()
        probs = None
        if self.logit_weight is not None:
            probs = torch.softmax(feats @ self.logit_weight.T, dim=1)
        return feats, probs

    def features_of_uint8(self, images_nhwc: np.ndarray, batch_size: int = 64) -> Tensor:
        out = []
        for s in range(0, len(images_nhwc), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images_nhwc[s: s + batch_size])).permute(0, 3, 1, 2)
            out.append(self(x)[0].cpu())
        return torch.cat(out)


class InceptionMetrics:
    """Accumulates Inception features of generated images (any rank) and scores them (docs/training.md#metrics).

    ``update(images)`` takes images in [-1, 1] ``(B, 3, H, W)`` and feeds them in chunks of
    ``feed_batch_size``; ``compute()`` (call it on every rank) gathers all ranks' features and returns
    ``{'fid', 'is', 'is_std', 'precision', 'recall', 'num_samples'}`` (precision / recall are NaN when the
    reference has no features; IS is NaN when the network has no ``output`` layer).
    """

    def __init__(self, feature_net: InceptionFeatureNet, reference: ReferenceStats, k: int = 3, is_splits: int = 10,
                 feed_batch_size: int = 32) -> None:
        self.net, self.reference, self.k, self.is_splits = feature_net, reference, k, is_splits
        self.feed_batch_size = feed_batch_size
        self.reset()

    def reset(self) -> None:
        self._feats: list[Tensor] = []
        self._probs: list[Tensor] = []

    def update(self, images: Tensor) -> None:
        for s in range(0, images.shape[0], self.feed_batch_size):
            feats, probs = self.net(images_to_uint8(images[s: s + self.feed_batch_size]))
            self._feats.append(feats)
            if probs is not None:
                self._probs.append(probs)

    def compute(self) -> dict[str, float]:
        feats = gdist.all_gather_tensor(torch.cat(self._feats) if self._feats else torch.zeros(0, 1))
        probs = gdist.all_gather_tensor(torch.cat(self._probs)) if self._probs else None
        result = {"num_samples": int(feats.shape[0])}
        f = feats.double().cpu().numpy()
        mean, cov = feature_statistics(f)
        result["fid"] = frechet_distance(mean, cov, self.reference.mean, self.reference.cov)
        if probs is not None and probs.shape[0] >= self.is_splits:
            result["is"], result["is_std"] = inception_score(probs.cpu(), self.is_splits)
        else:
            result["is"] = result["is_std"] = float("nan")
        if self.reference.features is not None and min(len(f), len(self.reference.features)) > self.k:
            real = torch.from_numpy(self.reference.features).to(feats.device)
            result["precision"], result["recall"] = precision_recall(real, feats, self.k, device=feats.device)
        else:
            result["precision"] = result["recall"] = float("nan")
        return result
