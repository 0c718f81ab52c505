"""Evaluate pruning plans: perplexity, agreement with the original, latency, generations, sweeps.

Perplexity protocol (default; the GPTQ/SparseGPT "WikiText-2 PPL" protocol most pruning papers use):
the held-out split's documents are joined with EOS into one token stream, cut into **disjoint windows**
of ``window = min(2048, context)`` tokens, and the **remainder is dropped** (a stream shorter than
one window is scored as a single shorter window). Perplexity is token perplexity
``exp(sum NLL / tokens scored)``; within a window the first token is context only. When the
architecture needs a BOS (Gemma, ``adapter.spec.needs_bos``) every window is ``BOS + window-1``
stream tokens and all stream tokens are scored. With ``stride < window`` the Hugging Face sliding
window protocol is used instead: windows start every ``stride`` tokens, the tokens already scored
by the previous window are context only (label -100), and the last window may be shorter (nothing
is dropped). Every result carries its ``protocol``.

Plans are evaluated on a :func:`~analysis.models.surgery.pruned_view` (no copy of the weights); latency uses
a physically pruned copy so skipped blocks really cost nothing.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.models.adapters import get_path, spec_for
from analysis.errors import DataError, SelectionError, is_oom, oom_error
from analysis.indices import GRANULARITY_KEY
from analysis.models.loading import LoadedModel, count_params, dtype_name
from analysis.models.plan import Plan
from analysis.models.surgery import kept_attention_layers, prune_copy, pruned_view
from analysis.settings import setting

Progress = Callable[[float, str], None]
DEFAULT_CORPUS = "wiki"


@dataclass
class EvalConfig:
    """How perplexity is measured (defaults: disjoint 2048-token windows, remainder dropped)."""

    window: int | None = setting(None, kind="int", min=1,  # tokens per window incl. BOS; None → min(2048, model context)
        help="tokens per window (default min(2048, context))")
    stride: int | None = setting(None, kind="int", min=1,  # None (or >= window): disjoint windows; < window: HF sliding window
        help="sliding-window stride < window (default: disjoint windows, remainder dropped)")
    max_tokens: int | None = setting(None, kind="int", min=1,  # budget of stream tokens read from the split (None: all of it)
        help="token budget (default: the whole split)")
    batch_size: int = setting(1, min=1, help="windows per forward pass")
    logits_chunk: int = 512        # positions per LM-head call: bounds logits memory to [B, chunk, vocab]
    bos: bool | None = None        # prepend BOS to every window; None → the architecture's needs_bos


@dataclass
class EvalWindows:
    """Token windows ready to score, in batches, plus where they came from."""

    batches: list[tuple[Tensor, int]]   # ([B, n] input ids, first scored target position in the window)
    meta: dict = field(default_factory=dict)

    @property
    def tokens_scored(self) -> int:
        return sum(ids.shape[0] * (ids.shape[1] - first) for ids, first in self.batches)

    @property
    def n_windows(self) -> int:
        return sum(ids.shape[0] for ids, _ in self.batches)


# ----------------------------------------------------------------------------------------------------
# windows


def model_context(model: nn.Module) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _window_spans(n_tokens: int, body: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index within the span) over a stream of ``n_tokens``."""
    if stride is None or stride >= body:                     # disjoint, remainder dropped
        if n_tokens < body:
            return [(0, n_tokens, 0)]
        return [(b, b + body, 0) for b in range(0, n_tokens - body + 1, body)]
    spans, prev_end = [], 0                                  # HF "perplexity of fixed-length models"
    for begin in range(0, n_tokens, stride):
        end = min(begin + body, n_tokens)
        spans.append((begin, end, (end - begin) - (end - prev_end)))
        prev_end = end
        if end == n_tokens:
            break
    return spans


def make_windows(stream: Tensor, window: int, stride: int | None = None, bos_id: int | None = None,
                 batch_size: int = 1) -> list[tuple[Tensor, int]]:
    """Cut a 1-D token stream into scored windows, batched (equal shapes only).

    Target ``ids[j]`` (predicted from position ``j - 1``) is scored when ``j >= first`` (first >= 1).
    """
    if stream.ndim != 1:
        raise DataError(f"expected a 1-D token stream, got shape {tuple(stream.shape)}")
    if stride is not None and stride < 1:
        raise DataError(f"stride must be >= 1, got {stride}")
    body = window - (bos_id is not None)
    if body < 1 or window < 2:
        raise DataError(f"window must be >= 2 tokens, got {window}")
    windows = []
    for begin, end, first in _window_spans(len(stream), body, stride):
        ids = stream[begin:end]
        if bos_id is not None:
            ids, first = torch.cat([torch.tensor([bos_id], dtype=ids.dtype), ids]), first + 1
        first = max(first, 1)
        if first < len(ids):                                 # at least one scored target
            windows.append((ids, first))
    if not windows:
        raise DataError(f"not enough tokens to score: the stream has {len(stream)} token(s)")
    return _batch(windows, batch_size)


def _batch(windows: list[tuple[Tensor, int]], batch_size: int) -> list[tuple[Tensor, int]]:
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    out, group = [], []
    for ids, first in windows:
        if group and (len(group) == batch_size or group[0][0].shape != ids.shape or group[0][1] != first):
            out.append((torch.stack([g[0] for g in group]), group[0][1]))
            group = []
        group.append((ids, first))
    if group:
        out.append((torch.stack([g[0] for g in group]), group[0][1]))
    return out


def _use_bos(lm: LoadedModel, cfg: EvalConfig) -> int | None:
    use = lm.adapter.spec.needs_bos if cfg.bos is None else cfg.bos
    if not use:
        return None
    bos = getattr(lm.tokenizer, "bos_token_id", None) if lm.tokenizer is not None else None
    if bos is None:
        bos = getattr(lm.model.config, "bos_token_id", None)
    if bos is None:
        raise DataError("this model needs a BOS token, but neither the tokenizer nor the config defines one")
    return int(bos)


def _resolve_window(lm: LoadedModel, cfg: EvalConfig) -> int:
    ctx = model_context(lm.model)
    window = cfg.window or min(2048, ctx or 2048)
    if ctx and window > ctx:
        raise DataError(f"window {window} is beyond the model's context of {ctx} tokens")
    if cfg.stride is not None and cfg.stride > window:
        raise DataError(f"stride {cfg.stride} is larger than the window {window}", hint="use stride <= window")
    return window


def _stream_of(lm: LoadedModel, data, split: str, max_tokens: int | None) -> tuple[Tensor, dict]:
    """1-D token stream and its description from a corpus name, Corpus, list of texts or tensor."""
    from analysis.data import corpora

    if isinstance(data, Tensor) and data.ndim == 1:
        stream = data.to(torch.long)
        return (stream if max_tokens is None else stream[:max_tokens]), {"corpus": "tokens", "split": None}
    if data is None or isinstance(data, str):
        corpus = corpora.load_corpus(data or DEFAULT_CORPUS)
        name, docs = corpus.name, corpus.split(split)
    elif isinstance(data, corpora.Corpus):
        name, docs = data.name, data.split(split)
    elif isinstance(data, (list, tuple)) and all(isinstance(d, str) for d in data):
        name, docs = "text", list(data)
    else:
        raise DataError(f"cannot evaluate on {type(data).__name__}: give a corpus name, a Corpus, "
                        "a list of texts, a 1-D token stream or [N, T] windows")
    if lm.tokenizer is None:
        raise DataError("this model has no tokenizer; pass token ids instead of text")
    stream = corpora.token_stream(docs, lm.tokenizer, max_tokens=max_tokens, add_bos=False)
    return stream, {"corpus": name, "split": split}


def prepare_eval(lm: LoadedModel, data=None, cfg: EvalConfig | None = None, split: str = "eval") -> EvalWindows:
    """Windows for perplexity from ``data``: a corpus name (default ``wiki``), a Corpus, a list of texts,
    a 1-D token stream, ``[N, T]`` windows (a tensor or TokenSet, each scored whole) or EvalWindows."""
    cfg = cfg or EvalConfig()
    if isinstance(data, EvalWindows):
        return data
    bos = _use_bos(lm, cfg)
    if hasattr(data, "input_ids") and isinstance(data.input_ids, Tensor):   # TokenSet
        data = data.input_ids
    if isinstance(data, Tensor) and data.ndim == 2:
        ids = data.to(torch.long)
        if bos is not None and not bool((ids[:, 0] == bos).all()):
            ids = torch.cat([torch.full((ids.shape[0], 1), bos, dtype=torch.long), ids], dim=1)
        if ids.shape[1] < 2:
            raise DataError("windows need at least 2 tokens")
        _check_vocab(lm, ids)
        meta = {"corpus": "tokens", "split": None, "window": int(ids.shape[1]), "stride": None,
                "remainder": "none (windows given)", "tokens_used": int(data.numel())}
        return EvalWindows(_batch([(r, 1) for r in ids], cfg.batch_size), {**meta, "bos": bos is not None})
    window = _resolve_window(lm, cfg)
    stream, meta = _stream_of(lm, data, split, cfg.max_tokens)
    _check_vocab(lm, stream)
    batches = make_windows(stream, window, cfg.stride, bos, cfg.batch_size)
    sliding = cfg.stride is not None and cfg.stride < window - (bos is not None)
    used = sum(ids.numel() for ids, _ in batches) - (bos is not None) * sum(ids.shape[0] for ids, _ in batches)
    meta.update(window=min(window, int(batches[0][0].shape[1])) if not sliding else window,
                stride=cfg.stride if sliding else None, bos=bos is not None,
                remainder="none (sliding window covers the stream)" if sliding else "dropped",
                tokens_in_stream=int(len(stream)), tokens_used=int(len(stream) if sliding else used),
                max_tokens=cfg.max_tokens)
    return EvalWindows(batches, meta)


def _check_vocab(lm: LoadedModel, ids: Tensor) -> None:
    vocab = lm.model.get_input_embeddings().num_embeddings
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise DataError(f"token ids outside this model's vocabulary 0..{vocab - 1}",
                        hint="were these tokens made with another tokenizer?")


# ----------------------------------------------------------------------------------------------------
# scoring


def _head(model: nn.Module, hidden: Tensor) -> Tensor:
    """LM-head logits for final hidden states (with Gemma's final logit soft-capping)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _base(model: nn.Module) -> nn.Module:
    return get_path(model, spec_for(model).base)


def _final_hidden(model: nn.Module, ids: Tensor | None = None, embeds: Tensor | None = None) -> Tensor:
    """Last hidden state [B, n, d] (after the final norm) from token ids or residual-stream input."""
    if embeds is not None:
        return _base(model)(inputs_embeds=embeds, use_cache=False).last_hidden_state
    return _base(model)(input_ids=ids, use_cache=False).last_hidden_state


def _chunks(first: int, n: int, size: int) -> Iterable[tuple[int, int]]:
    """Ranges [s, e) of *logit* positions predicting scored targets first..n-1."""
    for s in range(first - 1, n - 1, size):
        yield s, min(s + size, n - 1)


def _nll_sum(model: nn.Module, hidden: Tensor, ids: Tensor, first: int, chunk: int) -> float:
    """Sum of next-token NLL over scored targets, computing logits chunk by chunk."""
    total = 0.0
    for s, e in _chunks(first, ids.shape[1], chunk):
        logits = _head(model, hidden[:, s:e]).float()                      # [B, c, vocab]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, s + 1:e + 1].reshape(-1),
                                       reduction="sum"))
    return total


def _ppl_result(nll_sum: float, tokens: int) -> dict:
    nll = nll_sum / max(tokens, 1)
    return {"perplexity": math.exp(nll) if nll < 700 else float("inf"), "nll": nll, "nll_sum": nll_sum,
            "tokens": tokens}


def _protocol(lm: LoadedModel, windows: EvalWindows) -> dict:
    m = windows.meta
    return {"metric": "token perplexity exp(mean NLL)", "corpus": m.get("corpus"), "split": m.get("split"),
            "tokens_scored": windows.tokens_scored, "windows": windows.n_windows, "window": m.get("window"),
            "stride": m.get("stride"), "remainder": m.get("remainder"), "bos": bool(m.get("bos")),
            "tokens_used": m.get("tokens_used"), "max_tokens": m.get("max_tokens"),
            "dtype": dtype_name(lm.dtype), "model": lm.name, "fingerprint": lm.fingerprint}


def _guard(fn, what: str):
    try:
        return fn()
    except RuntimeError as exc:
        if is_oom(exc):
            raise oom_error(exc, what) from exc
        raise


def perplexity(lm: LoadedModel, data=None, plan: Plan | None = None, cfg: EvalConfig | None = None,
               split: str = "eval", progress: Progress | None = None) -> dict:
    """Token perplexity of ``lm`` (or of ``plan`` applied as a view) on held-out data; see module doc.

    Returns ``{"perplexity", "nll", "nll_sum", "tokens", "protocol", "plan", "seconds"}``.
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    windows = prepare_eval(lm, data, cfg, split)
    model = lm.model if plan is None or plan.is_empty else pruned_view(lm.model, plan)
    total, n = 0.0, len(windows.batches)
    with torch.inference_mode():
        for b, (ids, first) in enumerate(windows.batches):
            ids = ids.to(lm.device)
            total += _guard(lambda: _nll_sum(model, _final_hidden(model, ids), ids, first, cfg.logits_chunk),
                            "perplexity evaluation")
            if progress:
                progress((b + 1) / n, f"perplexity: window batch {b + 1}/{n}")
    out = _ppl_result(total, windows.tokens_scored)
    out.update(protocol=_protocol(lm, windows), plan=plan.to_dict() if plan else None,
               seconds=time.perf_counter() - t0)
    return out


def agreement(lm: LoadedModel, plan: Plan, token_windows=None, cfg: EvalConfig | None = None,
              split: str = "eval", progress: Progress | None = None) -> dict:
    """KL(original ‖ pruned) of next-token distributions (mean nats per token) and top-1 agreement.

    ``token_windows``: anything :func:`prepare_eval` accepts (EvalWindows, [N, T] ids, corpus name).
    Also returns both perplexities on the same tokens, equal to :func:`perplexity`'s.
    """
    cfg = cfg or EvalConfig()
    windows = prepare_eval(lm, token_windows, cfg, split)
    # the pruned forward starts at its first dropped block from the original's residual stream there
    steps = _prefix_schedule(lm, [("original", Plan()), ("pruned", plan or Plan())])
    kl = agree = nll_o = nll_p = 0.0
    with torch.inference_mode():
        n_b, n_w, done_w = len(windows.batches), windows.n_windows, 0
        for b, (ids, first) in enumerate(windows.batches):
            ids = ids.to(lm.device)
            out = {key: (view, hidden) for key, view, hidden in _prefix_batch(steps, ids)}
            (v_o, h_o), (v_p, h_p) = out["original"], out["pruned"]
            for s, e in _chunks(first, ids.shape[1], cfg.logits_chunk):
                zo, zp = _head(v_o, h_o[:, s:e]).float(), _head(v_p, h_p[:, s:e]).float()  # [B, c, vocab]
                tgt = ids[:, s + 1:e + 1].reshape(-1)
                nll_o += float(F.cross_entropy(zo.reshape(-1, zo.shape[-1]), tgt, reduction="sum"))  # as _nll_sum
                nll_p += float(F.cross_entropy(zp.reshape(-1, zp.shape[-1]), tgt, reduction="sum"))
                lo, lp = torch.log_softmax(zo, -1), torch.log_softmax(zp, -1)
                kl += float((lo.exp() * (lo - lp)).sum())
                agree += float((zo.argmax(-1) == zp.argmax(-1)).sum())
            done_w += ids.shape[0]
            if progress:
                progress((b + 1) / n_b, f"windows {done_w}/{n_w}")
    n = windows.tokens_scored
    orig, pruned = _ppl_result(nll_o, n), _ppl_result(nll_p, n)
    return {"kl": kl / n, "top1": agree / n, "tokens": n,
            "perplexity_original": orig["perplexity"], "perplexity_pruned": pruned["perplexity"],
            "nll_original": orig["nll"], "nll_pruned": pruned["nll"],
            "protocol": _protocol(lm, windows), "plan": (plan or Plan()).to_dict()}


# ----------------------------------------------------------------------------------------------------
# parameters and latency


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


def latency(lm: LoadedModel, plan: Plan | None = None, batch_sizes: Sequence[int] = (1,), prompt_len: int = 128,
            new_tokens: int = 32, repeats: int = 5, warmup: int = 1, seed: int = 0, max_repeats: int | None = None,
            target_spread: float = 0.10, time_cap_s: float = 20.0) -> dict:
    """Prefill and decode throughput (tokens/s over ``repeats`` after ``warmup``: median, p95, p10–p90, min–max).

    With ``max_repeats > repeats``, repeats are added until the p10–p90 spread of every measured quantity
    is at most ``target_spread`` of its median, ``max_repeats`` is reached, or ``time_cap_s`` seconds
    have been spent on this batch size. The machine's load is recorded
    (``machine``): on a busy machine the spread is wide and small differences are noise. Each row's
    ``converged`` is True when the final spread is within ``target_spread``.

    A plan is applied to a physically pruned copy (:func:`prune_copy`), so dropped blocks cost nothing.
    Also reports parameters, KV-cache bytes per token and peak memory (CUDA) or the RSS delta (CPU).
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
                tp, td = _guard(lambda: _one_run(model, ids, new_tokens), "latency measurement")
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
                        "busy": bool(load_before["busy"] or load_after["busy"])},
            "params": {"total": count_params(model), "non_embedding": count_params(model, non_embedding=True)},
            **kv_cache_report(model), "plan": plan.to_dict() if plan else None}


# ----------------------------------------------------------------------------------------------------
# generations


def _greedy(model: nn.Module, tok, ids: Tensor, mask: Tensor, max_new_tokens: int) -> Tensor:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             use_cache=True, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:]


def generate_pair(lm: LoadedModel, plan: Plan | None, prompt: str, max_new_tokens: int = 40) -> dict:
    """Greedy continuations of ``prompt`` by the original and the pruned model (a view; KV cache on)."""
    if lm.tokenizer is None:
        raise DataError("this model has no tokenizer, so it cannot generate text")
    enc = lm.tokenizer(prompt, return_tensors="pt")
    ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
    if ids.shape[1] == 0:
        raise DataError("the prompt is empty")
    orig = _greedy(lm.model, lm.tokenizer, ids, mask, max_new_tokens)
    pruned = _greedy(pruned_view(lm.model, plan), lm.tokenizer, ids, mask, max_new_tokens)
    n = min(len(orig), len(pruned))
    diff = next((i for i in range(n) if int(orig[i]) != int(pruned[i])), None if len(orig) == len(pruned) else n)
    dec = lambda t: lm.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    return {"prompt": prompt, "original": dec(orig), "pruned": dec(pruned), "original_ids": orig.tolist(),
            "pruned_ids": pruned.tolist(), "first_divergence": diff, "max_new_tokens": max_new_tokens,
            "plan": plan.to_dict() if plan else None}


# ----------------------------------------------------------------------------------------------------
# sweeps


@dataclass
class SweepRow:
    criterion: str
    k: int
    granularity: str
    blocks: list[int]
    plan: dict
    perplexity: float
    nll: float
    tokens: int
    params: int
    params_removed_fraction: float
    latency: dict | None = None


def _plans_for(run_or_orders, criteria: Sequence[str], ks: Iterable[int], granularity: str | None,
               **params) -> tuple[list[tuple[str, int, str, Plan]], list[dict]]:
    """(criterion, k, granularity, plan) per feasible pair, and the skipped ones with the reason."""
    plans, skipped = [], []
    for name in criteria:
        for k in ks:
            try:
                if isinstance(run_or_orders, dict):
                    if name not in run_or_orders:
                        raise SelectionError(f"no drop order given for criterion {name!r}")
                    g = granularity or "layer"
                    order = list(run_or_orders[name])
                    if k > len(order):
                        raise SelectionError(f"k={k} but the {name} order has only {len(order)} blocks")
                    plan = Plan(source={"criterion": name, "k": k, "granularity": g, "order": order,
                                        "index_base": 0})
                    setattr(plan, GRANULARITY_KEY[g], sorted(order[:k]))
                else:
                    from analysis.score.criteria import get_criterion, select

                    c = get_criterion(name)
                    sel = select(run_or_orders, name, k, granularity,
                                 **{p: v for p, v in params.items() if p in c.params})
                    g, plan = sel.granularity, Plan.from_selection(sel, run_or_orders)
                plans.append((name, k, g, plan))
            except SelectionError as exc:
                skipped.append({"criterion": name, "k": k, "reason": str(exc)})
    return plans, skipped


def _plan_key(plan: Plan) -> tuple:
    n = plan.normalized()
    return tuple(n.drop_attn), tuple(n.drop_mlp), tuple(n.drop_layers)


def sweep(lm: LoadedModel, run_or_orders, criteria: Sequence[str] = ("entrodrop",), ks: Iterable[int] = range(13),
          data=None, granularity: str | None = None, cfg: EvalConfig | None = None, split: str = "eval",
          reuse: bool = True, with_latency: bool = False, latency_kwargs: dict | None = None,
          progress: Progress | None = None, **criterion_params) -> dict:
    """Perplexity for every criterion × k plan (rows), sharing the work between plans.

    ``run_or_orders``: an AnalysisResult (plans via :func:`analysis.score.criteria.select`) or
    ``{criterion: drop order}``. With ``reuse`` plans are walked as a trie (see :func:`_prefix_schedule`):
    each plan's forward starts where it first differs from the previous plan, from the cached
    ``resid_pre`` there; the NLL is bit-identical to :func:`perplexity` with that plan.
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    windows = prepare_eval(lm, data, cfg, split)
    plans, skipped = _plans_for(run_or_orders, criteria, list(ks), granularity, **criterion_params)
    unique: dict[tuple, Plan] = {}
    for _, _, _, p in plans:
        unique.setdefault(_plan_key(p), p)
    sums = _sweep_nll(lm, list(unique.items()), windows, cfg, reuse, progress)
    rows, base = [], param_report(lm.model)["total"]
    for name, k, g, plan in plans:
        res = _ppl_result(sums[_plan_key(plan)], windows.tokens_scored)
        params = param_report(lm.model, plan)["total"]
        blocks = plan.to_dict()[GRANULARITY_KEY[g]]
        row = SweepRow(name, k, g, blocks, plan.to_dict(), res["perplexity"], res["nll"], res["tokens"], params,
                       (base - params) / base if base else 0.0)
        if with_latency:
            row.latency = latency(lm, plan, **(latency_kwargs or {}))
        rows.append(asdict(row))
    return {"protocol": _protocol(lm, windows), "rows": rows, "skipped": skipped, "reuse": reuse,
            "unique_plans": len(unique), "seconds": time.perf_counter() - t0}


def _sweep_nll(lm: LoadedModel, plans: list[tuple[tuple, Plan]], windows: EvalWindows, cfg: EvalConfig,
               reuse: bool, progress: Progress | None) -> dict[tuple, float]:
    sums = {key: 0.0 for key, _ in plans}
    steps = _prefix_schedule(lm, plans) if reuse else None
    views = None if reuse else {key: (lm.model if p.is_empty else pruned_view(lm.model, p)) for key, p in plans}
    n = len(windows.batches)
    with torch.inference_mode():
        for b, (ids, first) in enumerate(windows.batches):
            ids = ids.to(lm.device)
            if reuse:
                for key, view, hidden in _prefix_batch(steps, ids):
                    sums[key] += _nll_sum(view, hidden, ids, first, cfg.logits_chunk)
            else:
                for key, v in views.items():
                    sums[key] += _guard(lambda: _nll_sum(v, _final_hidden(v, ids), ids, first, cfg.logits_chunk),
                                        "sweep")
            if progress:
                progress((b + 1) / n, f"sweep: window batch {b + 1}/{n} × {len(plans)} plans")
    return sums


def _decisions(plan: Plan, num_layers: int) -> tuple[int, ...]:
    """Per layer: 0 keep, 1 attention dropped, 2 MLP dropped, 3 whole layer dropped."""
    n = plan.normalized()
    dl, da, dm = set(n.drop_layers), set(n.drop_attn), set(n.drop_mlp)
    return tuple(3 if i in dl else (1 if i in da else 0) | (2 if i in dm else 0) for i in range(num_layers))


@dataclass
class _Step:
    key: tuple | None            # None: the original model (records every layer input)
    start: int                   # first layer run; its input resid_pre[start] comes from the state cache
    view: nn.Module | None       # None: the original plan itself (reuses the first step's NLL)
    layer_ids: list[int]         # original index of each layer in the view, in order
    record: bool                 # keep this step's layer inputs for the steps after it


def _prefix_schedule(lm: LoadedModel, plans: list[tuple[tuple, Plan]]) -> list[_Step]:
    """Order plans so that each shares the longest possible prefix with the one before it.

    Sorted by their per-layer decisions, plans form a depth-first walk of the trie of plans, and in
    sorted order the longest common prefix with *any* earlier plan is the one with the predecessor.
    Each plan starts at the first layer where its decisions differ from its predecessor's (or the
    nearest cached layer before it), fed the cached ``resid_pre`` there, which is bit-identical to
    what its own full forward would compute.
    """
    L, model = lm.num_layers, lm.model
    steps = [_Step(None, 0, None, list(range(L)), True)]
    owner = {l: 0 for l in range(L)}              # which step cached each layer's input (after the last step)
    read_from_original = 0                        # deepest layer input a later step reads from step 0
    prev = (0,) * L
    ordered = sorted(((_decisions(p, L), key, p) for key, p in plans), key=lambda t: t[0])
    for i, (dec, key, p) in enumerate(ordered):
        if not any(dec):                          # the original plan itself: step 0 must run to the end
            steps.append(_Step(key, L, None, [], False))
            read_from_original = L - 1
            continue
        j = next(x for x in range(L) if dec[x] != prev[x])
        kept = [x for x in range(L) if dec[x] != 3]
        start = max(l for l in owner if l <= j and any(k >= l for k in kept))
        if owner[start] == 0:
            read_from_original = max(read_from_original, start)
        n = p.normalized()
        tail = Plan(n.drop_attn, n.drop_mlp, sorted(set(n.drop_layers) | set(range(start))))
        layer_ids = [k for k in kept if k >= start]
        steps.append(_Step(key, start, pruned_view(model, tail), layer_ids, i + 1 < len(ordered)))
        owner = {l: o for l, o in owner.items() if l <= start} | {l: len(steps) - 1 for l in layer_ids}
        prev = dec
    # the original only runs as deep as a later step reads (its own output is needed only for k = 0)
    upto = read_from_original
    steps[0] = _Step(None, 0, pruned_view(model, Plan(drop_layers=list(range(upto + 1, L)))),
                     list(range(upto + 1)), True)
    return steps


def _prefix_batch(steps: list[_Step], ids: Tensor):
    """Yield ``(plan key, view, final hidden [B, n, d])`` for one window batch, walking the schedule with
    a state cache; the view's LM head turns the hidden states into logits."""
    states: dict[int, Tensor] = {}
    base_hidden = None
    for st in steps:
        if st.view is None:                                   # the original model: computed by step 0
            yield st.key, steps[0].view, base_hidden
            continue
        recorded: dict[int, Tensor] = {}
        handles = []
        if st.record:                                         # the view's layers are its own copies
            layers = get_path(st.view, spec_for(st.view).layers)
            for pos, orig in enumerate(st.layer_ids):
                handles.append(layers[pos].register_forward_pre_hook(
                    lambda m, a, kw, orig=orig: recorded.__setitem__(orig, a[0] if a else kw["hidden_states"]),
                    with_kwargs=True))
        try:
            if st.key is None:
                hidden = base_hidden = _guard(lambda: _final_hidden(st.view, ids), "evaluation")
            else:
                hidden = _guard(lambda: _final_hidden(st.view, embeds=states[st.start]), "evaluation")
        finally:
            for h in handles:
                h.remove()
        states = {l: v for l, v in states.items() if l <= st.start}
        states.update(recorded)
        if st.key is not None:
            yield st.key, st.view, hidden
