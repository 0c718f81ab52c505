"""Two-stage boundary, protected blocks and ranking (papers.md §1.4–1.5).

Blocks are 0-based. ``boundary`` is the index of the first block of the expansion stage: entropy over
the residual boundaries (``H(Z^0) … H(Z^L)``, ``Z^0`` = embeddings) falls until ``Z^boundary`` and rises
after it, so blocks ``0 … boundary−1`` form the compression stage and are never pruned in ``auto`` mode.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from analysis.errors import SelectionError

PROTECT_MODES = ("fixed", "auto", "none")


def detect_boundary(curve: Sequence[float]) -> int:
    """First block of the rising stage: ``argmin`` of the boundary-entropy curve over its first half.

    ``curve`` has L + 1 values (``H(Z^0) … H(Z^L)``). Ties go to the earlier boundary. Returns a block
    index in ``[0, L/2]``; 0 means entropy rises from the start (no compression stage).
    """
    c = np.asarray(curve, dtype=float)
    L = len(c) - 1
    if L < 1:
        raise SelectionError("need at least one layer to find a boundary")
    head = c[: L // 2 + 1]
    head = np.where(np.isfinite(head), head, np.inf)
    return int(np.argmin(head))


def protected_blocks(num_blocks: int, mode: str = "fixed", boundary: int | None = None,
                     extra: Iterable[int] = ()) -> list[int]:
    """Blocks never dropped.

    ``fixed``: EntroDrop's reference code, {0, 1, L−1}. ``auto``: the compression stage
    ``0 … boundary−1`` plus the last block (as the code does). ``none``: nothing. ``extra`` adds blocks.
    """
    L = num_blocks
    if mode == "fixed":
        prot = {0, 1, L - 1}
    elif mode == "auto":
        if boundary is None:
            raise SelectionError("auto protection needs a boundary")
        prot = set(range(boundary)) | {L - 1}
    elif mode == "none":
        prot = set()
    else:
        raise SelectionError(f"Unknown protection mode {mode!r}", hint=f"use one of {', '.join(PROTECT_MODES)}")
    extra = list(extra)
    bad = [b for b in extra if not 0 <= b < L]
    if bad:
        raise SelectionError(f"Protected block(s) {bad} out of range: this model has blocks 0..{L - 1}")
    return sorted(b for b in prot | set(extra) if 0 <= b < L)


def rank_blocks(scores: Sequence[float], redundant: str = "low", protected: Iterable[int] = ()) -> list[int]:
    """Unprotected blocks, most droppable first; ties go to the lower index.

    ``redundant="low"``: the lowest score is dropped first (EntroDrop ΔH, Block Influence);
    ``"high"``: the highest first (LLM-Drop cosine similarity). NaN scores go last.
    """
    s = np.asarray(scores, dtype=float)
    prot = set(protected)
    key = s if redundant == "low" else -s
    key = np.where(np.isnan(key), np.inf, key)
    return [int(i) for i in sorted(range(len(s)), key=lambda i: (key[i], i)) if i not in prot]


def check_k(k: int, order: Sequence[int], num_blocks: int, protected: Sequence[int]) -> None:
    """Raise a clear error for an impossible k."""
    if k < 0:
        raise SelectionError(f"k must be >= 0, got {k}")
    if not order and k > 0:
        raise SelectionError(f"All {num_blocks} blocks are protected, so nothing can be dropped",
                             hint="relax the protection (--protect none) or unprotect some blocks")
    if k > len(order):
        raise SelectionError(
            f"k={k} is larger than the {len(order)} unprotected blocks ({num_blocks} blocks, "
            f"{len(protected)} protected: {list(protected)})", hint=f"choose k <= {len(order)}")


def best_window(distance: np.ndarray, n: int, protected: Iterable[int] = ()) -> tuple[int, float]:
    """Gromov et al.: the contiguous run ``[ℓ, ℓ+n)`` whose input and output are closest.

    ``distance[i, j]`` is the angular distance between boundary states ``Z^i`` and ``Z^j``. Windows that
    contain a protected block are skipped. Returns ``(start, distance)``.
    """
    L = distance.shape[0] - 1
    prot = set(protected)
    best = (-1, np.inf)
    for s in range(0, L - n + 1):
        if prot.intersection(range(s, s + n)):
            continue
        d = float(distance[s, s + n])
        if d < best[1]:
            best = (s, d)
    if best[0] < 0:
        raise SelectionError(f"No run of {n} contiguous unprotected blocks exists",
                             hint="choose a smaller k or relax the protection")
    return best


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> dict:
    """Spearman and Kendall rank correlation between two score vectors (NaNs dropped)."""
    from scipy.stats import kendalltau, spearmanr

    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return {"spearman": float("nan"), "kendall": float("nan")}
    return {"spearman": float(spearmanr(x[ok], y[ok]).statistic), "kendall": float(kendalltau(x[ok], y[ok]).statistic)}


def topk_overlap(order_a: Sequence[int], order_b: Sequence[int], k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k."""
    if k <= 0:
        return float("nan")
    return len(set(order_a[:k]) & set(order_b[:k])) / k


def rank_string(order: Sequence[int], num_blocks: int) -> str:
    """EntroDrop's reference output: position i holds the *rank* of block i (protected blocks last)."""
    rank = {b: r for r, b in enumerate(order)}
    rest = sorted(set(range(num_blocks)) - set(rank))
    for b in rest:
        rank[b] = len(rank)
    return "_".join(str(rank[i]) for i in range(num_blocks))


def decode_rank_string(s: str, k: int) -> list[int]:
    """Blocks dropped when dropping k, from EntroDrop's rank-per-block string (rank < k)."""
    ranks = [int(r) for r in s.split("_")]
    return sorted(i for i, r in enumerate(ranks) if r < k)
