"""Library-wide settings.

``value_checks`` decides when the ``gmflow.ops`` functions look for NaN:

- ``"auto"`` (default): on CPU tensors, in eager mode. The check scans the op's
  (small) output and only on a NaN the inputs, to name the culprit; on CUDA it
  would force a device synchronisation, so it is skipped there.
- ``"always"``: also on accelerators (synchronises; for debugging).
- ``"never"``: no value checks.

Shape, dtype and device checks always run, in every backend. The environment
variable ``GMFLOW_VALUE_CHECKS`` sets the initial mode.
"""

from __future__ import annotations

import os

_MODES = ("auto", "always", "never")
_value_checks = os.environ.get("GMFLOW_VALUE_CHECKS", "auto")
if _value_checks not in _MODES:
    raise ValueError(f"GMFLOW_VALUE_CHECKS must be one of {_MODES}; got {_value_checks!r}")


def set_value_checks(mode: str) -> None:
    """Sets the NaN-check mode: ``"auto"``, ``"always"`` or ``"never"``."""
    global _value_checks
    if mode not in _MODES:
        raise ValueError(f"value checks mode must be one of {_MODES}; got {mode!r}")
    _value_checks = mode


def value_checks() -> str:
    return _value_checks
