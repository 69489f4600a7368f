"""One sampler vocabulary: :class:`SamplerSpec` names a solver and everything it needs.

Every front end builds a :class:`SamplerSpec` (``gmflow sample``, ``gmflow evaluate``, the toy, the
evaluation sweep, :class:`gmflow.pipelines.GMDiTPipeline`), so a solver is spelled one way everywhere:

============  ==============================================================================
``gm-ode2``   GM-ODE, second-order GM solver: mean x0 estimate, Euler outer steps with
              ``substeps`` analytic sub-steps per network evaluation
``gm-ode1``   GM-ODE, first order
``gm-sde2``   GM-SDE, second-order GM solver: x0 drawn from the GM (spectrally correlated when
              a spectrum net is given), exact Gaussian posterior step; one sub-step
``gm-sde1``   GM-SDE, first order
``fm-euler``  flow-matching Euler on the mean velocity of the model's u-GM (NFE = steps)
``fm-heun``   flow-matching Heun on the mean velocity (NFE = ``2 steps - 1``)
============  ==============================================================================

Unknown names raise :class:`gmflow.GMFlowInputError` listing the accepted ones; the retired spellings
(``gmode2`` of the evaluation, ``gm-ode`` of the toy, ...) are named in the message with their
replacement. Only stored formats (training configs) still read them, through :func:`upgrade_solver`,
with a ``DeprecationWarning``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from gmflow import GMFlowInputError
from gmflow.types import GaussianMixture, IsoGaussian

from .sampling import flow_euler_sample, flow_heun_sample, gm_mean_velocity, gmflow_sample
from .schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler

__all__ = ["GM_SOLVERS", "SOLVERS", "SUBSTEP_SOLVERS", "SamplerSpec", "parse_solver", "upgrade_solver"]

GM_SOLVERS = ("gm-ode2", "gm-sde2", "gm-ode1", "gm-sde1")
SOLVERS = GM_SOLVERS + ("fm-euler", "fm-heun")
SUBSTEP_SOLVERS = ("gm-ode2", "gm-ode1")  # the solvers that take analytic sub-steps

# retired spellings -> their name now (the evaluation's ``gmode2``, the toy's first-order ``gm-ode``)
RETIRED_SPELLINGS = {
    "gmode2": "gm-ode2", "gmsde2": "gm-sde2", "gmode1": "gm-ode1", "gmsde1": "gm-sde1",
    "gm-ode": "gm-ode1", "gm-sde": "gm-sde1",
}


def parse_solver(name: Any, accepted: Sequence[str] = SOLVERS, argument: str = "solver") -> str:
    """``name`` if it is one of ``accepted``, else :class:`GMFlowInputError` naming ``argument``, the accepted
    names and, for a retired spelling, its replacement."""
    if isinstance(name, str) and name in accepted:
        return name
    hint = ""
    if isinstance(name, str) and name in RETIRED_SPELLINGS:
        hint = f" ({name!r} is the retired spelling of {RETIRED_SPELLINGS[name]!r})"
    raise GMFlowInputError(f"{argument} must be one of {', '.join(accepted)}; got {name!r}{hint}")


def upgrade_solver(name: Any, accepted: Sequence[str] = SOLVERS, argument: str = "solver") -> str:
    """:func:`parse_solver` for values read from stored files: a retired spelling is translated with a
    ``DeprecationWarning`` instead of rejected."""
    if isinstance(name, str) and RETIRED_SPELLINGS.get(name) in accepted:
        warnings.warn(f"{argument} {name!r} is deprecated; write {RETIRED_SPELLINGS[name]!r}", DeprecationWarning,
                      stacklevel=2)
        return RETIRED_SPELLINGS[name]
    return parse_solver(name, accepted, argument)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GMFlowInputError(f"SamplerSpec: '{name}' must be a positive integer; got {value!r}")


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GMFlowInputError(f"SamplerSpec: '{name}' must be a finite number; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SamplerSpec:
    """A solver (one of :data:`SOLVERS`) and its settings.

    ``nfe``: network evaluations (``fm-heun`` takes ``(nfe + 1) // 2`` steps); ``substeps``: analytic
    GM-ODE sub-steps per evaluation (1 for every other solver); ``guidance``: probabilistic guidance
    ``w`` in [0, 1) (GM solvers only; 0 = none) with ``orthogonal_guidance``; ``shift``: the timestep
    shift of the schedule (``None``: the scheduler config's, or 1); ``gm2_coefs`` /
    ``gm2_correction_steps``: the second-order GM solver's. Invalid values raise
    :class:`gmflow.GMFlowInputError` naming the field.
    """

    solver: str = "gm-ode2"
    nfe: int = 32
    substeps: int = 1
    guidance: float = 0.0
    orthogonal_guidance: float = 1.0
    shift: float | None = None
    gm2_coefs: tuple[float, float] = (0.005, 1.0)
    gm2_correction_steps: int = 0

    def __post_init__(self) -> None:
        parse_solver(self.solver)
        _positive_int("nfe", self.nfe)
        _positive_int("substeps", self.substeps)
        if self.substeps != 1 and self.solver not in SUBSTEP_SOLVERS:
            raise GMFlowInputError(f"SamplerSpec: {self.solver} takes no sub-steps ('substeps' must be 1); "
                                   f"got {self.substeps}")
        guidance = _finite("guidance", self.guidance)
        if not 0 <= guidance < 1:
            raise GMFlowInputError(f"SamplerSpec: 'guidance' must lie in [0, 1); got {self.guidance!r}")
        if guidance > 0 and not self.is_gm:
            raise GMFlowInputError(f"SamplerSpec: {self.solver} takes no guidance ('guidance' must be 0); "
                                   f"got {self.guidance!r}")
        _finite("orthogonal_guidance", self.orthogonal_guidance)
        if self.shift is not None and not _finite("shift", self.shift) > 0:
            raise GMFlowInputError(f"SamplerSpec: 'shift' must be positive; got {self.shift!r}")
        coefs = tuple(self.gm2_coefs) if isinstance(self.gm2_coefs, (tuple, list)) else ()
        if len(coefs) != 2:
            raise GMFlowInputError(f"SamplerSpec: 'gm2_coefs' must be two numbers (ca, cb); got {self.gm2_coefs!r}")
        object.__setattr__(self, "gm2_coefs", tuple(_finite("gm2_coefs", c) for c in coefs))
        if isinstance(self.gm2_correction_steps, bool) or not isinstance(self.gm2_correction_steps, int) \
                or self.gm2_correction_steps < 0:
            raise GMFlowInputError(f"SamplerSpec: 'gm2_correction_steps' must be a non-negative integer; "
                                   f"got {self.gm2_correction_steps!r}")

    # -- what the name means ------------------------------------------------------------------------------
    @property
    def is_gm(self) -> bool:
        """A GM solver (``gm-*``), as opposed to a flow-matching baseline (``fm-*``)."""
        return self.solver.startswith("gm-")

    @property
    def is_sde(self) -> bool:
        return self.solver.startswith("gm-sde")

    @property
    def order(self) -> int:
        """Order of the GM solver (1 or 2); 1 for the flow-matching baselines."""
        return 2 if self.solver.endswith("2") else 1

    @property
    def output_mode(self) -> str:
        """The x0 estimate of a GM solver: ``'sample'`` (GM-SDE) or ``'mean'``."""
        return "sample" if self.is_sde else "mean"

    def make_scheduler(self, config: dict[str, Any] | None = None) -> FlowEulerODEScheduler | GMFlowSDEScheduler:
        """A fresh scheduler of the solver's kind: :class:`GMFlowSDEScheduler` for GM-SDE, else
        :class:`FlowEulerODEScheduler`; built from ``config`` (e.g. a pipeline's ``scheduler.config``)
        when given, with ``shift`` overriding the config's when set."""
        cls = GMFlowSDEScheduler if self.is_sde else FlowEulerODEScheduler
        overrides = {} if self.shift is None else {"shift": self.shift}
        if config is not None:
            return cls.from_config(config, **overrides)
        if self.is_sde:
            return GMFlowSDEScheduler(output_mode="sample", **overrides)
        return FlowEulerODEScheduler(**overrides)

    # -- running it -------------------------------------------------------------------------------------------
    def sample(
        self,
        model: Callable[[Tensor, Tensor], GaussianMixture],
        noise: Tensor,
        generator: torch.Generator | None = None,
        *,
        scheduler: FlowEulerODEScheduler | GMFlowSDEScheduler | None = None,
        spectrum_net: Callable[[IsoGaussian], Tensor] | None = None,
        cond_first: bool = False,
        progress: bool = False,
    ) -> Tensor:
        """Samples ``x_0`` from ``noise (B, C, H, W)`` with the u-GM network ``model(x, t)``.

        GM solvers run :func:`gmflow.flow.gmflow_sample` (``scheduler`` defaults to
        :meth:`make_scheduler`; the spectrum net is used by GM-SDE only; ``cond_first`` as there); the
        flow-matching baselines run on the mean velocity of the u-GM. Every draw uses ``generator``.
        """
        if not self.is_gm:
            velocity = gm_mean_velocity(model)
            shift = 1.0 if self.shift is None else self.shift
            if self.solver == "fm-euler":
                return flow_euler_sample(velocity, noise, self.nfe, shift=shift, progress=progress)
            return flow_heun_sample(velocity, noise, (self.nfe + 1) // 2, shift=shift, progress=progress)
        return gmflow_sample(
            model, noise, self.nfe, output_mode=self.output_mode, order=self.order, num_substeps=self.substeps,
            guidance_scale=self.guidance, orthogonal_guidance=self.orthogonal_guidance,
            scheduler=scheduler if scheduler is not None else self.make_scheduler(),
            gm2_coefs=self.gm2_coefs, gm2_correction_steps=self.gm2_correction_steps,
            spectrum_net=spectrum_net if self.is_sde else None, generator=generator, progress=progress,
            cond_first=cond_first,
        ).samples
