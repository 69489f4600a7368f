"""The ``torch.ops.gmflow`` registry: each op module (:mod:`gmflow._ops`) declares its op here.

Schemas live in Python, and nowhere else (the C++ side only registers kernels with
``STABLE_TORCH_LIBRARY_IMPL``), so every op exists on every device and every torch, whether or
not a native library loads. An op module declares its op with :func:`define` and registers,
with the returned :class:`OpDef`'s decorators, its reference-backed fallback (under
``CompositeExplicitAutograd``: a native CPU or CUDA kernel, where loaded, takes precedence for
its dispatch key), its fake kernel, its autograd formula and the valid inputs the tests and
benchmarks run it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

NAMESPACE = "gmflow"


@dataclass(frozen=True)
class SampleInput:
    """One valid call of an op: ``op(*args, **kwargs)``; ``grad_argnums`` are the positions of the
    tensors a gradient is defined for (gradcheck; empty for inference-only and backward ops)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad_argnums: tuple[int, ...] = ()


@dataclass
class OpDef:
    """One registered op: its schema and what its module registered for it."""

    name: str
    schema: str
    fallback: Callable | None = None
    fake: Callable | None = None
    backward_op: str | None = None  # the op computing the gradients (None: a Python formula)
    differentiable: bool = False
    sample_inputs_fn: Callable[[str], Iterator[SampleInput]] | None = None

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    def register_fallback(self, fn: Callable) -> Callable:
        """Decorator: the pure-PyTorch implementation, for every device without a native kernel."""
        _lib.impl(self.name, fn, "CompositeExplicitAutograd")
        self.fallback = fn
        return fn

    def register_fake(self, fn: Callable) -> Callable:
        """Decorator: the meta/fake kernel (output shapes; the same checks as the fallback)."""
        torch.library.register_fake(self.qualname, fn, lib=_lib)
        self.fake = fn
        return fn

    def register_autograd(self, setup_context: Callable, backward_op: str | None = None) -> Callable:
        """Decorator of the backward formula; ``backward_op`` names the op it calls, if any."""

        def decorate(backward: Callable) -> Callable:
            torch.library.register_autograd(self.qualname, backward, setup_context=setup_context, lib=_lib)
            self.differentiable = True
            self.backward_op = backward_op
            DIFFERENTIABLE[self.name] = backward_op
            return backward

        return decorate

    def register_sample_inputs(self, fn: Callable[[str], Iterator[SampleInput]]) -> Callable:
        """Decorator: ``fn(device)`` yields valid :class:`SampleInput` s (opcheck, gradcheck, benchmarks)."""
        self.sample_inputs_fn = fn
        return fn

    def sample_inputs(self, device: str = "cpu") -> list[SampleInput]:
        return list(self.sample_inputs_fn(device))

    def op(self) -> Any:
        return getattr(torch.ops.gmflow, self.name)


#: op name -> its definition, in registration order.
OPS: dict[str, OpDef] = {}
#: op name -> schema (tests/test_registration.py checks the dispatcher against it).
SCHEMAS: dict[str, str] = {}
#: ops with an autograd formula -> the op computing their gradients (None: a Python formula).
DIFFERENTIABLE: dict[str, str | None] = {}

_lib = torch.library.Library(NAMESPACE, "DEF")


def define(schema: str) -> OpDef:
    """Defines ``torch.ops.gmflow.<name>`` from its schema string; returns its :class:`OpDef`."""
    name = schema.split("(", 1)[0]
    if name in OPS:
        raise RuntimeError(f"gmflow op {name!r} is defined twice")
    _lib.define(schema)
    OPS[name] = OpDef(name, schema)
    SCHEMAS[name] = schema
    return OPS[name]


def check_complete() -> None:
    """Every op has a fallback, a fake kernel and sample inputs; every backward op exists."""
    for op in OPS.values():
        missing = [what for what, v in (("fallback", op.fallback), ("fake", op.fake),
                                        ("sample inputs", op.sample_inputs_fn)) if v is None]
        if missing:
            raise RuntimeError(f"gmflow op {op.name!r} lacks: {', '.join(missing)}")
        if op.backward_op is not None and op.backward_op not in OPS:
            raise RuntimeError(f"gmflow op {op.name!r} names an undefined backward op {op.backward_op!r}")


def empty_like_means(like: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialised output of ``shape`` with the dtype and device of ``like`` (fake kernels)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def empty_grads(means: torch.Tensor, inputs, output_mask) -> tuple[torch.Tensor, ...]:
    """Fake outputs of a ``*_backward`` op: a gradient shaped like each input, empty where not requested."""
    return tuple(empty_like_means(means, x.shape if m else (0,)) for x, m in zip(inputs, output_mask))
