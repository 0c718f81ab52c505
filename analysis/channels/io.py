"""Saving channel-pruned models (``entroscope-channels.json`` next to the weights) and loading them back;
JSON cleaning for the reports. The reader of the format lives in :mod:`analysis.models.channel_checkpoint`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from analysis.channels.prune import head_dim, kv_groups, mlp_linears, mlp_widths
from analysis.models.adapters import adapter_for
from analysis.models.channel_checkpoint import CHANNELS_FILE, FORMAT, read_channels_meta
from analysis.models.loading import load_model
from analysis.store.jsonio import clean_json
from analysis.store.outdir import atomic_dir, check_out_dir

REPORT_FILE = "channels-report.json"


def models_of(lm):
    """(model, tokenizer) of a LoadedModel, or (model, None) of a bare nn.Module."""
    if isinstance(lm, nn.Module):
        return lm, None
    return lm.model, getattr(lm, "tokenizer", None)


def _standard_layout(model: nn.Module) -> bool:
    """True when ``from_pretrained(config)`` rebuilds exactly these shapes and biases."""
    cfg = model.config
    adapter = adapter_for(model)
    mlp_bias = bool(getattr(cfg, "mlp_bias", False))
    for i in range(adapter.num_layers):
        gate, up, down = mlp_linears(adapter, i)
        if gate.out_features != cfg.intermediate_size or (down.bias is not None) != mlp_bias \
                or (gate.bias is not None) != mlp_bias:
            return False
    return True


def channel_layout(model: nn.Module) -> dict:
    """What ``entroscope-channels.json`` stores about the structure of a (pruned) model."""
    adapter = adapter_for(model)
    L = adapter.num_layers
    return {"intermediate_sizes": mlp_widths(model), "kv_groups": kv_groups(model),
            "head_dim": head_dim(model),
            "mlp_bias": [[mlp_linears(adapter, i)[j].bias is not None for j in range(3)] for i in range(L)],
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
    model, tok = models_of(model_or_lm)
    tokenizer = tokenizer if tokenizer is not None else tok
    out = Path(out_dir).expanduser()
    expected = check_out_dir(out, overwrite, root) if expected is None else expected
    layout = channel_layout(model)
    meta = {"format": FORMAT, **layout,
            "model_type": model.config.model_type,
            "note": ("standard checkpoint: plain AutoModelForCausalLM.from_pretrained reloads it"
                     if layout["loader"] == "standard" else
                     "per-layer shapes: reload with analysis.channels.load_channel_pruned(dir)"),
            "kept_channels": (report or {}).get("kept_channels"),
            "kept_kv_groups": (report or {}).get("kept_kv_groups"),
            "source": {k: (report or {}).get("manifest", {}).get(k) for k in ("model",)} if report else None}
    with atomic_dir(out, overwrite, root, expected) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / CHANNELS_FILE).write_text(json.dumps(clean_json(meta, fallback=str), indent=1))
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(clean_json(report, fallback=str), indent=1))
    return out


def load_channel_pruned(path, device: str = "auto", dtype: str | torch.dtype = "fp32"):
    """Load a directory written by :func:`save_channel_pruned` as a LoadedModel (any layout); its
    ``entroscope-channels.json`` is in ``info["channels"]``."""
    p = Path(path).expanduser()
    lm = load_model(str(p), device=device, dtype=dtype, offline=True)
    meta = read_channels_meta(p)
    if meta is not None:
        lm.info["channels"] = meta
    return lm
