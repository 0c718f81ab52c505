"""The two-stage boundary with a rule a single-block dip cannot fool, and its bootstrap interval.

**Meaning.** ``boundary`` is the first block of the expansion stage: the entropy of the residual stream
(``H(Z^0) … H(Z^L)``, ``Z^0`` = embeddings, ``Z^{l+1}`` = output of block ``l``, 0-based) falls through
blocks ``0 … boundary−1`` (compression) and rises after ``Z^boundary``. ``boundary == 0`` with
``detected == False`` means *no compression stage*: the curve does not fall and then rise.

**Rule** (:func:`robust_boundary`):

1. smooth the curve with a running median of 3 (a single-boundary dip or spike disappears);
2. ``b`` = argmin of the smoothed curve over the first half (on a flat floor: the lowest raw point);
3. accept ``b`` only if the smoothed curve *falls* to it by at least ``tol`` of its range
   (``s[0] − s[b] ≥ tol·range``) and then *rises for good*: it never goes below ``s[b]`` again and ends at
   least ``tol·range`` above it. Otherwise there is no compression stage.

The interval is a percentile bootstrap over sequences (:func:`boundary_interval`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_TOL = 0.05

#: the one definition of the boundary shown by the app (Entropy page, Terms tab) and the static figures
BOUNDARY_DEFINITION = (
    "The two-stage boundary is the first block of the expansion stage: the boundary entropy H(Z^0) … H(Z^L) "
    "(Z^0 = embeddings, Z^(l+1) = output of block l) falls through blocks 0 … boundary−1 (compression) and "
    "rises for good from there (expansion). It is found on the median-3 smoothed curve (a one-block dip "
    "cannot move it), with a 90 % bootstrap interval over sequences; 0 means no compression stage was "
    "detected, and then nothing is shaded.")


def median3(curve: Sequence[float]) -> np.ndarray:
    """Running median of 3 (ends: median of the two-point edge window and the end value, i.e. kept)."""
    c = np.asarray(curve, dtype=float)
    if len(c) < 3:
        return c.copy()
    s = c.copy()
    s[1:-1] = np.median(np.stack([c[:-2], c[1:-1], c[2:]]), axis=0)
    return s


def robust_boundary(curve: Sequence[float], tol: float = DEFAULT_TOL) -> tuple[int, bool]:
    """``(boundary, detected)`` by the rule in the module doc. ``(0, False)`` = no compression stage."""
    c = np.asarray(curve, dtype=float)
    L = len(c) - 1
    if L < 2 or not np.isfinite(c).all():
        return 0, False
    s = median3(c)
    rng = float(s.max() - s.min())
    if rng <= 0:
        return 0, False
    head = s[: L // 2 + 1]
    flat = np.flatnonzero(head == head.min())             # the smoothed valley floor (median-3 flattens a V)
    b = int(flat[np.argmin(c[flat])])                     # its lowest raw point (ties → earlier)
    if b == 0:
        return 0, False
    fall = s[0] - s[b]
    after = s[b + 1:]
    sustained = after.size > 0 and bool((after >= s[b]).all()) and (s[-1] - s[b]) >= tol * rng
    if fall < tol * rng or not sustained:
        return 0, False
    return b, True


def boundary_interval(seq_curves: np.ndarray, n_boot: int = 200, seed: int = 0, tol: float = DEFAULT_TOL,
                      level: float = 0.9) -> dict:
    """Percentile bootstrap over sequences of :func:`robust_boundary`.

    ``seq_curves [N, L+1]`` per-sequence boundary entropies. Returns ``{"boundary", "detected", "lo", "hi",
    "p_detected", "n_boot", "level", "tol", "rule"}``: the point estimate on all sequences, the
    ``level`` interval of the resampled boundaries (a resample with no stage counts as 0), and the share of
    resamples that find a compression stage at all.
    """
    x = np.asarray(seq_curves, dtype=float)
    n = x.shape[0]
    b, det = robust_boundary(x.mean(0), tol)
    out = {"boundary": b, "detected": det, "n_boot": int(n_boot), "level": level, "tol": tol,
           "rule": "median-3 smoothed argmin over the first half; falls and then rises for good by ≥ tol·range"}
    if n < 2 or n_boot < 1:
        out.update(lo=b, hi=b, p_detected=float(det))
        return out
    g = np.random.default_rng(seed)
    idx = g.integers(0, n, size=(n_boot, n))
    means = x[idx].mean(axis=1)                                                     # [n_boot, L+1]
    res = [robust_boundary(m, tol) for m in means]
    bs = np.array([r[0] for r in res])
    a = (1 - level) / 2
    out.update(lo=int(np.floor(np.quantile(bs, a))), hi=int(np.ceil(np.quantile(bs, 1 - a))),
               p_detected=float(np.mean([r[1] for r in res])))
    return out


def describe(info: dict, num_layers: int) -> str:
    """One line for captions: the stages, or that there is no compression stage."""
    if not info or not info.get("detected"):
        share = info.get("p_detected") if info else None
        extra = f" (found in {share:.0%} of bootstrap resamples)" if share is not None else ""
        return f"no compression stage detected: the entropy does not fall and then rise{extra}"
    b = info["boundary"]
    lo, hi = info.get("lo", b), info.get("hi", b)
    ci = f", {info.get('level', 0.9):.0%} interval {lo}…{hi}" if (lo, hi) != (b, b) else ""
    return (f"compression stage blocks 0…{b - 1}, expansion stage blocks {b}…{num_layers - 1} "
            f"(boundary {b}{ci})")
