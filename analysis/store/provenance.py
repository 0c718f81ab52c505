"""Provenance checks: a plan or run made for one model must not be applied silently to another.

A plan from ``select``/``miprun`` records the analysis run's manifest (``source.run_manifest.model``);
a run records ``manifest.model``. Each holds the model's fingerprint (sha256 of the GGUF, a hash of a
checkpoint directory's config and weight files, or ``hub:<id>``), ``model_type`` and ``num_layers``.
When any of them differs from the loaded model, :func:`check_recorded_model` refuses with a message
naming the differences, unless ``force`` is set: then it returns them as one warning line.
"""
from __future__ import annotations

import sys

from analysis.errors import SelectionError

_FIELDS = (("model_type", "model type"), ("num_layers", "depth (layers)"), ("fingerprint", "fingerprint"))


def recorded_model(obj) -> dict | None:
    """The model manifest recorded in a Plan, a plan dict, an AnalysisResult or a run dict (None: unknown)."""
    source = getattr(obj, "source", None)
    manifest = getattr(obj, "manifest", None)
    if isinstance(obj, dict):
        source, manifest = obj.get("source"), obj.get("manifest")
    if isinstance(source, dict):
        m = (source.get("run_manifest") or {}).get("model")
        if isinstance(m, dict) and m:
            return m
    if isinstance(manifest, dict) and isinstance(manifest.get("model"), dict) and manifest["model"]:
        return manifest["model"]
    return None


def _short(v) -> str:
    s = str(v)
    return s[:16] + "…" if len(s) > 20 else s


def differences(recorded: dict, lm) -> list[str]:
    now = lm.manifest() if hasattr(lm, "manifest") else dict(lm)
    out = []
    for key, label in _FIELDS:
        a, b = recorded.get(key), now.get(key)
        if key == "fingerprint" and any(str(x).startswith("config:") for x in (a, b)):
            continue                  # an in-memory model (wrap_model) has no file fingerprint to compare
        if a is not None and b is not None and str(a) != str(b):
            out.append(f"{label} {_short(a)} ≠ {_short(b)}")
    return out


def check_recorded_model(obj, lm, what: str, force: bool = False, warn=None) -> list[str]:
    """Refuse ``obj`` (a plan or run, described as ``what``) made for a different model than ``lm``,
    unless ``force``; then print (or pass to ``warn``) one warning line. Returns the differences."""
    rec = recorded_model(obj)
    if not rec:
        return []
    diff = differences(rec, lm)
    if not diff:
        return []
    name = rec.get("name") or "another model"
    msg = f"{what} was made for {name}, not {getattr(lm, 'name', 'this model')}: " + "; ".join(diff)
    if not force:
        raise SelectionError(msg, hint="use the model it was made for, or pass --force to apply it anyway")
    line = f"warning: ProvenanceMismatch: {msg} (applied anyway because of --force)"
    (warn or (lambda s: print(s, file=sys.stderr)))(line)
    return diff
