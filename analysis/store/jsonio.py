"""JSON cleaning and library-version records, written once for runs, plans, channel reports and exports."""
from __future__ import annotations

import math
import platform
from typing import Any, Callable

from analysis import __version__


def clean_json(x: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
    """A JSON-safe copy of ``x``: dict keys → str, tuples → lists, numpy arrays and torch tensors → (nested)
    lists, numpy / torch scalars → Python numbers, NaN/inf → None.

    Other objects are returned as they are, or as ``fallback(obj)`` when given (``fallback=str`` leaves only
    plain JSON types). Neither numpy nor torch is imported: arrays are recognised by ``tolist``/``item``.
    """
    if isinstance(x, dict):
        return {str(k): clean_json(v, fallback) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v, fallback) for v in x]
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):              # numpy float64 included
        v = float(x)
        return v if math.isfinite(v) else None
    if hasattr(x, "tolist"):              # numpy arrays and scalars, torch tensors
        return clean_json(x.tolist(), fallback)
    if hasattr(x, "item"):
        return clean_json(x.item(), fallback)
    return x if fallback is None else fallback(x)


def library_versions() -> dict:
    """Versions recorded in manifests and reports: python, torch, transformers, numpy, entroscope."""
    import numpy as np
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "entroscope": __version__}
