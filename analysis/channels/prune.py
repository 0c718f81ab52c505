"""Physical width pruning: slicing MLP channels and attention KV groups out of the model (in place),
keeping the config in step, and the kept widths per step (uniform or global allocation).

Shapes: ``gate_proj``/``up_proj`` weights ``[m, hidden]``, ``down_proj`` ``[hidden, m]`` (``m`` = the
layer's current intermediate width); ``k_proj``/``v_proj`` ``[n_kv * head_dim, hidden]``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from analysis.errors import SelectionError
from analysis.models.adapters import adapter_for


def mlp_linears(adapter, i: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """(gate_proj, up_proj, down_proj) of layer ``i``."""
    mlp, spec = adapter.mlp(i), adapter.spec
    return getattr(mlp, spec.gate_proj), getattr(mlp, spec.up_proj), getattr(mlp, spec.down_proj)


def mlp_widths(model: nn.Module) -> list[int]:
    """Current intermediate width of every layer's MLP (``gate_proj.out_features``)."""
    adapter = adapter_for(model)
    return [int(mlp_linears(adapter, i)[0].out_features) for i in range(adapter.num_layers)]


def head_dim(model: nn.Module) -> int:
    """Size of one attention head (the config's ``head_dim``, else hidden / heads)."""
    cfg = model.config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def kv_groups(model: nn.Module) -> list[int]:
    """Current number of KV heads (= KV groups) in every layer (from ``k_proj.out_features``)."""
    adapter, hd = adapter_for(model), head_dim(model)
    return [int(adapter.attn(i).k_proj.out_features) // hd for i in range(adapter.num_layers)]


def group_size(model: nn.Module) -> int:
    """Query heads per KV head (grouped-query attention)."""
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
        gate, up, down = mlp_linears(adapter, i)
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
    hd, g = head_dim(model), group_size(model)
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
    hd, g = head_dim(model), group_size(model)
    groups = kv_groups(model)
    if groups and groups[0] != int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads):
        cfg.head_dim = hd
        cfg.num_key_value_heads = groups[0]
        cfg.num_attention_heads = groups[0] * g


def finalise_bias_layout(model: nn.Module) -> None:
    """Llama-style configs (``mlp_bias``) with uniform widths and compensation biases: give gate/up (and
    any bias-less down_proj) zero biases and set ``mlp_bias=True``, so the checkpoint is standard."""
    adapter = adapter_for(model)
    downs = [mlp_linears(adapter, i)[2] for i in range(adapter.num_layers)]
    if not any(d.bias is not None for d in downs) or not hasattr(model.config, "mlp_bias") or model.config.mlp_bias:
        return
    if len(set(mlp_widths(model))) != 1:
        return
    for i in range(adapter.num_layers):
        for lin in mlp_linears(adapter, i):
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                    device=lin.weight.device), requires_grad=False)
    model.config.mlp_bias = True


# ----------------------------------------------------------------------------------------------------
# allocation: kept widths per step


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


def top_positions(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` highest scores (ties: lower position first), sorted."""
    order = (-scores.double()).argsort(stable=True)
    return order[:k].sort().values


