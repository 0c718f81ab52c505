"""What a pruned model has lost: the placeholder for a dropped sub-block and per-layer status.

Low in the package (it needs only :mod:`analysis.models.adapters`), so both :mod:`analysis.models.surgery`, which drops
blocks, and :mod:`analysis.models.checkpoint`, which saves what was dropped, use it without importing each other.
"""
from __future__ import annotations

from torch import nn

from analysis.models.adapters import get_path, spec_for


class DroppedBlock(nn.Module):
    """Placeholder for a dropped sub-module: no parameters, never called."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.what} was dropped by the pruning plan and must not run")

    def extra_repr(self) -> str:
        return self.what


def model_of(model_or_lm) -> nn.Module:
    """The ``nn.Module`` of a LoadedModel, or the module itself."""
    return getattr(model_or_lm, "model", model_or_lm) if hasattr(model_or_lm, "adapter") else model_or_lm


def is_dropped(module: nn.Module) -> bool:
    return isinstance(module, DroppedBlock)


def layer_status(model_or_lm) -> list[dict]:
    """Per decoder layer of a (possibly pruned) model: is its attention / MLP kept."""
    model = model_of(model_or_lm)
    spec = spec_for(model)
    return [{"layer": i, "attn": not is_dropped(getattr(layer, spec.attn)),
             "mlp": not is_dropped(getattr(layer, spec.mlp))} for i, layer in enumerate(get_path(model, spec.layers))]
