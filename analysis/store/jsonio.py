"""JSON for every file Entroscope writes and reads back.

Writing: :func:`clean_json` (NaN/inf → null, arrays → lists) and :func:`dumps` (adds ``schema_version``).
Reading: :func:`read_json`, the one reader of run, plan, eval, sweep, MI, figures and recommendation files:
special files refused before opening (:mod:`analysis.store.inputs`), duplicate keys, ``NaN`` / ``Infinity``
and overflowing numbers refused, ``schema_version`` checked (absent = 1, newer = refused), then a pydantic
schema (:mod:`analysis.store.schemas`) whose errors name the field. Adopt it for a new file kind with::

    data = read_json(path, MyModel, kind="recommendation", hint="create it with `python -m analysis recommend`")
"""
from __future__ import annotations

import json
import math
import platform
import re
from pathlib import Path
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


# ----------------------------------------------------------------------------------------------------
# Reading: one strict reader for every JSON file Entroscope is handed back
# ----------------------------------------------------------------------------------------------------

#: schema version written into every JSON file (``schema_version``); a file without one is version 1
SCHEMA_VERSION = 1
#: JSON files larger than this are refused before they are read (a run of a 4096-layer model is far smaller)
MAX_JSON_BYTES = 512 * 2**20
MAX_JSON_DEPTH = 200


class _Strict(ValueError):
    """A JSON text that parses but that Entroscope refuses (duplicate keys, NaN, ±Infinity, overflow)."""


def _no_duplicates(pairs: list) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise _Strict(f"the key {k!r} appears twice in one object (which one is meant is ambiguous)")
        d[k] = v
    return d


def _no_constant(name: str):
    raise _Strict(f"it holds {name}, which is not standard JSON (Entroscope writes null for a missing number)")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Strict(f"the number {text[:30]} overflows to infinity")
    return v


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys, ``NaN`` / ``Infinity`` and numbers that overflow to ±inf
    (ValueError subclasses, RecursionError for absurd nesting)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float)


def dumps(obj: Any, indent: int | None = 1, **kw) -> str:
    """JSON text for a file Entroscope writes: NaN/inf → null (:func:`clean_json`) and, for an object,
    ``schema_version`` first (kept when the object already names one)."""
    obj = clean_json(obj, kw.pop("fallback", None))
    if isinstance(obj, dict):
        obj = {"schema_version": obj.get("schema_version", SCHEMA_VERSION), **obj}
    return json.dumps(obj, indent=indent, allow_nan=False, **kw)


def schema_version(d: Any, where: str, kind: str) -> int:
    """The ``schema_version`` of a parsed file (1 when absent: files written before versions existed);
    DataError for a non-integer or a version newer than this Entroscope reads."""
    from analysis.errors import DataError

    if not isinstance(d, dict) or "schema_version" not in d:
        return 1
    v = d["schema_version"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DataError(f"{where}: schema_version must be a positive integer, got {v!r}")
    if v > SCHEMA_VERSION:
        raise DataError(f"{where} is a {kind} file of schema version {v}, written by a newer Entroscope; this "
                        f"version ({__version__}) reads versions up to {SCHEMA_VERSION}",
                        hint="upgrade Entroscope (pip install -U entroscope), or re-create the file with this version")
    return v


def _depth(x: Any, limit: int) -> int:
    stack, deepest = [(x, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(v, dict):
            stack.extend((w, d + 1) for w in v.values())
        elif isinstance(v, list):
            stack.extend((w, d + 1) for w in v)
    return deepest


def read_json(path: str | Path, schema: Any = None, *, kind: str = "JSON", hint: str | None = None,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read and validate one JSON file Entroscope is handed back (run, plan, eval, sweep, rec, …).

    The path goes through :func:`analysis.store.inputs.check_input_file` first (FIFOs, devices, directories,
    empty, oversized and mislabelled files are refused with the true reason, never opened). The text must be
    UTF-8 standard JSON: duplicate keys, ``NaN`` / ``Infinity`` and overflowing numbers are refused.
    ``schema_version`` is checked (absent = 1; newer than this version reads = refused, see
    :func:`schema_version`). Then ``schema`` validates the data: a pydantic model class (the error names the
    field) or a callable ``schema(data, where)`` returning the validated value. Any problem is a
    :class:`~analysis.errors.DataError` naming the file; without a schema the parsed value is returned.
    """
    from analysis.errors import DataError
    from analysis.store.inputs import check_input_file

    where = str(path)
    check_input_file(path, f"{kind} file", expect="json", max_bytes=max_bytes)
    what = "an Entroscope run" if kind == "run" else f"valid {kind}"
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
        data = loads_strict(text)
    except RecursionError:
        raise DataError(f"{where} is nested too deeply to be {what} JSON", hint=hint) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not {what} JSON: it is not UTF-8 text (byte at offset {exc.start})",
                        hint=hint) from None
    except _Strict as exc:
        raise DataError(f"{where} is not {what} JSON: {exc}", hint=hint) from None
    except ValueError as exc:
        detail = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) \
            else type(exc).__name__
        raise DataError(f"{where} is not {what} JSON ({detail})", hint=hint) from None
    except OSError as exc:
        raise DataError(f"Cannot read {kind} file {where}: {exc.strerror or exc}") from None
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise DataError(f"{where} is nested too deeply to be {what} JSON", hint=hint)
    schema_version(data, where, kind)
    if schema is None:
        return data
    return validate(data, schema, where, kind, hint)


def validate(data: Any, schema: Any, where: str, kind: str, hint: str | None = None) -> Any:
    """``data`` checked by ``schema`` (a pydantic model class, or a callable ``schema(data, where)``)."""
    from analysis.errors import DataError

    if not (isinstance(schema, type) and hasattr(schema, "model_validate")):
        return schema(data, where)
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise DataError(f"{where} is not {_a(kind)} JSON: expected a JSON object, got {type(data).__name__}",
                        hint=hint)
    try:
        return schema.model_validate(data)
    except RecursionError:
        raise DataError(f"{where} is nested too deeply to be {_a(kind)} JSON", hint=hint) from None
    except ValidationError as exc:
        raise DataError(f"{where} is not a valid {kind} JSON: {validation_message(exc, kind)}", hint=hint) from None


def _a(kind: str) -> str:
    return ("an " if kind[:1].lower() in "aeiou" else "a ") + kind


def _loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or re.fullmatch(r"(?:[A-Z][a-z0-9]+){2,}", str(part)) or \
                str(part).startswith(("function-", "nullable")):
            continue                                        # union branch / model names, not fields
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validation_message(exc, kind: str, known: str | None = None) -> str:
    """One line naming the field for a pydantic ``ValidationError`` (``field per_seq.bucket.mid[2]: …``)."""
    errs = exc.errors(include_url=False)
    # a union reports one error per branch; the branch whose error is deepest is the meaningful one
    e = max(errs, key=lambda x: len(x["loc"]))
    if any(x["type"] == "value_error" for x in errs):
        e = next(x for x in errs if x["type"] == "value_error")
    loc, typ = _loc(e["loc"]), e["type"]
    if typ == "value_error":
        msg = str(e.get("ctx", {}).get("error") or e["msg"].removeprefix("Value error, "))
        return msg if loc == "(top level)" else f"field {loc}: {msg}"
    if typ == "extra_forbidden":
        extra = sorted(str(x["loc"][-1]) for x in errs if x["type"] == "extra_forbidden")
        return f"has unknown keys {extra}" + (f"; a {kind} has {known}" if known else "")
    if typ == "missing":
        return f"field {loc} is missing"
    if typ == "list_type":
        return f"field {loc!r} must be a list" + (" of 0-based block indices" if kind == "plan" else "") + \
            f", got {type(e['input']).__name__}"
    if typ in ("int_type", "int_from_float", "int_parsing") and kind == "plan":
        return f"field {loc.split('[')[0]!r} must hold integers, got {e['input']!r}"
    if typ == "dict_type":
        return f"field {loc!r} must be a JSON object"
    return f"field {loc}: {e['msg']} (got {str(e.get('input'))[:40]!r})"
