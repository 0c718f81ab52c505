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
import os
import platform
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.models.adapters import adapter_for
from analysis.errors import DataError, EntroscopeError, ModelLoadError, SelectionError
from analysis.settings import seed_int, setting, unchecked_float

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

CHANNELS_FILE = "entroscope-channels.json"
REPORT_FILE = "channels-report.json"
FORMAT = "entroscope-channels-v1"

#: Channel-importance methods (all provisional; the paper's formula is unknown).
METHODS: dict[str, str] = {
    "act_weight": "S_j = ||W_down[:, j]||_2 * ||a_j||_2, a_j the down_proj input over all calibration tokens "
                  "(Wanda-style activation-weighted norm; default)",
    "fluctuation": "S_j = Var_t(a_j) * ||W_down[:, j]||_2^2 (FLAP's fluctuation metric)",
    "taylor": "S_j = sum_t |a_tj * dL/da_tj| (first-order Taylor; one backward pass per batch, "
              "gradients on the activations only)",
}
#: How per-domain scores are combined (per-domain scores are first divided by their mean over all
#: channels of all layers, so a domain with larger activations does not dominate).
DOMAIN_AGGS: dict[str, str] = {
    "pooled": "statistics pooled over all calibration tokens of all domains (default)",
    "mean": "mean over domains of the normalised per-domain scores",
    "min": "minimum over domains of the normalised per-domain scores (a channel is kept only when every "
           "domain needs it: consensus)",
    "max": "maximum over domains of the normalised per-domain scores (a channel any domain needs is kept: "
           "protects each domain's specialised channels)",
    "rank_mean": "mean over domains of the channel's rank (0..1) among all channels",
}
ALLOCATIONS: dict[str, str] = {
    "uniform": "every layer keeps the same fraction of its original channels (default)",
    "global": "lowest scores across all layers go first, each layer keeping at least min_keep_frac",
}
GLOBAL_NORMS: dict[str, str] = {
    "none": "raw scores compared across layers (default)",
    "layer_mean": "each layer's scores divided by the layer's mean score",
    "layer_zscore": "each layer's scores standardised (score - mean) / std (FLAP's structure search)",
}


@dataclass
class ChannelConfig:
    """Every choice of the provisional recipe, named (defaults in the comments; see docs/channels.md)."""

    # --- hybrid calibration set (paper: a multi-domain mix; its domains and proportions are unknown) ------
    domains: dict = setting(factory=lambda: {"wiki": 1.0, "code": 1.0, "news": 1.0}, kind="text",  # name -> weight
        to_text=lambda w: ",".join(f"{d}:{x:g}" for d, x in w.items()),
        help="domain weights, e.g. wiki:1,code:1,news:1 (built-in: wiki news code docs dialogue math)")
    n_samples: int = setting(64, flag="samples", min=1,  # split over domains in proportion to the weights (exact)
        help="calibration windows in total")
    seq_len: int = setting(256, min=1, help="tokens per window")
    seed: int = setting(2024, type=seed_int, help="sampling seed (per-domain seeds derive from it)")
    sampling: str = setting("random", choices="analysis.data.corpora:MODES",  # corpora sampling mode
        help="random windows of random documents or consecutive windows")
    batch_size: int = setting(8, min=1, help="windows per calibration forward")
    skip_first_token: bool = setting(False, help="leave position 0 out of the statistics")  # BOS / attention sink
    # --- channel score -----------------------------------------------------------------------------------------
    method: str = setting("act_weight", choices=METHODS, help="channel score (see docs/channels.md)")
    domain_agg: str = setting("pooled", flag="agg", choices=DOMAIN_AGGS, help="how per-domain scores combine")
    # --- schedule ------------------------------------------------------------------------------------------------
    ratio: float = setting(0.25, type=unchecked_float("a number in [0, 1)"),  # of the ORIGINAL MLP channels, in the end
        help="fraction of the original MLP channels removed")
    steps: int = setting(4, min=1,  # T: cumulative removal after step t is round(t * r / T * original)
        help="T: calibrate/score/prune rounds (1 = one-shot)")
    allocation: str = setting("uniform", choices=ALLOCATIONS, help="uniform (per layer) or global")
    min_keep_frac: float = setting(0.1, min=0, max=1,  # every layer keeps at least this fraction of its channels
        help="global allocation: per-layer floor")
    global_norm: str = setting("none", choices=GLOBAL_NORMS,  # how scores are compared across layers
        help="global allocation: how scores are compared across layers")
    multiple_of: int = setting(64, min=1,  # kept widths rounded to a multiple (efficient kernels)
        help="round kept widths (1 = no rounding)")
    # --- compensation --------------------------------------------------------------------------------------------
    bias_compensation: bool = setting(False,  # FLAP: add W_down[:, pruned] @ E[a_pruned] as a down_proj bias
        help="FLAP-style down_proj bias for pruned channels")
    # --- attention heads (off by default) ------------------------------------------------------------------------
    head_ratio: float = setting(0.0, type=unchecked_float("a number in [0, 1)"),  # removed per layer
        help="also remove this fraction of KV groups (with their query heads) per layer; 0 = off")
    # --- evaluation -----------------------------------------------------------------------------------------------
    eval_domains: tuple | None = setting(None, kind="tuple",  # held-out perplexity on these domains
        help="comma-separated (default: the calibration domains)")
    eval_tokens: int = setting(4096, min=1, help="held-out tokens per domain")  # token budget per domain (eval split)
    eval_window: int = setting(512, min=1, help="tokens per perplexity window")  # disjoint windows

    def validated(self) -> "ChannelConfig":
        """A checked copy (domain weights parsed from ``"wiki:1,code:1"`` strings); raises EntroscopeError."""
        from analysis.data.corpora import _check_weights, parse_domain_weights

        cfg = replace(self)
        if isinstance(cfg.domains, str):
            cfg.domains = parse_domain_weights(cfg.domains)
        elif isinstance(cfg.domains, (list, tuple)):
            cfg.domains = {str(d): 1.0 for d in cfg.domains}
        cfg.domains = _check_weights(dict(cfg.domains))
        from analysis.data.corpora import DOMAINS

        unknown = [d for d in cfg.domains if d not in DOMAINS]
        if unknown:
            raise DataError(f"unknown domain {unknown[0]!r}; valid domains: {', '.join(DOMAINS)}")
        for name, choices in (("method", METHODS), ("domain_agg", DOMAIN_AGGS), ("allocation", ALLOCATIONS),
                              ("global_norm", GLOBAL_NORMS)):
            if getattr(cfg, name) not in choices:
                raise SelectionError(f"unknown {name} {getattr(cfg, name)!r}; use one of {', '.join(choices)}")
        if not (isinstance(cfg.ratio, (int, float)) and 0 <= float(cfg.ratio) < 1):
            raise SelectionError(f"ratio must be in [0, 1), got {cfg.ratio}")
        if not (isinstance(cfg.head_ratio, (int, float)) and 0 <= float(cfg.head_ratio) < 1):
            raise SelectionError(f"head_ratio must be in [0, 1), got {cfg.head_ratio}")
        if int(cfg.steps) < 1:
            raise SelectionError(f"steps must be >= 1, got {cfg.steps}")
        if int(cfg.multiple_of) < 1:
            raise SelectionError(f"multiple_of must be >= 1, got {cfg.multiple_of}")
        if not 0 <= float(cfg.min_keep_frac) <= 1:
            raise SelectionError(f"min_keep_frac must be in [0, 1], got {cfg.min_keep_frac}")
        for name in ("n_samples", "seq_len", "batch_size", "eval_tokens", "eval_window"):
            if int(getattr(cfg, name)) < 1:
                raise DataError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if int(cfg.seq_len) < 2:
            raise DataError(f"seq_len must be >= 2, got {cfg.seq_len}")
        if int(cfg.eval_window) < 2:
            raise DataError(f"eval_window must be >= 2, got {cfg.eval_window}")
        cfg.ratio, cfg.head_ratio, cfg.min_keep_frac = float(cfg.ratio), float(cfg.head_ratio), float(cfg.min_keep_frac)
        cfg.steps, cfg.multiple_of = int(cfg.steps), int(cfg.multiple_of)
        if cfg.eval_domains is not None:
            if isinstance(cfg.eval_domains, str):
                cfg.eval_domains = tuple(d.strip() for d in cfg.eval_domains.split(",") if d.strip())
            cfg.eval_domains = tuple(cfg.eval_domains)
            bad = [d for d in cfg.eval_domains if d not in DOMAINS]
            if bad or not cfg.eval_domains:
                raise DataError(f"unknown evaluation domain {(bad or [''])[0]!r}; valid domains: {', '.join(DOMAINS)}")
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eval_domains"] = list(self.eval_domains) if self.eval_domains is not None else None
        return d


def _resolve_config(cfg: ChannelConfig | None, overrides: dict) -> ChannelConfig:
    cfg = cfg or ChannelConfig()
    known = {f.name for f in fields(ChannelConfig)}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise TypeError(f"unknown ChannelConfig option(s): {', '.join(bad)}")
    return replace(cfg, **overrides).validated()


# ----------------------------------------------------------------------------------------------------
# hybrid calibration set


def build_hybrid_calibration(tokenizer, domains: dict | str | None = None, n_samples: int = 64, seq_len: int = 256,
                             seed: int = 2024, mode: str = "random", split: str = "calib", corpora=None):
    """A :class:`~analysis.data.corpora.TokenSet` mixed from several domains with exact per-domain counts.

    ``domains``: ``{"wiki": 1, "code": 1}`` or ``"wiki:1,code:1"`` (default wiki, code, news equally).
    Counts are proportional to the weights by largest remainder and sum to ``n_samples`` exactly; each
    domain is sampled with its own seed derived from ``seed``; rows are shuffled. ``to_manifest()``
    records per-domain sample and token counts.
    """
    from analysis.data import corpora as C

    if domains is None:
        domains = ChannelConfig().domains
    weights = C.parse_domain_weights(domains) if isinstance(domains, str) else dict(domains)
    cfg = C.SampleConfig(n_samples=int(n_samples), seq_len=int(seq_len), seed=int(seed), mode=mode)
    return C.sample_hybrid(weights, tokenizer, cfg, split=split, corpora=corpora)


def _as_tokens(tokens):
    """A TokenSet from a TokenSet or an ``[N, T]`` tensor (one domain called "tokens")."""
    from analysis.data.corpora import TokenSet

    if isinstance(tokens, TokenSet):
        return tokens
    if isinstance(tokens, Tensor) and tokens.ndim == 2:
        return TokenSet(tokens, ["tokens"] * int(tokens.shape[0]), {"kind": "tensor"})
    raise DataError(f"expected a TokenSet or [N, T] token ids, got {type(tokens).__name__}")


# ----------------------------------------------------------------------------------------------------
# model structure helpers


def _mlp_linears(adapter, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    mlp, spec = adapter.mlp(i), adapter.spec
    return getattr(mlp, spec.gate_proj), getattr(mlp, spec.up_proj), getattr(mlp, spec.down_proj)


def mlp_widths(model: nn.Module) -> list[int]:
    """Current intermediate width of every layer's MLP (``gate_proj.out_features``)."""
    adapter = adapter_for(model)
    return [int(_mlp_linears(adapter, i)[0].out_features) for i in range(adapter.num_layers)]


def _head_dim(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def kv_groups(model: nn.Module) -> list[int]:
    """Current number of KV heads (= KV groups) in every layer (from ``k_proj.out_features``)."""
    adapter, hd = adapter_for(model), _head_dim(model)
    return [int(adapter.attn(i).k_proj.out_features) // hd for i in range(adapter.num_layers)]


def _group_size(model: nn.Module) -> int:
    cfg = model.config
    return int(cfg.num_attention_heads) // int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)


def _new_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An nn.Linear holding exactly these tensors (no initialisation work, gradients off)."""
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta", dtype=weight.dtype)
    lin.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    return lin


def _slice_rows(lin: nn.Linear, idx: Tensor) -> nn.Linear:
    idx = idx.to(lin.weight.device)
    return _new_linear(lin.weight.detach().index_select(0, idx).clone(),
                       None if lin.bias is None else lin.bias.detach().index_select(0, idx).clone())


def _slice_cols(lin: nn.Linear, idx: Tensor, extra_bias: Tensor | None = None) -> nn.Linear:
    idx = idx.to(lin.weight.device)
    w = lin.weight.detach().index_select(1, idx).clone()
    bias = None if lin.bias is None else lin.bias.detach().clone()
    if extra_bias is not None:
        extra = extra_bias.to(device=w.device, dtype=torch.float32)
        bias = (extra if bias is None else bias.float() + extra).to(w.dtype)
    return _new_linear(w, bias)


def prune_channels(model: nn.Module, keep: Sequence[Tensor | Sequence[int] | None],
                   compensation: Sequence[Tensor | None] | None = None) -> nn.Module:
    """Physically keep only ``keep[l]`` (positions in the *current* MLP of layer ``l``; None = all) — IN PLACE.

    Slices ``gate_proj``/``up_proj`` rows and ``down_proj`` columns together. ``compensation[l]``
    (``[hidden]``) is added to ``down_proj``'s bias (a bias is created when the layer has none).
    The config is updated (:func:`sync_config`). Use on a copy you own.
    """
    adapter = adapter_for(model)
    spec = adapter.spec
    if len(keep) != adapter.num_layers:
        raise SelectionError(f"keep has {len(keep)} entries but the model has {adapter.num_layers} layers")
    for i, k in enumerate(keep):
        comp = compensation[i] if compensation is not None else None
        if k is None and comp is None:
            continue
        gate, up, down = _mlp_linears(adapter, i)
        m = int(gate.out_features)
        idx = torch.arange(m) if k is None else torch.as_tensor(k, dtype=torch.long).flatten().cpu()
        if idx.numel() < 1 or int(idx.min()) < 0 or int(idx.max()) >= m or idx.unique().numel() != idx.numel():
            raise SelectionError(f"layer {i}: kept channel positions must be distinct, in 0..{m - 1}, at least one")
        idx = idx.sort().values
        mlp = adapter.mlp(i)
        if idx.numel() != m:
            setattr(mlp, spec.gate_proj, _slice_rows(gate, idx))
            setattr(mlp, spec.up_proj, _slice_rows(up, idx))
        if idx.numel() != m or comp is not None:
            setattr(mlp, spec.down_proj, _slice_cols(down, idx, comp))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(idx.numel())
    sync_config(model)
    return model


def prune_kv_groups(model: nn.Module, keep: Sequence[Sequence[int] | Tensor | None]) -> nn.Module:
    """Keep only KV groups ``keep[l]`` (current positions; None = all) in every layer — IN PLACE.

    A KV group is one key/value head with the query heads that read it (query head ``h`` reads KV head
    ``h // group_size``): ``k_proj``/``v_proj`` rows of the KV head, ``q_proj`` rows and ``o_proj``
    columns of its query heads are removed together (biases sliced along). Every layer must keep the same
    number of groups (the config holds one ``num_key_value_heads``).
    """
    adapter = adapter_for(model)
    hd, g = _head_dim(model), _group_size(model)
    counts = set()
    for i, k in enumerate(keep):
        attn = adapter.attn(i)
        n_kv = int(attn.k_proj.out_features) // hd
        idx = torch.arange(n_kv) if k is None else torch.as_tensor(k, dtype=torch.long).flatten().cpu().sort().values
        if idx.numel() < 1 or int(idx.min()) < 0 or int(idx.max()) >= n_kv or idx.unique().numel() != idx.numel():
            raise SelectionError(f"layer {i}: kept KV groups must be distinct, in 0..{n_kv - 1}, at least one")
        counts.add(int(idx.numel()))
        if idx.numel() == n_kv:
            continue
        kv_rows = (idx[:, None] * hd + torch.arange(hd)).flatten()
        q_heads = (idx[:, None] * g + torch.arange(g)).flatten()
        q_rows = (q_heads[:, None] * hd + torch.arange(hd)).flatten()
        attn.q_proj = _slice_rows(attn.q_proj, q_rows)
        attn.k_proj = _slice_rows(attn.k_proj, kv_rows)
        attn.v_proj = _slice_rows(attn.v_proj, kv_rows)
        attn.o_proj = _slice_cols(attn.o_proj, q_rows)
    if len(counts) > 1:
        raise SelectionError("every layer must keep the same number of KV groups (one num_key_value_heads)")
    sync_config(model)
    return model


def sync_config(model: nn.Module) -> None:
    """Make the config describe the pruned structure.

    Uniform MLP widths → ``intermediate_size`` = that width (a standard checkpoint). Non-uniform →
    the largest width (the per-layer widths live in ``entroscope-channels.json``, and a plain
    ``from_pretrained`` fails loudly with a size mismatch instead of loading wrong weights). Attention:
    ``num_attention_heads``/``num_key_value_heads`` from the first layer, ``head_dim`` made explicit.
    """
    cfg = model.config
    widths = mlp_widths(model)
    cfg.intermediate_size = widths[0] if len(set(widths)) == 1 else max(widths)
    hd, g = _head_dim(model), _group_size(model)
    groups = kv_groups(model)
    if groups and groups[0] != int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads):
        cfg.head_dim = hd
        cfg.num_key_value_heads = groups[0]
        cfg.num_attention_heads = groups[0] * g


# ----------------------------------------------------------------------------------------------------
# streaming statistics (forward hooks)


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
    logits = model.get_output_embeddings()(hidden[:, :-1]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def collect_stats(model: nn.Module, tokens, domains: Sequence[str] | None = None, method: str = "act_weight",
                  batch_size: int = 8, skip_first_token: bool = False, heads: bool = False,
                  progress: Progress | None = None, should_stop: ShouldStop | None = None) -> _Collector | None:
    """Stream ``tokens`` through ``model`` with hooks on every MLP's down_proj input (and o_proj input
    when ``heads``); returns the per-domain sums, or None when ``should_stop`` fired."""
    tokens = _as_tokens(tokens)
    adapter = adapter_for(model)
    names = list(domains) if domains is not None else list(tokens.domain_counts())
    index = {d: k for k, d in enumerate(names)}
    missing = [d for d in tokens.domains if d not in index]
    if missing:
        raise DataError(f"calibration rows of domain {missing[0]!r} are not among {names}")
    rows = torch.tensor([index[d] for d in tokens.domains], dtype=torch.long)
    taylor = method == "taylor"
    col = _Collector(adapter.num_layers, len(names), skip_first_token, taylor)
    handles = [_mlp_linears(adapter, i)[2].register_forward_pre_hook(col.hook("mlp", i))
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


def _pool(slot: dict) -> dict:
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
        slot = slot if domain_agg != "pooled" else _pool(slot)
        w = _mlp_linears(adapter, i)[2].weight if kind == "mlp" else adapter.attn(i).o_proj.weight
        s = _method_scores(slot, count, w.detach().float().norm(dim=0), method)
        if kind == "attn":
            hd, g = _head_dim(model), _group_size(model)
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


# ----------------------------------------------------------------------------------------------------
# allocation


def round_width(k: int, m: int, multiple_of: int, floor: int = 0) -> int:
    """Kept width ``k`` of a layer with ``m`` channels rounded to the nearest multiple of ``multiple_of``
    (half up), at least ``multiple_of`` and ``floor``, at most ``m``; ``k >= m`` keeps ``m``."""
    if k >= m:
        return m
    r = multiple_of * int(math.floor(k / multiple_of + 0.5))
    r = max(r, multiple_of, floor)
    return min(r, m)


def uniform_targets(orig: Sequence[int], ratio: float, step: int, steps: int, multiple_of: int) -> list[int]:
    """Kept widths after ``step`` of ``steps``: each layer removes round(step * ratio / steps * m)."""
    return [round_width(m - round(step * ratio / steps * m), m, multiple_of) for m in orig]


def _normalise_layers(scores: list[Tensor], how: str) -> list[Tensor]:
    if how == "none":
        return scores
    out = []
    for s in scores:
        s = s.double()
        if how == "layer_mean":
            mu = s.mean()
            out.append(s / mu if mu > 0 else s)
        else:
            sd = s.std() if s.numel() > 1 else torch.tensor(0.0, dtype=s.dtype)
            out.append((s - s.mean()) / sd if sd > 0 else s - s.mean())
    return out


def global_targets(scores: list[Tensor], cur: Sequence[int], orig: Sequence[int], ratio: float, step: int,
                   steps: int, multiple_of: int, min_keep_frac: float, global_norm: str = "none") -> list[int]:
    """Kept widths after ``step`` with one global threshold: the lowest (normalised) scores across all
    layers are removed until round(step * ratio / steps * sum(orig)) channels are gone in total, but a
    layer never goes below ``ceil(min_keep_frac * m)`` (rounded up to the multiple). Widths never grow."""
    total = sum(orig)
    keep_total = total - round(step * ratio / steps * total)
    floors = [min(m, max(multiple_of if multiple_of < m else m,
                         multiple_of * math.ceil(math.ceil(min_keep_frac * m) / multiple_of)))
              for m in orig]
    floors = [min(f, c) for f, c in zip(floors, cur)]
    norm = _normalise_layers([s.double() for s in scores], global_norm)
    flat = torch.cat(norm)
    layer_of = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in enumerate(cur)])
    keep = list(cur)
    to_remove = sum(cur) - keep_total
    if to_remove > 0:
        for j in flat.argsort(stable=True).tolist():
            i = int(layer_of[j])
            if keep[i] > floors[i]:
                keep[i] -= 1
                to_remove -= 1
                if to_remove == 0:
                    break
    return [min(c, round_width(k, m, multiple_of, f)) for k, m, f, c in zip(keep, orig, floors, cur)]


def _top(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` highest scores (ties: lower position first), sorted."""
    order = (-scores.double()).argsort(stable=True)
    return order[:k].sort().values


# ----------------------------------------------------------------------------------------------------
# the iterative loop


@dataclass
class ChannelPruneResult:
    """The pruned copy and what happened, step by step (``report`` is JSON-safe)."""

    model: nn.Module
    report: dict
    kept_channels: list[list[int]]              # per layer: ORIGINAL indices of the kept channels (0-based)
    kept_kv_groups: list[list[int]] | None = None
    completed: bool = True


def _models_of(lm):
    """(model, tokenizer) of a LoadedModel, or (model, None) of a bare nn.Module."""
    if isinstance(lm, nn.Module):
        return lm, None
    return lm.model, getattr(lm, "tokenizer", None)


def _param_counts(model: nn.Module) -> dict:
    from analysis.models.loading import count_params

    return {"total": count_params(model), "non_embedding": count_params(model, non_embedding=True)}


def _versions() -> dict:
    import transformers

    from analysis import __version__

    return {"entroscope": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def iterative_channel_prune(lm, cfg: ChannelConfig | None = None, tokens=None, progress: Progress | None = None,
                            should_stop: ShouldStop | None = None, **overrides) -> ChannelPruneResult:
    """Reach ``cfg.ratio`` of removed MLP channels in ``cfg.steps`` steps on a deep copy of the model.

    At step ``t``: re-run calibration on the CURRENT pruned copy, re-score, and cut every layer down to
    its target (cumulative removal ``round(t * ratio / steps * original)``; uniform per layer or global
    with a floor; widths rounded to ``multiple_of``). ``lm`` is a LoadedModel or a bare model (then
    ``tokens`` is required). ``overrides`` set ChannelConfig fields (``ratio=0.5, steps=2``).
    ``should_stop()`` is polled between batches; the result then holds the last completed step.
    """
    cfg = _resolve_config(cfg, overrides)
    base, tokenizer = _models_of(lm)
    if tokens is None:
        if tokenizer is None:
            raise DataError("pass calibration tokens (a TokenSet) or a LoadedModel with a tokenizer")
        tokens = build_hybrid_calibration(tokenizer, cfg.domains, cfg.n_samples, cfg.seq_len, cfg.seed, cfg.sampling)
    tokens = _as_tokens(tokens)
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
    params0 = _param_counts(base)
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
                pos = _top(scores[i], targets[i])
                mask = torch.ones(cur[i], dtype=torch.bool)
                mask[pos] = False
                gone = mask.nonzero().flatten()
                removed.append(kept[i][gone].tolist())
                comp = None
                if cfg.bias_compensation:
                    slot = _pool(col.stats["mlp"][i])
                    mean = (slot["sum"][0] / col.count.sum().clamp_min(1)).float()      # E[a_j], pooled
                    w_down = _mlp_linears(adapter, i)[2].weight.detach().float()
                    comp = w_down[:, gone.to(w_down.device)] @ mean[gone.to(mean.device)].to(w_down.device)
                keep_pos.append(pos)
                comps.append(comp)
                kept[i] = kept[i][pos]
            prune_channels(model, keep_pos, comps)
            if heads and target_groups != cur_groups:
                hscores = scores_from_stats(model, col, cfg.method, cfg.domain_agg, kind="attn")
                gpos = [_top(hscores[i], target_groups[i]) for i in range(L)]
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
            "removed_channels": removed, "params": _param_counts(model),
            "calibrated": col is not None,
            "tokens_per_domain": ({d: int(c) for d, c in zip(domains, col.count.tolist())}
                                  if col is not None else None),
            "seconds": time.perf_counter() - ts})
        say(t / cfg.steps, f"step {t}/{cfg.steps}: {steps_log[-1]['ratio_reached']:.1%} of MLP channels removed")
    _finalise_bias_layout(model)
    widths = mlp_widths(model)
    params = _param_counts(model)
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
                  "down_bias": [(_mlp_linears(adapter, i)[2].bias is not None) for i in range(L)]},
        "kept_channels": [k.tolist() for k in kept],
        "kept_kv_groups": [k.tolist() for k in kept_groups] if heads else None,
        "calibration": tokens.to_manifest(),
        "seconds": time.perf_counter() - t0,
    }
    return ChannelPruneResult(model, report, report["kept_channels"], report["kept_kv_groups"], completed)


def _finalise_bias_layout(model: nn.Module) -> None:
    """Llama-style configs (``mlp_bias``) with uniform widths and compensation biases: give gate/up (and
    any bias-less down_proj) zero biases and set ``mlp_bias=True``, so the checkpoint is standard."""
    adapter = adapter_for(model)
    downs = [_mlp_linears(adapter, i)[2] for i in range(adapter.num_layers)]
    if not any(d.bias is not None for d in downs) or not hasattr(model.config, "mlp_bias") or model.config.mlp_bias:
        return
    if len(set(mlp_widths(model))) != 1:
        return
    for i in range(adapter.num_layers):
        for lin in _mlp_linears(adapter, i):
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                    device=lin.weight.device), requires_grad=False)
    model.config.mlp_bias = True


# ----------------------------------------------------------------------------------------------------
# saving and loading


def _standard_layout(model: nn.Module) -> bool:
    """True when ``from_pretrained(config)`` rebuilds exactly these shapes and biases."""
    cfg = model.config
    adapter = adapter_for(model)
    mlp_bias = bool(getattr(cfg, "mlp_bias", False))
    for i in range(adapter.num_layers):
        gate, up, down = _mlp_linears(adapter, i)
        if gate.out_features != cfg.intermediate_size or (down.bias is not None) != mlp_bias \
                or (gate.bias is not None) != mlp_bias:
            return False
    return True


def channel_layout(model: nn.Module) -> dict:
    """What ``entroscope-channels.json`` stores about the structure of a (pruned) model."""
    adapter = adapter_for(model)
    L = adapter.num_layers
    return {"intermediate_sizes": mlp_widths(model), "kv_groups": kv_groups(model),
            "head_dim": _head_dim(model),
            "mlp_bias": [[_mlp_linears(adapter, i)[j].bias is not None for j in range(3)] for i in range(L)],
            "loader": "standard" if _standard_layout(model) else "entroscope"}


def save_channel_pruned(model_or_lm, out_dir, report: dict | None = None, tokenizer=None, overwrite: bool = False,
                        root=None, expected: str | None = None) -> Path:
    """Write a channel-pruned model (atomically: temporary folder, then rename).

    Uniform widths without extra biases → a standard checkpoint that plain
    ``AutoModelForCausalLM.from_pretrained(dir)`` reloads (``intermediate_size`` = the kept width).
    Otherwise (per-layer widths, or a compensation bias the architecture has no config flag for) →
    reload with :func:`load_channel_pruned`. ``entroscope-channels.json`` (layout, kept channel indices)
    and, when given, ``channels-report.json`` are written next to the weights.
    """
    from analysis.store.outdir import atomic_dir, check_out_dir

    model, tok = _models_of(model_or_lm)
    tokenizer = tokenizer if tokenizer is not None else tok
    out = Path(out_dir).expanduser()
    expected = check_out_dir(out, overwrite, root) if expected is None else expected
    layout = channel_layout(model)
    meta = {"format": FORMAT, **layout,
            "model_type": model.config.model_type,
            "note": ("standard checkpoint: plain AutoModelForCausalLM.from_pretrained reloads it"
                     if layout["loader"] == "standard" else
                     "per-layer shapes: reload with analysis.channels.pipeline.load_channel_pruned(dir)"),
            "kept_channels": (report or {}).get("kept_channels"),
            "kept_kv_groups": (report or {}).get("kept_kv_groups"),
            "source": {k: (report or {}).get("manifest", {}).get(k) for k in ("model",)} if report else None}
    with atomic_dir(out, overwrite, root, expected) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / CHANNELS_FILE).write_text(json.dumps(to_jsonable(meta), indent=1))
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(to_jsonable(report), indent=1))
    return out


def _empty_linear(in_f: int, out_f: int, bias: bool, dtype) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


def load_channel_pruned(path, device: str = "auto", dtype: str | torch.dtype = "fp32"):
    """Load a directory written by :func:`save_channel_pruned` as a LoadedModel (any layout)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from analysis.models.loading import LoadedModel, dir_fingerprint, load_model, resolve_device, resolve_dtype
    from analysis.models.surgery import load_weights_into

    p = Path(path).expanduser()
    meta_f = p / CHANNELS_FILE
    meta = json.loads(meta_f.read_text()) if meta_f.is_file() else None
    if meta is None or meta.get("loader") == "standard":
        lm = load_model(str(p), device=device, dtype=dtype, offline=True)
        if meta is not None:
            lm.info["channels"] = meta
        return lm
    if meta.get("format") != FORMAT:
        raise ModelLoadError(f"{CHANNELS_FILE} in {p} has an unknown format {meta.get('format')!r}")
    dt, dev = resolve_dtype(dtype), resolve_device(device)
    t0 = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # pragma: no cover - older transformers
            import contextlib
            no_init_weights = contextlib.nullcontext
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dt)
            adapter = adapter_for(model)
            spec = adapter.spec
            widths, biases = meta["intermediate_sizes"], meta["mlp_bias"]
            if len(widths) != adapter.num_layers:
                raise ModelLoadError(f"{CHANNELS_FILE} lists {len(widths)} layers, config.json has "
                                     f"{adapter.num_layers}")
            hidden = int(config.hidden_size)
            for i, (w, (bg, bu, bd)) in enumerate(zip(widths, biases)):
                mlp = adapter.mlp(i)
                setattr(mlp, spec.gate_proj, _empty_linear(hidden, w, bg, dt))
                setattr(mlp, spec.up_proj, _empty_linear(hidden, w, bu, dt))
                setattr(mlp, spec.down_proj, _empty_linear(w, hidden, bd, dt))
                if hasattr(mlp, "intermediate_size"):
                    mlp.intermediate_size = int(w)
        load_weights_into(model, p, CHANNELS_FILE)
        tok = None
        if any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            if tok.pad_token_id is None and tok.eos_token_id is not None:
                tok.pad_token = tok.eos_token
    except EntroscopeError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line
        raise ModelLoadError(f"Could not load channel-pruned checkpoint {p}: {str(exc).splitlines()[0][:300]}") \
            from exc
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    lm = LoadedModel(model=model, tokenizer=tok, adapter=adapter_for(model), name=str(path), source="local",
                     fingerprint=dir_fingerprint(p), device=dev, dtype=dt, load_seconds=time.perf_counter() - t0)
    lm.info["channels"] = meta
    return lm


# ----------------------------------------------------------------------------------------------------
# evaluation


def evaluate_domains(lm, domains: Sequence[str], eval_tokens: int = 4096, eval_window: int = 512,
                     batch_size: int = 1, progress: Progress | None = None) -> dict:
    """Held-out perplexity per domain (the domain's eval split, first ``eval_tokens`` tokens, disjoint
    windows of ``eval_window`` tokens; :func:`analysis.evaluate.perplexity.perplexity`)."""
    from analysis.evaluate.perplexity import EvalConfig, model_context, perplexity

    ctx = model_context(lm.model) or eval_window
    ecfg = EvalConfig(window=max(2, min(int(eval_window), int(eval_tokens), int(ctx))),
                      max_tokens=int(eval_tokens), batch_size=batch_size)
    out = {}
    for k, d in enumerate(domains):
        res = perplexity(lm, d, cfg=ecfg, split="eval")
        out[d] = {"perplexity": res["perplexity"], "nll": res["nll"], "tokens": res["tokens"],
                  "protocol": res["protocol"]}
        if progress:
            progress((k + 1) / len(domains), f"perplexity on {d}")
    return out


def flops_per_token(model: nn.Module, context: int = 128) -> dict:
    """Forward FLOPs per token: 2 × (matmul weights in the decoder layers) + attention scores/values
    (4 × query heads × head_dim × ``context`` per attention layer) + the LM head (2 × hidden × vocab).
    Use ``context`` ≈ (L + 1) / 2 for the average token of an L-token prefill, the cache length for decode."""
    adapter = adapter_for(model)
    linear = sum(m.weight.numel() for layer in adapter.layers for m in layer.modules() if isinstance(m, nn.Linear))
    hd = _head_dim(model)
    q_heads = [int(adapter.attn(i).q_proj.out_features) // hd for i in range(adapter.num_layers)]
    attn = sum(4 * h * hd * context for h in q_heads)
    head = model.get_output_embeddings()
    lm_head = 2 * head.weight.numel() if head is not None else 0
    total = 2 * linear + attn + lm_head
    return {"total": total, "matmul": 2 * linear, "attention": attn, "lm_head": lm_head, "context": context}


def _wrap(model: nn.Module, tokenizer, name: str, fingerprint: str):
    from analysis.models.loading import wrap_model

    out = wrap_model(model, tokenizer, name=name)
    out.fingerprint = fingerprint
    return out


def _latency(lm, kwargs: dict | None) -> dict:
    from analysis.evaluate.perplexity import latency

    kw = {"prompt_len": 128, "new_tokens": 32, "repeats": 3, "warmup": 1, **(kwargs or {})}
    res = latency(lm, None, **kw)
    row = res["rows"][0]
    return {"prefill_tokens_per_s": row["prefill_tokens_per_s"]["median"],
            "decode_tokens_per_s": (row["decode_tokens_per_s"] or {}).get("median"),
            "prompt_len": res["prompt_len"], "new_tokens": res["new_tokens"], "repeats": res["repeats"],
            "device": res["device"], "dtype": res["dtype"],
            "flops_per_token_prefill": flops_per_token(lm.model, (kw["prompt_len"] + 1) // 2)["total"],
            "flops_per_token_decode": flops_per_token(lm.model, kw["prompt_len"] + kw["new_tokens"] // 2)["total"]}


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
    cfg = _resolve_config(cfg, overrides)
    say = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    say(0.0, "building the hybrid calibration set")
    if tokens is None:
        tokens = build_hybrid_calibration(lm.tokenizer, cfg.domains, cfg.n_samples, cfg.seq_len, cfg.seed,
                                          cfg.sampling)
    tokens = _as_tokens(tokens)
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
        dense_lat, pruned_lat = _latency(lm, latency_kwargs), _latency(pruned, latency_kwargs)
        rep["latency"] = {"dense": dense_lat, "pruned": pruned_lat, **_speedups(dense_lat, pruned_lat)}
    cal = tokens.to_manifest()
    rep["manifest"] = {
        "model": {"name": lm.name, "fingerprint": lm.fingerprint, "model_type": lm.model.config.model_type,
                  "num_layers": lm.num_layers, "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device)},
        "pruned_fingerprint": pruned.fingerprint,
        "domains": list(cfg.domains), "weights": dict(cfg.domains),
        "samples_per_domain": cal.get("domain_counts"), "tokens_per_domain": cal.get("token_counts"),
        "calibration_sha256": cal.get("sha256"), "config": cfg.to_dict(), "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": time.perf_counter() - t0}
    say(1.0, f"done: {rep['final']['ratio_reached']:.1%} of MLP channels removed")
    return ChannelRun(pruned, to_jsonable(rep))


def _speedups(dense: dict, pruned: dict) -> dict:
    out = {}
    for k in ("prefill", "decode"):
        d, p = dense.get(f"{k}_tokens_per_s"), pruned.get(f"{k}_tokens_per_s")
        ideal = dense[f"flops_per_token_{k}"] / pruned[f"flops_per_token_{k}"]
        measured = p / d if d and p else None
        out[f"{k}_speedup"] = measured
        out[f"{k}_ideal_speedup"] = ideal
        out[f"{k}_efficiency"] = measured / ideal if measured else None
    return out


def run_ablation(lm, cfg: ChannelConfig | None = None, variants: Sequence[str] | None = None,
                 progress: Progress | None = None, should_stop: ShouldStop | None = None, **overrides) -> dict:
    """The paper's central comparison at one ratio: hybrid calibration vs each single domain vs one-shot
    (T = 1, hybrid). Every variant uses ``n_samples`` windows and is evaluated on every calibration domain.

    ``variants``: any of ``"hybrid"``, ``"one_shot"``, ``"single:<domain>"`` (default: all).
    Returns ``{"rows": [...], "dense": {domain: ppl}, "config", "domains"}`` (JSON-safe).
    """
    cfg = _resolve_config(cfg, overrides)
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
    return to_jsonable({"rows": rows, "dense": {d: dense[d]["perplexity"] for d in doms}, "domains": doms,
                        "config": cfg.to_dict(), "ratio": cfg.ratio})


# ----------------------------------------------------------------------------------------------------
# JSON


def to_jsonable(obj):
    """Plain JSON types only: tensors → lists, non-finite floats → None, tuples → lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)
