"""What the op modules share: the wrappers' NaN check, dispatch predicates and test-input helpers."""

from __future__ import annotations

import functools
import inspect
import re
from typing import Callable, Iterator

import torch
from torch import Tensor

from gmflow import config
from gmflow._validation import GMFlowInputError
from gmflow.types import GaussianMixture, GaussianMixture1D, GaussianMixtureCov

__all__: list[str] = []  # no gmflow.ops wrappers here


def needs_grad(*tensors) -> bool:
    """Whether autograd would record a call on ``tensors`` (then the differentiable reference runs)."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def same_dtype(*tensors: Tensor) -> bool:
    return all(t.dtype == tensors[0].dtype for t in tensors)


def broadcast_view(t: Tensor, batch: torch.Size, inner: int) -> Tensor:
    """``t (full_batch..., *inner dims)`` whose values repeat along broadcast dims, as ``batch + inner``."""
    lead = t.dim() - inner - len(batch)
    index = [0] * lead + [slice(0, 1) if b == 1 else slice(None) for b in batch] + [slice(None)] * inner
    return t[tuple(index)]


# ------------------------------------------------------------------------------------------------
# The NaN check of every gmflow.ops wrapper


def _named_tensors(name: str, value) -> Iterator[tuple[str, Tensor]]:
    """The tensors of one argument, named as the user wrote them: a GM's fields by their own names
    (``means``), another container's as ``name.field``, a list's as ``name[i]``."""
    if isinstance(value, Tensor):
        yield name, value
    elif isinstance(value, (GaussianMixture, GaussianMixture1D, GaussianMixtureCov)):
        for field, t in zip(value._fields, value):
            yield field, t
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field, t in zip(value._fields, value):
            yield from _named_tensors(f"{name}.{field}", t)
    elif isinstance(value, (list, tuple)):
        for i, t in enumerate(value):
            yield from _named_tensors(f"{name}[{i}]", t)


def should_check_values(t: Tensor) -> bool:
    mode = config.value_checks()
    if mode == "never" or torch.compiler.is_compiling():
        return False
    return mode == "always" or t.device.type == "cpu"


def has_nan(t: Tensor) -> bool:
    """Whether ``t`` holds a NaN: one reduction (a sum is NaN when a term is, or from inf - inf), then
    the exact elementwise test only when the sum says so."""
    if not t.numel():
        return False
    return bool(torch.isnan(t.sum())) and bool(torch.isnan(t).any())


def raise_for_nan(op: str, outputs: list[Tensor], inputs: Callable[[], dict[str, Tensor]]) -> None:
    """Raises if an output has NaN, naming the input that caused it (``inputs()``: the named inputs,
    built only then)."""
    outputs = [t for t in outputs if t.is_floating_point() or t.is_complex()]
    if not outputs or not should_check_values(outputs[0]) or not any(has_nan(t) for t in outputs):
        return
    inputs = inputs()
    for name, t in inputs.items():
        if t.is_floating_point() and torch.isnan(t).any():
            raise GMFlowInputError(f"{op}(): '{name}' contains NaN")
    for name, t in inputs.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise GMFlowInputError(f"{op}(): '{name}' contains infinite values that produced NaN")
    raise GMFlowInputError(f"{op}(): produced NaN from finite inputs; please report this as a gmflow bug")


# The native binding's argument checks raise RuntimeError("<op>(): '<argument>' ...").
_NATIVE_INPUT_ERROR = re.compile(r"^gm\w*\(\): ")


def names_nan_inputs(fn: Callable) -> Callable:
    """Decorator of every :mod:`gmflow.ops` wrapper: bad input is a :class:`GMFlowInputError` whichever
    backend found it (a native kernel's argument check raises RuntimeError with the same message), and
    on CPU (see :func:`gmflow.config.value_checks`) a NaN in the result raises one naming the input
    that carries it."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
        except RuntimeError as e:
            if isinstance(e, GMFlowInputError) or not _NATIVE_INPUT_ERROR.match(str(e)):
                raise
            raise GMFlowInputError(str(e)) from e
        if torch.compiler.is_compiling() or config.value_checks() == "never":
            return out
        def inputs():
            bound = signature.bind(*args, **kwargs)
            return {n: t for name, v in bound.arguments.items() for n, t in _named_tensors(name, v)}

        raise_for_nan(fn.__name__, [t for _, t in _named_tensors("out", out)], inputs)
        return out

    wrapper.checks_nan_inputs = True
    return wrapper
