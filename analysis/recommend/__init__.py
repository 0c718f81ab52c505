"""Advice backed by evidence: a bake-off that picks criterion, k and healing for *this* model.

``config`` (RecommendConfig)  <  ``stats`` (paired bootstrap)  <  ``judge`` (held-out windows, per-window NLL,
cache)  <  ``bakeoff`` (:func:`recommend`)  ·  ``evidence`` (the repository's evidence table)."""
from analysis.lazy import lazy_exports

_LAZY = {
    "RecommendConfig": "config", "recommend": "bakeoff", "KIND": "bakeoff", "Stopped": "judge",
    "paired_table": "stats", "load_evidence": "evidence", "default_criterion": "evidence",
    "measured_standing": "evidence", "write_evidence": "evidence", "check_disjoint": "judge",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
