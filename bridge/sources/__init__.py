"""The source adapters, by the ``source`` name a route uses.

Adding a source is one module here (defining ``SOURCE``), one page in ``docs/sources/`` and one
test module in ``tests/sources/``. Sources are found by looking: every module of this package
that defines ``SOURCE`` is one, under its module name; the others (``base`` and any helpers the
adapters share) are not.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from bridge.sources.base import Source

#: Listed first in messages naming the known sources: the one to use when no other fits.
FIRST = "generic"


@cache
def source_names() -> tuple[str, ...]:
    """The sources this installation has a module for: ``generic``, then the rest by name."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "SOURCE", None), Source):
            found.append(info.name)
    return tuple(sorted(found, key=lambda name: (name != FIRST, name)))


@cache
def get_source(name: str) -> Source:
    if name not in source_names():
        raise KeyError(f"unknown source {name!r}")
    return importlib.import_module(f"{__name__}.{name}").SOURCE
