"""torch.library.opcheck on every op: schema, autograd registration, fake tensor,
aot_dispatch_dynamic. Runs on whatever backend serves the op (native or fallback)."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from gmflow import _library
from strategies import GmCase

CASES = {
    "shared_std": GmCase(batch=(2,), K=3, C=2, H=4, W=5, N=2),
    "per_component_std_broadcast": GmCase(
        batch=(2, 3), K=4, C=3, H=2, W=3, N=1, logstd_layout="per_component_pixel",
        drop={"logstds": 1}, ones={"logweights": (1,)},
    ),
    "strided_fp64": GmCase(
        batch=(2,), K=2, C=2, H=3, W=4, N=2, dtype=torch.float64,
        layout={"means": "outer", "samples": "pixel", "logweights": "expand"},
    ),
    "toy_like": GmCase(batch=(5,), K=6, C=2, H=1, W=1, N=1),
}


def _inputs(name, device, requires_grad):
    return CASES[name].tensors(device, requires_grad=requires_grad)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward_ops(device, case, requires_grad):
    means, logstds, logweights, samples = _inputs(case, device, requires_grad)
    opcheck(torch.ops.gmflow.gm_logprob.default, (means, logstds, logweights, samples))
    opcheck(torch.ops.gmflow.gm_to_mean.default, (means, logweights, 1.0))
    opcheck(torch.ops.gmflow.gm_to_mean.default, (means, logweights), {"power": 2.0})
    opcheck(torch.ops.gmflow.gm_to_iso_gaussian.default, (means, logstds, logweights))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mask", [[True, True, True, True], [True, False, True, False], [False, True, False, True]])
def test_opcheck_backward_ops(device, case, mask):
    means, logstds, logweights, samples = _inputs(case, device, False)
    logprob = torch.ops.gmflow.gm_logprob(means, logstds, logweights, samples)
    grad = torch.randn_like(logprob)
    opcheck(torch.ops.gmflow.gm_logprob_backward.default, (grad, means, logstds, logweights, samples, logprob, mask))
    mean = torch.ops.gmflow.gm_to_mean(means, logweights, 0.5)
    opcheck(torch.ops.gmflow.gm_to_mean_backward.default,
            (torch.randn_like(mean), means, logweights, mean, 0.5, mask[:2]))


def test_every_op_is_covered():
    """A new op must be added to the opcheck tests above."""
    covered = {"gm_logprob", "gm_logprob_backward", "gm_to_mean", "gm_to_mean_backward", "gm_to_iso_gaussian"}
    assert covered == set(_library.SCHEMAS)
