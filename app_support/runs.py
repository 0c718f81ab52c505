"""Starting, finishing and adjusting analysis runs (shared by the Entropy, Select and Export pages)."""
from __future__ import annotations

import copy
import dataclasses
import time

import streamlit as st

from . import state
from .jobs import AnalysisJob, attached, forget, make_config, result_cache, run_id_for, start_job


def analysis_settings() -> dict:
    """The Entropy page's analysis settings: the persisted widget ``an.<key>`` of every key of
    :func:`state.default_analysis` (flat :mod:`analysis.settings` keys), at its default until changed."""
    return {k: state.get(f"an.{k}", d) for k, d in state.default_analysis().items()}


def start_run(settings: dict | None = None) -> str:
    """Load the model and data if needed (defaults: SmolLM2, wiki 32 × 256) and start the analysis.

    Returns ``"cached"`` when an identical run finished before (instant), else ``"started"``.
    Raises EntroscopeError for bad settings (shown by the caller).
    """
    from .data import ensure_tokens
    from .models import get_model, load_into_session, model_settings

    s = st.session_state
    settings = settings or analysis_settings()
    make_config(settings)                      # a setting the config refuses: before the model loads
    msettings = s.get("es.model") or model_settings()
    with st.spinner("Loading the model and sampling the calibration text …", show_time=True):  # visible at once
        lm = get_model(msettings) if s.get("es.model") else load_into_session(msettings)
        tokens = ensure_tokens(lm)
    seed = (s.get("es.data") or {}).get("seed")
    if seed is not None:                       # the data seed also seeds the MI state subsample, as the CLI's --seed
        settings = {**settings, "seed": int(seed)}
    cfg = make_config(settings)
    cfg.validate(tokens.seq_len)
    rid = run_id_for(lm, tokens, cfg)
    meta = {"model": dict(s["es.model"]), "data": dict(s.get("es.data") or {}), "config": dict(settings)}
    cached = result_cache().get(rid)
    if cached is not None:
        _add(rid, cached, meta, tokens)
        return "cached"
    s["es.job"], joined = start_job("analysis", AnalysisJob(rid, lm, tokens, cfg, meta))
    if joined and s["es.job"].running:
        state.flash("info", f"The same analysis (run `{rid}`) is already running: showing its progress "
                            "instead of starting it again.")
    return "joined" if joined else "started"


def _add(rid: str, result, meta: dict, tokens=None) -> state.RunRecord:
    from analysis.score.result import view_label

    from .data import data_label

    # the session's own copy of the mutable parts (ground truth is stored into extras/baselines later);
    # the curves and per-sequence arrays stay shared with the process-wide cache
    result = dataclasses.replace(result, extras=copy.deepcopy(result.extras), baselines=copy.deepcopy(result.baselines))
    stopped = "" if result.manifest.get("completed", True) else " · stopped early"
    label = (f"{rid} · {meta['model']['spec']} · {data_label(meta['data']).split(' · ')[0]} · "
             f"{result.estimator} · {view_label(result.sink_mode)}"
             + (" (+ other view)" if len(result.sink_views) > 1 else "")
             + f" · {result.n_sequences} seq{stopped} · {time.strftime('%H:%M:%S')}")
    rec = state.RunRecord(rid, result, meta["model"], meta["data"], meta["config"], label, tokens=tokens)
    state.add_run(rec)
    return rec


def finish_job() -> None:
    """Re-attach this session's analysis job after a reload; move a finished one into the session's runs
    (or keep its error for display)."""
    s = st.session_state
    if s.get("es.job") is None:
        s["es.job"] = attached("analysis")
    job = s.get("es.job")
    if job is None or job.running:
        return
    s["es.job"] = None
    forget("analysis")
    old = state.runs().get(job.run_id)
    if old is not None and job.error is None and _same(old.result, job.result):
        return                                   # added by this session before a reload
    if job.error:
        s["es.job_error"] = (job.error, job.error_detail)
        return
    s["es.job_error"] = None
    rec = _add(job.run_id, job.result, job.meta, job.tokens)
    if job.result.manifest.get("stopped_during"):
        state.flash("warning", f"Analysis stopped during MI-PRUN: run `{rec.run_id}` keeps the token pass "
                               f"({job.result.n_sequences} sequences) without MI; run it again to finish MI "
                               "(the token statistics come from the results cache).")
    elif not job.result.manifest.get("completed", True):
        state.flash("warning", f"Analysis stopped: run `{rec.run_id}` covers {job.result.n_sequences} sequences.")
    else:
        state.flash("success", f"Analysis finished in {job.elapsed:.1f} s (run `{rec.run_id}`).")


def _same(a, b) -> bool:
    m = lambda r: (r.n_sequences, r.manifest.get("completed", True), r.manifest.get("stopped_during"))  # noqa: E731
    return m(a) == m(b)


# ---- boundary and protection (user-adjustable after the run) ---------------------------------------

def protection(rec: state.RunRecord) -> dict:
    """``{"mode", "boundary", "extra"}`` for a run: the run's own values until the user changes them."""
    p = st.session_state.setdefault("es.protect", {})
    if rec.run_id not in p:
        cfg = rec.result.manifest.get("config", {})
        p[rec.run_id] = {"mode": rec.result.protect, "boundary": int(rec.result.boundary),
                         "extra": list(cfg.get("protect_extra") or [])}
    return p[rec.run_id]


def effective_protected(rec: state.RunRecord) -> list[int]:
    from analysis.score.selection import protected_blocks

    p = protection(rec)
    return protected_blocks(rec.num_layers, p["mode"], p["boundary"], p["extra"])


def adjusted_result(rec: state.RunRecord):
    """The run's result with the user's boundary and protected blocks (a shallow copy; arrays shared)."""
    p = protection(rec)
    return dataclasses.replace(rec.result, boundary=int(p["boundary"]), protected=effective_protected(rec))
