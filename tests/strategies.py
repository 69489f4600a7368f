"""Hypothesis strategies of GM operand sets for the op tests (GmCase and with_layout live in
gmflow._ops.sample_data, where the op modules build their test recipes from them)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from gmflow._ops.sample_data import LOGSTD_LAYOUTS, GmCase, with_layout

__all__ = ["DTYPES", "LOGSTD_LAYOUTS", "GmCase", "gm_cases", "tolerances", "with_layout"]

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


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
