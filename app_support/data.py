"""Calibration token sets for the app, cached by everything they depend on.

A *data spec* is a small JSON-able dict (what the Model & data page edits)::

    {"source": "builtin", "weights": {"wiki": 1.0}, "n_samples": 32, "seq_len": 256, "seed": 2024,
     "mode": "random", "split": "calib"}
    {"source": "upload", "filename": "notes.txt", "sha256": "…", ...}      # bytes kept in session state
    {"source": "hub", "name": "wikitext", "config": "wikitext-2-raw-v1", ...}
    {"source": "tokens", "filename": "ids.npy", "sha256": "…"}             # pre-tokenized [N, T]

The cache key is (model fingerprint, data spec); uploaded bytes are passed un-hashed (their sha256 is
in the spec).
"""
from __future__ import annotations

import hashlib
import os
import tempfile

import streamlit as st

from analysis.errors import DataError

from .state import DEFAULT_DATA

UPLOADS = "es.uploads"   # session_state: {sha256: (filename, bytes)}


def store_upload(filename: str, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    st.session_state.setdefault(UPLOADS, {})[sha] = (filename, data)
    return sha


def upload_bytes(sha: str) -> tuple[str, bytes]:
    ups = st.session_state.get(UPLOADS, {})
    if sha not in ups:
        raise DataError("The uploaded file is no longer in this session", hint="upload it again")
    return ups[sha]


def sample_config(spec: dict):
    """The SampleConfig of a data spec: its ``n_samples``/``seq_len``/``seed``/``mode`` (SampleConfig's own
    field names), the dataclass defaults for the rest, except the app's smaller default window count."""
    from analysis.data import SampleConfig
    from analysis.settings import build, specs

    keys = {s.key for s in specs(SampleConfig, app=True)}
    return build(SampleConfig, {"n_samples": DEFAULT_DATA["n_samples"], **{k: v for k, v in spec.items() if k in keys}})


def _corpus_for(spec: dict, data: bytes | None):
    from analysis.data import load_hub_dataset, load_text_bytes

    src = spec["source"]
    if src == "upload":
        return load_text_bytes(data, spec["filename"], text_field=spec.get("text_field") or None)
    if src == "hub":
        name = (spec.get("name") or "").strip()
        if not name:
            raise DataError("No hub dataset name given", hint="e.g. wikitext with config wikitext-2-raw-v1")
        return load_hub_dataset(name, (spec.get("config") or "").strip() or None,
                                text_field=spec.get("text_field") or None)
    raise DataError(f"unknown data source {src!r}")


@st.cache_data(show_spinner=False, max_entries=24)
def _build_tokens(model_fingerprint: str, spec: dict, _tokenizer, _vocab_size: int, _data: bytes | None):
    from analysis.data import load_corpus, load_token_file, sample_hybrid, sample_windows

    src = spec.get("source", "builtin")
    if src == "builtin":
        weights = {k: float(v) for k, v in (spec.get("weights") or {}).items() if float(v) > 0}
        if not weights:
            raise DataError("Choose at least one built-in domain with a weight above 0")
        cfg = sample_config(spec)
        if len(weights) == 1:
            return sample_windows(load_corpus(next(iter(weights))), _tokenizer, cfg,
                                  split=spec.get("split", "calib"))
        return sample_hybrid(weights, _tokenizer, cfg, split=spec.get("split", "calib"))
    if src == "tokens":
        if _data is None:
            raise DataError("No token file uploaded")
        suffix = os.path.splitext(spec.get("filename", "tokens.npy"))[1] or ".npy"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tokens" + suffix)
            with open(path, "wb") as f:
                f.write(_data)
            ts = load_token_file(path, vocab_size=_vocab_size)
        ts.source["file"] = spec.get("filename", ts.source.get("file"))
        ts.source.pop("path", None)
        ts.domains = [spec.get("filename", "tokens")] * len(ts)
        return ts
    corpus = _corpus_for(spec, _data)
    return sample_windows(corpus, _tokenizer, sample_config(spec), split=spec.get("split", "calib"))


def build_tokens(lm, spec: dict):
    """The TokenSet for ``spec`` and this model's tokenizer (cached). Raises DataError."""
    data = None
    if spec.get("source") in ("upload", "tokens"):
        _, data = upload_bytes(spec["sha256"])
    vocab = lm.model.get_input_embeddings().num_embeddings
    clean = {k: v for k, v in spec.items() if k != "label"}
    return _build_tokens(lm.fingerprint + "|" + str(getattr(lm.tokenizer, "name_or_path", "")), clean,
                         lm.tokenizer, vocab, data)


def data_label(spec: dict | None) -> str:
    """One line describing a data spec (for the sidebar and captions)."""
    if not spec:
        return "none"
    src = spec.get("source", "builtin")
    if src == "builtin":
        w = spec.get("weights") or {}
        what = " + ".join(f"{k}×{v:g}" if len(w) > 1 else k for k, v in w.items() if float(v) > 0) or "none"
        what = f"built-in {what}"
    elif src == "upload":
        what = f"upload {spec.get('filename')}"
    elif src == "hub":
        what = f"hub {spec.get('name')}{'/' + spec['config'] if spec.get('config') else ''}"
    else:
        return f"token file {spec.get('filename')}"
    return f"{what} · {spec.get('n_samples')}×{spec.get('seq_len')} tokens · seed {spec.get('seed')}"


def eval_texts(spec: dict, split: str = "eval") -> list[str]:
    """Held-out documents matching a calibration spec (for perplexity): the ``eval`` split of the same
    corpus (the first domain of a mix)."""
    from analysis.data import load_corpus

    src = spec.get("source", "builtin")
    if src == "builtin":
        w = [k for k, v in (spec.get("weights") or {"wiki": 1}).items() if float(v) > 0] or ["wiki"]
        return load_corpus(w[0]).split(split)
    if src in ("upload", "hub"):
        data = upload_bytes(spec["sha256"])[1] if src == "upload" else None
        return _corpus_for(spec, data).split(split)
    return load_corpus("wiki").split(split)


def data_spec() -> dict:
    """Data spec from the Model & data page's (persisted) widgets; defaults: wiki, 32 × 256, seed 2024."""
    from . import state

    src = state.get("data.source", "builtin")
    spec = {"source": src, "n_samples": int(state.get("data.n", 32)), "seq_len": int(state.get("data.T", 256)),
            "seed": int(state.get("data.seed", 2024)), "mode": state.get("data.mode", "random"), "split": "calib"}
    if src == "builtin":
        doms = state.get("data.domains", ["wiki"]) or []
        spec["weights"] = {d: float(state.get(f"data.w.{d}", 1.0)) if len(doms) > 1 else 1.0 for d in doms}
    elif src == "upload":
        up = state.get("data.upload_file")
        if not up:
            raise DataError("No text file uploaded yet", hint="choose a .txt, .md, .jsonl, .csv or .parquet file")
        spec.update(filename=up[0], sha256=up[1], text_field=state.get("data.text_field", "") or None)
    elif src == "tokens":
        up = state.get("data.tokens_file")
        if not up:
            raise DataError("No token-id file uploaded yet", hint="choose an integer .npy or .pt array [N, T]")
        spec = {"source": "tokens", "filename": up[0], "sha256": up[1]}
    elif src == "hub":
        spec.update(name=state.get("data.hub_name", ""), config=state.get("data.hub_config", "") or None,
                    text_field=state.get("data.text_field", "") or None)
    return spec


def ensure_tokens(lm):
    """The session's token set for ``lm``; samples it from the current data spec when missing or made
    with another tokenizer."""
    s = st.session_state
    if s.get("es.tokens") is not None and s.get("es.tokens_model") == lm.fingerprint:
        return s["es.tokens"]
    spec = data_spec()
    with st.spinner("Tokenizing and sampling calibration windows …"):
        tokens = build_tokens(lm, spec)
    s["es.tokens"], s["es.tokens_model"], s["es.data"] = tokens, lm.fingerprint, spec
    return tokens
