"""Checkpoint content for plans with attention / MLP sub-block drops, so plain transformers loads them exactly.

A dropped sub-block is stored *in place* with its output projection zeroed (``self_attn.o_proj`` /
``mlp.down_proj``, weight and bias when there is one). Every tensor of the architecture stays present,
so plain ``AutoModelForCausalLM.from_pretrained`` (no remote code) initialises nothing new, and the
block adds exactly nothing to the residual stream::

    attention dropped:  attn_out = o_proj(attn(...)) = 0·x (+ 0)      = 0   → resid_mid  = resid_pre + 0
    MLP dropped:        mlp_out  = down_proj(act(gate)·up) = 0        = 0   → resid_post = resid_mid + 0
    Gemma-3 sandwich:   post_attention_layernorm(0) = 0 · rsqrt(0 + eps) · (1 + w) = 0  (checked numerically)

Whole layers are still removed from the stack. The drops are recorded in ``config.json`` as
transformers' ``per_layer_config`` with the ``skip`` key (``{"3": {"skip": ["self_attn"]}}``; metadata:
transformers 5.23's Llama/Qwen/Gemma modelling does not act on it yet) and in ``entroscope-plan.json``
(``format: entroscope-pruned-v2``). Entroscope's own loader reads the plan, checks that the stored
projections are exactly zero and removes those blocks physically (fewer parameters, no KV cache for a
dropped attention). A plan that cannot be made exact (the projection is not a plain linear layer, or
a post-norm does not map zero to zero) is refused with :class:`~analysis.errors.SaveError`.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from analysis.models.adapters import ArchSpec, get_path, spec_for
from analysis.models.blocks import is_dropped, layer_status
from analysis.errors import SaveError
from analysis.models.plan import Plan

log = logging.getLogger(__name__)

#: ``source.checkpoint.format`` of a checkpoint whose dropped sub-blocks are stored zeroed (plain-loadable)
ZEROED_FORMAT = "entroscope-pruned-v2"
#: the old format: dropped sub-blocks' weights left out (only Entroscope's loader restores it)
OMITTED_FORMAT = "entroscope-pruned-v1"
KINDS = ("attn", "mlp")


def _names(spec: ArchSpec, kind: str) -> tuple[str, str, str | None]:
    """(sub-module, its output projection, sandwich post-norm or None) for ``attn`` / ``mlp``."""
    if kind == "attn":
        return spec.attn, spec.o_proj, spec.post_attn_norm
    return spec.mlp, spec.down_proj, spec.post_mlp_norm


def combined_plan(model: nn.Module, plan: Plan) -> Plan:
    """``plan`` plus the sub-blocks ``model`` has already lost physically (a pruned model pruned again),
    in the model's current layer indices, normalised."""
    norm = plan.normalized()
    status = layer_status(model)
    attn = set(norm.drop_attn) | {s["layer"] for s in status if not s["attn"]}
    mlp = set(norm.drop_mlp) | {s["layer"] for s in status if not s["mlp"]}
    return Plan(sorted(attn), sorted(mlp), list(norm.drop_layers), dict(plan.source)).normalized()


def subblock_drops(plan: Plan, num_layers: int) -> dict[int, list[str]]:
    """``{saved layer index: ["attn", "mlp"-ish kinds]}`` for a normalised plan (indices after whole-layer
    removal)."""
    kept = plan.kept_layers(num_layers)
    out: dict[int, list[str]] = {}
    for j, i in enumerate(kept):
        kinds = [k for k, lst in (("attn", plan.drop_attn), ("mlp", plan.drop_mlp)) if i in lst]
        if kinds:
            out[j] = kinds
    return out


def _check_exact(view: nn.Module, spec: ArchSpec, drops: dict[int, list[str]]) -> None:
    """Refuse (SaveError) unless zeroing each dropped block's output projection zeroes its contribution."""
    layers = get_path(view, spec.layers)
    checked_norms: set[str] = set()
    for j, kinds in drops.items():
        for kind in kinds:
            sub, proj, post = _names(spec, kind)
            module = getattr(layers[j], sub)
            if is_dropped(module):
                continue                                  # already removed: zeros are synthesised
            p = getattr(module, proj, None)
            if type(p) is not nn.Linear:                  # quantised / fused / missing: zeroing may not give 0
                raise SaveError(
                    f"Cannot store the dropped {kind} sub-block of layer {j} exactly for plain transformers: its "
                    f"output projection {sub}.{proj} is {type(p).__name__}, not a plain torch Linear",
                    hint="load the model unquantised (fp32/bf16) and save again, or drop whole layers")
            if post and post not in checked_norms:
                checked_norms.add(post)
                norm = next((getattr(layer, post) for layer in layers if not is_dropped(getattr(layer, post))), None)
                if norm is not None:
                    w = next(norm.parameters(), None)
                    zero = torch.zeros(1, 1, view.config.hidden_size, dtype=w.dtype if w is not None else None,
                                       device=w.device if w is not None else None)
                    with torch.no_grad():
                        out = norm(zero)
                    if not bool((out == 0).all()):
                        raise SaveError(
                            f"Cannot store a dropped {kind} sub-block exactly for plain transformers: the "
                            f"post-norm {post} does not map zero to zero",
                            hint="drop whole layers instead, or load the checkpoint with `python -m analysis load`")


def _reference_shapes(config) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Every parameter/buffer name and shape of the full architecture for ``config`` (built on meta)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        ref = AutoModelForCausalLM.from_config(config)
    return {k: (v.shape, v.dtype) for k, v in ref.state_dict().items()}


def zeroed_state_dict(view: nn.Module, drops: dict[int, list[str]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The view's state dict with every dropped sub-block's output projection replaced by zeros (new
    tensors: the shared base weights are never written) and any physically missing tensor of a dropped
    block synthesised as zeros, so the result has every tensor of the plain architecture."""
    spec = spec_for(view)
    _check_exact(view, spec, drops)
    sd = dict(view.state_dict())
    prefixes = {}
    for j, kinds in drops.items():
        for kind in kinds:
            sub, proj, _post = _names(spec, kind)
            base = f"{spec.layers}.{j}."
            prefixes[base + sub + "."] = (j, kind)
            if post := _names(spec, kind)[2]:
                prefixes[base + post + "."] = (j, kind)
            if kind == "attn":
                prefixes[base + spec.input_norm + "."] = (j, kind)
            else:
                prefixes[base + spec.mid_norm + "."] = (j, kind)
            for suffix in ("weight", "bias"):
                key = f"{base}{sub}.{proj}.{suffix}"
                if key in sd:
                    sd[key] = torch.zeros_like(sd[key])
    missing = {k: v for k, v in _reference_shapes(view.config).items() if k not in sd}
    tied = _tied_keys(view)
    for key, (shape, ref_dtype) in missing.items():
        if key in tied:
            continue
        if not any(key.startswith(p) for p in prefixes):
            raise SaveError(f"Cannot write a plain checkpoint: weight {key} is missing from the model and is not "
                            "part of a dropped sub-block")
        sd[key] = torch.zeros(shape, dtype=dtype if ref_dtype.is_floating_point else ref_dtype)
    return sd


def _tied_keys(model: nn.Module) -> set[str]:
    """Names transformers ties to another weight (e.g. ``lm_head.weight`` with tied embeddings)."""
    keys = set()
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(tied, dict):
        keys.update(tied)
    else:
        keys.update(tied)
    return {k for k in keys if isinstance(k, str)}


def per_layer_config(spec: ArchSpec, drops: dict[int, list[str]]) -> dict[int, dict]:
    """transformers' ``per_layer_config`` form of the drops: ``{layer: {"skip": [module names]}}``."""
    return {j: {"skip": sorted(_names(spec, k)[0] for k in kinds)} for j, kinds in sorted(drops.items())}


def set_per_layer_config(config, value: dict | None) -> None:
    """Record (or clear, ``None``) the drops on a config; older transformers without ``per_layer_config``
    get a plain attribute of the same name."""
    try:
        config.per_layer_config = value
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - transformers < 5.x
        if value is None:
            config.__dict__.pop("per_layer_config", None)
        else:
            config.__dict__["per_layer_config"] = {str(k): v for k, v in value.items()}


def verified_residual(model: nn.Module, residual: Plan) -> Plan:
    """The part of a stored sub-block plan whose output projections really are zero in ``model`` (a full
    structure just loaded). Blocks whose projection is not zero (e.g. fine-tuned after export) are kept and
    logged, so physical removal never changes the model's outputs."""
    spec = spec_for(model)
    layers = get_path(model, spec.layers)
    keep = {"attn": [], "mlp": []}
    for kind, lst in (("attn", residual.drop_attn), ("mlp", residual.drop_mlp)):
        sub, proj, _ = _names(spec, kind)
        for j in lst:
            p = getattr(getattr(layers[j], sub), proj, None)
            tensors = [t for t in (getattr(p, "weight", None), getattr(p, "bias", None)) if t is not None]
            if tensors and all(not bool(t.any()) for t in tensors):
                keep[kind].append(j)
            else:
                log.warning("layer %d %s: entroscope-plan.json marks it dropped but its %s.%s is not zero; keeping it",
                            j, kind, sub, proj)
    return Plan(keep["attn"], keep["mlp"], [], dict(residual.source))
