"""Lazy re-exports for a package's ``__init__`` (PEP 562), so that importing the package (and
running ``lopt --help``) does not start JAX: a name is imported from its module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each public name to the
    submodule, relative to ``package``, that defines it under the same name."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
