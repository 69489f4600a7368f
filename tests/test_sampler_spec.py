"""One sampler vocabulary (``SamplerSpec``) across the CLI, the toy, the evaluation sweep, the training config
and the pipeline; the schedulers' shared ``step``; the layering of evaluation / train / native loader."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

import gmflow
from gmflow import GMFlowInputError, cli
from gmflow.evaluation.sampling import EvalSetting
from gmflow.evaluation.sweep import sweep_settings
from gmflow.flow import (
    GM_SOLVERS,
    SOLVERS,
    FlowEulerODEScheduler,
    GMFlowSDEScheduler,
    SamplerSpec,
    flow_euler_sample,
    flow_heun_sample,
    gm_mean_velocity,
    gm_ode_substeps,
    gmflow_sample,
    parse_solver,
)
from gmflow.toy.evaluate import sample_toy
from gmflow.toy.model import GMFlowMLP2DDenoiser
from gmflow.train import TrainConfig

RETIRED = {"gmode2": "gm-ode2", "gmsde2": "gm-sde2", "gmode1": "gm-ode1", "gmsde1": "gm-sde1", "gm-ode": "gm-ode1",
           "gm-sde": "gm-sde1"}


def test_one_spelling_per_solver():
    assert SOLVERS == ("gm-ode2", "gm-sde2", "gm-ode1", "gm-sde1", "fm-euler", "fm-heun")
    assert GM_SOLVERS == SOLVERS[:4]
    for name in SOLVERS:
        assert parse_solver(name) == name


@pytest.mark.parametrize("old, new", sorted(RETIRED.items()))
def test_retired_spellings_are_refused_with_the_accepted_names(old, new):
    with pytest.raises(GMFlowInputError, match=f"solver must be one of gm-ode2, gm-sde2, .*'{old}' is the retired "
                                               f"spelling of '{new}'"):
        SamplerSpec(old)
    with pytest.raises(GMFlowInputError, match=f"'{old}' is the retired spelling of '{new}'"):
        sample_toy(GMFlowMLP2DDenoiser(2, hidden_dim=8, num_layers=1), old, 2, 10)
    if new in GM_SOLVERS:
        with pytest.raises(GMFlowInputError, match=f"solvers must be one of gm-ode2, gm-sde2, gm-ode1, gm-sde1; "
                                                   f"got '{old}'"):
            sweep_settings([old], [(2, 2)], [0.0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(nfe=1.5), "'nfe' must be a positive integer"),
    (dict(nfe=0), "'nfe' must be a positive integer"),
    (dict(substeps=True), "'substeps' must be a positive integer"),
    (dict(solver="gm-sde2", substeps=4), "gm-sde2 takes no sub-steps"),
    (dict(solver="fm-euler", substeps=2), "fm-euler takes no sub-steps"),
    (dict(solver="fm-euler", guidance=0.3), "fm-euler takes no guidance"),
    (dict(guidance=1.0), r"'guidance' must lie in \[0, 1\)"),
    (dict(guidance=float("nan")), "'guidance' must be a finite number"),
    (dict(shift=0.0), "'shift' must be positive"),
    (dict(gm2_coefs=(1.0,)), "'gm2_coefs' must be two numbers"),
    (dict(gm2_correction_steps=-1), "'gm2_correction_steps' must be a non-negative integer"),
])
def test_sampler_spec_names_the_bad_field(kwargs, match):
    with pytest.raises(GMFlowInputError, match=match):
        SamplerSpec(**kwargs)


def test_sampler_spec_meaning():
    spec = SamplerSpec("gm-sde1", 8)
    assert (spec.is_gm, spec.is_sde, spec.order, spec.output_mode) == (True, True, 1, "sample")
    assert isinstance(spec.make_scheduler(), GMFlowSDEScheduler) and spec.make_scheduler().config["shift"] == 1.0
    ode = SamplerSpec("gm-ode2", 8, 4, shift=3.0)
    assert (ode.order, ode.output_mode) == (2, "mean")
    assert type(ode.make_scheduler()) is FlowEulerODEScheduler and ode.make_scheduler().config["shift"] == 3.0
    # a pipeline's scheduler config keeps its shift unless the spec sets one
    config = FlowEulerODEScheduler(shift=2.0).config
    assert SamplerSpec("gm-sde2").make_scheduler(config).config["shift"] == 2.0
    assert SamplerSpec("gm-sde2", shift=5.0).make_scheduler(config).config["shift"] == 5.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_toy_sampling_through_the_spec_is_the_direct_call(solver):
    """``sample_toy`` (through :class:`SamplerSpec`) draws exactly what the direct sampler calls draw."""
    torch.manual_seed(0)
    model = GMFlowMLP2DDenoiser(4, hidden_dim=16, num_layers=1).eval()
    got = sample_toy(model, solver, 2, 300, torch.Generator().manual_seed(5), chunk=128, ode_total_substeps=8)
    generator, parts = torch.Generator().manual_seed(5), []
    order = 2 if solver.endswith("2") else 1
    with torch.no_grad():
        for m in (128, 128, 44):
            noise = torch.randn(m, 2, 1, 1, generator=generator)
            if solver == "fm-euler":
                x = flow_euler_sample(gm_mean_velocity(model), noise, 2)
            elif solver == "fm-heun":
                x = flow_heun_sample(gm_mean_velocity(model), noise, 1)
            elif solver.startswith("gm-sde"):
                x = gmflow_sample(model, noise, 2, output_mode="sample", order=order, generator=generator).samples
            else:
                x = gmflow_sample(model, noise, 2, output_mode="mean", order=order, num_substeps=gm_ode_substeps(2, 8),
                                  generator=generator).samples
            parts.append(x.reshape(m, 2))
    assert torch.equal(got, torch.cat(parts))


def test_evaluation_settings_are_sampler_specs_with_upstream_names():
    setting = EvalSetting("gm-sde2", 8, 1, 0.3)
    assert isinstance(setting, SamplerSpec) and setting.shift == 1.0
    assert (setting.method, setting.name) == ("gmsde2", "gmsde2_g0.3_step8_sub1")
    with pytest.raises(GMFlowInputError, match="solver must be one of gm-ode2, gm-sde2, gm-ode1, gm-sde1"):
        EvalSetting("fm-euler", 8, 1, 0.0)
    assert [s.solver for s in sweep_settings(["gm-ode1", "gm-sde1"], [(4, 3)], [0.1])] == ["gm-ode1", "gm-sde1"]
    assert [s.substeps for s in sweep_settings(["gm-ode1", "gm-sde1"], [(4, 3)], [0.1])] == [3, 1]


def test_training_config_reads_the_retired_spelling_with_a_warning():
    with pytest.warns(DeprecationWarning, match="val_method 'gmsde2' is deprecated; write 'gm-sde2'"):
        cfg = TrainConfig(val_method="gmsde2")
    assert cfg.val_method == "gm-sde2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainConfig().val_method == "gm-ode2"
    with pytest.raises(GMFlowInputError, match="val_method must be one of gm-ode2, gm-sde2, gm-ode1, gm-sde1"):
        TrainConfig(val_method="fm-euler")


def test_cli_refuses_retired_solver_names_in_one_line(tmp_path, capsys):
    assert cli.main(["sample", "--checkpoint", str(tmp_path), "--labels", "jay", "--solver", "gmode2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--solver must be one of gm-ode2, gm-sde2, gm-ode1, gm-sde1; got 'gmode2'" in err
    argv = ["evaluate", "--checkpoint", str(tmp_path), "--inception", str(tmp_path / "i.pt"), "--reference",
            str(tmp_path / "r.npz"), "--solvers", "gm-ode2", "gmsde2", "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gmsde2' is the retired spelling of 'gm-sde2'" in err


@pytest.mark.parametrize("cls", [FlowEulerODEScheduler, GMFlowSDEScheduler])
def test_schedulers_share_one_step_call(cls):
    """``step(model_output, timestep, sample, generator)`` for every scheduler; a deterministic one ignores the
    generator and leaves its state alone."""
    scheduler = cls(shift=2.0)
    scheduler.set_timesteps(3)
    x0 = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(7)
    out = scheduler.step(x0, scheduler.timesteps[0], x, generator, prediction_type="x0")
    assert out.prev_sample.shape == x.shape and torch.equal(out.pred_original_sample, x0)
    drew = not torch.equal(generator.get_state(), torch.Generator().manual_seed(7).get_state())
    assert drew == (cls is GMFlowSDEScheduler)
    if cls is FlowEulerODEScheduler:
        again = cls(shift=2.0)
        again.set_timesteps(3)
        assert torch.equal(again.step(x0, again.timesteps[0], x, prediction_type="x0").prev_sample, out.prev_sample)


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement of ``path``, function-local ones included (relative ones
    resolved against the ``gmflow`` package)."""
    package = ".".join(path.relative_to(Path(gmflow.__file__).parents[1]).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def test_layers_point_down():
    """evaluation uses models / flow / ops only (never train, pipelines, data or the CLI); the native loader
    does not import the package it belongs to."""
    root = Path(gmflow.__file__).parent
    for path in (root / "evaluation").glob("*.py"):
        above = {n for n in _imports(path) if n.startswith(("gmflow.train", "gmflow.pipelines", "gmflow.data",
                                                            "gmflow.cli", "gmflow.toy"))}
        assert not above, f"{path.name} imports {sorted(above)}"
    assert not {n for n in _imports(root / "_native.py") if n.split(".")[0] == "gmflow"}
