"""Lazy package faces: ``from analysis.models import load_model`` imports only ``analysis.models.loading``.

A package's ``__init__`` lists its public names and the module defining each, and sets
``__getattr__ = lazy_exports(__name__, TABLE)``. Importing one light module (``analysis.models.plan``,
``analysis.score.criteria``) then never pulls in the rest of its package, nor torch through it.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """``__getattr__`` for ``package``: ``name`` → ``getattr(import_module(package + "." + table[name]), name)``."""
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{table[name]}"), name)

    return __getattr__
