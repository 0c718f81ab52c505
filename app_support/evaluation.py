"""Comparisons for the Prune & compare page, on top of :mod:`analysis.evaluate`.

Every plan is evaluated on a view / copy of the cached model (the cached model is never modified).
Results are kept in ``st.session_state["es.evals"]`` keyed by everything they depend on (model
fingerprint, plan blocks, evaluation settings), so revisiting the page or re-running is instant.
"""
from __future__ import annotations

import math

import streamlit as st

from . import state

DEFAULT_EVAL = {"data": None, "window": 256, "max_tokens": 4096, "prompt_len": 64, "new_tokens": 16, "repeats": 3}


def plan_key(plan) -> list:
    n = plan.normalized()
    return [n.drop_attn, n.drop_mlp, n.drop_layers]


def eval_data(name: str | None, spec: dict | None):
    """What :func:`analysis.evaluate.prepare_eval` gets: a built-in domain name, or the held-out texts of
    the calibration upload / hub dataset."""
    if name and name != "(calibration source)":
        return name
    from .data import eval_texts

    if spec and spec.get("source") in ("upload", "hub"):
        return eval_texts(spec)
    w = [k for k, v in ((spec or {}).get("weights") or {"wiki": 1}).items() if float(v) > 0]
    return w[0] if w else "wiki"


def eval_cfg(settings: dict):
    from analysis.evaluate import EvalConfig

    return EvalConfig(window=int(settings["window"]), max_tokens=int(settings["max_tokens"]), batch_size=4)


def evaluate_plan(lm, plan, settings: dict, data, with_latency: bool = True) -> dict:
    """Quality (perplexity, KL, top-1 vs the original), parameters, KV bytes and latency for one plan
    (``plan=None``: the original model). Cached in session state."""
    from analysis import evaluate as ev

    key = state.stable_hash({"fp": lm.fingerprint, "dtype": str(lm.dtype), "plan": plan_key(plan) if plan else None,
                             "settings": settings, "data": data if isinstance(data, str) else
                             state.stable_hash(data), "lat": with_latency})
    store = st.session_state.setdefault("es.evals", {})
    if key in store:
        return store[key]
    cfg = eval_cfg(settings)
    out: dict = {}
    if plan is None or plan.is_empty:
        ppl = ev.perplexity(lm, data, None, cfg)
        out.update(perplexity=ppl["perplexity"], nll=ppl["nll"], kl=0.0, top1=1.0, protocol=ppl["protocol"])
    else:
        agr = ev.agreement(lm, plan, data, cfg)
        out.update(perplexity=agr["perplexity_pruned"], perplexity_original=agr["perplexity_original"],
                   kl=agr["kl"], top1=agr["top1"], protocol=agr["protocol"])
    pr = ev.param_report(lm, plan)
    out["params"] = pr
    if with_latency:
        lat = ev.latency(lm, plan, prompt_len=int(settings["prompt_len"]), new_tokens=int(settings["new_tokens"]),
                         repeats=int(settings["repeats"]), warmup=1)
        out["latency"] = lat
    store[key] = out
    return out


def comparison_row(name: str, drops: str, res: dict, base: dict | None) -> dict:
    lat = res.get("latency") or {}
    row0 = (lat.get("rows") or [{}])[0]
    pre = row0.get("prefill_tokens_per_s") or {}
    dec = row0.get("decode_tokens_per_s") or {}
    ppl = res["perplexity"]
    base_ppl = base["perplexity"] if base else ppl
    return {
        "plan": name, "drops (0-based)": drops,
        "perplexity": round(ppl, 3) if math.isfinite(ppl) else ppl,
        "Δ perplexity %": round(100 * (ppl / base_ppl - 1), 2) if base_ppl and math.isfinite(ppl) else None,
        "KL (nats/token)": round(res["kl"], 5), "top-1 agreement": round(res["top1"], 4),
        "prefill tok/s (median)": round(pre.get("median", float("nan")), 1),
        "prefill tok/s (p95)": round(pre.get("p95", float("nan")), 1),
        "decode tok/s (median)": round(dec.get("median", float("nan")), 1),
        "decode tok/s (p95)": round(dec.get("p95", float("nan")), 1),
        "parameters": res["params"]["total"],
        "params removed %": round(100 * res["params"]["removed_fraction"], 2),
        "layers": res["params"]["layers"], "attention layers": res["params"]["attention_layers"],
        "KV bytes/token": lat.get("kv_bytes_per_token"),
    }


def protocol_text(p: dict) -> str:
    """One line describing how perplexity was measured."""
    if not p:
        return ""
    return (f"{p.get('metric', 'perplexity')} on {p.get('corpus')} ({p.get('split') or 'given tokens'} split), "
            f"{p.get('windows')} disjoint windows of {p.get('window')} tokens, {p.get('tokens_scored'):,} tokens "
            f"scored, remainder {p.get('remainder')}, BOS {'on' if p.get('bos') else 'off'}, {p.get('dtype')}")


def latency_text(lat: dict) -> str:
    if not lat:
        return ""
    return (f"Latency on {lat.get('device')} ({lat.get('dtype')}): batch 1, prompt {lat.get('prompt_len')} random "
            f"tokens, {lat.get('new_tokens')} greedy decode steps with KV cache, median and p95 of "
            f"{lat.get('repeats')} repeats after {lat.get('warmup')} warm-up; pruned models are physically "
            "pruned copies, so dropped blocks cost nothing. Other work on the machine adds noise.")
