"""Healing after pruning: ``linear`` (ReplaceMe-style closed-form linear map folded into the projection
before each gap) and ``distill`` (short KL distillation with LoRA merged back); see :mod:`.registry`."""
from .registry import HEAL_METHODS, Healed, HealError, HealMethod, get_heal_method, heal, register_heal  # noqa: F401
from . import linear as _linear  # noqa: E402,F401  - registers "linear"
from . import distill as _distill  # noqa: E402,F401  - registers "distill"
from .models import compare, healed_lm, save_healed  # noqa: E402,F401
