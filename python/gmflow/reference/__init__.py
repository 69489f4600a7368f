"""Pure-PyTorch reference of every GM operation (the test oracle and the fallback).

``common`` is the shared core (dtype rules, layout checks); ``density`` the density ops in
their op layout; ``algebra``, ``gm1d``, ``transport``, ``divergence`` and ``flow`` the
container-level operations, in that order of dependence.
"""

from . import common, density
from .density import *  # noqa: F401,F403
