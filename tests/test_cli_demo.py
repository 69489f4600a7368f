"""``gmflow demo``: a short maximum-likelihood fit of a GM to the toy's checkerboard (its data and inside test)."""

from __future__ import annotations

import json

from gmflow import cli


def test_demo_fits_the_toy_checkerboard(tmp_path, capsys):
    out = tmp_path / "demo.json"
    argv = ["demo", "--k", "16", "--steps", "40", "--points", "4000", "--batch-size", "512", "--samples", "4000",
            "--log-every", "20", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["data_fraction_inside"] == 1.0  # the data are the toy's checkerboard points
    assert [h["step"] for h in summary["history"]] == [1, 20, 40]
    assert summary["history"][-1]["nll"] < summary["history"][0]["nll"]
    assert 0.0 <= summary["fraction_inside_white_squares"] <= 1.0
    assert "gm_logprob backend" in capsys.readouterr().out
