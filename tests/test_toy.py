"""The checkerboard toy: data and exact density, model, trainer, sampling driver, metrics, figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import gmflow
from gmflow.toy.data import Checkerboard
from gmflow.toy.evaluate import (
    SOLVERS,
    FinalStepTemperature,
    fraction_inside,
    js_divergence_bits,
    sample_metrics,
    sample_toy,
    sliced_wasserstein,
)
from gmflow.toy.figures import plot_metrics, plot_sample_grid, plot_training_loss, replot
from gmflow.toy.model import GMFlowMLP2DDenoiser, timestep_embedding
from gmflow.toy.train import ToyTrainConfig, karras_ema_beta, load_checkpoint, save_checkpoint, train_toy


pytestmark = pytest.mark.usefixtures("one_thread")


DATA = Checkerboard()


def test_checkerboard_samples_and_density():
    g = torch.Generator().manual_seed(0)
    x = DATA.sample(50_000, g)
    assert x.shape == (50_000, 2) and x.dtype == torch.float32
    assert bool(DATA.inside(x).all())
    assert float(x.abs().max()) <= 4.0
    # every white square equally likely: 1/8 each
    cell = torch.floor((x.double() + 4) / 2).long()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).double() / len(x)
    white = torch.tensor([(i + j) % 2 == 0 for i in range(4) for j in range(4)])
    torch.testing.assert_close(counts[white], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.006, rtol=0)
    assert float(counts[~white].sum()) == 0
    # generated on demand from the generator: same seed, same points
    assert torch.equal(DATA.sample(10, torch.Generator().manual_seed(3)), DATA.sample(10, torch.Generator().manual_seed(3)))


def test_checkerboard_inside_and_log_density():
    pts = torch.tensor([[-3.5, -3.5], [-1.5, -3.5], [0.5, 0.5], [3.9, 3.9], [4.1, 0.0], [-3.0, -1.0]])
    assert DATA.inside(pts).tolist() == [True, False, True, True, False, False]
    ld = DATA.log_density(pts)
    assert ld[0] == pytest.approx(math.log(1 / 32)) and ld[1] == -math.inf


def test_bin_masses_exact():
    m = DATA.bin_masses(64, 4.5)
    assert m.shape == (64, 64)
    assert float(m.sum()) == pytest.approx(1.0, abs=1e-12)
    m2 = DATA.bin_masses(8, 4.0)  # bins aligned with the squares: 1/8 on white, 0 on black
    expected = torch.tensor([[1 / 32 if (i // 2 + j // 2) % 2 == 0 else 0 for j in range(8)] for i in range(8)],
                            dtype=torch.float64)
    torch.testing.assert_close(m2, expected)


@pytest.mark.parametrize("angle", [0.0, 0.3, math.pi / 4, 2.0, math.pi / 2])
def test_projected_cdf_matches_monte_carlo(angle):
    x = DATA.sample(200_000, torch.Generator().manual_seed(1)).double()
    proj = x[:, 0] * math.cos(angle) + x[:, 1] * math.sin(angle)
    z = torch.linspace(-6, 6, 61, dtype=torch.float64)
    empirical = (proj[None, :] <= z[:, None]).double().mean(1)
    cdf = DATA.projected_cdf(z, angle)
    torch.testing.assert_close(cdf, empirical, atol=6e-3, rtol=0)
    assert float(cdf[0]) == 0.0 and float(cdf[-1]) == pytest.approx(1.0, abs=1e-12)


def test_metrics_on_reference_distributions():
    x = DATA.sample(50_000, torch.Generator().manual_seed(2))
    m = sample_metrics(x)
    assert m["inside"] == 1.0 and m["js_bits"] < 0.015 and m["swd"] < 0.02
    noise = torch.randn(50_000, 2, generator=torch.Generator().manual_seed(3)) * 2.5
    bad = sample_metrics(noise)
    assert bad["inside"] < 0.45 and bad["js_bits"] > 0.3 and bad["swd"] > 0.2
    # W1 between a law and its translate by d is exactly |d cos(theta)|: mean over the 64 angles
    d = 1.0
    shifted = sliced_wasserstein(x + torch.tensor([d, 0.0]))
    expected = d * sum(abs(math.cos(math.pi * j / 64)) for j in range(64)) / 64
    assert shifted == pytest.approx(expected, abs=0.02)
    # far outliers count with their full distance (the exact tail term)
    far = x.clone()
    far[:500] = 100.0
    assert sliced_wasserstein(far) > 0.01 * 80
    assert js_divergence_bits(torch.full((1000, 2), 50.0)) == pytest.approx(1.0, abs=1e-9)
    assert fraction_inside(torch.full((10, 2), 50.0)) == 0.0


def test_sliced_wasserstein_agrees_with_scipy():
    """Each slice's exact W1 equals scipy.stats.wasserstein_distance between the projected samples and the exact
    projected law discretised on a 1e-4 grid (weights = CDF increments); the mean over the slices is the SW1."""
    from scipy.stats import wasserstein_distance

    n_projections = 8
    for scale, shift in ((1.0, 0.0), (1.15, 0.4), (0.8, -0.7)):
        x = DATA.sample(4000, torch.Generator().manual_seed(6)) * scale + shift
        z = np.linspace(-8.0, 8.0, 160_001)
        per_slice = []
        for j in range(n_projections):
            angle = math.pi * j / n_projections
            projected = (x[:, 0] * math.cos(angle) + x[:, 1] * math.sin(angle)).double().numpy()
            mass = np.diff(DATA.projected_cdf(torch.from_numpy(z), angle).numpy()).clip(0)  # round-off: -1e-17
            per_slice.append(wasserstein_distance(projected, (z[1:] + z[:-1]) / 2, v_weights=mass))
        # the tolerance is the trapezoid rule's on our 1e-3 grid (<= half a grid step)
        assert sliced_wasserstein(x, n_projections=n_projections) == pytest.approx(np.mean(per_slice), abs=5e-4)


# ----------------------------------------------------------------------------------------
# model


def test_model_paper_size_and_init():
    model = GMFlowMLP2DDenoiser(64)
    assert sum(p.numel() for p in model.parameters()) == 1_412_289  # the paper's toy model
    assert sum(p.numel() for p in GMFlowMLP2DDenoiser(32).parameters()) == 1_363_041
    x = torch.randn(5, 2, 1, 1)
    gm = model(x, torch.full((5,), 500.0))
    assert gm.means.shape == (5, 64, 2, 1, 1) and gm.logstds.shape == (5, 1, 1, 1, 1)
    assert gm.logweights.shape == (5, 64, 1, 1, 1)
    # zero-initialised heads: uniform weights, s = 1
    torch.testing.assert_close(gm.logweights, torch.full_like(gm.logweights, -math.log(64)))
    torch.testing.assert_close(gm.logstds, torch.zeros_like(gm.logstds))
    with pytest.raises(ValueError, match="x_t"):
        model(torch.randn(5, 3, 1, 1), torch.zeros(5))


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 10.0, 999.0])
    emb = timestep_embedding(t, 256)
    i = torch.arange(128, dtype=torch.float32)
    f = torch.exp(-math.log(10000.0) * i / 127)
    torch.testing.assert_close(emb, torch.cat([torch.cos(t[:, None] * f), torch.sin(t[:, None] * f)], dim=1))


def test_k1_model_and_constant_logstd():
    gm = GMFlowMLP2DDenoiser(1, hidden_dim=16, num_layers=1, constant_logstd=-1.0)(torch.randn(3, 2, 1, 1), torch.ones(3))
    assert gm.means.shape == (3, 1, 2, 1, 1)
    assert torch.equal(gm.logweights, torch.zeros(3, 1, 1, 1, 1))
    assert torch.equal(gm.logstds, torch.full((3, 1, 1, 1, 1), -1.0))


# ----------------------------------------------------------------------------------------
# training


def _tiny_config(**kw):
    base = dict(k=8, iters=60, batch_size=256, lr=2e-3, warmup=10, hidden_dim=32, num_layers=2, log_every=20)
    base.update(kw)
    return ToyTrainConfig(**base)


def test_training_smoke_loss_decreases_and_checkpoint_round_trip(tmp_path):
    result = train_toy(_tiny_config(), progress=False)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert result.ema_model is not None and result.sampling_model is result.ema_model
    path = save_checkpoint(result, tmp_path / "ck.pt")
    loaded = load_checkpoint(path)
    assert loaded.config == result.config and loaded.history == result.history
    x, t = torch.randn(4, 2, 1, 1), torch.full((4,), 300.0)
    for a, b in ((loaded.model, result.model), (loaded.ema_model, result.ema_model)):
        for u, v in zip(a(x, t), b(x, t)):
            assert torch.equal(u, v)


def test_training_is_seeded_and_no_ema():
    a = train_toy(_tiny_config(iters=5, ema=False), progress=False)
    b = train_toy(_tiny_config(iters=5, ema=False), progress=False)
    assert a.ema_model is None and a.sampling_model is a.model
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_karras_ema_beta():
    assert karras_ema_beta(1) == 0.0
    assert karras_ema_beta(10, 7.0) == pytest.approx(0.9**8)
    assert karras_ema_beta(1000, 7.0) == pytest.approx((1 - 1e-3) ** 8)


def test_train_config_validation():
    with pytest.raises(ValueError, match="iters"):
        ToyTrainConfig(iters=0)
    with pytest.raises(ValueError, match="trans_ratio"):
        ToyTrainConfig(trans_ratio=0.0)
    with pytest.raises(ValueError, match="lr"):
        ToyTrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="timestep_shift"):
        ToyTrainConfig(timestep_shift=0.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        ToyTrainConfig(lr_schedule="step")


# ----------------------------------------------------------------------------------------
# sampling driver and figure


@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_toy_all_solvers_seeded(solver):
    model = GMFlowMLP2DDenoiser(4, hidden_dim=16, num_layers=1).eval()
    runs = [sample_toy(model, solver, 2, 300, torch.Generator().manual_seed(s), chunk=128, ode_total_substeps=8)
            for s in (1, 1, 2)]
    assert runs[0].shape == (300, 2) and runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    with pytest.raises(ValueError):
        sample_toy(model, "nope", 2, 10)


def test_final_step_temperature_only_changes_the_last_sde_step():
    model = GMFlowMLP2DDenoiser(4, hidden_dim=16, num_layers=1).eval()
    wrapped = FinalStepTemperature(model, 0.5, t_last=250.0)
    x = torch.randn(6, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1000.0, 750.0, 500.0, 250.0, 250.0, 100.0])
    with torch.no_grad():
        plain, tempered = model(x, t), wrapped(x, t)
    assert torch.equal(plain.means, tempered.means) and torch.equal(plain.logweights, tempered.logweights)
    shift = (tempered.logstds - plain.logstds).flatten()
    torch.testing.assert_close(shift, torch.tensor([0, 0, 0, 1, 1, 1]) * math.log(0.5))
    with pytest.raises(ValueError, match="temperature"):
        FinalStepTemperature(model, 0.0, 250.0)

    def draw(solver, temperature):
        return sample_toy(model, solver, 2, 200, torch.Generator().manual_seed(4), chunk=64, ode_total_substeps=4,
                          sde_temperature=temperature)

    assert not torch.equal(draw("gm-sde2", 1.0), draw("gm-sde2", 0.5))
    assert torch.equal(draw("gm-ode2", 1.0), draw("gm-ode2", 0.5))  # the ODE has no final draw
    # a sharper final draw: the samples spread less around the same final means
    assert float(draw("gm-sde1", 0.1).std()) < float(draw("gm-sde1", 1.0).std())


def _decoded_png(path, min_size=(300, 200), max_size=(4000, 4000)):
    """Decodes ``path`` with Pillow; checks it is a PNG of a sensible size with more than one colour."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        w, h = image.size
        assert min_size[0] <= w <= max_size[0] and min_size[1] <= h <= max_size[1], image.size
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10
    return pixels


def _small_results():
    x = DATA.sample(2000, torch.Generator().manual_seed(0))
    blurred = x + 0.3 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    samples = {"gm-sde2": {1: blurred, 4: x}, "fm-euler": {1: blurred, 4: blurred, 32: x}}
    results = [{"solver": s, "nfe": n, **sample_metrics(v)} for s, row in samples.items() for n, v in row.items()]
    return samples, results


def test_sample_grid_figure(tmp_path):
    samples, _ = _small_results()
    path = plot_sample_grid(tmp_path / "grid.png", samples, data_sample=DATA.sample(2000), bins=32, dpi=40)
    pixels = _decoded_png(path, min_size=(200, 150))
    # rows data + 2 solvers, columns NFE 1, 4, 32: a wide figure, taller than one row
    assert pixels.shape[1] > pixels.shape[0] * 0.7
    with pytest.raises(ValueError, match="no sample sets"):
        plot_sample_grid(tmp_path / "empty.png", {})


def test_metrics_and_loss_figures(tmp_path):
    _, results = _small_results()
    floors = sample_metrics(DATA.sample(2000, torch.Generator().manual_seed(5)))
    _decoded_png(plot_metrics(tmp_path / "metrics.png", results, floors, dpi=40), min_size=(400, 120))
    history = [{"iter": i, "loss": 1.0 / i} for i in range(1, 6)]
    _decoded_png(plot_training_loss(tmp_path / "loss.png", {"GMFlow K=4": history, "K=1": history[::-1]}, dpi=40),
                 min_size=(200, 120))
    with pytest.raises(ValueError, match="empty"):
        plot_metrics(tmp_path / "none.png", [])
    with pytest.raises(ValueError, match="no loss history"):
        plot_training_loss(tmp_path / "none.png", {"a": []})


def test_replot_from_an_output_folder(tmp_path):
    samples, results = _small_results()
    (tmp_path / "samples").mkdir()
    for r in results:
        np.save(tmp_path / "samples" / f"{r['solver']}_nfe{r['nfe']}.npy", samples[r["solver"]][r["nfe"]].numpy())
    record = {"config": {"train": {"k": 4, "seed": 0}}, "results": results,
              "train_history": {"gm": [{"iter": 10, "loss": 0.5}, {"iter": 20, "loss": 0.3}],
                                "fm": [{"iter": 10, "loss": 0.7}, {"iter": 20, "loss": 0.6}]}}
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    paths = replot(tmp_path)
    assert [p.name for p in paths] == ["toy_grid.png", "toy_metrics.png", "toy_loss.png"]
    for p in paths:
        _decoded_png(p)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        replot(tmp_path / "nothing")


def test_no_hand_written_image_encoder():
    """Images are written by matplotlib / Pillow: no PNG chunk or zlib stream is assembled by hand."""
    package = Path(gmflow.__file__).parent
    for source in package.rglob("*.py"):
        text = source.read_text()
        for marker in ("IHDR", "zlib.compress", "struct.pack", "_GLYPHS", "_VIRIDIS"):
            assert marker not in text, f"{source}: {marker}"


def test_budget_sweep_table_and_plot(tmp_path):
    """benchmarks/toy_budget_sweep.py: the table and the plot from finished runs' records."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "toy_budget_sweep.py"
    spec = importlib.util.spec_from_file_location("toy_budget_sweep", script)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    records = {}
    for iters, blur in ((100, 0.4), (200, 0.2), (400, 0.05)):
        x = DATA.sample(1500, torch.Generator().manual_seed(iters))
        rows = [{"solver": s, "nfe": n, **sample_metrics(x + blur * n ** -0.5 * torch.randn(1500, 2))}
                for s, n in sweep.COMPARED]
        checks = [{"check": "a", "gmflow": 0.9, "baseline": 0.8, "passed": True},
                  {"check": "b", "gmflow": iters / 1000, "baseline": 0.15, "passed": iters > 100}]
        records[iters] = {"results": rows, "acceptance": checks, "exact_data": sample_metrics(x),
                          "timings": {"train_s": iters / 10, "sampling_s": 1.0, "total_s": iters / 10 + 1}}
    # a run that reused its checkpoints is charged the training time they recorded
    records[400]["timings"] = {"train_s": 2.0, "sampling_s": 1.0, "total_s": 4.0}
    records[400]["train_history"] = {"a": [{"seconds": 30.0}, {"seconds": 70.0}], "b": [{"seconds": 65.0}]}
    assert sweep.wall_times(records[400]) == (70.0, 1.0, 72.0)
    table = sweep.sweep_table(records)
    assert "| 100 | gm-ode2@4 |" in table and "| 400 | exact-data sample | 1.0000 |" in table
    assert "| 100 | 1 / 2 | b | 10 | 1 | 11 |" in table and "| 400 | 2 / 2 | none | 70 | 1 | 72 |" in table
    # the check-by-budget matrix
    assert "| check | 100 it | 200 it | 400 it |" in table
    assert "| b | **FAIL** 0.1000 vs 0.1500 | pass 0.2000 vs 0.1500 | pass 0.4000 vs 0.1500 |" in table
    _decoded_png(sweep.plot_sweep(tmp_path / "sweep.png", records), min_size=(600, 200))
