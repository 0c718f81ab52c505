"""Healing methods, registered with their semantics (like :mod:`analysis.score.criteria`).

A healing method repairs a pruned model: given the original model, a :class:`~analysis.models.plan.Plan` and
calibration tokens it returns a :class:`Healed` model with new weights for the pruned model. The shared
base model is never modified: ``linear`` returns a view that shares every weight with the base model
except the few projections it rewrites; ``distill`` trains its own pruned copy.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from analysis.errors import EntroscopeError
from analysis.models.plan import Plan
from analysis.registry import Registry, lazy_callable
from analysis.settings import SEED_MAX, check_ranges, setting

Progress = Callable[[float, str], None]


class HealError(EntroscopeError):
    """A healing method cannot be applied to this model or plan."""


# ---- each method's options with their ranges: one declaration for the library, the CLI and the app -----------

@dataclass
class LinearHealSettings:
    """``linear``'s options. Ranges are checked on construction (:func:`~analysis.settings.check_ranges`), so a
    library caller of :func:`heal` gets the CLI's clear error before any model work."""

    ridge: float = setting(1e-4, flag="heal-ridge", help="linear: ridge towards identity", min=0, max=1e6, what="a ridge ≥ 0")
    batch_size: int = setting(4, flag="heal-batch-size", help="windows per batch", min=1, max=65_536, what="a batch size")
    skip_first_token: bool = setting(False, flag="heal-skip-first-token", help="linear: leave position 0 (the sink token) out of the fit")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class DistillHealSettings:
    """``distill``'s options, checked like :class:`LinearHealSettings`."""

    steps: int = setting(50, flag="heal-steps", help="distill: optimizer steps", min=1, max=1_000_000, what="a step count")
    rank: int = setting(8, flag="heal-rank", help="distill: LoRA rank", min=1, max=65_536, what="a LoRA rank")
    lr: float = setting(5e-4, flag="heal-lr", help="distill: learning rate", min=0, max=10, min_open=True,
                        what="a learning rate > 0")
    batch_size: int = setting(2, flag="heal-batch-size", help="windows per step", min=1, max=65_536, what="a batch size")
    temperature: float = setting(1.0, cli=False, help="distill: softmax temperature", min=0, max=100, min_open=True,
                                 what="a temperature > 0")
    init: str = setting("none", flag="heal-init", help="distill: start from the bare pruned model or the linear-healed one",
                        choices=("none", "linear"))
    seed: int = setting(0, cli=False, help="distill: LoRA initialisation seed", min=0, max=SEED_MAX, what="a seed (a whole number)")

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.init not in ("none", "linear"):
            raise HealError(f"DistillHealSettings.init must be 'none' or 'linear', got {self.init!r}")


def settings_spec(cls, name: str):
    """The :class:`~analysis.settings.Spec` of option ``name`` of a heal-settings class (the CLI takes its
    argparse type from it: one range, stated once)."""
    from analysis.settings import specs

    return next(s for s in specs(cls) if s.name == name)


@dataclass(frozen=True)
class HealMethod:
    name: str
    title: str
    description: str
    needs: str                                   # what it reads (data, passes)
    changes: str                                 # what weights it rewrites
    fn: Callable[..., "Healed"] | str            # (lm, plan, tokens, progress=, stop=, **params) -> Healed; or "module:attr"
    granularities: tuple[str, ...] = ("layer", "attention", "mlp")
    params: dict = field(default_factory=dict)   # options and their defaults (from ``settings`` when given)
    reference: str = ""
    needs_data: bool = True
    settings: type | None = None                 # a dataclass of the options with their ranges (checked)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fn", lazy_callable(self.fn))   # a "module:attr" fn is imported on first call
        if self.settings is not None and not self.params:
            object.__setattr__(self, "params", dataclasses.asdict(self.settings()))


@dataclass
class Healed:
    """A healed pruned model (layers already removed) and how it was made."""

    method: str
    plan: Plan
    model: nn.Module            # the healed pruned model; never the shared base model
    settings: dict              # the options used (recorded in manifests and reproduce commands)
    report: dict = field(default_factory=dict)   # seconds, passes, per-gap fit figures, losses, ...

    def describe(self) -> dict:
        """Healing metadata for manifests (no tensors)."""
        return {"method": self.method, "settings": dict(self.settings), "report": dict(self.report)}


HEAL_METHODS: Registry[HealMethod] = Registry("healing method", HealError)


def register_heal(m: HealMethod) -> HealMethod:
    """Add ``m`` to :data:`HEAL_METHODS` (a name already registered raises)."""
    return HEAL_METHODS.register(m)


def get_heal_method(name: str) -> HealMethod:
    """The registered healing method ``name``; :class:`HealError` listing the choices if there is none."""
    return HEAL_METHODS[name]


def should_stop(stop) -> bool:
    """``stop``: None, a threading.Event or a callable returning True when the user pressed Stop."""
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


def resolve_params(m: HealMethod, options: dict) -> dict:
    unknown = sorted(k for k, v in options.items() if k not in m.params and v is not None)
    if unknown:
        raise HealError(f"healing method {m.name!r} has no option(s) {unknown}",
                        hint=f"its options: {', '.join(m.params) or 'none'}")
    params = {k: (options[k] if options.get(k) is not None else v) for k, v in m.params.items()}
    if m.settings is not None:              # ranges checked here, before any model work
        params = dataclasses.asdict(m.settings(**params))
    return params


def heal(lm, plan: Plan | None, method: str = "linear", tokens=None, progress: Progress | None = None,
         stop=None, **options) -> Healed:
    """Heal ``plan`` applied to ``lm`` with a registered method; ``tokens``: calibration ``[N, T]`` ids
    (a tensor or TokenSet). The base model ``lm.model`` is left bit-identical."""
    import torch

    m = get_heal_method(method)
    plan = (plan or Plan()).validate(lm.num_layers).normalized()
    params = resolve_params(m, options)
    if hasattr(tokens, "input_ids"):
        tokens = tokens.input_ids
    if m.needs_data and not plan.is_empty:
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.numel() == 0:
            raise HealError(f"healing with {method!r} needs calibration tokens [N, T]",
                            hint="pass a TokenSet or an integer tensor of token windows")
        tokens = tokens.to(torch.long)
    return m.fn(lm, plan, tokens, progress=progress, stop=stop, **params)


def _none(lm, plan, tokens, progress=None, stop=None, **_) -> Healed:
    from analysis.models.surgery import pruned_view

    return Healed("none", plan, pruned_view(lm.model, plan), {}, {"seconds": 0.0, "passes": 0})


register_heal(HealMethod(
    "none", "No healing", "The pruned model as it is.", needs="nothing", changes="nothing", fn=_none,
    needs_data=False))
register_heal(HealMethod(
    "linear", "Linear replacement (ReplaceMe)",
    "Each run of removed blocks is replaced by one linear map, fitted by least squares (ridge towards the "
    "identity) on the original model's calibration activations and folded into the projection before "
    "the gap: no new parameters, training-free.",
    needs="calibration tokens; one forward pass of the original model up to the deepest gap",
    changes="down_proj of the layer before each removed run (o_proj of the same layer for an MLP-only drop)",
    fn="analysis.heal.linear:heal_linear", settings=LinearHealSettings,
    reference="Shopkhoev et al. 2025, ReplaceMe, arXiv 2505.02819"))
register_heal(HealMethod(
    "distill", "KL distillation (LoRA)",
    "A short distillation from the original (teacher) to the pruned model (student): LoRA adapters on the "
    "attention and MLP projections minimise KL(teacher ‖ student) on calibration windows, then are merged "
    "back into the weights (plain checkpoint, same architecture).",
    needs="calibration tokens; `steps` forward+backward passes of the student and forwards of the teacher",
    changes="every kept attention and MLP projection (low-rank update merged into the weights)",
    fn="analysis.heal.distill:heal_distill", settings=DistillHealSettings,
    reference="LoRA (Hu et al. 2021) + logit distillation as in LLM-Streamline / Minitron"))
