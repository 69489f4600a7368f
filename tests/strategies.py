"""Hypothesis strategies and builders of GM operand sets for the op tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

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


@st.composite
def gm_cases(draw, dtypes=DTYPES, max_k=64, allow_empty=True, logstd_layouts=tuple(LOGSTD_LAYOUTS)) -> GmCase:
    nb = draw(st.integers(0, 3))
    low = 0 if allow_empty else 1
    batch = tuple(draw(st.lists(st.integers(low, 3), min_size=nb, max_size=nb)))
    K = draw(st.one_of(st.integers(1, 9), st.sampled_from([16, 33, max_k])))
    C = draw(st.integers(1, 5))
    H = draw(st.integers(1, 6))
    W = draw(st.sampled_from([1, 2, 3, 5, 8, 17]))
    N = draw(st.integers(low, 3))
    case = GmCase(
        batch=batch,
        K=min(K, max_k),
        C=C,
        H=H,
        W=W,
        N=N,
        dtype=draw(st.sampled_from(dtypes)),
        logstd_layout=draw(st.sampled_from(logstd_layouts)),
        seed=draw(st.integers(0, 2**16)),
    )
    for name in ("means", "logstds", "logweights", "samples"):
        case.drop[name] = draw(st.integers(0, nb)) if nb and draw(st.booleans()) else 0
        case.ones[name] = tuple(i for i in range(nb) if draw(st.booleans()) and draw(st.booleans()))
        case.layout[name] = draw(st.sampled_from([None, None, "pixel", "outer", "expand"]))
    # Broadcasting needs at least one operand to carry each batch dim at full size: the
    # samples (or means) keep all dims unless the case is fully broadcast on purpose.
    keeper = draw(st.sampled_from(["means", "samples"]))
    case.drop[keeper] = 0
    case.ones[keeper] = ()
    return case


def tolerances(dtype: torch.dtype) -> dict:
    return {
        torch.float64: dict(rtol=1e-9, atol=1e-9),
        torch.float32: dict(rtol=2e-4, atol=2e-4),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float16: dict(rtol=4e-3, atol=4e-3),
    }[dtype]
