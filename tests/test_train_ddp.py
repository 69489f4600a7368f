"""A 2-process gloo run of a tiny GM-DiT under torchrun (``gmflow train``), and the single-process pieces
of the trainer: config round trip and overrides, warm-up, the EMA ramp-up, optimizer groups."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from gmflow.cli import main as cli_main
from gmflow.train import TrainConfig, apply_overrides, build_diffusion, build_optimizer, ema_beta, lr_at
from gmflow.train import checkpoint as ckpt

from imagenet_tiny import TINY_MODEL, TINY_SPECTRUM, read_metrics, tiny_train_config, write_config, write_synthetic_latents


def test_torchrun_two_process_gloo(tmp_path):
    data = write_synthetic_latents(tmp_path / "latents", n=24)
    cfg = tiny_train_config(data, tmp_path / "ddp", iters=3, checkpoint_interval=3)
    config = write_config(tmp_path / "ddp.json", cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gmflow.cli",
         "train", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "iterations 0 -> 3" in proc.stdout
    records = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert sorted(records) == [1, 2, 3]
    assert all(math.isfinite(r[0]["loss"]) and math.isfinite(r[0]["diffusion_grad_norm"]) for r in records.values())
    state = ckpt.load_checkpoint(tmp_path / "ddp" / "checkpoints" / "latest.pth")
    meta = state["meta"]
    assert (meta["iter"], meta["world_size"], meta["global_batch"]) == (3, 2, 8)
    assert len(state["rng"]) == 2  # every rank's RNG streams are saved
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])
    assert state["sampler"]["batches_per_epoch"] == 3  # 24 items / 2 ranks / batch 4
    assert any((tmp_path / "ddp" / "tb").glob("events.out.tfevents.*"))


def test_config_round_trip_and_overrides(tmp_path, capsys):
    cfg = TrainConfig()
    assert cfg.betas == (0.9, 0.95) and cfg.lr == 2e-4 and cfg.trans_ratio == 0.5 and cfg.weight_decay == 0.05
    assert cfg.model["num_gaussians"] == 8 and cfg.label_dropout == 0.1
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    data = apply_overrides(cfg.to_dict(), ["iters=10", "model.num_layers=2", "work_dir=runs/x", "vae_path=null"])
    assert (data["iters"], data["model"]["num_layers"], data["work_dir"], data["vae_path"]) == (10, 2, "runs/x", None)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"itres": 3})
    with pytest.raises(ValueError, match="trans_ratio"):
        TrainConfig(trans_ratio=0.0)
    path = write_config(tmp_path / "c.json", {"iters": 7})
    assert cli_main(["train", "--config", str(path), "--set", "batch_size=3", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["iters"], printed["batch_size"]) == (7, 3)
    assert cli_main(["train", "--set", "nonsense=1", "--print-config"]) == 2


def test_warmup_ema_and_optimizer_groups():
    cfg = TrainConfig(warmup_iters=1000, warmup_ratio=0.001)
    assert lr_at(cfg, 0) == pytest.approx(2e-7)
    assert lr_at(cfg, 500) == pytest.approx(2e-4 * (1 - 0.5 * 0.999))
    assert lr_at(cfg, 1000) == lr_at(cfg, 150_000) == 2e-4
    # ramp-up: beta = 0.5^(20 / n) while 0.05 n B < 3e7, then 0.5^(B / 3e7)
    for n in (1, 10, 1000, 146_000):
        assert ema_beta(n - 1, 4096) == pytest.approx(0.5 ** (20 / n), rel=1e-12)
    assert ema_beta(199_999, 4096) == pytest.approx(0.5 ** (4096 / 3e7), rel=1e-12)
    assert ema_beta(199_999, 4096) == pytest.approx(0.999905, abs=1e-6)
    small = TrainConfig(model=dict(TINY_MODEL), spectrum_net=dict(TINY_SPECTRUM), optimizer="adamw")
    torch.manual_seed(0)
    model = build_diffusion(small)
    opt = build_optimizer(model, small, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all("bias" in names[id(p)] for p in no_decay["params"])
    assert not any("bias" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_objective_gradients_reach_both_networks():
    cfg = TrainConfig(model=dict(TINY_MODEL), spectrum_net=dict(TINY_SPECTRUM), mixed_precision="no")
    torch.manual_seed(0)
    model = build_diffusion(cfg)
    x0 = torch.randn(4, 4, 8, 8)
    out = model(x0, torch.tensor([0, 1, 2, 10]), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.per_sample.shape == (4,) and out.variance.shape == (4,) and out.t_high.shape == (4,)
    assert out.loss.item() == pytest.approx(out.loss_transition.item() + out.loss_spectral.item(), rel=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["denoising.proj_out_2.weight"].abs().sum() > 0
    assert grads["spectrum_net.mlp.4.weight"].abs().sum() > 0
    # the same generator state gives the same loss (all randomness is the caller's generator)
    again = model(x0, torch.tensor([0, 1, 2, 10]), torch.Generator().manual_seed(0))
    assert again.loss.item() == out.loss.item()


def test_non_finite_gradients_are_zeroed(tmp_path):
    from gmflow.train import Trainer

    data = write_synthetic_latents(tmp_path / "latents", n=8)
    for p in data.rglob("*.pth"):  # poison every latent: every loss and gradient norm is NaN
        torch.save({"x": torch.full((4, 8, 8), float("nan")), "y": torch.tensor(0)}, p)
    cfg = TrainConfig.from_dict(tiny_train_config(data, tmp_path / "run", iters=2, tensorboard=False))
    Trainer(cfg).fit()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(math.isnan(r[0]["diffusion_grad_norm"]) and r[0]["nonfinite_grad_steps"] == 1 for r in records.values())
    state = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_2.pth")
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
