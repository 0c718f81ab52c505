"""Baselines: the scores and drop order of every registered criterion a run can compute (``result.baselines``)."""
from __future__ import annotations

from analysis.errors import SelectionError
from analysis.score.criteria import CRITERIA, drop_order, scores_for
from analysis.score.result import AnalysisResult


def compute_baselines(result: AnalysisResult) -> None:
    """Scores and drop order of every registered criterion that this run can compute."""
    out = {}
    for name, c in CRITERIA.items():
        g = result.granularity if result.granularity in c.granularities else c.granularities[0]
        try:
            scores = scores_for(result, name, g)
            order = drop_order(result, name, g)
        except SelectionError as exc:
            out[name] = {"available": False, "reason": str(exc)}
            continue
        out[name] = {"granularity": g, "scores": scores, "drop_order": order, "redundant": c.redundant,
                     "title": c.title}
    result.baselines = out
