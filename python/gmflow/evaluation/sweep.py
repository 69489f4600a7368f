"""The evaluation sweep of ``gmflow evaluate`` (docs/training.md#evaluation-sweep).

The paper's grid is ``(NFE, sub-steps) in {(8, 16), (32, 4)} x {gm-ode2, gm-sde2} x`` 20 guidance scales
(80 settings; GM-SDE always takes one sub-step). Each setting samples the same deterministic test set
(see :mod:`gmflow.evaluation.sampling`), scores it, and writes ``<out>/results/<setting>.json``
atomically; a setting whose result file exists (for the same number of samples) is skipped, so an
interrupted sweep is resumed by running the same command again. Sample PNGs go to
``<out>/viz/tmp_<setting>/`` and are renamed to ``<out>/viz/<setting>/`` when the setting is done. After
every setting, rank 0 rewrites the tables ``<out>/results.md`` and ``<out>/results.csv`` (and appends to
``<out>/eval_log.txt``).

The sweep takes the networks as objects: ``gmflow evaluate`` loads them from a pipeline folder or a
training checkpoint (:func:`gmflow.cli.load_eval_model`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch

from gmflow import distributed as gdist

from gmflow.flow.spec import GM_SOLVERS, SUBSTEP_SOLVERS, parse_solver

from .metrics import InceptionMetrics
from .sampling import EvalSetting, evaluate_setting

__all__ = [
    "PAPER_GUIDANCE",
    "PAPER_NFE_SUBSTEPS",
    "run_sweep",
    "sweep_settings",
    "write_tables",
]

logger = logging.getLogger(__name__)

PAPER_GUIDANCE = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.11, 0.13, 0.16, 0.19, 0.23, 0.27, 0.33, 0.39, 0.47,
                  0.55, 0.65, 0.75)
PAPER_NFE_SUBSTEPS = ((8, 16), (32, 4))
TABLE_COLUMNS = ("setting", "method", "nfe", "substeps", "guidance", "num_samples", "fid", "is", "precision", "recall",
                 "seconds")


def sweep_settings(solvers: Sequence[str] = ("gm-ode2", "gm-sde2"),
                   nfe_substeps: Sequence[tuple[int, int]] = PAPER_NFE_SUBSTEPS,
                   guidance: Sequence[float] = PAPER_GUIDANCE) -> list[EvalSetting]:
    """The grid in upstream order: for each (NFE, sub-steps), each solver, each guidance scale (GM-SDE
    always takes one sub-step)."""
    solvers = [parse_solver(name, GM_SOLVERS, "solvers") for name in solvers]
    out = []
    for nfe, sub in nfe_substeps:
        for solver in solvers:
            for w in guidance:
                substeps = int(sub) if solver in SUBSTEP_SOLVERS else 1
                out.append(EvalSetting(solver, int(nfe), substeps, float(w)))
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def write_tables(out_dir: str | os.PathLike, results: list[dict]) -> tuple[Path, Path]:
    """``results.md`` (a Markdown table) and ``results.csv`` from the per-setting results (atomic writes)."""
    out_dir = Path(out_dir)
    md = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in results:
        md.append("| " + " | ".join(_fmt(r.get(c, "")) for c in TABLE_COLUMNS) + " |")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)
    paths = []
    for name, text in (("results.md", "\n".join(md) + "\n"), ("results.csv", buf.getvalue())):
        p = out_dir / name
        tmp = p.with_name(f".{name}.tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
        paths.append(p)
    return paths[0], paths[1]


def run_sweep(
    transformer,
    settings: Sequence[EvalSetting],
    out_dir: str | os.PathLike,
    metrics: InceptionMetrics,
    vae,
    spectrum_net=None,
    num_samples: int = 50_000,
    batch_size: int = 125,
    seed: int = 2021,
    viz_every: int = 256,
    class_names: dict[int, str] | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> list[dict]:
    """Evaluates every setting not done yet (see the module doc); returns all results in grid order."""
    info = gdist.init_distributed(next(transformer.parameters()).device)
    out_dir = Path(out_dir)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    (out_dir / "viz").mkdir(parents=True, exist_ok=True)
    gdist.barrier()
    results = []
    for setting in settings:
        result_file = out_dir / "results" / f"{setting.name}.json"
        if result_file.is_file():
            done = json.loads(result_file.read_text(encoding="utf-8"))
            if done.get("num_samples") == num_samples:
                if info.is_main:
                    logger.info("%s: done before, skipped", setting.name)
                results.append(done)
                continue
        tmp_viz = out_dir / "viz" / f"tmp_{setting.name}"
        start = time.perf_counter()
        values = evaluate_setting(
            transformer, setting, num_samples, batch_size, metrics, vae=vae, spectrum_net=spectrum_net,
            rank=info.rank, world_size=info.world_size, seed=seed, viz_dir=tmp_viz if viz_every else None,
            viz_every=max(viz_every, 1), class_names=class_names, progress=progress, amp_dtype=amp_dtype,
        )
        record = {"setting": setting.name, "method": setting.method, "nfe": setting.nfe, "substeps": setting.substeps,
                  "guidance": setting.guidance, "num_samples": num_samples, "seconds": time.perf_counter() - start}
        record.update({k: float(v) for k, v in values.items() if k != "num_samples"})
        gdist.barrier()
        if info.is_main:
            final_viz = out_dir / "viz" / setting.name
            if tmp_viz.exists():
                if final_viz.exists():
                    shutil.rmtree(final_viz)
                os.replace(tmp_viz, final_viz)
            tmp = result_file.with_name(f".{result_file.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
            os.replace(tmp, result_file)
            line = "  ".join(f"{setting.name}_{k} = {_fmt(record.get(k))}" for k in ("fid", "is", "precision", "recall"))
            print(line, flush=True)
            with open(out_dir / "eval_log.txt", "a", encoding="utf-8") as f:
                f.write(line + "\n")
        results.append(record)
        if info.is_main:
            write_tables(out_dir, results)
        gdist.barrier()
    if info.is_main:
        write_tables(out_dir, results)
    return results
