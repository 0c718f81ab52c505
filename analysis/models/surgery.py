"""Block surgery: non-destructive what-if views, physical removal, and saving/loading pruned models.

Two ways to apply a :class:`~analysis.models.plan.Plan`, both built from the same small steps:

* :func:`pruned_view` / :func:`what_if` build a *new* model object that shares every weight tensor with
  the base model and skips the planned blocks. The base model, its modules, config and weights are
  never touched (not even temporarily): the view has its own top-level module, base module, config
  copy and a new ``ModuleList`` of shallow-copied decoder layers, so two threads can evaluate two
  plans on one shared base model at the same time.
* :func:`apply_plan` performs the same surgery in place on a model you own (:func:`prune_copy` makes
  one): dropped layers leave the ``ModuleList``, ``layer_idx`` is re-indexed and every per-layer config
  list is sliced, so ``save_pretrained`` output reloads with plain ``AutoModelForCausalLM.from_pretrained``.

A dropped attention or MLP sub-block is *really* skipped: the layer's ``forward`` is replaced by one
that runs only the kept half (for a dropped attention: no input norm, no attention, and for Gemma no
``post_attention_layernorm``), so ``resid_mid == resid_pre`` exactly. The dropped modules become
parameter-free :class:`DroppedBlock` placeholders (nothing stored when saved). Dropped attentions get
no KV cache: the config's per-layer ``kv_sharing_modes`` marks them ``"reuse"``, which makes
transformers' caches put a ``DummyLayer`` (stores nothing) in their slot, and sequence length and
masks are then read from the first real attention layer. Every plan saves as a standard checkpoint that
plain ``from_pretrained`` reloads exactly: dropped sub-blocks are stored with zeroed output projections
(:mod:`analysis.models.checkpoint`) and listed in ``entroscope-plan.json``, from which
:func:`~analysis.models.loading.load_pruned` and :func:`~analysis.models.loading.load_model` remove them
physically again.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
import types
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from analysis.models.adapters import ArchSpec, adapter_for, get_path, spec_for
from analysis.models.checkpoint import (ZEROED_FORMAT, combined_plan, per_layer_config, set_per_layer_config,
                                       subblock_drops, verified_residual, zeroed_state_dict)
from analysis.models.blocks import DroppedBlock, is_dropped, layer_status, model_of as _model_of  # noqa: F401 - re-exported
from analysis.errors import ModelLoadError, SaveError  # noqa: F401 - SaveError re-exported
from analysis.models.integrity import is_tied as _is_tied
from analysis.store.outdir import atomic_dir, check_out_dir  # noqa: F401 - check_out_dir re-exported (CLI)
from analysis.models.plan import Plan

PLAN_FILE = "entroscope-plan.json"
#: config attribute whose "reuse" entries make HF caches allocate nothing for a layer (DummyLayer)
KV_MARK = "kv_sharing_modes"


# ----------------------------------------------------------------------------------------------------
# skipping forwards (bound with functools.partial to one decoder layer)


def _mlp_only_forward(layer: nn.Module, spec: ArchSpec, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """Decoder layer with its attention dropped: resid_mid = resid_pre, then the MLP half."""
    resid_mid = hidden_states                                                   # [batch, pos, d_model]
    mlp_out = getattr(layer, spec.mlp)(getattr(layer, spec.mid_norm)(resid_mid))
    if spec.post_mlp_norm:
        mlp_out = getattr(layer, spec.post_mlp_norm)(mlp_out)
    return resid_mid + mlp_out                                                  # resid_post


def _attn_only_forward(layer: nn.Module, spec: ArchSpec, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """Decoder layer with its MLP dropped: the attention half, then resid_post = resid_mid."""
    resid_pre = hidden_states                                                   # [batch, pos, d_model]
    attn_out, _ = getattr(layer, spec.attn)(hidden_states=getattr(layer, spec.input_norm)(resid_pre), **kwargs)
    if spec.post_attn_norm:
        attn_out = getattr(layer, spec.post_attn_norm)(attn_out)
    return resid_pre + attn_out                                                 # resid_mid = resid_post


def _set_forward(layer: nn.Module, fn) -> None:
    """Replace one layer's forward (behind accelerate's hook when the model was dispatched)."""
    if "_old_forward" in layer.__dict__:
        layer._old_forward = fn
    else:
        layer.forward = fn


# ----------------------------------------------------------------------------------------------------
# in-place surgery on a model you own


def _drop_attention(layer: nn.Module, spec: ArchSpec) -> None:
    for name in (spec.attn, spec.input_norm, spec.post_attn_norm):
        if name:
            setattr(layer, name, DroppedBlock(f"attention sub-block ({name})"))
    _set_forward(layer, functools.partial(_mlp_only_forward, layer, spec))


def _drop_mlp(layer: nn.Module, spec: ArchSpec) -> None:
    for name in (spec.mlp, spec.mid_norm, spec.post_mlp_norm):
        if name:
            setattr(layer, name, DroppedBlock(f"MLP sub-block ({name})"))
    _set_forward(layer, functools.partial(_attn_only_forward, layer, spec))


def _reindex(layer: nn.Module, idx: int) -> None:
    """Set ``layer_idx`` (the KV-cache slot) on the layer and its direct children (its attention)."""
    for m in (layer, *layer.children()):
        if isinstance(m.__dict__.get("layer_idx"), int):
            m.layer_idx = idx


def _slice_config(config, kept: list[int], num_layers: int) -> None:
    """``num_hidden_layers`` and every per-layer list (layer_types, mlp_layer_types, ...) follow ``kept``."""
    for key, value in list(vars(config).items()):
        if key.startswith("_") or key in ("architectures", KV_MARK):
            continue
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, key, type(value)(value[i] for i in kept))
    config.num_hidden_layers = len(kept)


def _mark_kv(config, layers: nn.ModuleList, spec: ArchSpec) -> None:
    """Mark dropped attentions so HF caches allocate a storage-free DummyLayer for them."""
    dropped = [is_dropped(getattr(layer, spec.attn)) for layer in layers]
    if any(dropped):
        setattr(config, KV_MARK, ["reuse" if d else None for d in dropped])
    elif KV_MARK in vars(config):
        delattr(config, KV_MARK)


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Prune ``model`` in place (use it on a model you own: :func:`prune_copy`, or a fresh load).

    Plan indices refer to the model's current layers. Returns the same model object.
    """
    spec = spec_for(model)
    layers = get_path(model, spec.layers)
    n = len(layers)
    plan = plan.validate(n).normalized()
    for i in plan.drop_attn:
        _drop_attention(layers[i], spec)
    for i in plan.drop_mlp:
        _drop_mlp(layers[i], spec)
    both = {i for i, layer in enumerate(layers)                         # e.g. a second plan on a pruned model
            if is_dropped(getattr(layer, spec.attn)) and is_dropped(getattr(layer, spec.mlp))}
    kept = [i for i in range(n) if i not in set(plan.drop_layers) | both]
    new_layers = nn.ModuleList([layers[i] for i in kept])
    for new_i, layer in enumerate(new_layers):
        _reindex(layer, new_i)
    parent, _, name = spec.layers.rpartition(".")
    setattr(get_path(model, parent) if parent else model, name, new_layers)
    _slice_config(model.config, kept, n)
    _mark_kv(model.config, new_layers, spec)
    return model


# ----------------------------------------------------------------------------------------------------
# non-destructive views


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object sharing parameters and children, with its own registries and hook dicts."""
    new = copy.copy(module)
    for key, value in module.__dict__.items():
        if key.startswith("_") and isinstance(value, (dict, set)):
            new.__dict__[key] = copy.copy(value)
    fwd = module.__dict__.get("forward")                      # accelerate hook bound to the original
    if isinstance(fwd, functools.partial) and fwd.args and fwd.args[0] is module:
        new.__dict__["forward"] = functools.partial(fwd.func, new, *fwd.args[1:], **fwd.keywords)
    old = module.__dict__.get("_old_forward")
    if isinstance(old, types.MethodType) and old.__self__ is module:
        new.__dict__["_old_forward"] = types.MethodType(old.__func__, new)
    return new


def _structure_copy(model: nn.Module, spec: ArchSpec) -> nn.Module:
    """Top-level model, base model, layer list, decoder layers and their attentions as new objects;
    weights, norms, embeddings and the LM head shared. Only reads ``model``."""
    top = _shallow(model)
    top.config = copy.deepcopy(model.config)
    if getattr(model, "generation_config", None) is not None:
        top.generation_config = copy.deepcopy(model.generation_config)
    parent = top
    path = spec.layers.split(".")
    for part in path[:-1]:                                   # e.g. "model": the base model
        child = _shallow(parent._modules[part])
        if getattr(child, "config", None) is model.config:
            child.config = top.config
        parent._modules[part] = child
        parent = child
    layers = []
    for layer in parent._modules[path[-1]]:
        new = _shallow(layer)
        for name, child in layer._modules.items():
            if child is not None and "layer_idx" in child.__dict__:
                new._modules[name] = _shallow(child)
        layers.append(new)
    parent._modules[path[-1]] = nn.ModuleList(layers)
    return top


def pruned_view(model_or_lm, plan: Plan | None) -> nn.Module:
    """A new model that shares every weight with ``model`` and skips the planned blocks.

    The base model object, its modules, config and weights are left untouched, so its outputs stay
    bit-identical and views for different plans can run concurrently (one per thread).
    """
    model = _model_of(model_or_lm)
    view = _structure_copy(model, spec_for(model))
    return apply_plan(view, plan or Plan())


@contextlib.contextmanager
def what_if(model_or_lm, plan: Plan | None) -> Iterator[nn.Module]:
    """``with what_if(model, plan) as pruned: ...``: a :func:`pruned_view` for the block."""
    view = pruned_view(model_or_lm, plan)
    try:
        yield view
    finally:
        del view


def prune_copy(model_or_lm, plan: Plan | None):
    """A physically pruned deep copy (only the kept weights are copied); the original is untouched.

    Given a LoadedModel, returns a LoadedModel; given a model, a model.
    """
    model = _model_of(model_or_lm)
    pruned = copy.deepcopy(pruned_view(model, plan))
    if model_or_lm is model:
        return pruned
    lm = model_or_lm
    return type(lm)(model=pruned, tokenizer=lm.tokenizer, adapter=adapter_for(pruned), name=lm.name,
                    source=lm.source, fingerprint=lm.fingerprint, device=lm.device, dtype=lm.dtype,
                    info={**lm.info, "plan": (plan or Plan()).to_dict()})


def kept_attention_layers(model_or_lm) -> list[int]:
    """Indices (in the model as it is) of layers whose attention runs and holds KV cache."""
    return [s["layer"] for s in layer_status(model_or_lm) if s["attn"]]


# ----------------------------------------------------------------------------------------------------
# saving and loading


def _checkpoint_plan(plan: Plan, model: nn.Module, name: str | None, fmt: str = "entroscope-pruned-v1") -> Plan:
    """The plan as stored next to the checkpoint: original indices plus what was removed."""
    n = len(get_path(model, spec_for(model).layers))
    norm = plan.normalized()
    source = {**plan.source, "checkpoint": {"original_num_layers": n, "kept_layers": norm.kept_layers(n),
                                            "model": name, "format": fmt}}
    return Plan(norm.drop_attn, norm.drop_mlp, norm.drop_layers, source)


def save_pruned(model_or_lm, plan: Plan | None, out_dir: str | os.PathLike, overwrite: bool = False,
                root: str | os.PathLike | None = None, tokenizer=None, extra_files: dict | None = None,
                expected: str | None = None, card: dict | None = None) -> Path:
    """Save the model with ``plan`` applied to ``out_dir`` (the model passed in is not modified).

    Every plan gives a standard checkpoint that plain ``from_pretrained`` reloads with exactly the pruned
    model's outputs: whole layers are removed; a dropped attention/MLP sub-block is stored with its output
    projection zeroed (see :mod:`analysis.models.checkpoint`) and recorded in ``config.json``'s
    ``per_layer_config`` and in ``entroscope-plan.json``, from which
    :func:`~analysis.models.loading.load_pruned` / ``load_model`` remove it physically. Sub-blocks the model
    had already lost are kept dropped. The tokenizer
    (``tokenizer`` or the LoadedModel's) is written too. The directory appears atomically (written under a
    temporary name, then renamed, under a lock; see :mod:`analysis.store.outdir`). ``extra_files`` ({name: text},
    e.g. the reproduction manifest) are written inside the same temporary folder; ``expected`` is what
    :func:`check_out_dir` returned at the start. A Hugging Face model card (``README.md``,
    :mod:`analysis.models.card`) is written unless ``extra_files`` has one; ``card`` adds its evaluation/sizes.
    """
    model = _model_of(model_or_lm)
    spec = spec_for(model)
    n = len(get_path(model, spec.layers))
    plan = combined_plan(model, (plan or Plan()).validate(n))
    tokenizer = tokenizer if tokenizer is not None else getattr(model_or_lm, "tokenizer", None)
    out = Path(out_dir).expanduser()
    expected = check_out_dir(out, overwrite, root) if expected is None else expected
    drops = subblock_drops(plan, n)
    view = pruned_view(model, Plan(drop_layers=plan.drop_layers) if drops else plan)
    if KV_MARK in vars(view.config):                         # runtime-only: re-applied from the plan on load
        delattr(view.config, KV_MARK)
    set_per_layer_config(view.config, per_layer_config(spec, drops) if drops else None)
    state_dict = None
    if drops:
        p = next(model.parameters())
        state_dict = zeroed_state_dict(view, drops, p.dtype)
    stored = _checkpoint_plan(plan, model, getattr(model_or_lm, "name", None), ZEROED_FORMAT)
    with atomic_dir(out, overwrite, root, expected) as tmp:
        view.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        stored.save(tmp / PLAN_FILE)
        for name, text in (extra_files or {}).items():
            (tmp / Path(name).name).write_text(text)
        if "README.md" not in (extra_files or {}):
            from analysis.models.card import checkpoint_card

            zeroed = {str(j): kinds for j, kinds in drops.items()} or None
            (tmp / "README.md").write_text(checkpoint_card(model_or_lm, stored, zeroed, tmp, extra_files, card))
    return out


def saved_plan(path: str | os.PathLike) -> Plan | None:
    """The plan stored in a checkpoint directory by :func:`save_pruned`, or None."""
    f = Path(path).expanduser() / PLAN_FILE
    return Plan.load(f) if f.is_file() else None


def residual_plan(plan: Plan, saved_num_layers: int) -> Plan:
    """The sub-block drops of a stored plan in the saved checkpoint's layer indices."""
    ck = plan.source.get("checkpoint") or {}
    norm = plan.normalized()
    kept = ck.get("kept_layers") or norm.kept_layers(saved_num_layers + len(norm.drop_layers))
    if len(kept) != saved_num_layers:
        raise ModelLoadError(f"{PLAN_FILE} does not match the checkpoint: it keeps {len(kept)} layers, "
                             f"config.json has {saved_num_layers}")
    new = {old: i for i, old in enumerate(kept)}
    try:
        return Plan([new[i] for i in norm.drop_attn], [new[i] for i in norm.drop_mlp], [], dict(plan.source))
    except KeyError as exc:
        raise ModelLoadError(f"{PLAN_FILE} drops a sub-block of layer {exc.args[0]}, which is not in the checkpoint") \
            from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        from analysis.store.jsonio import read_json

        files = sorted(set(read_json(index, kind="weight index")["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ModelLoadError(f"{path} has no model.safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return sd


def load_weights_into(model: nn.Module, path: Path, described_by: str) -> None:
    """Load a checkpoint directory's weights into ``model`` (built with the right shapes); every weight
    must match exactly (tied weights aside), else a clear error naming the file that describes it."""
    from transformers import GenerationConfig

    model.tie_weights()
    missing, unexpected = model.load_state_dict(_read_state_dict(path), strict=False)
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise ModelLoadError(f"{path} does not match its {described_by}: {len(missing)} missing weights "
                             f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))


def load_subblock_checkpoint(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> nn.Module | None:
    """Rebuild a checkpoint saved with sub-block drops; None when the directory has none (plain load).

    ``entroscope-pruned-v2`` (dropped sub-blocks stored with zeroed output projections): loads the full
    structure strictly, then removes the blocks whose projections are exactly zero physically. The older
    v1 (dropped weights left out): applies the drops first, then loads strictly. Either way every weight
    must be present and none unexpected.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path).expanduser()
    plan = saved_plan(path)
    if plan is None or not (plan.drop_attn or plan.drop_mlp):
        return None
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    residual = residual_plan(plan, int(config.num_hidden_layers))
    from transformers.initialization import no_init_weights
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if (plan.source.get("checkpoint") or {}).get("format") == ZEROED_FORMAT:
        load_weights_into(model, path, "config.json")
        apply_plan(model, verified_residual(model, residual))
    else:
        apply_plan(model, residual)
        load_weights_into(model, path, PLAN_FILE)
    set_per_layer_config(model.config, None)       # the drops are physical now (and in entroscope_plan)
    model.entroscope_plan = plan
    return model
