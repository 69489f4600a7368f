"""Pure-PyTorch reference of every GM operation (the test oracle and the fallback)."""

from . import core
from .core import *  # noqa: F401,F403
