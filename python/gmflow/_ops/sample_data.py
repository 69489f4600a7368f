"""The operands the op modules build their test recipes from: small deterministic GMs for
``sample_inputs`` (opcheck, gradcheck, fallback and benchmark runs parametrize over them), random
operands at any dims for valid calls (the bad-input suite), :class:`GmCase` (shapes, broadcasting
and memory layouts of one operand set; the emulated-CUDA parity suite draws them with hypothesis)
and the fixed operands of the wrapper examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from gmflow.reference.common import acc_dtype
from gmflow.types import GaussianMixture

__all__: list[str] = []  # no gmflow.ops wrappers here

# (batch, K, C, H, W, N, dtype, per-component-and-pixel logstds)
_CASES = (
    ((2,), 3, 2, 3, 4, 2, torch.float64, False),
    ((2,), 2, 3, 2, 3, 1, torch.float64, True),
    ((3,), 4, 2, 1, 1, 1, torch.float32, False),
)


def gm_tensors(device: str, shared_std_only: bool = False) -> Iterator[tuple[GaussianMixture, Tensor]]:
    """``(gm, samples (batch, N, C, H, W))`` per case; the GM's logweights are normalised."""
    for i, (batch, K, C, H, W, N, dtype, per_component) in enumerate(_CASES):
        if shared_std_only and per_component:
            continue
        g = torch.Generator().manual_seed(1234 + i)
        means = torch.randn(*batch, K, C, H, W, generator=g, dtype=torch.float64)
        ls_shape = (*batch, K, 1, H, W) if per_component else (*batch, 1, 1, 1, 1)
        logstds = -0.5 + 0.3 * torch.rand(ls_shape, generator=g, dtype=torch.float64)
        logweights = torch.log_softmax(torch.randn(*batch, K, 1, H, W, generator=g, dtype=torch.float64), dim=-4)
        samples = torch.randn(*batch, N, C, H, W, generator=g, dtype=torch.float64)
        gm = GaussianMixture(*(t.to(dtype=dtype, device=device) for t in (means, logstds, logweights)))
        yield gm, samples.to(dtype=dtype, device=device)


def acc_full(shape, value: float, like: Tensor) -> Tensor:
    """A constant tensor in the accumulation dtype of ``like`` (sigmas, uniforms)."""
    return torch.full(shape, value, dtype=acc_dtype(like.dtype), device=like.device)


# ------------------------------------------------------------------------------------------------
# Valid calls at any dims (the bad-input suite)


class RandomOperands:
    """Uniform random operands of one valid call at dims ``(B, K, C, H, W, N)`` (any may be 0) in
    ``dtype``, from one generator seeded with ``seed``: ``gm`` (normalised logweights, a shared std)
    and ``gm1d`` as ``{argument: tensor}``, drawn first, then whatever :meth:`rand` is asked for."""

    def __init__(self, B=2, K=2, C=2, H=2, W=3, N=2, dtype=torch.float32, seed=0):
        self.B, self.K, self.C, self.H, self.W, self.N = B, K, C, H, W, N
        self.dtype, self.acc = dtype, acc_dtype(dtype)
        self.generator = torch.Generator().manual_seed(seed)
        means, logstds = self.rand(B, K, C, H, W), self.rand(B, 1, 1, 1, 1, lo=-1.0, hi=0.0)
        logweights = self.rand(B, K, 1, H, W)
        if K:
            logweights = logweights.float().log_softmax(-4).to(dtype)
        self.gm = dict(means=means, logstds=logstds, logweights=logweights)
        self.gm1d = dict(means=self.rand(B, K, H, W), logstds=self.rand(B, 1, 1, 1, lo=-1.0, hi=0.0),
                         logweights=self.rand(B, K, H, W))

    def rand(self, *shape: int, dtype: torch.dtype | None = None, lo: float = -1.0, hi: float = 1.0) -> Tensor:
        """Uniform in ``[lo, hi)``, drawn in float64 and cast to ``dtype`` (default: the call's)."""
        t = torch.rand(*shape, generator=self.generator, dtype=torch.float64) * (hi - lo) + lo
        return t.to(dtype or self.dtype)


# ------------------------------------------------------------------------------------------------
# GM cases: shapes, broadcasting and memory layouts (the emulated-CUDA parity suite)

# Logstd layouts accepted by the ops: last four dims as a function of (K, H, W).
LOGSTD_LAYOUTS = {
    "shared": lambda K, H, W: (1, 1, 1, 1),
    "per_component_pixel": lambda K, H, W: (K, 1, H, W),
    "per_pixel": lambda K, H, W: (1, 1, H, W),
    "per_component": lambda K, H, W: (K, 1, 1, 1),
}


@dataclass
class GmCase:
    """Shapes and memory layouts of one (means, logstds, logweights, samples) set."""

    batch: tuple[int, ...]
    K: int
    C: int
    H: int
    W: int
    N: int
    dtype: torch.dtype = torch.float32
    logstd_layout: str = "shared"
    # Per operand: how many leading batch dims it drops, and which of its dims are size-1 broadcasts.
    drop: dict = field(default_factory=dict)
    ones: dict = field(default_factory=dict)
    # Per operand: None, "pixel" (non-unit pixel stride), "outer" (strided K/N dim), "expand" (stride-0 batch).
    layout: dict = field(default_factory=dict)
    seed: int = 0

    def batch_of(self, name: str) -> list[int]:
        b = list(self.batch[self.drop.get(name, 0):])
        offset = len(self.batch) - len(b)
        for d in self.ones.get(name, ()):
            if d >= offset:
                b[d - offset] = 1
        return b

    def shapes(self) -> dict[str, list[int]]:
        K, C, H, W = self.K, self.C, self.H, self.W
        return {
            "means": self.batch_of("means") + [K, C, H, W],
            "logstds": self.batch_of("logstds") + list(LOGSTD_LAYOUTS[self.logstd_layout](K, H, W)),
            "logweights": self.batch_of("logweights") + [K, 1, H, W],
            "samples": self.batch_of("samples") + [self.N, C, H, W],
        }

    def tensors(self, device="cpu", requires_grad=False) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(self.seed)
        shapes = self.shapes()
        values = {
            "means": torch.randn(shapes["means"], generator=g, dtype=torch.float64),
            "logstds": torch.rand(shapes["logstds"], generator=g, dtype=torch.float64) * 2.0 - 1.5,
            "logweights": torch.log_softmax(torch.randn(shapes["logweights"], generator=g, dtype=torch.float64), -4),
            "samples": 1.5 * torch.randn(shapes["samples"], generator=g, dtype=torch.float64),
        }
        out = []
        for name in ("means", "logstds", "logweights", "samples"):
            t = with_layout(values[name].to(self.dtype), self.layout.get(name), self.batch)
            t = t.to(device)
            if requires_grad:
                t = t.detach().requires_grad_()
            out.append(t)
        return tuple(out)


def with_layout(t: torch.Tensor, kind: str | None, batch) -> torch.Tensor:
    """Same values, different strides (what the kernels must handle without help)."""
    if kind is None:
        return t
    if kind == "pixel":  # H and W swapped in memory: non-unit pixel stride
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "outer":  # every other element along dim -4 (K or N)
        big = torch.zeros(*t.shape[:-4], 2 * t.shape[-4], *t.shape[-3:], dtype=t.dtype)
        big[..., ::2, :, :, :] = t
        return big[..., ::2, :, :, :]
    if kind == "expand" and t.dim() > 4 and t.shape[0] > 1:  # stride-0 leading batch dim
        return t[:1].expand(t.shape)
    return t


def extra(case: GmCase, name: str, tail, seed: int, kind="normal", low=0.0, high=1.0, dtype=None) -> Tensor:
    """An operand with the batch of ``name`` in the case and trailing dims ``tail`` (in the case's
    layout of ``name`` when it has four or more), normal or uniform in ``[low, high)``."""
    g = torch.Generator().manual_seed(case.seed + seed)
    shape = case.batch_of(name) + list(tail)
    t = torch.randn(shape, generator=g, dtype=torch.float64) if kind == "normal" else (
        low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64))
    t = t.to(dtype or case.dtype)
    return with_layout(t, case.layout.get(name), case.batch) if len(tail) >= 4 else t


def grad_like(out: Tensor, seed: int) -> Tensor:
    """A random upstream gradient for ``out`` (backward ops)."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g.to(out.dtype)


def random_rotation(case: GmCase, per_pixel: bool) -> Tensor:
    """A random orthogonal ``(batch, H|1, W|1, C, C)`` in the case's accumulation dtype (KR ops)."""
    g = torch.Generator().manual_seed(case.seed)
    pixels = (case.H, case.W) if per_pixel else (1, 1)
    q, _ = torch.linalg.qr(torch.randn(*case.batch_of("means"), *pixels, case.C, case.C, generator=g,
                                       dtype=torch.float64))
    return q.to(acc_dtype(case.dtype))


#: ``choose(label, options)``: one of ``options`` (a ``range`` or a sequence), as the suite draws it.
Choose = Callable[[str, Sequence], object]

BOOLEANS = (False, True)


def output_mask(choose: Choose, n: int) -> list[bool]:
    """The ``output_mask`` of a backward op with ``n`` gradients, each chosen."""
    return [choose(f"output_mask[{i}]", BOOLEANS) for i in range(n)]


# ------------------------------------------------------------------------------------------------
# The fixed operands of the gmflow.ops wrapper examples


@dataclass(frozen=True)
class WrapperOperands:
    """A GM ``(2, 3, 2, 4, 4)`` with a shared std, an image batch ``x (2, 2, 4, 4)`` and samples
    ``(2, 1, 2, 4, 4)``, from one seeded generator."""

    gm: GaussianMixture
    x: Tensor
    samples: Tensor


def wrapper_operands() -> WrapperOperands:
    gen = torch.Generator().manual_seed(0)
    gm = GaussianMixture(torch.randn(2, 3, 2, 4, 4, generator=gen), torch.full((2, 1, 1, 1, 1), -0.5),
                         torch.log_softmax(torch.randn(2, 3, 1, 4, 4, generator=gen), dim=-4))
    return WrapperOperands(gm, torch.randn(2, 2, 4, 4, generator=gen), torch.randn(2, 1, 2, 4, 4, generator=gen))
