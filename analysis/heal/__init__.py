"""Healing after pruning: ``linear`` (ReplaceMe-style closed-form linear map folded into the projection
before each gap) and ``distill`` (short KL distillation with LoRA merged back).

:mod:`.registry` holds ``HEAL_METHODS`` (the methods' semantics, their functions named as lazy
``"module:attr"`` strings), :mod:`.linear` and :mod:`.distill` the methods, :mod:`.models` the healed model as
a LoadedModel, its comparison with the original and its checkpoint. The face is lazy (:mod:`analysis.lazy`).
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "HEAL_METHODS": "registry", "Healed": "registry", "HealError": "registry", "HealMethod": "registry",
    "get_heal_method": "registry", "heal": "registry", "register_heal": "registry",
    "compare": "models", "healed_lm": "models", "save_healed": "models", "heal_tokens": "models",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
