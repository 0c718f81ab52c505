"""Calibration statistics and channel scores: streaming sums collected by forward hooks on every MLP's
``down_proj`` input (and ``o_proj`` input for KV groups), turned into per-channel importances."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.channels.calibrate import as_tokens
from analysis.channels.config import DOMAIN_AGGS, METHODS, Progress, ShouldStop
from analysis.channels.prune import group_size, head_dim, mlp_linears
from analysis.errors import DataError, SelectionError
from analysis.models.adapters import adapter_for
from analysis.models.forward import softcap_logits


class _Collector:
    """Per-layer, per-domain streaming sums over the calibration tokens: sum a², sum a, token count
    (and sum |a·∂L/∂a| for Taylor). Activations are reduced inside the hook and never stored."""

    def __init__(self, n_layers: int, n_domains: int, skip_first: bool, taylor: bool):
        self.D, self.skip_first, self.taylor = n_domains, skip_first, taylor
        self.stats: dict[str, list[dict | None]] = {"mlp": [None] * n_layers, "attn": [None] * n_layers}
        self.count = torch.zeros(n_domains, dtype=torch.float64)
        self.rows: Tensor | None = None     # domain index of every row in the current batch

    def _acc(self, kind: str, i: int, m: int, device) -> dict:
        slot = self.stats[kind][i]
        if slot is None:
            z = lambda: torch.zeros(self.D, m, dtype=torch.float64, device=device)  # noqa: E731
            slot = {"sumsq": z(), "sum": z(), "taylor": z() if self.taylor else None}
            self.stats[kind][i] = slot
        return slot

    def hook(self, kind: str, i: int):
        def pre(module, args):
            a = args[0]                                  # [B, T, m]: the input of down_proj / o_proj
            x = a.detach()
            if self.skip_first:
                x = x[:, 1:]
            x = x.float()
            slot = self._acc(kind, i, x.shape[-1], x.device)
            idx = self.rows.to(x.device)
            slot["sumsq"].index_add_(0, idx, (x * x).sum(1).double())
            slot["sum"].index_add_(0, idx, x.sum(1).double())
            if self.taylor and a.requires_grad:
                a.register_hook(self._grad_hook(slot, a.detach(), idx))
        return pre

    def _grad_hook(self, slot: dict, a: Tensor, idx: Tensor):
        def on_grad(g):
            prod = (a.float() * g.float()).abs()
            if self.skip_first:
                prod = prod[:, 1:]
            slot["taylor"].index_add_(0, idx, prod.sum(1).double())
        return on_grad


def _lm_loss(model: nn.Module, adapter, ids: Tensor) -> Tensor:
    """Mean next-token NLL, with grads flowing to the activations only (embeddings are the grad leaf)."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    hidden = adapter.base(inputs_embeds=emb, use_cache=False).last_hidden_state
    logits = softcap_logits(model.get_output_embeddings()(hidden[:, :-1]).float(), model.config)  # [B, T-1, vocab]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def collect_stats(model: nn.Module, tokens, domains: Sequence[str] | None = None, method: str = "act_weight",
                  batch_size: int = 8, skip_first_token: bool = False, heads: bool = False,
                  progress: Progress | None = None, should_stop: ShouldStop | None = None) -> _Collector | None:
    """Stream ``tokens`` through ``model`` with hooks on every MLP's down_proj input (and o_proj input
    when ``heads``); returns the per-domain sums, or None when ``should_stop`` fired."""
    tokens = as_tokens(tokens)
    adapter = adapter_for(model)
    names = list(domains) if domains is not None else list(tokens.domain_counts())
    index = {d: k for k, d in enumerate(names)}
    missing = [d for d in tokens.domains if d not in index]
    if missing:
        raise DataError(f"calibration rows of domain {missing[0]!r} are not among {names}")
    rows = torch.tensor([index[d] for d in tokens.domains], dtype=torch.long)
    taylor = method == "taylor"
    col = _Collector(adapter.num_layers, len(names), skip_first_token, taylor)
    handles = [mlp_linears(adapter, i)[2].register_forward_pre_hook(col.hook("mlp", i))
               for i in range(adapter.num_layers)]
    if heads:
        handles += [adapter.attn(i).o_proj.register_forward_pre_hook(col.hook("attn", i))
                    for i in range(adapter.num_layers)]
    device = next(model.parameters()).device
    n = len(tokens)
    t_eff = tokens.seq_len - int(skip_first_token)
    try:
        for b in range(0, n, batch_size):
            if should_stop is not None and should_stop():
                return None
            ids = tokens.input_ids[b:b + batch_size].to(device)
            col.rows = rows[b:b + batch_size]
            col.count.index_add_(0, col.rows, torch.full((len(col.rows),), float(t_eff), dtype=torch.float64))
            if taylor:
                with torch.enable_grad():
                    _lm_loss(model, adapter, ids).backward()
            else:
                with torch.inference_mode():
                    adapter.base(input_ids=ids, use_cache=False)
            if progress:
                progress(min(b + batch_size, n) / n,
                         f"calibration batch {b // batch_size + 1}/{math.ceil(n / batch_size)}")
    finally:
        for h in handles:
            h.remove()
    col.domains = names
    return col


# ----------------------------------------------------------------------------------------------------
# scores


def _method_scores(slot: dict, count: Tensor, w_col_norm: Tensor, method: str) -> Tensor:
    """``[D, m]`` scores from per-domain sums (D may be 1 for pooled)."""
    w = w_col_norm.to(slot["sumsq"].device, torch.float64)
    if method == "act_weight":
        return slot["sumsq"].clamp_min(0).sqrt() * w
    if method == "fluctuation":
        n = count.to(slot["sum"].device).clamp_min(1)[:, None]
        mean = slot["sum"] / n
        return (slot["sumsq"] / n - mean * mean).clamp_min(0) * w * w
    return slot["taylor"].clone()


def pool(slot: dict) -> dict:
    """Per-domain sums ``[D, m]`` pooled into one domain ``[1, m]``."""
    return {k: (None if v is None else v.sum(0, keepdim=True)) for k, v in slot.items()}


def _aggregate(per_layer: list[Tensor], agg: str) -> list[Tensor]:
    """Combine ``[D, m_l]`` per-domain scores into ``[m_l]`` per layer (see DOMAIN_AGGS)."""
    if per_layer[0].shape[0] == 1 or agg == "pooled":
        return [s.sum(0) for s in per_layer]
    flat = torch.cat(per_layer, dim=1)                                    # [D, sum m_l]
    if agg == "rank_mean":
        n = flat.shape[1]
        ranks = flat.argsort(dim=1, stable=True).argsort(dim=1, stable=True).double() / max(n - 1, 1)
        combined = ranks.mean(0)
    else:
        mu = flat.mean(1, keepdim=True)
        norm = flat / torch.where(mu > 0, mu, torch.ones_like(mu))          # per-domain scale removed
        combined = {"mean": norm.mean(0), "min": norm.min(0).values, "max": norm.max(0).values}[agg]
    return list(combined.split([s.shape[1] for s in per_layer]))


def scores_from_stats(model: nn.Module, col: _Collector, method: str = "act_weight",
                      domain_agg: str = "pooled", kind: str = "mlp") -> list[Tensor]:
    """Per-layer score vectors (float64, CPU) from collected statistics.

    ``kind="mlp"``: one score per intermediate channel. ``kind="attn"``: one score per KV group (the
    sum of the channel scores of the o_proj input columns of its query heads).
    """
    adapter = adapter_for(model)
    count = col.count if domain_agg != "pooled" else col.count.sum(0, keepdim=True)
    per_layer = []
    for i in range(adapter.num_layers):
        slot = col.stats[kind][i]
        if slot is None:
            raise DataError("no calibration statistics were collected (empty token set?)")
        slot = slot if domain_agg != "pooled" else pool(slot)
        w = mlp_linears(adapter, i)[2].weight if kind == "mlp" else adapter.attn(i).o_proj.weight
        s = _method_scores(slot, count, w.detach().float().norm(dim=0), method)
        if kind == "attn":
            hd, g = head_dim(model), group_size(model)
            s = s.reshape(s.shape[0], -1, g * hd).sum(-1)               # [D, n_kv]
        per_layer.append(s)
    return [s.cpu() for s in _aggregate(per_layer, domain_agg)]


def channel_scores(model: nn.Module, tokens, method: str = "act_weight", domain_agg: str = "pooled",
                   batch_size: int = 8, skip_first_token: bool = False,
                   progress: Progress | None = None) -> list[Tensor]:
    """Per layer, a vector of length ``intermediate_size`` (current width): the channel importances.

    ``tokens``: a TokenSet (rows labelled with their domain, for ``domain_agg`` other than ``pooled``)
    or ``[N, T]`` ids. Higher = more important. The model is only read.
    """
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if domain_agg not in DOMAIN_AGGS:
        raise SelectionError(f"unknown domain_agg {domain_agg!r}; use one of {', '.join(DOMAIN_AGGS)}")
    col = collect_stats(model, tokens, method=method, batch_size=batch_size, skip_first_token=skip_first_token,
                        progress=progress)
    return scores_from_stats(model, col, method, domain_agg)


