"""Exact resume of the ImageNet trainer: SIGKILL (between iterations and half-way through a checkpoint
write) + resume reproduces the uninterrupted run bit for bit on CPU; a truncated checkpoint is never
resumed from; retention and the atomic ``latest.pth`` pointer."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gmflow.train import TrainConfig, Trainer, checkpoint as ckpt

from imagenet_tiny import read_metrics, tiny_train_config, write_config, write_synthetic_latents

DRIVER = Path(__file__).with_name("train_kill_driver.py")
LOGGED = ("loss", "loss_transition", "loss_spectral", "diffusion_grad_norm", "lr",
          *(f"loss_trans_quartile_{q}" for q in range(4)), *(f"loss_trans_var_quartile_{q}" for q in range(4)))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _run_driver(config: Path, mode: str, at: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(DRIVER.parent))
    return subprocess.run([sys.executable, str(DRIVER), str(config), mode, str(at)], env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["meta"]["iter"] == b["meta"]["iter"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert any(k.startswith("diffusion_ema.") for k in a["state_dict"])
    oa, ob = a["optimizer"]["diffusion"], b["optimizer"]["diffusion"]
    assert oa["param_groups"] == ob["param_groups"]
    for i, sa in oa["state"].items():
        for name, v in sa.items():
            assert torch.equal(v, ob["state"][i][name]), (i, name)
    assert torch.equal(a["rng"][0]["generator"], b["rng"][0]["generator"])


def test_sigkill_and_torn_checkpoint_resume_bit_identical(tmp_path):
    data = write_synthetic_latents(tmp_path / "latents")
    Trainer(TrainConfig.from_dict(tiny_train_config(data, tmp_path / "ref"))).fit()
    ref = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]

    run_cfg = tiny_train_config(data, tmp_path / "run")
    config = write_config(tmp_path / "run.json", run_cfg)
    ckdir = tmp_path / "run" / "checkpoints"

    # 1. killed half-way through writing iter_4.pth: the torn temporary file is never used
    proc = _run_driver(config, "checkpoint", 4)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert os.readlink(ckdir / "latest.pth") == "iter_2.pth"
    assert not (ckdir / "iter_4.pth").exists()
    assert any(p.name.startswith(".iter_4.pth.tmp") for p in ckdir.iterdir())

    # 2. resumes from iter_2, killed right after iteration 5 (iter_4 complete, latest -> iter_4)
    proc = _run_driver(config, "iteration", 5)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert os.readlink(ckdir / "latest.pth") == "iter_4.pth"

    # 3. resumes from iter_4 in this process and finishes
    summary = Trainer(TrainConfig.from_dict(run_cfg)).fit()
    assert (summary.start_iter, summary.end_iter) == (4, 6)
    assert summary.resumed_from.endswith("iter_4.pth")

    run = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert sorted(run) == sorted(ref)
    assert sum(len(v) for v in run.values()) > 6  # iterations 3-5 were run twice
    for it, records in run.items():
        for rec in records:
            for key in LOGGED:
                assert _same(rec[key], ref[it][0][key]), (it, key, rec[key], ref[it][0][key])

    a = ckpt.load_checkpoint(tmp_path / "ref" / "checkpoints" / "iter_6.pth")
    b = ckpt.load_checkpoint(ckdir / "iter_6.pth")
    _assert_same_state(a, b)
    # retention: the newest plus multiples of keep_every (4); no temporary file left behind
    assert sorted(p.name for p in ckdir.iterdir()) == ["iter_4.pth", "iter_6.pth", "latest.pth"]


def test_truncated_checkpoint_is_never_resumed_from(tmp_path):
    state = {"meta": {"format": ckpt.CHECKPOINT_FORMAT, "iter": 0}, "state_dict": {"w": torch.randn(64, 64)},
             "optimizer": {}, "rng": []}
    for it in (2, 4):
        state["meta"]["iter"] = it
        ckpt.save_checkpoint(state, tmp_path, it)
    assert os.readlink(tmp_path / "latest.pth") == "iter_4.pth"
    data = (tmp_path / "iter_4.pth").read_bytes()
    (tmp_path / "iter_4.pth").write_bytes(data[: len(data) - 100])
    with pytest.raises(ckpt.CheckpointCorruptError, match="cannot be loaded"):
        ckpt.load_checkpoint(tmp_path / "iter_4.pth")
    path, loaded = ckpt.find_resume_checkpoint(tmp_path)
    assert path.name == "iter_2.pth" and loaded["meta"]["iter"] == 2
    (tmp_path / "iter_2.pth").write_bytes(b"")  # nothing loadable: a fresh start
    assert ckpt.find_resume_checkpoint(tmp_path) is None
    # an explicit --resume path that does not load is an error, not a silent fresh start
    data = write_synthetic_latents(tmp_path / "latents", n=8)
    cfg = TrainConfig.from_dict(tiny_train_config(data, tmp_path / "w", tensorboard=False))
    with pytest.raises(RuntimeError, match="cannot resume from .*iter_4.pth"):
        Trainer(cfg, resume=str(tmp_path / "iter_4.pth")).fit()


def test_foreign_file_and_retention(tmp_path):
    torch.save({"meta": {"iter": 3}}, tmp_path / "iter_3.pth")
    with pytest.raises(ckpt.CheckpointCorruptError, match="not a complete"):
        ckpt.load_checkpoint(tmp_path / "iter_3.pth")
    (tmp_path / "iter_3.pth").unlink()
    state = {"meta": {"format": ckpt.CHECKPOINT_FORMAT, "iter": 0}, "state_dict": {}, "optimizer": {}, "rng": []}
    for it in range(1, 10):
        state["meta"]["iter"] = it
        ckpt.save_checkpoint(state, tmp_path, it)
        ckpt.prune_checkpoints(tmp_path, keep_every=4)
    (tmp_path / ".iter_10.pth.tmp999").write_bytes(b"torn")
    ckpt.prune_checkpoints(tmp_path, keep_every=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_4.pth", "iter_8.pth", "iter_9.pth", "latest.pth"]
    assert os.readlink(tmp_path / "latest.pth") == "iter_9.pth"
