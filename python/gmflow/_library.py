"""The ``torch.ops.gmflow`` registry: each op module (:mod:`gmflow._ops`) declares its op here.

Schemas live in Python, and nowhere else (the C++ side only registers kernels with
``STABLE_TORCH_LIBRARY_IMPL``), so every op exists on every device and every torch, whether or
not a native library loads. An op module declares its op with :func:`define` and registers,
with the returned :class:`OpDef`'s decorators, its reference-backed fallback (under
``CompositeExplicitAutograd``: a native CPU or CUDA kernel, where loaded, takes precedence for
its dispatch key), its fake kernel, its autograd formula, the valid inputs the tests and
benchmarks run it on, and the recipes the registry-driven suites draw calls from (a valid call at
given dims, for the bad-input suite; an argument builder over hypothesis-drawn GM cases, for the
emulated-CUDA parity suite). Each typed :mod:`gmflow.ops` wrapper registers an example call
(:func:`register_wrapper_example`). A suite that parametrizes over the registry needs no edit for a
new op.
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


@dataclass(frozen=True)
class ParityRecipe:
    """How the emulated-CUDA parity suite calls an op: ``build(case, choose)`` returns its positional
    arguments for a :class:`gmflow._ops.sample_data.GmCase` drawn with ``case_options``;
    ``choose(label, options)`` picks one of ``options`` (a ``range`` or a sequence), so the suite
    decides how values are drawn. Outputs are compared to ``factor`` times the dtype's tolerance,
    through ``float_view`` for float32 and 16-bit dtypes if given, over ``dtypes`` (None: every
    dtype the suite tests). ``newton_steps_arg`` is the position of a Newton step count, which the
    float suites raise to convergence (unless 0). A backward op's builder takes its forward output
    from ``torch.ops.gmflow`` (the native CPU kernel), so both implementations see the same inputs."""

    build: Callable
    case_options: dict = field(default_factory=dict)
    factor: float = 1.0
    float_view: Callable | None = None
    dtypes: tuple | None = None
    newton_steps_arg: int | None = None


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
    valid_call_fn: Callable[[Any], dict] | None = None
    parity: ParityRecipe | None = None

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

    def register_valid_call(self, fn: Callable[[Any], dict]) -> Callable:
        """Decorator: ``fn(operands)`` returns a valid call as an ordered ``{argument: value}`` of the
        schema, built from a :class:`gmflow._ops.sample_data.RandomOperands` (any dims, 0 included;
        float16, float32 or float64). The bad-input suite corrupts one argument at a time."""
        self.valid_call_fn = fn
        return fn

    def valid_call(self, operands: Any) -> dict:
        return dict(self.valid_call_fn(operands))

    def register_parity_args(self, *, factor: float = 1.0, case_options: dict | None = None,
                             float_view: Callable | None = None, dtypes: tuple | None = None,
                             newton_steps_arg: int | None = None) -> Callable:
        """Decorator of ``build(case, choose)``; see :class:`ParityRecipe`."""

        def decorate(build: Callable) -> Callable:
            self.parity = ParityRecipe(build, dict(case_options or {}), factor, float_view, dtypes,
                                       newton_steps_arg)
            return build

        return decorate

    def op(self) -> Any:
        return getattr(torch.ops.gmflow, self.name)


#: op name -> its definition, in registration order.
OPS: dict[str, OpDef] = {}
#: op name -> schema (tests/test_registration.py checks the dispatcher against it).
SCHEMAS: dict[str, str] = {}
#: ops with an autograd formula -> the op computing their gradients (None: a Python formula).
DIFFERENTIABLE: dict[str, str | None] = {}
#: gmflow.ops wrapper name -> ``example(gm, operands)``, a call of the wrapper on ``gm`` (see
#: :func:`register_wrapper_example`).
WRAPPER_EXAMPLES: dict[str, Callable] = {}

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


def register_wrapper_example(wrapper: Callable) -> Callable:
    """Decorator of ``example(gm, operands)``: a call of the typed wrapper ``wrapper`` on the GM
    ``gm`` (which the tests poison with NaN or misshape), taking any other input from ``operands``
    (:class:`gmflow._ops.sample_data.WrapperOperands`)."""

    def decorate(example: Callable) -> Callable:
        WRAPPER_EXAMPLES[wrapper.__name__] = example
        return example

    return decorate


def missing_recipes(op: OpDef) -> list[str]:
    """What ``op`` has not registered, of what every op must."""
    return [what for what, v in (("fallback", op.fallback), ("fake", op.fake), ("sample inputs", op.sample_inputs_fn),
                                 ("valid call", op.valid_call_fn), ("parity args", op.parity)) if v is None]


def check_complete(wrappers: tuple[str, ...] = ()) -> None:
    """Every op has a fallback, a fake kernel, sample inputs and its suite recipes; every backward op
    exists; every wrapper named in ``wrappers`` has an example call."""
    for op in OPS.values():
        missing = missing_recipes(op)
        if missing:
            raise RuntimeError(f"gmflow op {op.name!r} lacks: {', '.join(missing)}")
        if op.backward_op is not None and op.backward_op not in OPS:
            raise RuntimeError(f"gmflow op {op.name!r} names an undefined backward op {op.backward_op!r}")
    for name in wrappers:
        if name not in WRAPPER_EXAMPLES:
            raise RuntimeError(f"gmflow.ops.{name} lacks an example call (register_wrapper_example)")


def empty_like_means(like: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialised output of ``shape`` with the dtype and device of ``like`` (fake kernels)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def empty_grads(means: torch.Tensor, inputs, output_mask) -> tuple[torch.Tensor, ...]:
    """Fake outputs of a ``*_backward`` op: a gradient shaped like each input, empty where not requested."""
    return tuple(empty_like_means(means, x.shape if m else (0,)) for x, m in zip(inputs, output_mask))
