"""pydantic schemas for the JSON files users hand back to Entroscope: run JSON (``analyze --out``) and
plan JSON (``select``/``miprun --out``, ``entroscope-plan.json``).

Wrong types, missing fields, lengths inconsistent with ``num_layers`` and absurd nesting are refused
with a :class:`~analysis.errors.DataError` that names the field (``per_seq.bucket.mid[2]``). Files written
by earlier versions stay valid: unknown top-level keys of a run are ignored (the headline curves are
recomputed), and every field added later has a default.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from analysis.errors import DataError
from analysis.indices import GRANULARITIES

MAX_LAYERS = 4096
PLAN_KEYS = ("drop_attn", "drop_mlp", "drop_layers")
Num = Optional[float]                                  # JSON null = NaN


class PerSeqEntropy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boundary: list[list[Num]]                          # [N][L+1]
    mid: list[list[Num]]                               # [N][L]


class RunModel(BaseModel):
    """Run JSON (:class:`analysis.score.result.AnalysisResult`)."""
    model_config = ConfigDict(extra="ignore")
    num_layers: StrictInt = Field(ge=1, le=MAX_LAYERS)
    estimator: str
    granularity: Literal[GRANULARITIES]
    protect: str
    per_seq: dict[str, Union[PerSeqEntropy, list[list[Num]]]]
    angular: Optional[list[list[Num]]] = None
    norms: dict[str, list[Num]] = Field(default_factory=dict)
    boundary: StrictInt
    protected: list[StrictInt]
    domains: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    manifest: dict[str, Any] = Field(default_factory=dict)
    extras: dict[str, Any] = Field(default_factory=dict)
    baselines: dict[str, Any] = Field(default_factory=dict)
    views: dict[str, dict[str, PerSeqEntropy]] = Field(default_factory=dict)   # other sinks view (older: none)
    massive: Optional[dict[str, list[list[Num]]]] = None                       # max/median token norm per seq

    @model_validator(mode="after")
    def _consistent(self) -> "RunModel":
        L = self.num_layers
        if self.estimator not in self.per_seq or not isinstance(self.per_seq[self.estimator], PerSeqEntropy):
            raise ValueError(f"estimator {self.estimator!r} has no per-sequence entropies in per_seq "
                             f"(it holds {sorted(self.per_seq)})")
        n = None
        for name, v in self.per_seq.items():
            rows = {"boundary": (v.boundary, L + 1), "mid": (v.mid, L)} if isinstance(v, PerSeqEntropy) \
                else {"": (v, L)}
            for part, (mat, width) in rows.items():
                where = f"per_seq.{name}" + (f".{part}" if part else "")
                n = len(mat) if n is None else n
                if len(mat) != n:
                    raise ValueError(f"{where} has {len(mat)} sequences, others have {n}")
                for i, row in enumerate(mat):
                    if len(row) != width:
                        raise ValueError(f"{where}[{i}] has {len(row)} values; num_layers={L} needs {width}")
        if not n:
            raise ValueError("per_seq holds no sequences")
        for mode, ests in self.views.items():
            for name, v in ests.items():
                for part, mat, width in (("boundary", v.boundary, L + 1), ("mid", v.mid, L)):
                    if len(mat) != n or any(len(row) != width for row in mat):
                        raise ValueError(f"views.{mode}.{name}.{part} must be {n}×{width} (sequences × points)")
        for part, width in (("boundary", L + 1), ("mid", L)):
            mat = (self.massive or {}).get(part)
            if mat is not None and (len(mat) != n or any(len(row) != width for row in mat)):
                raise ValueError(f"massive.{part} must be {n}×{width} (sequences × points)")
        if not 0 <= self.boundary <= L:
            raise ValueError(f"boundary {self.boundary} is outside 0..{L}")
        bad = [b for b in self.protected if not 0 <= b < L]
        if bad:
            raise ValueError(f"protected blocks {bad} are outside 0..{L - 1}")
        if self.angular is not None and (len(self.angular) != L + 1 or any(len(r) != L + 1 for r in self.angular)):
            raise ValueError(f"angular must be a {L + 1}×{L + 1} matrix")
        if self.domains and len(self.domains) != n:
            raise ValueError(f"domains has {len(self.domains)} labels for {n} sequences")
        return self


class PlanModel(BaseModel):
    """Plan JSON (:class:`analysis.models.plan.Plan`)."""
    model_config = ConfigDict(extra="forbid")
    drop_attn: list[StrictInt] = Field(default_factory=list)
    drop_mlp: list[StrictInt] = Field(default_factory=list)
    drop_layers: list[StrictInt] = Field(default_factory=list)
    source: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _is_plan(cls, d):
        if isinstance(d, dict):
            if not any(k in d for k in PLAN_KEYS):
                raise ValueError(f"not a plan: it has none of {', '.join(PLAN_KEYS)}")
            d = {k: ([] if k in PLAN_KEYS else {}) if (k in PLAN_KEYS or k == "source") and v is None else v
                 for k, v in d.items()}
        return d

    @field_validator(*PLAN_KEYS)
    @classmethod
    def _bounded(cls, v):
        if len(v) > MAX_LAYERS:
            raise ValueError(f"lists {len(v)} blocks; no model has more than {MAX_LAYERS}")
        return v


def _loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("PerSeqEntropy", "list[list[nullable[float]]]") or "[" in str(part):
            continue                                        # union branch names, not fields
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(exc: ValidationError, kind: str) -> str:
    errs = exc.errors(include_url=False)
    # a union reports one error per branch; the branch whose error is deepest is the meaningful one
    e = max(errs, key=lambda x: len(x["loc"]))
    if any(x["type"] == "value_error" for x in errs):
        e = next(x for x in errs if x["type"] == "value_error")
    loc, typ = _loc(e["loc"]), e["type"]
    if typ == "value_error":
        msg = str(e.get("ctx", {}).get("error") or e["msg"].removeprefix("Value error, "))
        return msg if loc == "(top level)" else f"field {loc}: {msg}"
    if typ == "extra_forbidden":
        extra = sorted(str(x["loc"][0]) for x in errs if x["type"] == "extra_forbidden")
        return f"has unknown keys {extra}; a {kind} has {', '.join(PLAN_KEYS)} and source"
    if typ == "missing":
        return f"field {loc} is missing"
    if typ == "list_type":
        return f"field {loc!r} must be a list" + (" of 0-based block indices" if kind == "plan" else "") + \
            f", got {type(e['input']).__name__}"
    if typ in ("int_type", "int_from_float", "int_parsing") and kind == "plan":
        return f"field {loc.split('[')[0]!r} must hold integers, got {e['input']!r}"
    if typ == "dict_type":
        return f"field {loc!r} must be a JSON object"
    return f"field {loc}: {e['msg']} (got {str(e.get('input'))[:40]!r})"


def read_json(path: str | Path, kind: str, hint: str) -> Any:
    """Parse a JSON file; missing, unreadable, invalid or absurdly nested files → DataError."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{kind.capitalize()} file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{kind.capitalize()} path is a directory, not a JSON file: {path}") from None
    except RecursionError:
        raise DataError(f"{path} is nested too deeply to be a {kind} JSON", hint=hint) from None
    except (ValueError, UnicodeDecodeError) as exc:
        what = "an Entroscope run" if kind == "run" else f"valid {kind}"
        raise DataError(f"{path} is not {what} JSON ({type(exc).__name__})", hint=hint) from None
    except OSError as exc:
        raise DataError(f"Cannot read {kind} file {path}: {exc.strerror or exc}") from None


RUN_HINT = "create one with `python -m analysis analyze ... --out run.json`"
PLAN_HINT = "create one with `python -m analysis select ... --out plan.json`"


def validate_run(d: Any, where: str = "run") -> dict:
    """The run dict, checked against :class:`RunModel` (DataError naming the field)."""
    if not isinstance(d, dict):
        raise DataError(f"{where} is not an Entroscope run JSON: expected a JSON object, got {type(d).__name__}",
                        hint=RUN_HINT)
    try:
        m = RunModel.model_validate(d)
    except RecursionError:
        raise DataError(f"{where} is nested too deeply to be a run JSON", hint=RUN_HINT) from None
    except ValidationError as exc:
        raise DataError(f"{where} is not a valid Entroscope run JSON: {_message(exc, 'run')}", hint=RUN_HINT) from None
    return {**{k: getattr(m, k) for k in RunModel.model_fields if k not in d}, **d}   # older files: defaults


def validate_plan(d: Any, where: str = "plan") -> PlanModel:
    if not isinstance(d, dict):
        raise DataError(f"{where} is not a plan: expected a JSON object, got {type(d).__name__}", hint=PLAN_HINT)
    try:
        return PlanModel.model_validate(d)
    except RecursionError:
        raise DataError(f"{where} is nested too deeply to be a plan JSON", hint=PLAN_HINT) from None
    except ValidationError as exc:
        raise DataError(f"{where} {'is ' if 'not a plan' in str(exc) else ''}{_message(exc, 'plan')}",
                        hint=PLAN_HINT) from None
