"""GMDiTPipeline end to end on CPU with a tiny random GM-DiT (+ a tiny random AutoencoderKL when diffusers
is installed): GM-ODE 2 and GM-SDE 2 with guidance, shapes, finiteness, determinism under a seeded
generator, the guided batch layout, bf16 networks, label look-up, output types and ``gmflow sample``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from gmdit_layout import write_official_folder
from gmflow import cli
from gmflow.flow import FlowEulerODEScheduler, GMFlowSDEScheduler
from gmflow.pipelines import GMDiTPipeline, GMDiTPipelineOutput
from gmflow.pipelines import checkpoint as ckpt

HAS_DIFFUSERS = ckpt.diffusers_available()
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_official_folder(tmp_path_factory.mktemp("pipe") / "ckpt", vae=HAS_DIFFUSERS)


@pytest.fixture
def pipe(folder):
    p = GMDiTPipeline.from_pretrained(folder)
    p.set_progress_bar_config(disable=True)
    return p


def _ode(pipe, seed, **kw):
    pipe.scheduler = FlowEulerODEScheduler.from_config(pipe.scheduler.config)
    args = dict(num_inference_steps=STEPS, num_inference_substeps=2, output_type="latent",
                generator=torch.Generator().manual_seed(seed))
    return pipe(["jay", "magpie", "hen"], **{**args, **kw})


def _sde(pipe, seed, **kw):
    pipe.scheduler = GMFlowSDEScheduler.from_config(pipe.scheduler.config)
    args = dict(num_inference_steps=STEPS, num_inference_substeps=1, output_mode="sample", output_type="latent",
                generator=torch.Generator().manual_seed(seed))
    return pipe([2, 3, 6], **{**args, **kw})


@pytest.mark.parametrize("solver", [_ode, _sde], ids=["gm-ode2", "gm-sde2"])
def test_guided_second_order_sampling_is_finite_and_deterministic(pipe, solver):
    a, b, c = solver(pipe, 0), solver(pipe, 0), solver(pipe, 1)
    assert isinstance(a, GMDiTPipelineOutput)
    assert a.latents.shape == (3, 4, 8, 8) and a.latents.dtype == torch.float32
    assert torch.isfinite(a.latents).all() and a.latents.abs().max() < 100
    assert torch.equal(a.latents, b.latents) and torch.equal(a.images, a.latents)
    assert not torch.allclose(a.latents, c.latents)


def test_guided_batch_is_conditional_first(pipe):
    seen = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: seen.append(args[2].tolist()))
    try:
        _ode(pipe, 0, num_inference_steps=2)
        assert seen == [[2, 3, 6, 10, 10, 10]] * 2  # conditional labels, then the null class (10 classes)
        seen.clear()
        plain = _ode(pipe, 0, num_inference_steps=2, guidance_scale=0.0)
        assert seen == [[2, 3, 6]] * 2
    finally:
        hook.remove()
    guided = _ode(pipe, 0, num_inference_steps=2)
    assert not torch.allclose(plain.latents, guided.latents)


def test_spectral_sampling_uses_the_spectrum_net(pipe):
    with_net = _sde(pipe, 0)
    net = pipe.spectrum_net
    pipe.spectrum_net = None
    try:
        without = _sde(pipe, 0)
    finally:
        pipe.spectrum_net = net
    assert torch.isfinite(without.latents).all() and not torch.allclose(with_net.latents, without.latents)


def test_bf16_transformer_keeps_fp32_gm_math(folder):
    pipe = GMDiTPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, load_vae=False)
    pipe.set_progress_bar_config(disable=True)
    ref = GMDiTPipeline.from_pretrained(folder, load_vae=False)
    ref.set_progress_bar_config(disable=True)
    a, b = _ode(pipe, 0), _ode(ref, 0)
    assert pipe.dtype == torch.bfloat16 and a.latents.dtype == torch.float32 and torch.isfinite(a.latents).all()
    assert (a.latents - b.latents).abs().max() < 0.1 * b.latents.abs().max()
    s = _sde(pipe, 0)
    assert torch.isfinite(s.latents).all()
    # casting a loaded pipeline gives the same sampler as loading it in that dtype
    assert ref.to("cpu", torch.bfloat16) is ref and ref.spectrum_net.dtype == torch.bfloat16
    assert torch.equal(_ode(ref, 0).latents, a.latents)


def test_get_label_ids(pipe):
    assert pipe.get_label_ids(["jay", "magpie"]) == [2, 3]
    assert pipe.get_label_ids("Tinca tinca") == [0]
    assert pipe.get_label_ids(["Jay", " goldfinch ", "7", 9]) == [2, 9, 7, 9]
    with pytest.raises(ValueError, match=r"'magpi' is not a label.*Did you mean: 'magpie'"):
        pipe.get_label_ids(["jay", "magpi"])
    with pytest.raises(ValueError, match="out of range"):
        pipe.get_label_ids(["10"])


def test_bad_call_arguments(pipe):
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe([1], guidance_scale=1.0)
    with pytest.raises(ValueError, match="output_type"):
        pipe([1], output_type="png")
    with pytest.raises(ValueError, match="requires output_mode='mean'"):
        pipe([1], output_mode="sample", num_inference_substeps=4, num_inference_steps=1)
    with pytest.raises(ValueError, match="class labels"):
        pipe(torch.tensor([11]))


def test_without_vae_returns_latents_and_says_how_to_get_images(folder, caplog):
    pipe = GMDiTPipeline.from_pretrained(folder, load_vae=False)
    pipe.set_progress_bar_config(disable=True)
    with caplog.at_level(logging.WARNING, logger="gmflow"):
        out = pipe([2], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images is None and out.latents.shape == (1, 4, 8, 8)
    assert "gmflow[diffusers]" in caplog.text
    (images,) = pipe([2], num_inference_steps=2, output_type="latent", return_dict=False)
    assert images.shape == (1, 4, 8, 8)


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="needs the optional extra gmflow[diffusers]")
def test_vae_decoding(pipe):
    from diffusers import AutoencoderKL

    assert isinstance(pipe.vae, AutoencoderKL)
    kw = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    pil = pipe(["jay", "magpie"], **kw).images
    assert len(pil) == 2 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    arr = pipe(["jay", "magpie"], output_type="np", **{**kw, "generator": torch.Generator().manual_seed(0)}).images
    assert arr.shape == (2, 16, 16, 3) and arr.min() >= 0 and arr.max() <= 1
    assert np.array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))
    pt = pipe(["jay"], output_type="pt", **kw).images
    assert pt.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("solver", ["gm-ode2", "gm-sde2"])
def test_cli_sample(folder, tmp_path, solver, capsys):
    out = tmp_path / "out"
    argv = ["sample", "--checkpoint", str(folder), "--labels", "jay", "magpie", "--solver", solver, "--steps", "2",
            "--guidance", "0.3", "--seed", "3", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    if HAS_DIFFUSERS:
        files = sorted(p.name for p in out.iterdir())
        assert files == ["000_jay.png", "001_magpie.png"]
        from PIL import Image

        assert Image.open(out / "000_jay.png").size == (16, 16)
    else:
        assert np.load(out / "latents.npy").shape == (2, 4, 8, 8)
    assert "wrote" in capsys.readouterr().out


def test_cli_sample_errors(folder, tmp_path, capsys):
    base = ["sample", "--checkpoint", str(folder), "--steps", "1", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(base + ["--labels", "magpi"]) == 2
    assert "Did you mean: 'magpie'" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "none"), "--labels", "jay"]) == 2
    assert "pipeline folder not found" in capsys.readouterr().err
    assert cli.main(base + ["--labels", "jay", "--solver", "gm-sde2", "--substeps", "4"]) == 2
