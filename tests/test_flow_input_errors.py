"""One exception type for bad input above the ops: ``gmflow.GMFlowInputError`` from gmflow.flow, the models'
public entry points, the pipeline's ``__call__`` and the CLI (one line on stderr, exit code 2)."""

from __future__ import annotations

import pytest
import torch

import gmflow
from gmflow import GaussianMixture, GMFlowInputError, IsoGaussian, cli, ops
from gmflow.flow import (
    FlowEulerODEScheduler,
    GMFlowSDEScheduler,
    GMSecondOrderSolver,
    SamplerSpec,
    gmflow_sample,
    transition_pair,
)
from gmflow.models import GMDiT, SpectrumMLP
from gmflow.pipelines import CheckpointError, GMDiTPipeline

from imagenet_tiny import TINY_MODEL, TINY_SPECTRUM


def _gm(H=4, W=4, B=2, K=3, C=4):
    g = torch.Generator().manual_seed(0)
    return GaussianMixture(torch.randn(B, K, C, H, W, generator=g), torch.full((B, 1, 1, 1, 1), -0.5),
                           torch.log_softmax(torch.randn(B, K, 1, H, W, generator=g), dim=1))


def test_one_exception_type_at_the_top_level():
    assert gmflow.GMFlowInputError is GMFlowInputError
    assert issubclass(GMFlowInputError, ValueError) and issubclass(CheckpointError, GMFlowInputError)


# -- issue 12 item 7: messages that name the argument and the layout ------------------------------------------
@pytest.mark.parametrize("call", [
    lambda gm: ops.gm_to_sample(gm, n_samples=1.5),
    lambda gm: ops.gm_spectral_sample(gm, n_samples=1.5),
    lambda gm: ops.gm_spectral_sample(gm, torch.zeros(2, 4, 4, 4), n_samples=1.5),
    lambda gm: ops.gm_to_sample(gm, n_samples=0),
])
def test_fractional_sample_count(call):
    with pytest.raises(GMFlowInputError, match=r"'n_samples' must be a positive integer \(the N of the samples' "
                                               r"\(\.\.\., N, C, H, W\) layout\); got (1\.5|0)"):
        call(_gm())


def test_iso_gaussian_without_a_variance():
    broken = IsoGaussian(torch.zeros(2, 4, 8, 8), None)
    layout = r"mean \(\.\.\., C, H, W\), var \(\.\.\., 1, H, W\) or \(\.\.\., 1, 1, 1\)"
    with pytest.raises(GMFlowInputError, match=rf"SpectrumMLP.forward\(\): 'gaussian.var' must be a tensor of the "
                                               rf"layout {layout}; got NoneType"):
        SpectrumMLP(**TINY_SPECTRUM)(broken)
    with pytest.raises(GMFlowInputError, match=rf"GMSecondOrderSolver\(\): 'gaussian_output' must have the layout "
                                               rf"{layout}; got mean \[2, 4, 8, 8\], var \[2, 4, 8, 8\]"):
        GMSecondOrderSolver()(_gm(8, 8), IsoGaussian(torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)),
                              torch.zeros(2, 4, 8, 8), 500.0, 100.0)
    with pytest.raises(GMFlowInputError, match=r"'gaussian' must be an IsoGaussian"):
        SpectrumMLP(**TINY_SPECTRUM)(torch.zeros(2, 4, 8, 8))


def test_spectral_sampling_on_an_empty_grid():
    with pytest.raises(GMFlowInputError, match=r"gm_spectral_sample\(\): spectral sampling needs a non-empty pixel "
                                               r"grid.*got means \[2, 3, 4, 0, 4\]"):
        ops.gm_spectral_sample(_gm(H=0), torch.zeros(2, 4, 0, 4))

    def model(x, t):
        return GaussianMixture(x.unsqueeze(1), torch.zeros(x.shape[0], 1, 1, 1, 1), torch.zeros(x.shape[0], 1, 1,
                                                                                                  *x.shape[-2:]))

    with pytest.raises(GMFlowInputError, match=r"gmflow_sample\(\): spectral sampling needs a non-empty pixel grid: "
                                               r"'noise' must have shape \(B, C, H, W\) with H, W >= 1, got "
                                               r"\(2, 4, 0, 0\)"):
        gmflow_sample(model, torch.zeros(2, 4, 0, 0), 2, output_mode="sample", spectrum_net=lambda g: g.mean)


def test_ops_name_a_missing_variance_and_an_empty_spectral_grid():
    layout = r"mean \(\.\.\., C, H, W\), var \(\.\.\., 1, H, W\) or \(\.\.\., 1, 1, 1\); got NoneType"
    no_var = IsoGaussian(torch.zeros(2, 4, 4, 4), None)
    with pytest.raises(GMFlowInputError, match=rf"gm_mul_iso_gaussian\(\): 'gaussian.var' must be a tensor of the "
                                               rf"layout {layout}"):
        ops.gm_mul_iso_gaussian(_gm(), no_var)
    with pytest.raises(GMFlowInputError, match=rf"u_to_x_0\(\): 'out.var' must be a tensor of the layout {layout}"):
        ops.u_to_x_0(no_var, torch.zeros(2, 4, 4, 4), 500.0)
    for shape in ((2, 4, 0, 4), (2, 4, 4, 0)):
        with pytest.raises(GMFlowInputError, match=r"spectral_gaussian_field\(\): 'log_power_spectrum' "
                                                   r"\(\.\.\., C, H, W\) needs a non-empty pixel grid"):
            ops.spectral_gaussian_field(torch.zeros(shape))
    g, spectral = ops.spectral_gaussian_field(torch.zeros(0, 4, 4, 4), n_samples=2)  # an empty batch is no error
    assert g.shape == spectral.shape == (0, 2, 4, 4, 4)


# -- the policy: flow, models, pipeline ----------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: gmflow_sample(lambda x, t: None, None, 2), "noise must be a tensor"),
    (lambda: gmflow_sample(lambda x, t: None, torch.zeros(2, 2, 1, 1), 0), "num_steps"),
    (lambda: gmflow_sample(lambda x, t: None, torch.zeros(2, 2, 1, 1), 2, output_mode="x"), "output_mode"),
    (lambda: FlowEulerODEScheduler(shift=-1.0), "shift"),
    (lambda: GMFlowSDEScheduler(variance_mode="huge"), "variance_mode"),
    (lambda: transition_pair(torch.zeros(2, 2, 1, 1), 1.5), "trans_ratio"),
    (lambda: SamplerSpec("gm-ode3"), "solver must be one of"),
])
def test_flow_entry_points(call, match):
    with pytest.raises(GMFlowInputError, match=match):
        call()


def test_model_entry_points():
    model = GMDiT(dict(TINY_MODEL))
    with pytest.raises(GMFlowInputError, match="hidden_states must have shape"):
        model(torch.zeros(2, 3, 8, 8), 500.0, torch.tensor([0, 1]))
    with pytest.raises(GMFlowInputError, match="class_labels"):
        model(torch.zeros(2, 4, 8, 8), 500.0, torch.tensor([0.0, 1.0]))
    with pytest.raises(GMFlowInputError, match="GMDiT config: num_layers"):
        GMDiT({**TINY_MODEL, "num_layers": 0})
    with pytest.raises(GMFlowInputError, match="base_size"):
        SpectrumMLP.from_config({"base_size": [4, 0, 8]})


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = GMDiTPipeline(GMDiT(dict(TINY_MODEL)), SpectrumMLP(**TINY_SPECTRUM), id2label={i: f"c{i}" for i in range(10)})
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("kwargs, match", [
    (dict(output_type="gif"), "output_type"),
    (dict(guidance_scale=1.5), "guidance_scale"),
    (dict(output_mode="median"), "output_mode"),
    (dict(order=3), "order must be 1 or 2"),
    (dict(sampler="gm-ode2"), "sampler must be a gmflow.flow.SamplerSpec"),
    (dict(generator=0), "generator must be a torch.Generator"),
])
def test_pipeline_call(pipe, kwargs, match):
    with pytest.raises(GMFlowInputError, match=match):
        pipe([1, 2], num_inference_steps=1, **{"output_type": "latent", **kwargs})
    with pytest.raises(GMFlowInputError, match="labels must be strings or ints"):
        pipe([1.5], num_inference_steps=1, output_type="latent")


@pytest.mark.parametrize("solver", ["gm-ode2", "gm-sde2"])
def test_pipeline_sampler_spec_equals_the_keywords(pipe, solver):
    sde = solver == "gm-sde2"
    spec = SamplerSpec(solver, 2, 1 if sde else 3, 0.3)
    by_spec = pipe([1, 2], sampler=spec, generator=torch.Generator().manual_seed(4), output_type="latent").latents
    keyword = GMDiTPipeline(pipe.transformer, pipe.spectrum_net,
                            scheduler=GMFlowSDEScheduler() if sde else FlowEulerODEScheduler())
    keyword.set_progress_bar_config(disable=True)
    by_keywords = keyword([1, 2], guidance_scale=0.3, num_inference_steps=2, num_inference_substeps=1 if sde else 3,
                          output_mode="sample" if sde else "mean", generator=torch.Generator().manual_seed(4),
                          output_type="latent").latents
    assert torch.equal(by_spec, by_keywords)


# -- the CLI: one line, exit code 2, for every command --------------------------------------------------------
MINIMAL_ARGV = {
    "toy": [], "sample": ["--checkpoint", "c", "--labels", "jay"],
    "cache-latents": ["--images", "i", "--list", "l", "--vae", "v", "--out", "o"], "train": [],
    "evaluate": ["--checkpoint", "c", "--inception", "i", "--reference", "r"], "demo": [], "info": [],
}


@pytest.mark.parametrize("command", sorted(MINIMAL_ARGV))
def test_cli_prints_bad_input_as_one_line(monkeypatch, capsys, command):
    assert set(MINIMAL_ARGV) == set(cli.COMMANDS)

    def bad(args):
        raise GMFlowInputError("first line\n  'argument' must have layout (B, C, H, W)")

    monkeypatch.setitem(cli.COMMANDS, command, bad)
    assert cli.main([command, *MINIMAL_ARGV[command]]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"gmflow {command}: error: first line 'argument' must have layout (B, C, H, W)\n"
