"""Healing after pruning: ``linear`` (ReplaceMe-style closed-form linear map folded into the projection
before each gap) and ``distill`` (short KL distillation with LoRA merged back); see :mod:`.registry`."""
from analysis.heal.registry import HEAL_METHODS, Healed, HealError, HealMethod, get_heal_method, heal, register_heal  # noqa: F401
from analysis.heal import linear as _linear  # noqa: E402,F401  - registers "linear"
from analysis.heal import distill as _distill  # noqa: E402,F401  - registers "distill"
from analysis.heal.models import compare, healed_lm, save_healed  # noqa: E402,F401
