"""GMFlow on top of the GM ops: schedule, losses, schedulers, guidance, the sampling loop.

=====================  =================================================================
``schedule``           sigma schedule, shift warp, training timestep sampler (docs/sampling.md, docs/training.md)
``losses``             transition loss (GM NLL of x_low), spectral loss (docs/training.md)
``schedulers``         ``FlowEulerODEScheduler``, ``GMFlowSDEScheduler`` (diffusers API, docs/sampling.md#schedulers)
``guidance``           probabilistic guidance, second-order GM solver (docs/sampling.md)
``sampling``           the GM-SDE / GM-ODE loop (docs/sampling.md), flow-matching Euler / Heun baselines
``spec``               ``SamplerSpec``: one solver vocabulary (gm-ode2, gm-sde2, ..., fm-euler)
                       and its settings, shared by the CLI, the toy, evaluation and the pipeline
=====================  =================================================================
"""

from .guidance import GMSecondOrderSolver, GuidanceOutput, GuidedGM, guide_gm, probabilistic_guidance
from .losses import TransitionLossOutput, gm_nll_loss, spectral_loss, transition_loss, transition_pair
from .sampling import (
    Intermediate,
    SamplingOutput,
    flow_euler_sample,
    flow_heun_sample,
    gm_mean_velocity,
    gm_ode_substeps,
    gmflow_sample,
)
from .schedule import NUM_TIMESTEPS, TimestepSampler, flow_sigmas, unwarp_shift, warp_shift
from .schedulers import FlowEulerODEScheduler, GMFlowSDEScheduler, SchedulerOutput
from .spec import GM_SOLVERS, SOLVERS, SUBSTEP_SOLVERS, SamplerSpec, parse_solver, upgrade_solver

__all__ = [
    "GM_SOLVERS",
    "NUM_TIMESTEPS",
    "SOLVERS",
    "SUBSTEP_SOLVERS",
    "FlowEulerODEScheduler",
    "GMFlowSDEScheduler",
    "GMSecondOrderSolver",
    "GuidanceOutput",
    "GuidedGM",
    "Intermediate",
    "SamplerSpec",
    "SamplingOutput",
    "SchedulerOutput",
    "TimestepSampler",
    "TransitionLossOutput",
    "flow_euler_sample",
    "flow_heun_sample",
    "flow_sigmas",
    "gm_mean_velocity",
    "gm_nll_loss",
    "gm_ode_substeps",
    "gmflow_sample",
    "guide_gm",
    "parse_solver",
    "probabilistic_guidance",
    "spectral_loss",
    "transition_loss",
    "transition_pair",
    "unwarp_shift",
    "upgrade_solver",
    "warp_shift",
]
