"""Metric maths on synthetic features against scipy and closed forms; the feature network and reference
files (local only, clear errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from gmflow.evaluation import (
    InceptionFeatureNet,
    InceptionMetrics,
    ReferenceStats,
    feature_statistics,
    frechet_distance,
    images_to_uint8,
    inception_score,
    knn_radii,
    load_reference_stats,
    precision_recall,
    save_reference_stats,
)

from imagenet_tiny import tiny_inception


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 16):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _spd(rng, d), _spd(rng, d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # closed forms: 1-D Gaussians (m1 - m2)^2 + (s1 - s2)^2; identical Gaussians 0; a singular covariance
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    s = _spd(rng, 8)
    assert frechet_distance(np.zeros(8), s, np.zeros(8), s) == pytest.approx(0, abs=1e-9)
    low_rank = np.outer(np.arange(8.0), np.arange(8.0))
    assert frechet_distance(np.zeros(8), low_rank, np.zeros(8), low_rank) == pytest.approx(0, abs=1e-6 * 140)
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_frechet_distance_agrees_with_torchmetrics_on_the_same_features():
    """gmflow's feature statistics + Fréchet distance give torchmetrics' FrechetInceptionDistance fed the same
    features through an identity extractor (no network, nothing downloaded)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 12

        def forward(self, x):
            return x

    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    fake = rng.normal(loc=0.3, scale=1.2, size=(300, 12)) @ rng.normal(size=(12, 12))
    for a, b in ((real, fake), (real, real[::-1] * 1.01)):
        reference = FrechetInceptionDistance(feature=Identity())
        reference.update(torch.from_numpy(np.ascontiguousarray(a)), real=True)
        reference.update(torch.from_numpy(np.ascontiguousarray(b)), real=False)
        expected = float(reference.compute())
        ours = frechet_distance(*feature_statistics(a), *feature_statistics(b))
        assert ours == pytest.approx(expected, rel=1e-7, abs=1e-8)
    assert expected > 0


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_agrees_with_prdc(k):
    """Improved precision / recall (k-NN manifolds) equal prdc's ``compute_prdc`` on the same features."""
    from prdc import compute_prdc

    rng = np.random.default_rng(4 + k)
    real = rng.normal(size=(300, 8))
    fake = rng.normal(loc=0.4, scale=1.3, size=(250, 8))
    reference = compute_prdc(real, fake, nearest_k=k)
    precision, recall = precision_recall(real, fake, k=k, batch_size=64, dtype=torch.float64)
    assert precision == pytest.approx(reference["precision"], abs=1e-12)
    assert recall == pytest.approx(reference["recall"], abs=1e-12)
    assert 0.1 < precision < 0.99 and 0.1 < recall < 0.99  # neither trivially 0 nor 1


def test_inception_score_closed_forms():
    n, c = 40, 8
    assert inception_score(np.full((n, c), 1 / c), splits=4)[0] == pytest.approx(1.0)
    onehot = np.eye(c)[np.arange(n) % c]  # each split holds every class equally often
    mean, std = inception_score(onehot, splits=5)
    assert mean == pytest.approx(c) and std == pytest.approx(0, abs=1e-12)
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(c), size=n)
    expected = []
    for part in np.array_split(p, 4):
        py = part.mean(0)
        expected.append(math.exp(np.mean([np.sum(q * np.log(q / py)) for q in part])))
    got = inception_score(p, splits=4)
    assert got[0] == pytest.approx(np.mean(expected), rel=1e-10)
    assert got[1] == pytest.approx(np.std(expected), rel=1e-8)


def _brute_pr(real, fake, k):
    def radii(x):
        return np.sort(cdist(x, x), axis=1)[:, k]

    precision = np.mean((cdist(fake, real) <= radii(real)[None]).any(1))
    recall = np.mean((cdist(real, fake) <= radii(fake)[None]).any(1))
    return precision, recall


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(60, 5))
    fake = rng.normal(loc=0.7, scale=1.3, size=(50, 5))
    p, r = precision_recall(real, fake, k=3, batch_size=16, dtype=torch.float64)
    bp, br = _brute_pr(real, fake, 3)
    assert (p, r) == (pytest.approx(bp), pytest.approx(br))
    assert 0 < p < 1 and 0 < r < 1
    assert precision_recall(real, real, k=3, dtype=torch.float64) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3, dtype=torch.float64) == (0.0, 0.0)
    radii = knn_radii(torch.from_numpy(real), k=3, batch_size=7)
    torch.testing.assert_close(radii, torch.from_numpy(np.sort(cdist(real, real), axis=1)[:, 3]))


def test_feature_net_metrics_and_reference_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        InceptionFeatureNet(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a loadable TorchScript"):
        InceptionFeatureNet(tmp_path / "junk.pt")
    net = InceptionFeatureNet(tiny_inception(tmp_path / "inception.pt"))
    assert net.logit_weight.shape == (12, 16)
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 2.0])
    assert images_to_uint8(x).tolist() == [0, 0, 128, 255, 255, 255]
    images = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats, probs = net(images_to_uint8(images))
    assert feats.shape == (20, 16) and probs.shape == (20, 12)
    torch.testing.assert_close(probs.sum(1), torch.ones(20))

    ref = ReferenceStats.from_features(feats.numpy())
    npz = save_reference_stats(tmp_path / "ref.npz", ref)
    loaded = load_reference_stats(npz)
    np.testing.assert_allclose(loaded.mean, ref.mean)
    np.testing.assert_allclose(loaded.features, ref.features)
    # the upstream pickle format and an ADM-style batch of images (features computed on load)
    import pickle

    with open(tmp_path / "ref.pkl", "wb") as f:
        pickle.dump({"mean": ref.mean, "cov": ref.cov, "real_feats_np": ref.features, "num_real_feeded": 20}, f)
    np.testing.assert_allclose(load_reference_stats(tmp_path / "ref.pkl").cov, ref.cov)
    uint8 = images_to_uint8(images).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "adm.npz", arr_0=uint8)
    from_images = load_reference_stats(tmp_path / "adm.npz", net)
    np.testing.assert_allclose(from_images.features, feats.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_reference_stats(tmp_path / "absent.pkl")

    metrics = InceptionMetrics(net, loaded, feed_batch_size=7)
    metrics.update(images)
    out = metrics.compute()
    assert out["num_samples"] == 20
    assert out["fid"] == pytest.approx(0, abs=1e-3)  # the reference is these very images
    assert (out["precision"], out["recall"]) == (1.0, 1.0)
    assert out["is"] >= 1.0
