"""Iterative structured (channel) pruning with a hybrid multi-domain calibration set.

Width pruning that physically removes whole MLP intermediate channels (row ``j`` of ``gate_proj`` and
``up_proj`` and column ``j`` of ``down_proj``, together), optionally whole attention KV groups, driven
by a calibration set mixed from several domains and re-scored on the partially pruned model as pruning
proceeds (paper 3 of ``docs/channels.md``: Wu, Zhang et al., "Iterative Structured Pruning for Large
Language Models with Multi-Domain Calibration", arXiv 2601.02674, EACL 2026 Industry).

The paper's formulas, domains and schedule are not public. Everything below is the *provisional*
recipe of the research notes (§3.1), and every choice is a named option of :class:`ChannelConfig`, so
the paper's values can drop in later. See ``docs/channels.md`` for which parts come from the paper.

Pipeline::

    build_hybrid_calibration  →  per step t = 1..T:  calibrate (hooks on down_proj inputs, streaming)
        →  channel scores (method, domain aggregation)  →  allocation (uniform | global + floor,
        rounded to multiple_of)  →  physical removal (+ optional FLAP bias compensation)
    →  evaluation per domain (perplexity), parameters, latency  →  JSON report
    →  save_channel_pruned / load_channel_pruned

Indices are 0-based (layer 0 is the first decoder layer; channel 0 the first intermediate channel).
The model handed in is never modified: pruning works on ``copy.deepcopy(model)``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from analysis.channels.calibrate import as_tokens, build_hybrid_calibration
from analysis.channels.config import ChannelConfig, Progress, ShouldStop, resolve_config
from analysis.channels.evaluation import channel_latency, evaluate_domains, speedups
from analysis.channels.io import models_of
from analysis.channels.prune import (finalise_bias_layout, global_targets, kv_groups, mlp_linears, mlp_widths,
                                     prune_channels, prune_kv_groups, top_positions, uniform_targets)
from analysis.channels.stats import collect_stats, pool, scores_from_stats
from analysis.errors import DataError, SelectionError
from analysis.models.adapters import adapter_for
from analysis.models.loading import count_params, wrap_model
from analysis.store.jsonio import clean_json, library_versions


@dataclass
class ChannelPruneResult:
    """The pruned copy and what happened, step by step (``report`` is JSON-safe)."""

    model: nn.Module
    report: dict
    kept_channels: list[list[int]]              # per layer: ORIGINAL indices of the kept channels (0-based)
    kept_kv_groups: list[list[int]] | None = None
    completed: bool = True


def param_counts(model: nn.Module) -> dict:
    """Parameters in total and without embeddings / LM head."""
    return {"total": count_params(model), "non_embedding": count_params(model, non_embedding=True)}


def iterative_channel_prune(lm, cfg: ChannelConfig | None = None, tokens=None, progress: Progress | None = None,
                            should_stop: ShouldStop | None = None, **overrides) -> ChannelPruneResult:
    """Reach ``cfg.ratio`` of removed MLP channels in ``cfg.steps`` steps on a deep copy of the model.

    At step ``t``: re-run calibration on the CURRENT pruned copy, re-score, and cut every layer down to
    its target (cumulative removal ``round(t * ratio / steps * original)``; uniform per layer or global
    with a floor; widths rounded to ``multiple_of``). ``lm`` is a LoadedModel or a bare model (then
    ``tokens`` is required). ``overrides`` set ChannelConfig fields (``ratio=0.5, steps=2``).
    ``should_stop()`` is polled between batches; the result then holds the last completed step.
    """
    cfg = resolve_config(cfg, overrides)
    base, tokenizer = models_of(lm)
    if tokens is None:
        if tokenizer is None:
            raise DataError("pass calibration tokens (a TokenSet) or a LoadedModel with a tokenizer")
        tokens = build_hybrid_calibration(tokenizer, cfg.domains, cfg.n_samples, cfg.seq_len, cfg.seed, cfg.sampling)
    tokens = as_tokens(tokens)
    domains = list(tokens.domain_counts())
    adapter0 = adapter_for(base)
    orig = mlp_widths(base)
    if cfg.ratio > 0 and cfg.multiple_of >= min(orig):
        raise SelectionError(f"multiple_of={cfg.multiple_of} leaves nothing to prune: the narrowest MLP has "
                             f"{min(orig)} channels", hint="use a smaller --multiple-of (1 = no rounding)")
    heads = cfg.head_ratio > 0
    orig_groups = kv_groups(base)
    if heads:
        if min(orig_groups) <= 1:
            raise SelectionError("attention-head pruning removes whole KV groups, but this model has 1 KV head "
                                 "per layer", hint="set head_ratio to 0 (MLP channels only)")
        if len(set(orig_groups)) > 1:
            raise SelectionError("attention-head pruning needs the same number of KV heads in every layer")
    t0 = time.perf_counter()
    model = copy.deepcopy(base)                         # never touch the (possibly shared, cached) base model
    model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model)
    L = adapter.num_layers
    kept = [torch.arange(m) for m in orig]
    kept_groups = [torch.arange(g) for g in orig_groups]
    params0 = param_counts(base)
    steps_log, completed = [], True
    say = progress or (lambda f, m: None)
    for t in range(1, cfg.steps + 1):
        ts = time.perf_counter()
        cur = mlp_widths(model)
        cur_groups = kv_groups(model)
        target_groups = [max(1, g - round(t * cfg.head_ratio / cfg.steps * g)) for g in orig_groups] if heads \
            else cur_groups
        target_groups = [min(a, b) for a, b in zip(target_groups, cur_groups)]
        uniform = uniform_targets(orig, cfg.ratio, t, cfg.steps, cfg.multiple_of)
        if cfg.allocation == "uniform":
            targets = [min(a, c) for a, c in zip(uniform, cur)]
            idle = targets == cur and target_groups == cur_groups
        else:
            total_keep = sum(orig) - round(t * cfg.ratio / cfg.steps * sum(orig))
            idle = sum(cur) <= total_keep and target_groups == cur_groups
        col = None
        if not idle:
            step_progress = lambda f, m, t=t: say((t - 1 + 0.9 * f) / cfg.steps,  # noqa: E731
                                                   f"step {t}/{cfg.steps}: {m}")
            col = collect_stats(model, tokens, domains, cfg.method, cfg.batch_size, cfg.skip_first_token, heads,
                                step_progress, should_stop)
            if col is None:
                completed = False
                break
            scores = scores_from_stats(model, col, cfg.method, cfg.domain_agg)
            if cfg.allocation == "global":
                targets = global_targets(scores, cur, orig, cfg.ratio, t, cfg.steps, cfg.multiple_of,
                                         cfg.min_keep_frac, cfg.global_norm)
            keep_pos, comps, removed = [], [], []
            for i in range(L):
                if targets[i] >= cur[i]:
                    keep_pos.append(None)
                    comps.append(None)
                    removed.append([])
                    continue
                pos = top_positions(scores[i], targets[i])
                mask = torch.ones(cur[i], dtype=torch.bool)
                mask[pos] = False
                gone = mask.nonzero().flatten()
                removed.append(kept[i][gone].tolist())
                comp = None
                if cfg.bias_compensation:
                    slot = pool(col.stats["mlp"][i])
                    mean = (slot["sum"][0] / col.count.sum().clamp_min(1)).float()      # E[a_j], pooled
                    w_down = mlp_linears(adapter, i)[2].weight.detach().float()
                    comp = w_down[:, gone.to(w_down.device)] @ mean[gone.to(mean.device)].to(w_down.device)
                keep_pos.append(pos)
                comps.append(comp)
                kept[i] = kept[i][pos]
            prune_channels(model, keep_pos, comps)
            if heads and target_groups != cur_groups:
                hscores = scores_from_stats(model, col, cfg.method, cfg.domain_agg, kind="attn")
                gpos = [top_positions(hscores[i], target_groups[i]) for i in range(L)]
                for i in range(L):
                    kept_groups[i] = kept_groups[i][gpos[i]]
                prune_kv_groups(model, gpos)
        else:
            removed = [[] for _ in range(L)]
        widths = mlp_widths(model)
        steps_log.append({
            "step": t, "target_ratio": t * cfg.ratio / cfg.steps,
            "ratio_reached": 1 - sum(widths) / sum(orig), "widths": widths,
            "kv_groups": kv_groups(model) if heads else None,
            "removed_channels": removed, "params": param_counts(model),
            "calibrated": col is not None,
            "tokens_per_domain": ({d: int(c) for d, c in zip(domains, col.count.tolist())}
                                  if col is not None else None),
            "seconds": time.perf_counter() - ts})
        say(t / cfg.steps, f"step {t}/{cfg.steps}: {steps_log[-1]['ratio_reached']:.1%} of MLP channels removed")
    finalise_bias_layout(model)
    widths = mlp_widths(model)
    params = param_counts(model)
    report = {
        "format": "entroscope-channels-report-v1", "config": cfg.to_dict(), "index_base": 0,
        "completed": completed, "steps_done": len(steps_log),
        "original": {"widths": list(orig), "kv_groups": list(orig_groups), "params": params0,
                     "num_layers": adapter0.num_layers},
        "steps": steps_log,
        "final": {"widths": widths, "kv_groups": kv_groups(model), "ratio_reached": 1 - sum(widths) / sum(orig),
                  "params": params,
                  "params_removed_fraction": 1 - params["total"] / params0["total"],
                  "non_embedding_removed_fraction": 1 - params["non_embedding"] / params0["non_embedding"],
                  "uniform": len(set(widths)) == 1,
                  "down_bias": [(mlp_linears(adapter, i)[2].bias is not None) for i in range(L)]},
        "kept_channels": [k.tolist() for k in kept],
        "kept_kv_groups": [k.tolist() for k in kept_groups] if heads else None,
        "calibration": tokens.to_manifest(),
        "seconds": time.perf_counter() - t0,
    }
    return ChannelPruneResult(model, report, report["kept_channels"], report["kept_kv_groups"], completed)


def _wrap(model: nn.Module, tokenizer, name: str, fingerprint: str):
    out = wrap_model(model, tokenizer, name=name)
    out.fingerprint = fingerprint
    return out


@dataclass
class ChannelRun:
    """:func:`run_channels` output: the pruned model (a LoadedModel) and the JSON-safe report."""

    pruned: object        # analysis.models.loading.LoadedModel around the pruned copy
    report: dict


def run_channels(lm, cfg: ChannelConfig | None = None, tokens=None, evaluate: bool = True, latency: bool = False,
                 latency_kwargs: dict | None = None, progress: Progress | None = None,
                 should_stop: ShouldStop | None = None, **overrides) -> ChannelRun:
    """The whole recipe on a LoadedModel: hybrid calibration → iterative pruning → per-domain perplexity
    before/after → parameters (→ latency). Progress: 0-5 % data, 5-15 % dense eval, 15-85 % steps,
    85-100 % pruned eval and latency."""
    cfg = resolve_config(cfg, overrides)
    say = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    say(0.0, "building the hybrid calibration set")
    if tokens is None:
        tokens = build_hybrid_calibration(lm.tokenizer, cfg.domains, cfg.n_samples, cfg.seq_len, cfg.seed,
                                          cfg.sampling)
    tokens = as_tokens(tokens)
    eval_domains = list(cfg.eval_domains) if cfg.eval_domains is not None else list(cfg.domains)
    before = None
    if evaluate:
        say(0.05, "perplexity of the dense model")
        before = evaluate_domains(lm, eval_domains, cfg.eval_tokens, cfg.eval_window,
                                  progress=lambda f, m: say(0.05 + 0.1 * f, f"dense: {m}"))
    res = iterative_channel_prune(lm, cfg, tokens, progress=lambda f, m: say(0.15 + 0.7 * f, m),
                                  should_stop=should_stop)
    rep = res.report
    fp = hashlib.sha256(json.dumps([lm.fingerprint, rep["kept_channels"], rep["kept_kv_groups"],
                                    rep["final"]["down_bias"], cfg.to_dict()], default=str).encode()).hexdigest()
    pruned = _wrap(res.model, lm.tokenizer, f"{lm.name}+channels", f"channels:{fp[:24]}")
    after = None
    if evaluate:
        say(0.85, "perplexity of the pruned model")
        after = evaluate_domains(pruned, eval_domains, cfg.eval_tokens, cfg.eval_window,
                                 progress=lambda f, m: say(0.85 + 0.1 * f, f"pruned: {m}"))
        rep["evaluation"] = {"domains": {d: {"before": before[d]["perplexity"], "after": after[d]["perplexity"],
                                             "tokens": after[d]["tokens"]} for d in eval_domains},
                             "protocol": {k: v for k, v in after[eval_domains[0]]["protocol"].items()
                                          if k not in ("corpus", "model", "fingerprint")}}
    if latency:
        say(0.95, "latency")
        dense_lat, pruned_lat = channel_latency(lm, latency_kwargs), channel_latency(pruned, latency_kwargs)
        rep["latency"] = {"dense": dense_lat, "pruned": pruned_lat, **speedups(dense_lat, pruned_lat)}
    cal = tokens.to_manifest()
    rep["manifest"] = {
        "model": {"name": lm.name, "fingerprint": lm.fingerprint, "model_type": lm.model.config.model_type,
                  "num_layers": lm.num_layers, "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device)},
        "pruned_fingerprint": pruned.fingerprint,
        "domains": list(cfg.domains), "weights": dict(cfg.domains),
        "samples_per_domain": cal.get("domain_counts"), "tokens_per_domain": cal.get("token_counts"),
        "calibration_sha256": cal.get("sha256"), "config": cfg.to_dict(), "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": time.perf_counter() - t0}
    say(1.0, f"done: {rep['final']['ratio_reached']:.1%} of MLP channels removed")
    return ChannelRun(pruned, clean_json(rep, fallback=str))


def run_ablation(lm, cfg: ChannelConfig | None = None, variants: Sequence[str] | None = None,
                 progress: Progress | None = None, should_stop: ShouldStop | None = None, **overrides) -> dict:
    """The paper's central comparison at one ratio: hybrid calibration vs each single domain vs one-shot
    (T = 1, hybrid). Every variant uses ``n_samples`` windows and is evaluated on every calibration domain.

    ``variants``: any of ``"hybrid"``, ``"one_shot"``, ``"single:<domain>"`` (default: all).
    Returns ``{"rows": [...], "dense": {domain: ppl}, "config", "domains"}`` (JSON-safe).
    """
    cfg = resolve_config(cfg, overrides)
    doms = list(cfg.eval_domains) if cfg.eval_domains is not None else list(cfg.domains)
    variants = list(variants or (["hybrid"] + [f"single:{d}" for d in cfg.domains] + ["one_shot"]))
    say = progress or (lambda f, m: None)
    dense = evaluate_domains(lm, doms, cfg.eval_tokens, cfg.eval_window)
    hybrid_tokens = None
    rows = []
    for k, v in enumerate(variants):
        if should_stop is not None and should_stop():
            break
        lo, hi = k / len(variants), (k + 1) / len(variants)
        sub = lambda f, m, lo=lo, hi=hi, v=v: say(lo + (hi - lo) * f, f"{v}: {m}")  # noqa: E731
        if v in ("hybrid", "one_shot"):
            if hybrid_tokens is None:
                hybrid_tokens = build_hybrid_calibration(lm.tokenizer, cfg.domains, cfg.n_samples, cfg.seq_len,
                                                         cfg.seed, cfg.sampling)
            vcfg, toks = (cfg if v == "hybrid" else replace(cfg, steps=1)), hybrid_tokens
        elif v.startswith("single:"):
            d = v.split(":", 1)[1]
            vcfg = replace(cfg, domains={d: 1.0})
            toks = None
        else:
            raise SelectionError(f"unknown ablation variant {v!r}; use hybrid, one_shot or single:<domain>")
        res = iterative_channel_prune(lm, vcfg, toks, progress=lambda f, m: sub(0.8 * f, m), should_stop=should_stop)
        pruned = _wrap(res.model, lm.tokenizer, f"{lm.name}+{v}", f"ablation:{v}")
        ppl = evaluate_domains(pruned, doms, cfg.eval_tokens, cfg.eval_window,
                               progress=lambda f, m: sub(0.8 + 0.2 * f, m))
        vals = [ppl[d]["perplexity"] for d in doms]
        rows.append({"variant": v, "calibration": dict(vcfg.domains), "steps": vcfg.steps,
                     "completed": res.completed, "ratio_reached": res.report["final"]["ratio_reached"],
                     "params": res.report["final"]["params"]["total"],
                     "perplexity": {d: ppl[d]["perplexity"] for d in doms},
                     "mean_log_ppl": sum(math.log(x) for x in vals) / len(vals),
                     "samples_per_domain": res.report["calibration"].get("domain_counts")})
        del pruned, res
    return clean_json({"rows": rows, "dense": {d: dense[d]["perplexity"] for d in doms}, "domains": doms,
                       "config": cfg.to_dict(), "ratio": cfg.ratio}, fallback=str)
