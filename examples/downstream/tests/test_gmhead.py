"""The downstream project trains under torch.compile(fullgraph=True) and agrees with gmflow.reference."""

import math

import pytest
import torch
from gmflow.reference import density as reference

from gmhead import GMHead, gm_nll, make_batch, train


@pytest.fixture(scope="module")
def trained():
    """300 Adam steps with the loss under torch.compile(fullgraph=True), compiled once for the module."""
    return train(steps=300)


def test_compiled_training_learns_the_four_modes(trained):
    _, losses = trained
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    # A single Gaussian fitted to the four rotations has NLL > 0.5; the mixture is far below it.
    assert last < first - 1.0, (first, last)
    assert last < 0.0, last


def test_compiled_loss_and_gradients_match_the_reference():
    model = GMHead()
    cond, target = make_batch(64, torch.Generator().manual_seed(1))
    compiled = torch.compile(gm_nll, fullgraph=True)

    loss = compiled(model, cond, target)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = gm_nll(model, cond, target, logprob=reference.gm_logprob)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))

    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_trained_model_loss_matches_the_reference(trained):
    model, _ = trained
    cond, target = make_batch(128, torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            gm_nll(model, cond, target), gm_nll(model, cond, target, logprob=reference.gm_logprob),
            rtol=1e-5, atol=1e-5,
        )
