"""One module per op family: schema, checks, reference-backed fallback, fake kernel, autograd, sample
inputs and the typed :mod:`gmflow.ops` wrapper, side by side. Importing this package imports every
module in it, which defines every ``torch.ops.gmflow`` op (:mod:`gmflow._library` is the registry):
a new op's module needs no line anywhere else in Python."""

import importlib
import pkgutil

from gmflow import _library

MODULES = [
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name)
]

_library.check_complete(wrappers=tuple(name for module in MODULES for name in module.__all__))
