"""pydantic schemas for the JSON files users hand back to Entroscope: run JSON (``analyze --out``, with its
MI-PRUN data in ``extras.mi``), plan JSON (``select``/``miprun --out``, ``entroscope-plan.json``), eval JSON
and sweep JSON (``figures --eval/--sweep``). Files are read with :func:`read_run`, :func:`read_plan`,
:func:`read_eval`, :func:`read_sweep` — all through the one strict reader
:func:`analysis.store.jsonio.read_json` (duplicate keys, NaN/Infinity, unknown future ``schema_version``
refused; special files refused before they are opened).

Wrong types, missing fields, lengths inconsistent with ``num_layers``, degenerate values (an all-null primary
curve, a perplexity below 1) and plans that contradict their own ``source`` are refused with a
:class:`~analysis.errors.DataError` that names the field (``per_seq.bucket.mid[2]``); an all-null secondary
curve is a named ``NullCurve`` warning. Files written by earlier versions stay valid: no ``schema_version``
means version 1, unknown top-level keys of a run are ignored (the headline curves are recomputed), and
every field added later has a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt, ValidationError, field_validator, model_validator

from analysis.errors import DataError
from analysis.indices import GRANULARITIES, GRANULARITY_KEY
from analysis.store.jsonio import read_json as _read_json
from analysis.store.jsonio import validate, validation_message

MAX_LAYERS = 4096
PLAN_KEYS = ("drop_attn", "drop_mlp", "drop_layers")
#: a JSON number, strictly: an int or a float, never the string "12" or true (pydantic's lax mode would coerce
#: them); every file Entroscope writes holds real numbers, so only a hand-edited or foreign file is refused
StrictNumber = Annotated[float, Strict()]
Num = Optional[StrictNumber]                           # JSON null = NaN


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
        for part, width in (("boundary", L + 1), ("mid", L)):
            v = self.norms.get(part)
            if v is not None and len(v) != width:
                raise ValueError(f"norms.{part} has {len(v)} values; num_layers={L} needs {width}")
        recorded = _model_layers(self.manifest)
        if recorded is not None and recorded != L:
            raise ValueError(f"num_layers is {L} but its own manifest.model records {recorded} layers")
        _check_mi(self.extras.get("mi"), L)
        for name, v in self.per_seq.items():
            if _all_null(v) and name == self.estimator:
                raise ValueError(f"every {name} entropy in per_seq is null (non-finite when computed), so the run "
                                 f"has no curve to score")
        return self


def _all_null(v) -> bool:
    mats = [v.boundary, v.mid] if isinstance(v, PerSeqEntropy) else [v]
    return all(x is None for m in mats for row in m for x in row)


def _model_layers(manifest: Any) -> int | None:
    m = manifest.get("model") if isinstance(manifest, dict) else None
    n = m.get("num_layers") if isinstance(m, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _check_mi(mi: Any, L: int) -> None:
    """``extras.mi`` (MI-PRUN data): scores per granularity of length L, an (L+1)×(L+1) matrix, numbers only."""
    if mi is None:
        return
    if not isinstance(mi, dict):
        raise ValueError(f"extras.mi must be a JSON object, got {type(mi).__name__}")
    scores = mi.get("scores") or {}
    if not isinstance(scores, dict):
        raise ValueError("extras.mi.scores must be a JSON object {granularity: [L values]}")
    for g, v in scores.items():
        if not isinstance(v, list) or len(v) != L:
            raise ValueError(f"extras.mi.scores.{g} has {len(v) if isinstance(v, list) else type(v).__name__} "
                             f"values; num_layers={L} needs {L}")
        if any(x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))) for x in v):
            raise ValueError(f"extras.mi.scores.{g} must hold numbers or null")
    m = mi.get("matrix")
    if m is not None:
        if not isinstance(m, list) or len(m) != L + 1 or any(not isinstance(r, list) or len(r) != L + 1 for r in m):
            raise ValueError(f"extras.mi.matrix must be a {L + 1}×{L + 1} matrix")
        if any(x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))) for r in m for x in r):
            raise ValueError("extras.mi.matrix must hold numbers or null")


class PlanModel(BaseModel):
    """Plan JSON (:class:`analysis.models.plan.Plan`)."""
    model_config = ConfigDict(extra="forbid")
    drop_attn: list[StrictInt] = Field(default_factory=list)
    drop_mlp: list[StrictInt] = Field(default_factory=list)
    drop_layers: list[StrictInt] = Field(default_factory=list)
    source: dict[str, Any] = Field(default_factory=dict)
    schema_version: StrictInt = 1

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

    @model_validator(mode="after")
    def _agrees_with_source(self) -> "PlanModel":
        """A plan never contradicts its own ``source``: blocks beyond the model the source names, a block the
        source protected, blocks at another granularity than the source's selection."""
        src = self.source
        L = _model_layers(src.get("run_manifest")) if isinstance(src.get("run_manifest"), dict) else None
        if L is not None:
            for key in PLAN_KEYS:
                bad = [b for b in getattr(self, key) if b >= L]
                if bad:
                    raise ValueError(f"{key} holds block(s) {bad}, but its source run's model has {L} layers "
                                     f"(0..{L - 1})")
        prot = src.get("protected")
        if isinstance(prot, list) and all(isinstance(b, int) for b in prot):
            hit = sorted({b for key in PLAN_KEYS for b in getattr(self, key)} & set(prot))
            if hit:
                raise ValueError(f"drops block(s) {hit} that its own source lists as protected {sorted(prot)}")
        g = src.get("granularity")
        if g in GRANULARITY_KEY and src.get("criterion") not in (None, "manual"):
            own = GRANULARITY_KEY[g]
            other = [k for k in PLAN_KEYS if k != own and getattr(self, k)]
            if other and not getattr(self, own):
                raise ValueError(f"its source is a {g}-granularity selection ({own}) but the plan fills "
                                 f"{', '.join(other)} only")
        return self


Finite = Optional[StrictNumber]                        # finite by parsing (NaN/Infinity refused); null allowed


class EvalModel(BaseModel):
    """Eval JSON (``eval --out``): the fields the figures and reports read."""
    model_config = ConfigDict(extra="ignore")
    perplexity: Finite
    perplexity_original: Finite = None
    kl: Finite = None
    top1: Finite = None
    tokens: Optional[StrictInt] = None
    plan: Optional[dict[str, Any]] = None
    manifest: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sane(self) -> "EvalModel":
        if self.perplexity is None:
            raise ValueError("perplexity is null (it was non-finite when measured), so there is nothing to draw")
        for name in ("perplexity", "perplexity_original"):
            v = getattr(self, name)
            if v is not None and not v >= 1:
                raise ValueError(f"{name} is {v}; a perplexity is at least 1")
        if self.kl is not None and self.kl < 0:
            raise ValueError(f"kl is {self.kl}; a KL divergence is never negative")
        if self.top1 is not None and not 0 <= self.top1 <= 1:
            raise ValueError(f"top1 is {self.top1}; an agreement rate lies in [0, 1]")
        if self.plan is not None:
            try:
                validate_plan(self.plan, "its plan")
            except DataError as exc:
                raise ValueError(exc.message) from None
        return self


class SweepRow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    criterion: str
    k: StrictInt = Field(ge=0, le=MAX_LAYERS)
    perplexity: Finite
    params_removed_fraction: Finite = Field(default=None, ge=0, le=1)
    granularity: Optional[Literal[GRANULARITIES]] = None


class SweepModel(BaseModel):
    """Sweep JSON (``sweep --out``): rows of (criterion, k, perplexity, …)."""
    model_config = ConfigDict(extra="ignore")
    rows: list[SweepRow]
    skipped: list[Any] = Field(default_factory=list)
    manifest: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _curves(self) -> "SweepModel":
        if not self.rows:
            raise ValueError("the sweep has no rows (nothing was evaluated)")
        by: dict[str, list] = {}
        for r in self.rows:
            by.setdefault(r.criterion, []).append(r.perplexity)
        empty = sorted(c for c, v in by.items() if all(x is None for x in v))
        if len(empty) == len(by):
            raise ValueError(f"every perplexity is null (non-finite when measured) for {', '.join(empty)}: "
                             "no curve to draw")
        bad = [r.perplexity for r in self.rows if r.perplexity is not None and not r.perplexity >= 1]
        if bad:
            raise ValueError(f"perplexity {bad[0]} is below 1, which no perplexity can be")
        return self


def null_curve_warnings(kind: str, d: Any) -> list[str]:
    """Named warnings for curves that are all null in a valid file (``NullCurve: …``)."""
    out = []
    if kind == "sweep" and isinstance(d, SweepModel):
        by: dict[str, list] = {}
        for r in d.rows:
            by.setdefault(r.criterion, []).append(r.perplexity)
        out += [f"NullCurve: every perplexity of criterion {c!r} is null (non-finite when measured); it is not drawn"
                for c, v in by.items() if all(x is None for x in v)]
    return out


def _message(exc: ValidationError, kind: str) -> str:
    return validation_message(exc, kind, ", ".join(PLAN_KEYS) + " and source" if kind == "plan" else None)


def read_json(path: str | Path, kind: str, hint: str) -> Any:
    """Parse a JSON file strictly (:func:`analysis.store.jsonio.read_json`, no schema); DataError otherwise."""
    return _read_json(path, kind=kind, hint=hint)


RUN_HINT = "create one with `python -m analysis analyze ... --out run.json`"
PLAN_HINT = "create one with `python -m analysis select ... --out plan.json`"
EVAL_HINT = "create it with `python -m analysis eval ... --out eval.json`"
SWEEP_HINT = "create it with `python -m analysis sweep ... --out sweep.json`"


def read_run(path: str | Path) -> dict:
    """A run JSON file, read strictly and validated (:class:`RunModel`); DataError naming the file and field."""
    return _read_json(path, validate_run, kind="run", hint=RUN_HINT)


def read_plan(path: str | Path) -> "PlanModel":
    """A plan JSON file, read strictly and validated (:class:`PlanModel`)."""
    return _read_json(path, validate_plan, kind="plan", hint=PLAN_HINT)


def read_eval(path: str | Path) -> dict:
    """An eval JSON file as a dict, read strictly and validated (:class:`EvalModel`)."""
    d = _read_json(path, kind="eval", hint=EVAL_HINT)
    validate(d, EvalModel, str(path), "eval", EVAL_HINT)
    return d


def read_sweep(path: str | Path) -> tuple[dict, list[str]]:
    """A sweep JSON file as a dict and its named warnings, read strictly and validated (:class:`SweepModel`)."""
    d = _read_json(path, kind="sweep", hint=SWEEP_HINT)
    m = validate(d, SweepModel, str(path), "sweep", SWEEP_HINT)
    return d, null_curve_warnings("sweep", m)


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
    out = {**{k: getattr(m, k) for k in RunModel.model_fields if k not in d}, **d}   # older files: defaults
    nulls = [f"NullCurve: every {name} entropy is null (non-finite when computed); {name} cannot rank blocks"
             for name, v in m.per_seq.items() if name != m.estimator and _all_null(v)]
    if nulls:
        out["warnings"] = [*out.get("warnings", []), *(w for w in nulls if w not in out.get("warnings", []))]
    return out


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
