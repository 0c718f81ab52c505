"""Models: loading, architecture adapters, surgery views, checkpoints and their formats, shared forward helpers.

Layers inside the package (a module imports only modules to its left)::

    adapters, blocks, integrity, plan, device, embedded, forward  <  checkpoint  <  surgery
      <  channel_checkpoint, prefix  <  loading

The face below is lazy (``from analysis.models import load_model`` imports only what it needs), so importing
a light module such as :mod:`analysis.models.plan` never pulls in torch through this package.
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "LoadedModel": "loading", "load_model": "loading", "load_pruned": "loading", "wrap_model": "loading",
    "count_params": "loading", "weights_hash": "loading", "describe": "loading",
    "EMBEDDED": "embedded", "DEFAULT_MODEL": "embedded", "cache_root": "embedded", "is_installed": "embedded",
    "resolve_device": "device", "resolve_dtype": "device", "dtype_name": "device", "parse_max_memory": "device",
    "Adapter": "adapters", "ArchSpec": "adapters", "adapter_for": "adapters", "spec_for": "adapters",
    "Plan": "plan", "plan_from_args": "plan",
    "pruned_view": "surgery", "what_if": "surgery", "prune_copy": "surgery", "save_pruned": "surgery",
    "apply_plan": "surgery", "layer_status": "surgery",
    "head_logits": "forward", "final_hidden": "forward", "nll_sum": "forward", "ppl_from_nll": "forward",
    "prefix_schedule": "prefix", "prefix_batch": "prefix", "plan_key": "prefix",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
