"""``gmflow_sample(cond_first=True)``: the guided batch order of the diffusers pipeline."""

from __future__ import annotations

import torch

from gmflow import GaussianMixture
from gmflow.flow import gmflow_sample


def _halves_model(cond_first: bool):
    """A model whose conditional and unconditional halves differ; ``cond_first`` says where each is."""

    def model(x, t):
        B2 = x.shape[0]
        B = B2 // 2
        shift = torch.zeros(B2, 1, 1, 1, 1)
        cond = slice(0, B) if cond_first else slice(B, B2)
        shift[cond] = 1.5
        means = torch.stack([x, -x], dim=1) * 0.3 + shift
        logstds = torch.full((B2, 1, 1, 1, 1), -0.7)
        logweights = torch.log_softmax(torch.stack([x[:, :1], -x[:, :1]], dim=1), dim=1)
        return GaussianMixture(means, logstds, logweights)

    return model


def test_cond_first_swaps_the_guided_halves():
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(output_mode="sample", order=2, guidance_scale=0.4)
    a = gmflow_sample(_halves_model(False), noise, 3, generator=torch.Generator().manual_seed(1), **kw).samples
    b = gmflow_sample(_halves_model(True), noise, 3, generator=torch.Generator().manual_seed(1), cond_first=True,
                      **kw).samples
    c = gmflow_sample(_halves_model(True), noise, 3, generator=torch.Generator().manual_seed(1), **kw).samples
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
