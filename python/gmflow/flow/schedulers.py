"""Samplers' per-step update rules with the diffusers scheduler API (docs/sampling.md#schedulers), without diffusers.

Both schedulers share the rectified-flow schedule of :func:`gmflow.flow.schedule.flow_sigmas`:
``set_timesteps(M)`` gives ``timesteps`` (``sigma T``, fp32, descending, ``timesteps[0] = T``) and
``sigmas`` (length ``M + 1``, ending in 0). ``step`` is stateful, diffusers-style: the first call
locates ``timestep`` in ``timesteps``, every call advances the index by one (``sigma_k -> sigma_{k+1}``).
Configs round-trip through ``save_config(dir)`` / ``from_pretrained(dir)`` / ``from_config(dict)``
(a ``scheduler_config.json`` like diffusers writes).

- :class:`FlowEulerODEScheduler`: ``x' = x + d (sigma' - sigma)``, ``d = u`` or ``(x - x0_hat) / sigma``;
  the GM-ODE outer integrator and the flow-matching Euler baseline.
- :class:`GMFlowSDEScheduler`: the exact Gaussian posterior step ``q(x_{t'} | x_t, x0_hat)`` (GM-SDE),
  generalised by ``h`` (LakonLab's ``FlowSDE`` "canonical" family): ``h = 1`` is GM-SDE, ``h = 0``
  is DDIM (= the Euler ODE step with an x0 prediction).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gmflow import GMFlowInputError
from gmflow.reference.common import acc_dtype

from .schedule import NUM_TIMESTEPS, flow_sigmas

__all__ = ["FlowEulerODEScheduler", "GMFlowSDEScheduler", "SchedulerOutput"]

CONFIG_NAME = "scheduler_config.json"


class SchedulerOutput(NamedTuple):
    """``prev_sample``: the state at the next noise level; ``pred_original_sample``: the x0 estimate used."""

    prev_sample: Tensor
    pred_original_sample: Tensor


class _FlowScheduler:
    """Shared state machine: config, timesteps/sigmas, step index, config round trip."""

    order = 1
    init_noise_sigma = 1.0
    _PREDICTION_TYPES = ("u", "x0")

    def __init__(self, **config: Any) -> None:
        self._config = dict(config)
        self._config["_class_name"] = type(self).__name__
        self.num_inference_steps: int | None = None
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # -- config --------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (read-only copy), plus ``_class_name``."""
        return dict(self._config)

    @property
    def num_train_timesteps(self) -> float:
        return self._config["num_train_timesteps"]

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any):
        """Builds a scheduler from a config dict; unknown keys (e.g. another class's) are ignored."""
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in {**config, **overrides}.items() if k in params and k != "self"}
        return cls(**kwargs)

    def save_config(self, save_directory: str | os.PathLike) -> str:
        """Writes ``scheduler_config.json`` into ``save_directory``; returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(self._config, f, indent=2, sort_keys=True)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any):
        """Loads ``scheduler_config.json`` from ``directory`` (or a path to the JSON file)."""
        path = os.fspath(directory)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path) as f:
            config = json.load(f)
        return cls.from_config(config, **overrides)

    # -- schedule ------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Builds ``sigmas`` (M+1, fp32, ending in 0) and ``timesteps = sigmas[:-1] T``; resets the index."""
        sigmas = flow_sigmas(num_inference_steps, self._config["shift"], device=device)
        self.num_inference_steps = num_inference_steps
        self.sigmas = sigmas
        self.timesteps = sigmas[:-1] * self.num_train_timesteps
        self._step_index = None
        self._begin_index = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(self, timestep) -> int:
        """Position of ``timestep`` in ``timesteps`` (the second match if it is duplicated)."""
        t = torch.as_tensor(timestep, dtype=self.timesteps.dtype, device=self.timesteps.device).reshape(-1)[0]
        matches = (self.timesteps == t).nonzero().flatten()
        if len(matches) == 0:
            matches = (self.timesteps - t).abs().argmin().reshape(1)
        return int(matches[1 if len(matches) > 1 else 0])

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        return sample

    def _begin_step(self, timestep) -> tuple[Tensor, Tensor]:
        if self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps() before step()")
        if isinstance(timestep, int) or (isinstance(timestep, Tensor) and not timestep.is_floating_point()):
            raise GMFlowInputError(
                "step() takes the continuous float timestep from scheduler.timesteps, not an integer index"
            )
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        if self._step_index >= len(self.timesteps):
            raise RuntimeError(
                f"{type(self).__name__}: step() called more often than the {len(self.timesteps)} scheduled "
                "timesteps; call set_timesteps() again"
            )
        return self.sigmas[self._step_index], self.sigmas[self._step_index + 1]

    def _end_step(self) -> None:
        self._step_index += 1

    def _check_prediction_type(self, prediction_type: str) -> None:
        if prediction_type not in self._PREDICTION_TYPES:
            raise GMFlowInputError(f"prediction_type must be one of {self._PREDICTION_TYPES}, got {prediction_type!r}")

    def step(
        self,
        model_output: Tensor,
        timestep,
        sample: Tensor,
        generator: torch.Generator | None = None,
        prediction_type: str = "u",
        return_dict: bool = True,
        **options: Any,
    ):
        """One step ``sigma_k -> sigma_{k+1}``, the same call for every scheduler: ``model_output`` is a
        velocity (``prediction_type='u'``) or an x0 estimate (``'x0'``); a stochastic scheduler draws its
        noise from ``generator`` (a deterministic one ignores it); ``options`` are the scheduler's own
        keywords. Returns :class:`SchedulerOutput` (or a tuple with ``return_dict=False``)."""
        self._check_prediction_type(prediction_type)
        sigma, sigma_next = self._begin_step(timestep)
        work = acc_dtype(sample.dtype)
        x, out = sample.to(work), model_output.to(work)
        x0 = x - sigma.to(work) * out if prediction_type == "u" else out
        prev = self._advance(x, out, x0, sigma.to(work), sigma_next.to(work), prediction_type, generator, **options)
        self._end_step()
        result = SchedulerOutput(prev.to(sample.dtype), x0.to(sample.dtype))
        return result if return_dict else tuple(result)

    def _advance(self, x: Tensor, out: Tensor, x0: Tensor, sigma: Tensor, sigma_next: Tensor, prediction_type: str,
                 generator: torch.Generator | None) -> Tensor:
        """The state at ``sigma_next`` (in the work dtype) from ``x`` at ``sigma``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.num_train_timesteps)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "_class_name")
        return f"{type(self).__name__}({args})"


class FlowEulerODEScheduler(_FlowScheduler):
    """Euler step of the flow ODE (docs/sampling.md#floweulerodescheduler): ``x' = x + d (sigma' - sigma)``.

    ``d = model_output`` for a velocity (``prediction_type='u'``) or ``(x - x0_hat) / sigma`` for an
    x0 estimate (``'x0'``, no clamp: every scheduled sigma is > 0). The step to ``sigma' = 0`` returns
    exactly ``x0_hat`` for ``'x0'``.
    """

    def __init__(self, num_train_timesteps: float = NUM_TIMESTEPS, shift: float = 1.0) -> None:
        super().__init__(num_train_timesteps=float(num_train_timesteps), shift=float(shift))
        flow_sigmas(1, shift)  # validates shift

    def _advance(self, x, out, x0, sigma, sigma_next, prediction_type, generator):
        if prediction_type == "x0" and float(sigma_next) == 0.0:
            return x0
        derivative = out if prediction_type == "u" else (x - out) / sigma
        return x + derivative * (sigma_next - sigma)


class GMFlowSDEScheduler(_FlowScheduler):
    """GM-SDE step (docs/sampling.md#gmflowsdescheduler): sample ``q(x_{sigma'} | x_sigma, x0_hat)``.

    With an x0 estimate ``x0_hat`` (``'x0'``) or a velocity (``'u'``, ``x0_hat = x - sigma u``) and
    ``eps_hat = (x - alpha x0_hat) / max(sigma, eps)``:
    ``m = (sigma' alpha / max(sigma alpha', eps))^(h^2)``,
    ``x' = alpha' x0_hat + sigma' (m eps_hat + sqrt(max(1 - m^2, 0)) xi)``, ``xi ~ N(0, I)`` from ``generator``.
    ``h = 1`` (default) is the exact posterior step of the original ``GMFlowSDEScheduler``
    (``x' = c1 x + c2 x0_hat + sqrt(beta_bar) sigma' xi``): with ``x0_hat`` drawn from the predicted
    x0-GM it samples the predicted reverse-transition GM exactly. ``h = 0`` is DDIM (deterministic).

    ``output_mode`` / ``variance_mode`` keep the original's option: with ``output_mode='mean'`` and
    ``variance_mode='large'`` (and ``h = 1``) the noise std becomes the DDPM "large" variance
    ``sqrt(beta_bar) sigma sqrt((alpha'^2 + sigma'^2) / max(alpha^2 + sigma^2, eps))``. GM-SDE proper is
    ``output_mode='sample'`` (the default), where the mode does not matter.
    The last step (``sigma' = 0``) returns ``x0_hat`` exactly.
    """

    def __init__(
        self,
        num_train_timesteps: float = NUM_TIMESTEPS,
        shift: float = 1.0,
        h: float = 1.0,
        output_mode: str = "sample",
        variance_mode: str = "large",
    ) -> None:
        if output_mode not in ("sample", "mean"):
            raise GMFlowInputError(f"output_mode must be 'sample' or 'mean', got {output_mode!r}")
        if variance_mode not in ("small", "large"):
            raise GMFlowInputError(f"variance_mode must be 'small' or 'large', got {variance_mode!r}")
        if not h >= 0:
            raise GMFlowInputError(f"h must be >= 0 (or inf), got {h}")
        super().__init__(
            num_train_timesteps=float(num_train_timesteps),
            shift=float(shift),
            h=float(h),
            output_mode=output_mode,
            variance_mode=variance_mode,
        )
        flow_sigmas(1, shift)

    def _advance(self, x, out, x0, sigma, sigma_next, prediction_type, generator, eps: float = 1e-6):
        """``eps`` (a keyword of :meth:`step`) floors ``sigma`` and ``sigma alpha'`` in the divisions."""
        if float(sigma_next) == 0.0:
            return x0
        alpha, alpha_next = 1 - sigma, 1 - sigma_next
        h = self._config["h"]
        eps_hat = (x - alpha * x0) / torch.clamp_min(sigma, eps)
        ratio = sigma_next * alpha / torch.clamp_min(sigma * alpha_next, eps)
        keep = torch.zeros_like(ratio) if math.isinf(h) else ratio ** (h * h)
        noise_scale = torch.clamp_min(1 - keep.square(), 0).sqrt()
        if self._config["output_mode"] == "mean" and self._config["variance_mode"] == "large" and h == 1.0:
            # DDPM "large" variance: std = sqrt(beta_bar) sigma sqrt((a'^2 + s'^2) / (a^2 + s^2))
            large = sigma * torch.sqrt((alpha_next.square() + sigma_next.square())
                                       / torch.clamp_min(alpha.square() + sigma.square(), eps))
            noise_scale = noise_scale * large / sigma_next
        noise = torch.zeros_like(x)
        if float(noise_scale) > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return alpha_next * x0 + sigma_next * (keep * eps_hat + noise_scale * noise)
