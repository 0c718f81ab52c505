"""The analysis result: per-layer curves, per-sequence statistics and the manifest, as JSON.

Conventions: L blocks (decoder layers), 0-based. ``entropy[est]["resid_pre"][l]`` is the mean over
sequences of H(resid_pre[l]); likewise ``resid_mid`` and ``resid_post``. Per-sequence values are kept
(they are tiny: N × (2L+1) floats per estimator) so scores can be bootstrapped and split by domain.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from analysis.indices import GRANULARITIES
from analysis.store.jsonio import clean_json

POINTS = ("resid_pre", "resid_mid", "resid_post")
#: how every chart and run names a sinks view (``--sinks``)
SINK_VIEW_LABELS = {"exclude": "sinks excluded", "keep": "sinks kept (reference)", "first": "position 0 excluded"}


def view_label(view: str | None) -> str:
    """``exclude`` → "sinks excluded", … (unknown views are shown as they are)."""
    return SINK_VIEW_LABELS.get(view or "", f"sinks {view}")


def _arr(x) -> np.ndarray:
    """Array from numpy or JSON lists (None → NaN)."""
    if isinstance(x, np.ndarray):
        return x.astype(float, copy=False)
    return np.array(_none_to_nan(x), dtype=float)


def _none_to_nan(x):
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return np.nan if x is None else x


@dataclass
class AnalysisResult:
    num_layers: int
    estimator: str                      # primary estimator (drives delta_h and drop_order)
    granularity: str                    # attention | mlp | layer
    protect: str                        # fixed | auto | none
    per_seq: dict                       # est -> {"boundary": [N][L+1], "mid": [N][L]}; cos_* -> [N][L]
    angular: list | None                # [L+1][L+1] mean angular distance between boundary states (last token)
    norms: dict                         # {"boundary": [L+1], "mid": [L]} mean RMS token norms
    boundary: int                       # first block of the expansion stage
    protected: list[int]
    domains: list[str] = field(default_factory=list)   # per sequence
    warnings: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)          # e.g. MI scores, added by extensions
    baselines: dict = field(default_factory=dict)        # criterion -> {"scores", "drop_order", ...}
    boundary_info: dict = field(default_factory=dict)    # rule, detected, bootstrap interval (analysis.measure.boundary)
    sinks: dict = field(default_factory=dict)            # mode, rule, counts per point, excluded (analysis.measure.sinks)
    views: dict = field(default_factory=dict)            # other sinks view: mode -> est -> {"boundary", "mid"} per seq
    massive: dict | None = None                          # {"boundary": [N][L+1], "mid": [N][L]} max / median token norm

    # ---- derived views --------------------------------------------------------------------------
    @property
    def estimators(self) -> list[str]:
        return [k for k in self.per_seq if not k.startswith("cos_")]

    @property
    def n_sequences(self) -> int:
        return len(self.per_seq[self.estimator]["mid"])

    @property
    def sink_mode(self) -> str:
        """The primary sinks view (``per_seq``, criteria, boundary): exclude | keep | first."""
        cfg = self.manifest.get("config") or {}
        return (self.sinks or {}).get("mode") or cfg.get("sinks") or ("first" if cfg.get("skip_first_token") else "keep")

    @property
    def sink_views(self) -> list[str]:
        """Every sinks view this run holds, the primary first (old runs: the primary only)."""
        return [self.sink_mode, *[v for v in (getattr(self, "views", None) or {}) if v != self.sink_mode]]

    def has_view(self, est: str | None, view: str | None) -> bool:
        name = est or self.estimator
        if view is None or view == self.sink_mode:
            return name in self.per_seq and not name.startswith("cos_")
        return name in (getattr(self, "views", None) or {}).get(view, {})

    def seq_entropy(self, est: str | None = None, rows=None, view: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(boundary [N, L+1], mid [N, L]) per-sequence entropies, in sinks ``view`` (None: the primary)."""
        name = est or self.estimator
        if view is not None and view != self.sink_mode:
            if not self.has_view(name, view):
                from analysis.errors import SelectionError

                raise SelectionError(f"This run has no {name!r} entropies with sinks {view} (it holds "
                                     f"{', '.join(self.sink_views)})",
                                     hint=f"re-run `python -m analysis analyze ... --sinks {view}`")
            d = self.views[view][name]
            b, m = _arr(d["boundary"]), _arr(d["mid"])
            return (b[rows], m[rows]) if rows is not None else (b, m)
        if name not in self.per_seq or name.startswith("cos_"):
            from analysis.errors import SelectionError

            raise SelectionError(f"This run has no {name!r} entropies (it holds {', '.join(self.estimators)})",
                                 hint=f"choose one of those, or re-run `python -m analysis analyze ... --also {name}`")
        d = self.per_seq[name]
        b, m = _arr(d["boundary"]), _arr(d["mid"])
        if rows is not None:
            b, m = b[rows], m[rows]
        return b, m

    def entropy(self, est: str | None = None, rows=None, view: str | None = None) -> dict[str, np.ndarray]:
        """Mean curves ``{"resid_pre": [L], "resid_mid": [L], "resid_post": [L], "boundary": [L+1]}``
        (sinks ``view``: None = the primary)."""
        b, m = self.seq_entropy(est, rows, view)
        bm, mm = b.mean(0), m.mean(0)
        return {"resid_pre": bm[:-1], "resid_mid": mm, "resid_post": bm[1:], "boundary": bm}

    def seq_delta_h(self, granularity: str | None = None, est: str | None = None, rows=None,
                    view: str | None = None) -> np.ndarray:
        """Per-sequence ΔH per block, ``[N, L]``: attention = H(mid)−H(pre), mlp = H(post)−H(mid),
        layer = H(post)−H(pre)."""
        g = granularity or self.granularity
        b, m = self.seq_entropy(est, rows, view)
        if g == "attention":
            return m - b[:, :-1]
        if g == "mlp":
            return b[:, 1:] - m
        if g == "layer":
            return b[:, 1:] - b[:, :-1]
        from analysis.errors import SelectionError

        raise SelectionError(f"Unknown granularity {g!r}", hint=f"use one of {', '.join(GRANULARITIES)}")

    def delta_h(self, granularity: str | None = None, est: str | None = None, view: str | None = None) -> np.ndarray:
        """Raw mean ΔH per block (before any protection), length L."""
        return self.seq_delta_h(granularity, est, view=view).mean(0)

    def seq_cos(self, granularity: str) -> np.ndarray:
        key = {"attention": "cos_attn", "mlp": "cos_mlp", "layer": "cos_layer"}[granularity]
        if key not in self.per_seq:
            from analysis.errors import SelectionError

            raise SelectionError(f"This run has no cosine similarities ({key})",
                                 hint="re-run `python -m analysis analyze` with this version to compute them")
        return _arr(self.per_seq[key])

    def sink_onset(self, share: float = 0.5) -> int | None:
        """First boundary ``Z^i`` where at least ``share`` of the sequences carry a flagged sink (None: never)."""
        c = (self.sinks or {}).get("counts", {}).get("boundary")
        n = (self.sinks or {}).get("n_sequences") or self.n_sequences
        if not c or not n:
            return None
        hit = [i for i, v in enumerate(c) if v >= share * n]
        return hit[0] if hit else None

    def stage_text(self) -> str:
        """The two-stage story for captions (never "blocks 0…-1")."""
        from analysis.measure.boundary import describe

        info = self.boundary_info or {"boundary": self.boundary, "detected": self.boundary > 0}
        return describe(info, self.num_layers)

    @property
    def drop_order(self) -> list[int]:
        return self.baselines.get("entrodrop", {}).get("drop_order", [])

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        L = self.num_layers
        # the headline fields promised by the CLI, first
        head = {
            "num_layers": L,
            "estimator": self.estimator,
            "granularity": self.granularity,
            "index_base": 0,
            "entropy": {est: {k: v for k, v in self.entropy(est).items() if k != "boundary"}
                        for est in self.estimators},
            "delta_h": self.delta_h(),
            "delta_h_all": {g: {est: self.delta_h(g, est) for est in self.estimators} for g in GRANULARITIES},
            "sinks_mode": self.sink_mode,       # the view of entropy / delta_h / boundary; others under "views"
            "boundary": self.boundary,
            "protected": self.protected,
            "drop_order": self.drop_order,
        }
        head.update({k: v for k, v in d.items() if k not in head})
        return clean_json(head)

    def save(self, path: str | Path) -> None:
        from analysis.store.outdir import write_text_atomic

        from analysis.store.jsonio import dumps

        write_text_atomic(path, dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, d: dict) -> "AnalysisResult":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

    @classmethod
    def load(cls, path: str | Path) -> "AnalysisResult":
        """Read a run JSON file, validated by :class:`analysis.store.schemas.RunModel` (DataError naming the field)."""
        from analysis.store.schemas import RUN_HINT, read_json, validate_run

        return cls.from_dict(validate_run(read_json(path, "run", RUN_HINT), str(path)))
