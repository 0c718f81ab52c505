"""What a pruned model costs: parameters, KV-cache bytes per token, and prefill / decode throughput measured
on a physically pruned copy (repeats until the spread is tight, with the machine's load recorded)."""
from __future__ import annotations

import math
import os
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from analysis.errors import DataError
from analysis.models.adapters import get_path, spec_for
from analysis.models.forward import oom_guard
from analysis.models.device import dtype_name
from analysis.models.loading import LoadedModel, count_params
from analysis.models.plan import Plan
from analysis.models.surgery import kept_attention_layers, prune_copy, pruned_view


def param_report(model_or_lm, plan: Plan | None = None) -> dict:
    """Parameters of the model with ``plan`` applied (counted on a view; nothing is copied)."""
    model = getattr(model_or_lm, "model", model_or_lm) if isinstance(model_or_lm, LoadedModel) else model_or_lm
    view = pruned_view(model, plan) if plan is not None and not plan.is_empty else model
    total, orig = count_params(view), count_params(model)
    non_emb, orig_non_emb = count_params(view, non_embedding=True), count_params(model, non_embedding=True)
    return {"total": total, "non_embedding": non_emb, "original_total": orig, "original_non_embedding": orig_non_emb,
            "removed": orig - total, "removed_fraction": (orig - total) / orig if orig else 0.0,
            "removed_fraction_non_embedding": (orig_non_emb - non_emb) / orig_non_emb if orig_non_emb else 0.0,
            "layers": len(get_path(view, spec_for(view).layers)),
            "attention_layers": len(kept_attention_layers(view))}


def kv_cache_report(model: nn.Module) -> dict:
    """KV-cache bytes per token over the attention layers that still run (sliding-window layers noted)."""
    cfg = model.config
    kept = kept_attention_layers(model)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    nbytes = next(model.parameters()).element_size()
    types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)
    sliding = [i for i in kept if types[i] == "sliding_attention"]
    per_layer = 2 * kv_heads * head_dim * nbytes
    return {"kv_bytes_per_token": per_layer * len(kept), "kv_bytes_per_token_per_layer": per_layer,
            "kv_layers": len(kept), "sliding_layers": len(sliding),
            "sliding_window": getattr(cfg, "sliding_window", None) if sliding else None,
            "note": (f"{len(sliding)} sliding-window layers hold at most {getattr(cfg, 'sliding_window', None)} "
                     "tokens each") if sliding else ""}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing: /proc fallback (Linux)
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0


def _one_run(model: nn.Module, ids: Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for prefill (with KV cache) and for ``new_tokens`` greedy decode steps."""
    dev = ids.device
    _sync(dev)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    _sync(dev)
    t1 = time.perf_counter()
    cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(new_tokens):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(dev)
    return t1 - t0, time.perf_counter() - t1


def _summary(values: list[float]) -> dict:
    """Median, p95 (kept for old readers), the p10–p90 spread, min and max of throughput samples."""
    v = np.asarray(values, dtype=float)
    med = float(statistics.median(values))
    p10, p90 = float(np.percentile(v, 10)), float(np.percentile(v, 90))
    return {"median": med, "p95": float(np.percentile(v, 95)), "p10": p10, "p90": p90, "min": float(v.min()),
            "max": float(v.max()), "spread": (p90 - p10) / med if med > 0 else float("inf"), "n": len(values)}


def machine_load() -> dict:
    """The 1-minute load average per CPU core (POSIX), and whether the machine counts as busy (> 0.8 per core)
    while latency is measured: other work then slows some repeats and widens the spread."""
    try:
        load1 = os.getloadavg()[0]
    except (AttributeError, OSError):
        return {"load_per_core": None, "busy": False}
    per_core = load1 / max(os.cpu_count() or 1, 1)
    return {"load_per_core": round(per_core, 2), "busy": per_core > 0.8}


def overlapping(a: dict | None, b: dict | None) -> bool:
    """True when two throughput summaries' p10–p90 ranges overlap: the difference is within the noise."""
    if not a or not b or "p10" not in a or "p10" not in b:
        return False
    return a["p10"] <= b["p90"] and b["p10"] <= a["p90"]


#: The throughput a speed verdict reads, and its label (verdicts always name it).
SPEED_METRICS = {"decode": ("decode_tokens_per_s", "decode tok/s"), "prefill": ("prefill_tokens_per_s", "prefill tok/s")}


def latency_noise(lat: dict | None) -> str | None:
    """Why a latency measurement (:func:`latency`'s result) is noise, or None when it can be read: the machine
    was busy before or after the repeats (load above 0.8 per core), or the p10–p90 spread never came within the
    target. Noise draws no verdict and no Pareto mark."""
    if not lat or not lat.get("rows"):
        return "not measured"
    m = lat.get("machine") or {}
    if m.get("busy"):
        loads = [x for x in (m.get("load_per_core_before"), m.get("load_per_core")) if x is not None]
        return f"the machine was busy (load {max(loads):.1f} per core)" if loads else "the machine was busy"
    if not all(r.get("converged", True) for r in lat["rows"]):
        return (f"the p10–p90 spread stayed above {100 * float(lat.get('target_spread', 0.1)):.0f} % of the median "
                "within the time cap")
    return None


def speed_verdict(mine: dict | None, base: dict | None, metric: str = "decode") -> dict:
    """``{"metric", "verdict", "reason"}`` comparing two :func:`latency` results on one named throughput.

    ``verdict`` is ``faster``/``slower`` only when both measurements can be read (:func:`latency_noise`) and their
    p10–p90 ranges are apart; ``within noise`` when they overlap; ``no verdict`` when either is noise (``reason``
    says why)."""
    key, label = SPEED_METRICS[metric]
    out = {"metric": label, "verdict": "no verdict", "reason": ""}
    for name, lat in (("this plan", mine), ("the original", base)):
        why = latency_noise(lat)
        if why:
            out["reason"] = f"{name}: {why}"
            return out
    a = ((mine["rows"][0]) or {}).get(key)
    b = ((base["rows"][0]) or {}).get(key)
    if not a or not b:
        out["reason"] = f"{label} not measured"
        return out
    if overlapping(a, b):
        out.update(verdict="within noise", reason="p10–p90 ranges overlap")
    else:
        out.update(verdict="faster" if a["median"] > b["median"] else "slower", reason="p10–p90 ranges apart")
    return out


def latency(lm: LoadedModel, plan: Plan | None = None, batch_sizes: Sequence[int] = (1,), prompt_len: int = 128,
            new_tokens: int = 32, repeats: int = 5, warmup: int = 1, seed: int = 0, max_repeats: int | None = None,
            target_spread: float = 0.10, time_cap_s: float = 20.0,
            progress: Callable[[float, str], None] | None = None) -> dict:
    """Prefill and decode throughput (tokens/s over ``repeats`` after ``warmup``: median, p95, p10–p90, min–max).

    With ``max_repeats > repeats``, repeats are added until the p10–p90 spread of every measured quantity
    is at most ``target_spread`` of its median, ``max_repeats`` is reached, or ``time_cap_s`` seconds
    have been spent on this batch size. The machine's load is recorded
    (``machine``): on a busy machine the spread is wide and small differences are noise. Each row's
    ``converged`` is True when the final spread is within ``target_spread``.

    A plan is applied to a physically pruned copy (:func:`prune_copy`), so dropped blocks cost nothing.
    Also reports parameters, KV-cache bytes per token and peak memory (CUDA) or the RSS delta (CPU).
    ``progress(1.0, text)`` is told after every run, with the runs and seconds spent of their caps (an exception it
    raises, such as the app's Stop, ends the measurement there).
    """
    max_repeats = repeats if max_repeats is None else max_repeats
    if repeats < 1 or prompt_len < 1 or new_tokens < 0 or max_repeats < repeats:
        raise DataError("latency needs repeats >= 1, max_repeats >= repeats, prompt_len >= 1 and new_tokens >= 0")
    if not (target_spread > 0 and math.isfinite(target_spread)) or not (time_cap_s > 0):
        raise DataError("latency needs target_spread > 0 and time_cap_s > 0")
    load_before = machine_load()
    model = lm.model if plan is None or plan.is_empty else prune_copy(lm.model, plan)
    dev = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for bs in batch_sizes:
        ids = torch.randint(0, vocab, (bs, prompt_len), generator=gen).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        mem0 = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else _rss()
        pre, dec = [], []
        t_start = time.perf_counter()
        with torch.inference_mode():
            r = 0
            while True:
                tp, td = oom_guard(lambda: _one_run(model, ids, new_tokens), "latency measurement")
                if progress is not None:
                    spent = time.perf_counter() - t_start
                    progress(1.0, f"latency, batch size {bs}: run {r + 1} of at most {max_repeats + warmup}, "
                                  f"{spent:.0f} s of its {time_cap_s:.0f} s")
                if r >= warmup:
                    pre.append(bs * prompt_len / tp)
                    if new_tokens:
                        dec.append(bs * new_tokens / td)
                r += 1
                if len(pre) < repeats:
                    continue
                tight = all(_summary(v)["spread"] <= target_spread for v in (pre, dec) if v)
                if tight:
                    break
                if len(pre) >= max_repeats or time.perf_counter() - t_start > time_cap_s:
                    break
        converged = tight                                  # the p10–p90 spread is within target_spread
        peak = (torch.cuda.max_memory_allocated(dev) - mem0) if dev.type == "cuda" else max(_rss() - mem0, 0)
        rows.append({"batch_size": bs, "prefill_tokens_per_s": _summary(pre),
                     "decode_tokens_per_s": _summary(dec) if dec else None, "repeats_done": len(pre),
                     "converged": converged,
                     "peak_memory_bytes": int(peak), "memory_kind": "cuda_max_allocated_delta"
                     if dev.type == "cuda" else "cpu_rss_delta"})
    load_after = machine_load()
    return {"device": str(dev), "dtype": dtype_name(next(model.parameters()).dtype), "prompt_len": prompt_len,
            "new_tokens": new_tokens, "repeats": repeats, "max_repeats": max_repeats,
            "target_spread": target_spread, "warmup": warmup, "rows": rows,
            "machine": {"load_per_core": load_after["load_per_core"],
                        "load_per_core_before": load_before["load_per_core"],
                        "busy": bool(load_before["busy"] or load_after["busy"])},
            "params": {"total": count_params(model), "non_embedding": count_params(model, non_embedding=True)},
            **kv_cache_report(model), "plan": plan.to_dict() if plan else None}
