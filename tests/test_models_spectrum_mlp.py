"""SpectrumMLP (docs/models.md#spectrummlp, docs/models.md#spectrummlp-state-dict): size and keys, statistics, corner
crop, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from gmdit_layout import spectrum_keys
from gmflow import IsoGaussian
from gmflow.flow import spectral_loss
from gmflow.models import SpectrumMLP, spectrum_stats


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def _gaussian(B=3, C=4, H=32, W=32, per_pixel=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, C, H, W, generator=g)
    var = torch.rand(B, 1, H, W, generator=g) if per_pixel else torch.rand(B, 1, 1, 1, generator=g)
    return IsoGaussian(mean, var)


def test_size_and_keys():
    net = SpectrumMLP()
    assert sum(p.numel() for p in net.parameters()) == 37_576
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == spectrum_keys()
    assert [type(m).__name__ for m in net.mlp] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert net.config == {"base_size": [4, 32, 32], "layers": [64, 8]}
    assert SpectrumMLP.from_config(net.config).config == net.config


def test_flat_at_init():
    net = SpectrumMLP()
    assert torch.count_nonzero(net.mlp[4].weight) == 0 and torch.count_nonzero(net.mlp[4].bias) == 0
    for shape in [(32, 32), (16, 8)]:
        out = net(_gaussian(H=shape[0], W=shape[1]))
        assert out.shape == (3, 4, *shape)
        torch.testing.assert_close(out, torch.zeros_like(out))


def test_statistics():
    gauss = _gaussian(per_pixel=True)
    s = spectrum_stats(gauss)
    torch.testing.assert_close(s[:, 0], gauss.var.mean(dim=(1, 2, 3)))
    m = gauss.mean
    unbiased = ((m - m.mean(dim=(2, 3), keepdim=True)) ** 2).sum(dim=(2, 3)) / (32 * 32 - 1)
    torch.testing.assert_close(s[:, 1], unbiased.mean(1))
    scalar_var = _gaussian(per_pixel=False)
    torch.testing.assert_close(spectrum_stats(scalar_var)[:, 0], scalar_var.var.flatten())


def test_normalised_log_power_and_corner_crop():
    net = _randomize(SpectrumMLP())
    gauss = _gaussian()
    full = net(gauss)
    # mean of exp(P) over the frequencies is 1 for every channel
    torch.testing.assert_close(full.exp().mean(dim=(2, 3)), torch.ones(3, 4))
    # the logits row r maps to (c, h, w) = (r // 1024, (r // 32) % 32, r % 32)
    logits = net.mlp(spectrum_stats(gauss)).reshape(3, 4, 32, 32)
    torch.testing.assert_close(full, torch.log_softmax(logits.flatten(2), -1).reshape(3, 4, 32, 32) + math.log(1024))
    # a 5 x 6 grid keeps rows 0..2, 30..31 and columns 0..2, 29..31 of the base spectrum
    small = net(IsoGaussian(gauss.mean[..., :5, :6], gauss.var[..., :5, :6]))
    stats = spectrum_stats(IsoGaussian(gauss.mean[..., :5, :6], gauss.var[..., :5, :6]))
    base = net.mlp(stats).reshape(3, 4, 32, 32)
    rows, cols = [0, 1, 2, 30, 31], [0, 1, 2, 29, 30, 31]
    corner = base[:, :, rows][:, :, :, cols]
    want = torch.log_softmax(corner.flatten(2), -1).reshape(3, 4, 5, 6) + math.log(30)
    torch.testing.assert_close(small, want)
    # one row: keep row 0 only (no wrap-around of an empty negative slice)
    one = net(IsoGaussian(gauss.mean[..., :1, :4], gauss.var[..., :1, :4]))
    assert one.shape == (3, 4, 1, 4)
    torch.testing.assert_close(one.exp().mean(dim=(2, 3)), torch.ones(3, 4))
    assert torch.equal(net(IsoGaussian(gauss.mean[..., :1, :1], gauss.var[..., :1, :1])), torch.zeros(3, 4, 1, 1))


def test_dtypes_and_errors():
    net = _randomize(SpectrumMLP()).to(torch.bfloat16)
    gauss = _gaussian()
    out = net(gauss)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="base_size"):
        net(_gaussian(C=3))
    with pytest.raises(ValueError, match="H <= 32"):
        net(_gaussian(H=64))


def test_trains_with_the_spectral_loss():
    net = SpectrumMLP(base_size=(4, 8, 8), layers=(8, 4))
    g = torch.Generator().manual_seed(0)
    from gmflow import GaussianMixture

    gm = GaussianMixture(torch.randn(2, 3, 4, 8, 8, generator=g), torch.full((2, 1, 1, 1, 1), -1.0),
                         torch.log_softmax(torch.randn(2, 3, 1, 8, 8, generator=g), 1))
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([600.0, 250.0])
    x_t = (1 - t / 1000).reshape(2, 1, 1, 1) * x0 + (t / 1000).reshape(2, 1, 1, 1) * eps
    loss = spectral_loss(gm, x0, x_t, t, net)
    loss.backward()
    assert net.mlp[4].weight.grad is not None and torch.isfinite(net.mlp[4].weight.grad).all()
