"""Schedulers (docs/sampling.md#schedulers; docs/testing.md#flow-level-oracles): update rules, equivalences, diffusers
API, config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from gmflow import ops
from gmflow.flow import FlowEulerODEScheduler, GMFlowSDEScheduler, SchedulerOutput

pytestmark = pytest.mark.usefixtures("one_thread")


T = 1000.0
F64 = torch.float64


def _state(seed=0, shape=(4, 2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64)


def _run(scheduler, M, x, x0_fn, seed=7, prediction_type="x0", **kw):
    """Runs M steps; x0_fn(k, x) gives the prediction. Returns the list of states."""
    scheduler.set_timesteps(M)
    g = torch.Generator().manual_seed(seed)
    states = [x]
    for k, t in enumerate(scheduler.timesteps):
        extra = {"generator": g} if isinstance(scheduler, GMFlowSDEScheduler) else {}
        x = scheduler.step(x0_fn(k, x), t, x, prediction_type=prediction_type, **extra, **kw).prev_sample
        states.append(x)
    return states


@pytest.mark.parametrize("cls", [FlowEulerODEScheduler, GMFlowSDEScheduler])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_set_timesteps(cls, shift):
    s = cls(shift=shift)
    s.set_timesteps(8)
    assert s.timesteps.shape == (8,) and s.sigmas.shape == (9,)
    assert float(s.timesteps[0]) == T and float(s.sigmas[-1]) == 0.0
    assert bool((s.timesteps[1:] < s.timesteps[:-1]).all())
    torch.testing.assert_close(s.timesteps, s.sigmas[:-1] * T)
    assert s.step_index is None and s.num_inference_steps == 8


def test_sde_h1_equals_original_gmflow_sde():
    """docs/testing.md#flow-level-oracles: the canonical h = 1 update equals the original c1 x + c2 x0 + sqrt(beta_bar)
    sigma' xi."""
    x, x0 = _state()
    s = GMFlowSDEScheduler(shift=2.0)
    s.set_timesteps(5)
    g = torch.Generator().manual_seed(3)
    g_ref = torch.Generator().manual_seed(3)
    for k, t in enumerate(s.timesteps):
        out = s.step(x0, t, x, generator=g, prediction_type="x0").prev_sample
        sigma, sigma_next = s.sigmas[k].double(), s.sigmas[k + 1].double()
        co = ops.reverse_transition_coefficients(sigma_next * T, sigma * T, x)
        if float(sigma_next) > 0:
            xi = torch.randn(x.shape, generator=g_ref, dtype=F64)
            ref = co.c1 * x + co.c2 * x0 + co.beta_bar.clamp_min(0).sqrt() * sigma_next * xi
        else:
            ref = x0
        torch.testing.assert_close(out, ref)
        x = out


def test_sde_h0_equals_euler_with_x0_prediction():
    x, _ = _state()
    targets = [torch.randn_like(x) for _ in range(6)]
    a = _run(GMFlowSDEScheduler(h=0.0, shift=1.5), 6, x, lambda k, _: targets[k])
    b = _run(FlowEulerODEScheduler(shift=1.5), 6, x, lambda k, _: targets[k])
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize(
    "make", [FlowEulerODEScheduler, GMFlowSDEScheduler, lambda: GMFlowSDEScheduler(h=0.0),
             lambda: GMFlowSDEScheduler(output_mode="mean")]
)
def test_last_step_returns_x0_exactly(make):
    x, x0 = _state()
    s = make()
    s.set_timesteps(3)
    s.set_begin_index(2)
    out = s.step(x0, s.timesteps[2], x, prediction_type="x0", **({"generator": None} if isinstance(s, GMFlowSDEScheduler) else {}))
    assert isinstance(out, SchedulerOutput)
    assert torch.equal(out.prev_sample, x0) and torch.equal(out.pred_original_sample, x0)


@pytest.mark.parametrize("make", [FlowEulerODEScheduler, lambda: GMFlowSDEScheduler(h=0.5)])
def test_u_prediction_matches_x0_prediction(make):
    x, u = _state(1)
    a, b = make(), make()
    a.set_timesteps(4)
    b.set_timesteps(4)
    for k, t in enumerate(a.timesteps):
        sigma = a.sigmas[k].double()
        kw = {"generator": torch.Generator().manual_seed(k)} if isinstance(a, GMFlowSDEScheduler) else {}
        ya = a.step(u, t, x, prediction_type="u", **kw).prev_sample
        kw = {"generator": torch.Generator().manual_seed(k)} if isinstance(a, GMFlowSDEScheduler) else {}
        yb = b.step(x - sigma * u, t, x, prediction_type="x0", **kw).prev_sample
        torch.testing.assert_close(ya, yb)
        x = ya


def test_euler_step_formula():
    x, u = _state(2)
    s = FlowEulerODEScheduler()
    s.set_timesteps(4)
    out = s.step(u, s.timesteps[0], x, prediction_type="u")
    torch.testing.assert_close(out.prev_sample, x + u * (s.sigmas[1] - s.sigmas[0]).double())
    torch.testing.assert_close(out.pred_original_sample, x - u)
    assert s.step_index == 1


def test_sde_step_is_exact_posterior_sampling():
    """docs/testing.md#flow-level-oracles MC: from x_t ~ q(x_t | x0) with x0 known, one GM-SDE step gives x_t' ~
    N(alpha' x0, sigma'^2)."""
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.8, dtype=F64)
    s = GMFlowSDEScheduler()
    s.set_timesteps(5)
    s.set_begin_index(2)
    sigma, sigma_next = float(s.sigmas[2]), float(s.sigmas[3])
    g = torch.Generator().manual_seed(0)
    x_t = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    y = s.step(x0, s.timesteps[2], x_t, generator=g, prediction_type="x0").prev_sample
    assert float(y.mean()) == pytest.approx((1 - sigma_next) * 0.8, abs=4 * sigma_next / n**0.5)
    assert float(y.std()) == pytest.approx(sigma_next, rel=0.01)


def test_sde_large_variance_mode():
    x, x0 = _state(3)
    s = GMFlowSDEScheduler(output_mode="mean", variance_mode="large")
    s.set_timesteps(4)
    s.set_begin_index(1)
    g = torch.Generator().manual_seed(0)
    out = s.step(x0, s.timesteps[1], x, generator=g, prediction_type="x0").prev_sample
    sig, sig_n = s.sigmas[1].double(), s.sigmas[2].double()
    a, a_n = 1 - sig, 1 - sig_n
    co = ops.reverse_transition_coefficients(sig_n * T, sig * T, x)
    std = co.beta_bar.sqrt() * sig * torch.sqrt((a_n**2 + sig_n**2) / (a**2 + sig**2))
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(out, co.c1 * x + co.c2 * x0 + std * xi)


def test_sde_noise_uses_generator():
    x, x0 = _state(4)
    outs = []
    for seed in (1, 1, 2):
        s = GMFlowSDEScheduler()
        s.set_timesteps(4)
        outs.append(s.step(x0, s.timesteps[0], x, generator=torch.Generator().manual_seed(seed),
                           prediction_type="x0").prev_sample)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_step_index_state_machine():
    s = FlowEulerODEScheduler()
    x, u = _state(5)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(u, 1000.0, x)
    s.set_timesteps(2)
    with pytest.raises(ValueError, match="integer"):
        s.step(u, 1000, x)
    s.step(u, s.timesteps[0], x)
    s.step(u, s.timesteps[1], x)
    with pytest.raises(RuntimeError, match="more often"):
        s.step(u, s.timesteps[1], x)
    # the first call locates the timestep
    s.set_timesteps(4)
    s.step(u, s.timesteps[2], x)
    assert s.step_index == 3
    with pytest.raises(ValueError, match="prediction_type"):
        s.step(u, s.timesteps[3], x, prediction_type="eps")


@pytest.mark.parametrize(
    "make", [lambda: FlowEulerODEScheduler(shift=3.0, num_train_timesteps=500),
             lambda: GMFlowSDEScheduler(shift=2.0, h=0.5, output_mode="mean", variance_mode="small")]
)

def test_config_round_trip(make, tmp_path):
    s = make()
    path = s.save_config(tmp_path)
    cfg = json.loads(open(path).read())
    assert cfg["_class_name"] == type(s).__name__
    loaded = type(s).from_pretrained(tmp_path)
    assert loaded.config == s.config
    assert type(s).from_config(s.config).config == s.config
    assert type(s).from_config(s.config, shift=5.0).config["shift"] == 5.0
    s.set_timesteps(3)
    loaded.set_timesteps(3)
    assert torch.equal(s.timesteps, loaded.timesteps)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="output_mode"):
        GMFlowSDEScheduler(output_mode="x")
    with pytest.raises(ValueError, match="variance_mode"):
        GMFlowSDEScheduler(variance_mode="x")
    with pytest.raises(ValueError, match="h must"):
        GMFlowSDEScheduler(h=-1.0)
    with pytest.raises(ValueError, match="shift"):
        FlowEulerODEScheduler(shift=-1.0)
