"""The sampling loop (docs/sampling.md#the-sampling-loop) end to end with an exact model
(docs/testing.md#guidance-and-solver-oracles, docs/testing.md#end-to-end-oracle), determinism,
guidance in the loop, the flow-matching baselines and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from gmflow import GaussianMixture, ops
from gmflow.flow import (
    FlowEulerODEScheduler,
    GMFlowSDEScheduler,
    flow_euler_sample,
    flow_heun_sample,
    gm_mean_velocity,
    gm_ode_substeps,
    gmflow_sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")


T = 1000.0
F64 = torch.float64

# data: a known 2-D isotropic GM (well separated components)
MU = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], dtype=F64)
PI = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
S0 = 0.3


def exact_u_posterior(x: torch.Tensor, t: torch.Tensor) -> GaussianMixture:
    """Exact u-posterior GM of the data GM given x_t (closed form, independent of gmflow)."""
    B = x.shape[0]
    sigma = (t / T).to(x.dtype).reshape(B, 1)
    alpha = 1 - sigma
    xt = x.reshape(B, 1, 2)
    v = S0**2 * sigma**2 / (sigma**2 + alpha**2 * S0**2)  # (B, 1)
    m = v.unsqueeze(-1) * (MU.to(x.dtype) / S0**2 + (alpha / sigma**2).unsqueeze(-1) * xt)  # (B, K, 2)
    marg_var = (alpha**2 * S0**2 + sigma**2).unsqueeze(-1)  # (B, 1, 1)
    logits = torch.log(PI.to(x.dtype)) - 0.5 * ((xt - alpha.unsqueeze(-1) * MU.to(x.dtype)) ** 2 / marg_var).sum(-1)
    means_u = (xt - m) / sigma.unsqueeze(-1)
    logstd_u = 0.5 * torch.log(v) - torch.log(sigma)
    return GaussianMixture(
        means_u.reshape(B, 3, 2, 1, 1),
        logstd_u.reshape(B, 1, 1, 1, 1),
        torch.log_softmax(logits, dim=1).reshape(B, 3, 1, 1, 1),
    )


def _check_data_law(x: torch.Tensor, n_sigma: float = 5.0):
    """Moments and component occupancy of samples (n, 2, 1, 1) against the data GM."""
    x = x.reshape(-1, 2)
    n = len(x)
    mean = (PI[:, None] * MU).sum(0)
    cov = (PI[:, None, None] * (MU[:, :, None] * MU[:, None, :])).sum(0) - mean[:, None] * mean[None] + S0**2 * torch.eye(2, dtype=F64)
    std = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean).abs() < n_sigma * std / math.sqrt(n)).all(), (x.mean(0), mean)
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.05, atol=0.05)
    nearest = torch.cdist(x, MU).argmin(1)
    frac = torch.bincount(nearest, minlength=3).double() / n
    torch.testing.assert_close(frac, PI, atol=n_sigma * 0.5 / math.sqrt(n), rtol=0)
    # and the within-component spread
    own = x - MU[nearest]
    assert abs(float(own.std()) - S0) < 0.02


def _noise(n, seed):
    return torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_exact_posterior_model_is_the_data_law_at_t_max():
    x = torch.randn(4, 2, 1, 1, dtype=F64)
    x0 = ops.u_to_x_0(exact_u_posterior(x, torch.full((4,), T, dtype=F64)), x, T)
    torch.testing.assert_close(x0.means[:, :, :, 0, 0], MU.expand(4, 3, 2))
    torch.testing.assert_close(x0.logweights.flatten(1), PI.log().expand(4, 3))
    torch.testing.assert_close(torch.exp(x0.logstds).flatten(), torch.full((4,), S0, dtype=F64))


@pytest.mark.parametrize("order", [1, 2])
def test_gm_sde_single_step_reproduces_data(order):
    """docs/testing.md#end-to-end-oracle: GM-SDE with the exact posterior is exact for any number of steps, one
    included."""
    x = gmflow_sample(exact_u_posterior, _noise(20_000, 0), 1, output_mode="sample", order=order,
                      generator=torch.Generator().manual_seed(1)).samples
    _check_data_law(x)


def test_gm_sde_several_steps_reproduce_data():
    x = gmflow_sample(exact_u_posterior, _noise(20_000, 2), 4, output_mode="sample", order=2,
                      generator=torch.Generator().manual_seed(3)).samples
    _check_data_law(x)


def _ode_reference(noise):
    """The exact probability-flow ODE, solved finely (Heun, 128 steps) with the exact velocity."""
    return flow_heun_sample(gm_mean_velocity(exact_u_posterior), noise, 128)


def test_gm_ode_converges_with_substeps():
    """docs/testing.md#end-to-end-oracle: GM-ODE is exact up to the Euler error of its sub-steps: NFE = 2, S = 1 -> 8 ->
    64."""
    noise = _noise(1000, 4)
    ref = _ode_reference(noise)
    errors = []
    for S in (1, 8, 64):
        x = gmflow_sample(exact_u_posterior, noise, 2, output_mode="mean", num_substeps=S).samples
        errors.append(float((x - ref).norm(dim=1).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02 and errors[2] < 0.1 * errors[0]


def test_gm_ode_and_sde_order2_match_order1_for_exact_model():
    """docs/testing.md#guidance-and-solver-oracles: with the exact model m_now = m_prev, so the 2nd-order correction
    (nearly) vanishes."""
    noise = _noise(500, 5)
    a = gmflow_sample(exact_u_posterior, noise, 4, output_mode="mean", num_substeps=8, order=1).samples
    b = gmflow_sample(exact_u_posterior, noise, 4, output_mode="mean", num_substeps=8, order=2).samples
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)
    a = gmflow_sample(exact_u_posterior, noise, 4, output_mode="sample", order=1,
                      generator=torch.Generator().manual_seed(0)).samples
    b = gmflow_sample(exact_u_posterior, noise, 4, output_mode="sample", order=2,
                      generator=torch.Generator().manual_seed(0)).samples
    assert float((a - b).abs().median()) < 2e-3


def test_gm_ode_data_law_with_many_substeps():
    x = gmflow_sample(exact_u_posterior, _noise(5000, 6), 2, output_mode="mean", num_substeps=32).samples
    _check_data_law(x, n_sigma=6.0)


# ----------------------------------------------------------------------------------------
# determinism, intermediates, guidance


class TinyGM(torch.nn.Module):
    def __init__(self, K=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 3 * K + 1))
        self.K = K

    def forward(self, x, t):
        B, K = x.shape[0], self.K
        h = self.net(torch.cat([x.reshape(B, 2), (t / T).reshape(B, 1)], dim=1).float())
        return GaussianMixture(h[:, :2 * K].reshape(B, K, 2, 1, 1), 0.1 * h[:, 2 * K:2 * K + 1].reshape(B, 1, 1, 1, 1) - 1,
                               torch.log_softmax(h[:, 2 * K + 1:], dim=1).reshape(B, K, 1, 1, 1))


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_seeded_sampling_is_deterministic(mode):
    model = TinyGM()
    noise = torch.randn(64, 2, 1, 1)
    kw = dict(output_mode=mode, order=2, num_substeps=1 if mode == "sample" else 4)
    runs = [gmflow_sample(model, noise, 3, generator=torch.Generator().manual_seed(s), **kw).samples for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    if mode == "sample":
        assert not torch.equal(runs[0], runs[2])
    else:  # GM-ODE draws nothing
        assert torch.equal(runs[0], runs[2])


def test_intermediates():
    model = TinyGM()
    noise = torch.randn(8, 2, 1, 1)
    out = gmflow_sample(model, noise, 3, output_mode="mean", num_substeps=2, return_intermediates=True)
    assert len(out.intermediates) == 3
    ts = [float(i.t) for i in out.intermediates]
    assert ts[0] == T and ts[0] > ts[1] > ts[2] > 0
    assert out.intermediates[0].gm_x0.means.shape == (8, 4, 2, 1, 1)
    assert out.intermediates[0].gm_next.means.shape == (8, 4, 2, 1, 1)
    assert torch.equal(out.intermediates[0].x_t, noise)
    assert gmflow_sample(model, noise, 3).intermediates is None


def test_points_as_pixels_posterior_mean_is_exact():
    """The 1x1 fast path of the GM-ODE sub-steps (taken while the op is the reference) equals the op on
    the original layout."""
    from gmflow.flow.sampling import _posterior_mean_as_pixels

    gm = TinyGM()(torch.randn(16, 2, 1, 1), torch.full((16,), 700.0))
    gm = ops.u_to_x_0(gm, torch.randn(16, 2, 1, 1), 700.0)
    x, xs = torch.randn(16, 2, 1, 1), torch.randn(16, 2, 1, 1)
    got = _posterior_mean_as_pixels(gm, x, xs, torch.tensor(500.0), torch.tensor(700.0), T)
    torch.testing.assert_close(got, ops.gm_posterior_mean(gm, xs, x, t_src=700.0, t_tgt=500.0))


@pytest.mark.parametrize("native", [True, False])
def test_posterior_mean_layout_follows_the_dispatcher(monkeypatch, native):
    """The points-as-pixels layout is used exactly when no native kernel serves gm_posterior_mean."""
    from gmflow.flow import sampling
    from gmflow.info import backend_table, native_kernel_serves

    served = backend_table()["gm_posterior_mean"]["CPU"] == "native"
    assert native_kernel_serves("gm_posterior_mean", "cpu") == served
    monkeypatch.setattr(sampling, "native_kernel_serves", lambda op, device: native)
    seen = []
    real = ops.gm_posterior_mean

    def spy(gm, x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real(gm, x, *args, **kwargs)

    monkeypatch.setattr(ops, "gm_posterior_mean", spy)
    gm = ops.u_to_x_0(TinyGM()(torch.randn(16, 2, 1, 1), torch.full((16,), 700.0)), torch.randn(16, 2, 1, 1), 700.0)
    x, xs = torch.randn(16, 2, 1, 1), torch.randn(16, 2, 1, 1)
    sampling._posterior_mean(gm, x, xs, torch.tensor(500.0), torch.tensor(700.0), T)
    assert seen == [(16, 2, 1, 1) if native else (2, 16, 1)]


def test_guidance_in_the_loop():
    model = TinyGM()
    calls = []

    def guided_model(x, t):
        calls.append(x.shape[0])
        return model(x, t)

    noise = torch.randn(16, 2, 1, 1)
    plain = gmflow_sample(model, noise, 3, output_mode="mean", num_substeps=2, order=2).samples
    zero = gmflow_sample(guided_model, noise, 3, output_mode="mean", num_substeps=2, order=2, guidance_scale=0.0).samples
    assert torch.equal(plain, zero) and calls == [16, 16, 16]
    calls.clear()
    out = gmflow_sample(guided_model, noise, 3, output_mode="sample", order=2, guidance_scale=0.3,
                        generator=torch.Generator().manual_seed(0)).samples
    assert calls == [32, 32, 32] and out.shape == noise.shape and torch.isfinite(out).all()


def test_guidance_batch_order():
    """uncond first (forward_test) by default; cond_first=True (the pipelines' order) swaps the halves."""
    cond_net, uncond_net = TinyGM(seed=1), TinyGM(seed=2)

    def model(first, second):
        def run(x, t):
            B = x.shape[0] // 2
            a, b = first(x[:B], t[:B]), second(x[B:], t[B:])
            return GaussianMixture(*(torch.cat([u, v]) for u, v in zip(a, b)))
        return run

    noise = torch.randn(8, 2, 1, 1)
    kw = dict(output_mode="mean", guidance_scale=0.5, order=2, num_substeps=2)
    a = gmflow_sample(model(uncond_net, cond_net), noise, 3, **kw).samples
    b = gmflow_sample(model(cond_net, uncond_net), noise, 3, cond_first=True, **kw).samples
    c = gmflow_sample(model(cond_net, uncond_net), noise, 3, **kw).samples
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_custom_scheduler_and_shift():
    model = TinyGM()
    noise = torch.randn(8, 2, 1, 1)
    a = gmflow_sample(model, noise, 3, output_mode="mean", shift=3.0).samples
    b = gmflow_sample(model, noise, 3, output_mode="mean", scheduler=FlowEulerODEScheduler(shift=3.0)).samples
    assert torch.equal(a, b)
    c = gmflow_sample(model, noise, 3, output_mode="sample", scheduler=GMFlowSDEScheduler(h=0.0)).samples
    d = gmflow_sample(model, noise, 3, output_mode="sample", scheduler=GMFlowSDEScheduler(h=0.0)).samples
    assert c.shape == noise.shape and torch.isfinite(c).all() and not torch.equal(c, d)  # x0 is still drawn


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_mode="x"), "output_mode"),
        (dict(order=3), "order"),
        (dict(num_substeps=0), "num_substeps"),
        (dict(output_mode="sample", num_substeps=2), "requires output_mode='mean'"),
        (dict(guidance_scale=1.0), "guidance_scale"),
    ],
)

def test_bad_sampling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gmflow_sample(TinyGM(), torch.randn(2, 2, 1, 1), 2, **kwargs)
    with pytest.raises(ValueError, match="num_steps"):
        gmflow_sample(TinyGM(), torch.randn(2, 2, 1, 1), 0)


def test_gm_ode_substeps():
    assert [gm_ode_substeps(n) for n in (1, 2, 3, 4, 8, 16, 200)] == [128, 64, 43, 32, 16, 8, 1]


# ----------------------------------------------------------------------------------------
# flow-matching baselines


def test_flow_baselines_converge_and_heun_beats_euler():
    noise = _noise(500, 9)
    ref = _ode_reference(noise)
    v = gm_mean_velocity(exact_u_posterior)
    err_euler = float((flow_euler_sample(v, noise, 8) - ref).norm(dim=1).mean())
    err_heun = float((flow_heun_sample(v, noise, 8) - ref).norm(dim=1).mean())
    err_euler_fine = float((flow_euler_sample(v, noise, 64) - ref).norm(dim=1).mean())
    assert err_heun < err_euler and err_euler_fine < err_euler


def test_flow_euler_intermediates_and_equivalence_to_gm_ode_k1():
    """For a K = 1 model the GM-ODE without sub-steps is exactly the Euler flow sampler."""
    model = TinyGM(K=1)
    noise = torch.randn(32, 2, 1, 1)
    x, traj = flow_euler_sample(gm_mean_velocity(model), noise, 4, return_intermediates=True)
    assert len(traj) == 4 and torch.equal(traj[-1], x)
    y = gmflow_sample(model, noise, 4, output_mode="mean").samples
    torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
