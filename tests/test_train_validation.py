"""The validation hook (EMA samples -> tiny VAE -> TorchScript stand-in Inception -> FID / IS / P / R), and
``gmflow evaluate`` on a pipeline folder and on a training checkpoint (resumable sweep, results table)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gmflow.cli import load_eval_model
from gmflow.cli import main as cli_main
from gmflow.evaluation.sampling import item_labels
from gmflow.evaluation.sweep import PAPER_GUIDANCE, sweep_settings
from gmflow.models import GMDiT, SpectrumMLP
from gmflow.train import TrainConfig, Trainer

from imagenet_tiny import (
    TINY_MODEL,
    TINY_SPECTRUM,
    read_metrics,
    tiny_inception,
    tiny_reference,
    tiny_train_config,
    tiny_vae,
    write_synthetic_latents,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("val_assets")
    tiny_vae(root / "vae")
    return {"vae": root / "vae", "inception": tiny_inception(root / "inception.pt"),
            "reference": tiny_reference(root / "ref.npz"), "root": root}


def test_validation_hook_runs_with_the_ema_model(tmp_path, assets):
    data = write_synthetic_latents(tmp_path / "latents", n=16)
    cfg = tiny_train_config(
        data, tmp_path / "run", iters=2, checkpoint_interval=2, val_interval=2, val_num_samples=10,
        val_batch_size=5, val_nfe=2, val_substeps=2, val_guidance=0.2, val_viz_every=1,
        vae_path=str(assets["vae"]), inception_path=str(assets["inception"]),
        reference_stats=str(assets["reference"]))
    summary = Trainer(TrainConfig.from_dict(cfg)).fit()
    rec = read_metrics(tmp_path / "run" / "metrics.jsonl")[2][-1]
    prefix = "val_gmode2_g0.2_step2_sub2"
    for key in ("fid", "is", "precision", "recall"):
        assert math.isfinite(rec[f"{prefix}_{key}"]), key
    assert rec[f"{prefix}_num_samples"] == 10
    assert summary.last_record[f"{prefix}_fid"] == rec[f"{prefix}_fid"]
    pngs = sorted((tmp_path / "run" / "viz" / "gmode2_g0.2_step2_sub2_iter2").glob("*.png"))
    labels = item_labels(range(10), 10).tolist()  # item i: label randint(0, 10) seeded with i; PNG <i>_<label>
    assert [p.name for p in pngs] == [f"{i:09d}_{labels[i]}.png" for i in range(10)]
    assert any((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))

    # the EMA weights of the checkpoint are what evaluation loads
    ckpt_path = tmp_path / "run" / "checkpoints" / "iter_2.pth"
    transformer, spectrum, vae, _ = load_eval_model(ckpt_path, vae_path=assets["vae"])
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    torch.testing.assert_close(transformer.proj_out_2.weight, state["diffusion_ema.denoising.proj_out_2.weight"])
    assert not torch.equal(state["diffusion_ema.denoising.proj_out_2.weight"],
                           state["diffusion.denoising.proj_out_2.weight"])
    assert spectrum is not None and vae is not None


def test_validation_needs_local_files(tmp_path, assets):
    data = write_synthetic_latents(tmp_path / "latents", n=8)
    cfg = tiny_train_config(data, tmp_path / "run", iters=1, val_interval=1, vae_path=str(assets["vae"]),
                            inception_path=str(tmp_path / "absent.pt"), reference_stats=str(assets["reference"]))
    with pytest.raises(FileNotFoundError, match="inception_path"):
        Trainer(TrainConfig.from_dict(cfg)).fit()
    cfg["inception_path"] = None
    with pytest.raises(ValueError, match="inception_path"):
        Trainer(TrainConfig.from_dict(cfg)).fit()
    Trainer(TrainConfig.from_dict(cfg), validate=False).fit()  # --no-validate


def test_gmflow_evaluate_sweep_is_resumable(tmp_path, assets, capsys):
    from gmflow.data.cache import load_vae_for_caching
    from gmflow.pipelines import GMDiTPipeline

    torch.manual_seed(0)
    pipe = GMDiTPipeline(GMDiT(dict(TINY_MODEL)), SpectrumMLP(**TINY_SPECTRUM), load_vae_for_caching(assets["vae"]),
                         id2label={i: f"class{i}" for i in range(10)})
    folder = pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(folder), "--inception", str(assets["inception"]), "--reference",
            str(assets["reference"]), "--out", str(out), "--solvers", "gm-ode2", "gm-sde2", "--nfe", "2:3",
            "--guidance", "0", "0.3", "--num-samples", "10", "--batch-size", "4", "--viz-every", "2",
            "--no-progress", "--device", "cpu"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    names = ["gmode2_g0_step2_sub3", "gmode2_g0.3_step2_sub3", "gmsde2_g0_step2_sub1", "gmsde2_g0.3_step2_sub1"]
    for name in names:
        assert f"{name}_fid = " in printed
        result = json.loads((out / "results" / f"{name}.json").read_text())
        assert result["num_samples"] == 10 and math.isfinite(result["fid"]) and math.isfinite(result["precision"])
        assert (out / "viz" / name).is_dir() and not (out / "viz" / f"tmp_{name}").exists()
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[0].startswith("| setting | method | nfe")
    assert (out / "results.csv").read_text().count("\n") == 5
    pngs = sorted(p.name for p in (out / "viz" / names[0]).glob("*.png"))
    assert pngs[0].startswith("000000000_class") and len(pngs) == 6  # batches 0 and 2: items 0-3 and 8-9
    stamp = (out / "results" / f"{names[0]}.json").stat().st_mtime_ns
    assert cli_main(argv) == 0  # everything done: skipped
    assert "_fid = " not in capsys.readouterr().out
    assert (out / "results" / f"{names[0]}.json").stat().st_mtime_ns == stamp
    missing = argv.copy()
    missing[missing.index("--inception") + 1] = str(tmp_path / "none.pt")
    assert cli_main(missing) == 2
    assert "inception-2015-12-05.pt" in capsys.readouterr().err


def test_paper_sweep_grid():
    settings = sweep_settings()
    assert len(settings) == 80 and len(PAPER_GUIDANCE) == 20
    assert settings[0].name == "gmode2_g0.02_step8_sub16"
    assert {(s.method, s.nfe, s.substeps) for s in settings} == {
        ("gmode2", 8, 16), ("gmsde2", 8, 1), ("gmode2", 32, 4), ("gmsde2", 32, 1)}
