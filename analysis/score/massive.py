"""Massive activations made visible: how large the biggest token is at every residual point, and how closely
that tracks each entropy curve across depth.

``result.massive["boundary"] [N, L+1]`` holds, per sequence and residual boundary ``Z^i``, the largest token
norm divided by the median token norm (the sink rule flags a token above 8×). Queipo-de-Llano et al. (2025,
arXiv 2510.06477) prove that a massive-norm row forces a dominant singular value, so representation entropy
must dip where it appears; they report r ≈ −0.9 between the change of the BOS norm and the change of entropy.

:func:`norm_entropy_correlation` gives Pearson's r between ``log(max / median norm)`` and an entropy curve
across the ``L+1`` boundaries (``levels``), or between their changes from one boundary to the next
(``changes``, Queipo-de-Llano's form), with a percentile bootstrap interval over sequences (both mean curves
are recomputed on every resample).
"""
from __future__ import annotations

import numpy as np

from analysis.errors import SelectionError
from analysis.score.result import AnalysisResult, _arr


def massive_ratio(result: AnalysisResult, point: str = "boundary") -> np.ndarray:
    """Per-sequence largest / median token norm, ``[N, L+1]`` (boundary) or ``[N, L]`` (mid)."""
    if not result.massive or point not in result.massive:
        raise SelectionError("This run has no massive-activation norms (made before they were recorded)",
                             hint="re-run `python -m analysis analyze` with this version")
    return _arr(result.massive[point])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def norm_entropy_correlation(result: AnalysisResult, est: str | None = None, view: str | None = None,
                             form: str = "levels", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson r between log(max/median token norm) and entropy across the residual boundaries.

    ``form``: ``levels`` (the two curves) or ``changes`` (their steps ``Z^i → Z^(i+1)``). Returns ``{"r", "lo",
    "hi", "level", "n_boot", "n_sequences", "form", "estimator", "view"}``; r is NaN when a curve is constant."""
    if form not in ("levels", "changes"):
        raise SelectionError(f"Unknown correlation form {form!r}", hint="use levels or changes")
    ratio = np.log(np.clip(massive_ratio(result), 1e-30, None))                   # [N, L+1]
    h, _ = result.seq_entropy(est, None, view)                                      # [N, L+1]

    def r_of(rows) -> float:
        a, b = ratio[rows].mean(0), h[rows].mean(0)
        if form == "changes":
            a, b = np.diff(a), np.diff(b)
        return _pearson(a, b)

    n = h.shape[0]
    r = r_of(np.arange(n))
    out = {"r": r, "form": form, "estimator": est or result.estimator, "view": view or result.sink_mode,
           "n_boot": int(n_boot), "n_sequences": int(n), "level": level}
    if n < 2 or n_boot < 1 or not np.isfinite(r):
        out.update(lo=r, hi=r)
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = np.array([r_of(i) for i in idx])
    boots = boots[np.isfinite(boots)]
    a = (1 - level) / 2
    out.update(lo=float(np.quantile(boots, a)) if boots.size else float("nan"),
               hi=float(np.quantile(boots, 1 - a)) if boots.size else float("nan"))
    return out


def correlation_table(result: AnalysisResult, form: str = "levels", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """:func:`norm_entropy_correlation` for every estimator and sinks view of the run."""
    rows = []
    for view in result.sink_views:
        for est in result.estimators:
            if result.has_view(est, view):
                rows.append(norm_entropy_correlation(result, est, view, form, n_boot, seed))
    return rows


def first_sequence_flags(result: AnalysisResult) -> tuple[np.ndarray, list[int]] | None:
    """``(flags [L+1, T] bool, token ids [T])`` of the run's first sequence, or None (older runs)."""
    fs = (result.sinks or {}).get("first_sequence")
    if not fs or not fs.get("flags"):
        return None
    return np.asarray(fs["flags"], dtype=bool), list(fs.get("token_ids") or [])
