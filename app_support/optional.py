"""Analysis modules that extend the core (plan, surgery, evaluate, export, MI, block selection).

They register themselves (criteria, extensions) on import; the app imports them when present and
renders whatever they registered. A missing or broken module disables its feature with a message
instead of breaking the page.
"""
from __future__ import annotations

import importlib
import importlib.util

OPTIONAL = ("plan", "surgery", "evaluate", "export", "mi", "blockselect")
_errors: dict[str, str] = {}


def module(name: str):
    """``analysis.<name>`` or None when it is absent or fails to import (reason in :func:`why`)."""
    full = f"analysis.{name}"
    if importlib.util.find_spec(full) is None:
        _errors[name] = f"analysis/{name}.py is not installed in this version"
        return None
    try:
        return importlib.import_module(full)
    except Exception as exc:  # noqa: BLE001 - reported to the user, not raised
        _errors[name] = f"analysis.{name} failed to import: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return None


def why(name: str) -> str:
    return _errors.get(name, f"analysis.{name} is unavailable")


def load_optional_criteria() -> None:
    """Import the modules that register extra criteria / extensions (MI-PRUN, Fast-Block-Select)."""
    for name in ("mi", "blockselect"):
        module(name)
