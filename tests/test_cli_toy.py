"""``gmflow toy``: argument errors and a miniature end-to-end run (files, metrics, table)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gmflow.cli import build_parser, main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "0"], "argument --k: must be a positive integer, got 0"),
        (["--iters", "-5"], "argument --iters: must be a positive integer"),
        (["--batch-size", "abc"], "argument --batch-size: invalid positive_int value: 'abc'"),
        (["--trans-ratio", "1.5"], "argument --trans-ratio: must be in (0, 1], got 1.5"),
        (["--trans-ratio", "0"], "argument --trans-ratio: must be in (0, 1]"),
        (["--nfe", "4", "0"], "argument --nfe: must be a positive integer, got 0"),
        (["--lr", "0"], "argument --lr: must be a positive number, got 0"),
        (["--device", "nodevice"], "argument --device: not a torch device"),
        (["--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["--timestep-shift", "0"], "argument --timestep-shift: must be a positive number, got 0"),
        (["--lr-schedule", "step"], "argument --lr-schedule: invalid choice: 'step'"),
        (["--sde-temperature", "0"], "argument --sde-temperature: must be a positive number, got 0"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)

def test_bad_arguments_get_clear_messages(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["toy", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_device_without_cuda(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["toy", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_defaults():
    args = build_parser().parse_args(["toy"])
    assert args.k == 64 and args.trans_ratio == 0.9 and not args.no_ema
    assert args.nfe == [1, 2, 4, 8] and args.baseline_nfe == [1, 2, 4, 8, 16, 32]
    assert args.samples == 100_000 and args.device == "cpu" and str(args.out) == "out/toy"
    assert args.sde_temperature == 0.8


def test_miniature_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "toy"
    argv = ["toy", "--k", "4", "--iters", "20", "--batch-size", "128", "--hidden-dim", "16", "--num-layers", "1",
            "--nfe", "1", "2", "--baseline-nfe", "1", "4", "8", "32", "--samples", "300", "--seed", "3",
            "--out", str(out), "--no-progress", "--log-every", "10", "--ode-substeps-total", "8", "--threads", "1", "--jobs", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "solver" in printed and "JS (bits)" in printed and "fm-euler" in printed
    for name in ("gm-sde2_nfe1", "gm-sde2_nfe2", "gm-ode2_nfe1", "gm-ode2_nfe2", "fm-euler_nfe1", "fm-euler_nfe32"):
        x = np.load(out / "samples" / f"{name}.npy")
        assert x.dtype == np.float32 and x.shape == (300, 2) and np.isfinite(x).all()
    record = json.loads((out / "metrics.json").read_text())
    assert {(r["solver"], r["nfe"]) for r in record["results"]} == {
        ("gm-sde2", 1), ("gm-sde2", 2), ("gm-ode2", 1), ("gm-ode2", 2),
        ("fm-euler", 1), ("fm-euler", 4), ("fm-euler", 8), ("fm-euler", 32)}
    assert record["config"]["train"]["k"] == 4 and record["results"][0]["k"] == 4
    assert record["results"][-1]["k"] == 1
    assert set(record["results"][0]) >= {"inside", "js_bits", "swd"}
    assert record["acceptance"] == []  # NFE 4 was not run for GMFlow
    from PIL import Image

    for name in ("toy_grid.png", "toy_metrics.png", "toy_loss.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert set(record["exact_data"]) == {"inside", "js_bits", "swd"} and record["exact_data"]["inside"] == 1.0
    assert (out / "checkpoints" / "gmflow_k4.pt").exists() and (out / "checkpoints" / "baseline_k1.pt").exists()
    # a second run reuses the checkpoints and reproduces the samples exactly
    first = np.load(out / "samples" / "gm-sde2_nfe2.npy")
    assert main([*argv, "--reuse-checkpoints"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert np.array_equal(first, np.load(out / "samples" / "gm-sde2_nfe2.npy"))
    # --replot redraws the figures from the files alone
    (out / "toy_loss.png").unlink()
    assert main(["toy", "--replot", str(out)]) == 0
    assert (out / "toy_loss.png").exists() and "toy_grid.png" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="metrics.json"):
        main(["toy", "--replot", str(tmp_path / "missing")])


def test_two_worker_processes_give_the_same_results(tmp_path, capsys):
    """--jobs 2 trains and samples the two models in spawned workers (one thread each): same output as one
    process with one thread."""
    common = ["toy", "--k", "3", "--iters", "10", "--batch-size", "64", "--hidden-dim", "8", "--num-layers", "1",
              "--nfe", "2", "--baseline-nfe", "2", "--samples", "200", "--no-progress", "--log-every", "5",
              "--ode-substeps-total", "4"]
    assert main([*common, "--out", str(tmp_path / "a"), "--jobs", "1", "--threads", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--jobs", "2", "--threads", "2"]) == 0
    capsys.readouterr()
    for name in ("gm-sde2_nfe2", "gm-ode2_nfe2", "fm-euler_nfe2"):
        assert np.array_equal(np.load(tmp_path / "a" / "samples" / f"{name}.npy"),
                              np.load(tmp_path / "b" / "samples" / f"{name}.npy"))
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert b["jobs"] == 2 and b["threads_per_job"] == 1
    assert a["train_history"] == b["train_history"] or all(
        x["loss"] == y["loss"] for k in a["train_history"] for x, y in zip(a["train_history"][k], b["train_history"][k]))


def test_acceptance_checks_cover_euler_8_and_32_on_every_metric():
    from gmflow.toy.experiment import acceptance_checks

    def row(solver, nfe, inside, js, swd):
        return {"solver": solver, "nfe": nfe, "inside": inside, "js_bits": js, "swd": swd}

    rows = [row("gm-ode2", 4, 0.98, 0.010, 0.010), row("gm-sde2", 4, 0.95, 0.020, 0.012),
            row("fm-euler", 8, 0.95, 0.070, 0.270), row("fm-euler", 32, 0.975, 0.010, 0.069)]
    checks = {c["check"]: c["passed"] for c in acceptance_checks(rows, 64)}
    assert len(checks) == 12
    # vs NFE 8: strictly better (a tie on inside fails); vs NFE 32: at least as good (a tie on JS passes)
    assert not checks["K=64 gm-sde2@4 beats fm-euler@8 on inside"]
    assert checks["K=64 gm-ode2@4 beats fm-euler@8 on inside"]
    assert checks["K=64 gm-ode2@4 at least as good as fm-euler@32 on js_bits"]
    assert not checks["K=64 gm-sde2@4 at least as good as fm-euler@32 on inside"]
    assert not checks["K=64 gm-sde2@4 at least as good as fm-euler@32 on js_bits"]
    assert sum(checks.values()) == 9
    # settings that were not run are skipped
    assert len(acceptance_checks(rows[:3], 64)) == 6 and acceptance_checks(rows[2:], 64) == []
