"""Pruning plans: which 0-based attention sub-blocks, MLP sub-blocks and whole decoder layers to drop.

A plan is plain data, saved as JSON with the schema version and four keys::

    {"schema_version": 1, "drop_attn": [5, 7], "drop_mlp": [9], "drop_layers": [20, 21], "source": {...}}

``source`` records where the plan came from (criterion, k, granularity, drop order and the analysis
run's manifest, or "manual"). Indices always refer to the *original* model's layers (0-based).
:meth:`Plan.normalized` folds sub-blocks of dropped layers away and turns a layer whose attention and
MLP are both dropped into a dropped layer, so equivalent plans compare equal.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path

from analysis.errors import DataError, SelectionError  # noqa: F401 - DataError: raised via schemas
from analysis.indices import GRANULARITY_KEY

PLAN_KEYS = ("drop_attn", "drop_mlp", "drop_layers")
RECOMMENDATION_KIND = "entroscope-recommendation"   # rec.json (analysis.recommend): a plan file too, via its "plan"
_LABELS = {"drop_layers": "layer", "drop_attn": "attention sub-block", "drop_mlp": "MLP sub-block"}


@dataclass
class Plan:
    """Blocks to drop (0-based indices into the original model's decoder layers)."""

    drop_attn: list[int] = field(default_factory=list)     # attention sub-blocks (resid_mid = resid_pre)
    drop_mlp: list[int] = field(default_factory=list)      # MLP sub-blocks (resid_post = resid_mid)
    drop_layers: list[int] = field(default_factory=list)   # whole decoder layers (removed from the stack)
    source: dict = field(default_factory=dict)             # provenance: criterion, k, run manifest, ...

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_selection(cls, sel, run=None) -> "Plan":
        """The plan for a :class:`~analysis.score.criteria.Selection` (``run``: its AnalysisResult, for provenance)."""
        if sel.granularity not in GRANULARITY_KEY:
            raise SelectionError(f"Unknown granularity {sel.granularity!r}", hint="use attention, mlp or layer")
        plan = cls(source={"criterion": sel.criterion, "k": sel.k, "granularity": sel.granularity,
                           "order": list(sel.order), "protected": list(sel.protected), "index_base": 0,
                           "run_manifest": dict(getattr(run, "manifest", None) or {})})
        setattr(plan, GRANULARITY_KEY[sel.granularity], sorted(int(b) for b in sel.blocks))
        return plan

    @classmethod
    def from_dict(cls, d: dict, where: str = "plan") -> "Plan":
        """Parse plan JSON data, validated by :class:`analysis.store.schemas.PlanModel`; anything malformed raises
        :class:`DataError` naming the field."""
        from analysis.store.schemas import validate_plan

        m = validate_plan(d, where)
        return cls(list(m.drop_attn), list(m.drop_mlp), list(m.drop_layers), dict(m.source))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a plan JSON file, or the ``plan`` of a ``recommend`` result (missing or malformed file →
        :class:`DataError`)."""
        from analysis.store.schemas import PLAN_HINT, read_json

        d = read_json(path, "plan", PLAN_HINT)
        if isinstance(d, dict) and d.get("kind") == RECOMMENDATION_KIND:      # rec.json from `recommend`: its plan
            if not isinstance(d.get("plan"), dict):
                raise DataError(f"{path} is a recommendation without a plan (the bake-off chose none)",
                                hint="see its table, or run `recommend` again")
            return cls.from_dict(d["plan"], where=f"{path} (plan)")
        return cls.from_dict(d, where=str(path))

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"drop_attn": [int(i) for i in self.drop_attn], "drop_mlp": [int(i) for i in self.drop_mlp],
                "drop_layers": [int(i) for i in self.drop_layers], "source": dict(self.source)}

    def to_json(self) -> str:
        from analysis.store.jsonio import dumps

        return dumps(self.to_dict(), indent=1, default=str)

    def save(self, path: str | Path) -> None:
        from analysis.store.outdir import write_text_atomic

        write_text_atomic(path, self.to_json())

    # ---- semantics ------------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return not (self.drop_attn or self.drop_mlp or self.drop_layers)

    def validate(self, num_layers: int) -> "Plan":
        """Raise :class:`SelectionError` for a negative, out-of-range or duplicated block; returns self."""
        hi = num_layers - 1
        for key in PLAN_KEYS:
            seen: set[int] = set()
            for i in getattr(self, key):
                label = _LABELS[key]
                if not isinstance(i, numbers.Integral) or isinstance(i, bool):
                    raise SelectionError(f"Plan {key} holds {i!r}, not a block index",
                                         hint=f"valid {label}s are 0..{hi}")
                if i < 0:
                    raise SelectionError(f"Plan drops {label} {i}: block indices are 0-based and non-negative",
                                         hint=f"valid {label}s are 0..{hi}")
                if i > hi:
                    raise SelectionError(f"Plan drops {label} {i}, but the model has {num_layers} layers",
                                         hint=f"valid {label}s are 0..{hi}")
                if i in seen:
                    raise SelectionError(f"Plan lists {label} {i} twice in {key}")
                seen.add(i)
        if len(self.normalized().drop_layers) >= num_layers:
            raise SelectionError(f"Plan drops all {num_layers} layers; keep at least one")
        return self

    def normalized(self) -> "Plan":
        """Equivalent plan: sub-blocks inside dropped layers folded away; attn+MLP dropped → layer dropped."""
        attn, mlp = {int(i) for i in self.drop_attn}, {int(i) for i in self.drop_mlp}
        layers = {int(i) for i in self.drop_layers} | (attn & mlp)
        return Plan(sorted(attn - layers), sorted(mlp - layers), sorted(layers), dict(self.source))

    def kept_layers(self, num_layers: int) -> list[int]:
        """Original indices of the layers that stay (after normalisation)."""
        dropped = set(self.normalized().drop_layers)
        return [i for i in range(num_layers) if i not in dropped]

    def first_dropped(self) -> int | None:
        """Smallest layer index touched by the plan (where a pruned forward starts to differ), or None."""
        touched = [*self.drop_attn, *self.drop_mlp, *self.drop_layers]
        return min(touched) if touched else None

    def reindexed(self, num_layers: int) -> "Plan":
        """The sub-block drops in the index space of the model left after removing the dropped layers."""
        n = self.normalized()
        new = {old: new for new, old in enumerate(n.kept_layers(num_layers))}
        return Plan([new[i] for i in n.drop_attn], [new[i] for i in n.drop_mlp], [], dict(self.source))

    def describe(self) -> str:
        """Human summary, e.g. ``"layers [20, 21]; attention [5, 7]"``."""
        n = self.normalized()
        parts = [f"{name} {sorted(v)}" for name, v in
                 (("layers", n.drop_layers), ("attention", n.drop_attn), ("MLP", n.drop_mlp)) if v]
        return "; ".join(parts) if parts else "nothing dropped"

    def __str__(self) -> str:
        return self.describe()


def plan_from_args(plan_path: str | None = None, drop_layers=None, drop_attn=None, drop_mlp=None) -> Plan | None:
    """A plan from a JSON file or explicit index lists (CLI and app); None when nothing was given."""
    lists = {"drop_layers": list(drop_layers or []), "drop_attn": list(drop_attn or []),
             "drop_mlp": list(drop_mlp or [])}
    if plan_path:
        plan = Plan.load(plan_path)
        if any(lists.values()):
            raise SelectionError("Give either a plan file or --drop-layers/--drop-attn/--drop-mlp, not both")
        return plan
    if not any(v is not None for v in (drop_layers, drop_attn, drop_mlp)):
        return None
    return Plan(**lists, source={"criterion": "manual", "index_base": 0})
