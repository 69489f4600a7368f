"""The training objective's transition term is :func:`gmflow.flow.transition_loss`, bit for bit: the loss, the
per-sample NLL and the gradients equal the step-by-step formulation (transition pair, network, reverse
transition, GM NLL), with and without bf16 autocast around the network."""

from __future__ import annotations

import pytest
import torch

from gmflow import ops
from gmflow.flow import transition_pair
from gmflow.train import TrainConfig, build_diffusion

from imagenet_tiny import TINY_MODEL


def _step_by_step(diffusion, x_0, labels, generator):
    device_type = x_0.device.type
    with torch.autocast(device_type, enabled=False):
        x_low, x_high, t_low, t_high = transition_pair(x_0.float(), diffusion.trans_ratio, diffusion.timestep_sampler,
                                                       generator, eps=1e-4, num_timesteps=diffusion.num_timesteps)
    amp = diffusion.amp_dtype
    with torch.autocast(device_type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        gm_u = diffusion.denoising(x_high, t_high, labels)
    with torch.autocast(device_type, enabled=False):
        gm_u = gm_u.map(lambda v: v.float())
        gm_low = ops.reverse_transition(gm_u, x_high, t_low, t_high, prediction_type="u",
                                        num_timesteps=diffusion.num_timesteps)
        logp = ops.gm_logprob(gm_low, x_low.unsqueeze(1)).squeeze(1)
        per_sample = diffusion.transition_loss_weight * (-logp / x_0.shape[1]).flatten(1).mean(dim=1)
    return per_sample.mean(), per_sample, t_high


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_objective_transition_term_is_transition_loss(mixed_precision):
    cfg = TrainConfig(model=dict(TINY_MODEL), spectrum_net=None, mixed_precision=mixed_precision, device="cpu")
    torch.manual_seed(0)
    diffusion = build_diffusion(cfg)
    assert (diffusion.amp_dtype is None) == (mixed_precision == "no")
    x_0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 10])

    out = diffusion(x_0, labels, torch.Generator().manual_seed(2))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in diffusion.named_parameters() if p.grad is not None}
    diffusion.zero_grad(set_to_none=True)
    loss, per_sample, t_high = _step_by_step(diffusion, x_0, labels, torch.Generator().manual_seed(2))
    loss.backward()

    assert torch.equal(out.loss_transition, loss.detach()) and torch.equal(out.loss, loss.detach())
    assert torch.equal(out.per_sample, per_sample.detach()) and torch.equal(out.t_high, t_high)
    assert grads and all(torch.equal(grads[n], p.grad) for n, p in diffusion.named_parameters() if n in grads)
