"""Block-set search for MI-PRUN (papers.md §2.4–2.5, checklist 12–13).

* :func:`fast_block_select` — Fast-Block-Select, reconstructed from the reviewer's outline (papers.md
  §2.5): a prune pool P and an alternative pool A, contiguous candidate windows of the lengths of P's
  runs, a coarse ranking by summed single-block scores, exact DPI-aware run scores for the top K, a
  conflict-free combination swapped into P, repeated until P stops changing. Works on any
  ``run_score(j, k)`` callable, so it is testable on synthetic tables.
* :func:`optimal_select` — the exact optimum of the objective by dynamic programming.
* :func:`exhaustive_select` — the optimum of the same objective over all n-block subsets when
  ``C(L, n)`` is affordable, to measure Fast-Block-Select's gap.

Ground truth (drop-one ΔPPL, SLEB, BlockPruner) is :mod:`analysis.evaluate.groundtruth`; agreement between
criteria :mod:`analysis.score.agreement`; MI-PRUN selection from a run :func:`analysis.score.miprun.miprun_select`.

**Objective** (shared by Fast-Block-Select and exhaustive search): a set P of layers to drop is split
into maximal contiguous runs ``[j..k]`` (0-based, inclusive) and scored
``J(P) = Σ_runs run_score(j, k)``, with ``run_score(j, k) = −MI(H_j, H_{k+1})`` for MI-PRUN (``H_j`` is
the input of layer j, ``H_{k+1}`` the output of layer k); lower = more redundant = better to drop.
A single-layer run's score equals the block score ``s_j``.

Only numpy is imported at module level.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np

from analysis.errors import SelectionError
from analysis.store.jsonio import clean_json

RunScore = Callable[[int, int], float]


# ----------------------------------------------------------------------------------------------------
# runs and the objective
# ----------------------------------------------------------------------------------------------------


def maximal_runs(blocks: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal contiguous runs ``(j, k)`` (inclusive) of a set of block indices, in order."""
    out: list[tuple[int, int]] = []
    for b in sorted(set(int(x) for x in blocks)):
        if out and b == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


class _Cached:
    """Memoised run scores; counts distinct evaluations (each is one MI estimate on cached states)."""

    def __init__(self, run_score: RunScore):
        self.fn = run_score
        self.values: dict[tuple[int, int], float] = {}

    def __call__(self, j: int, k: int) -> float:
        key = (int(j), int(k))
        if key not in self.values:
            v = float(self.fn(*key))
            self.values[key] = v if math.isfinite(v) else math.inf
        return self.values[key]

    @property
    def evaluations(self) -> int:
        return len(self.values)


def run_objective(blocks: Iterable[int], run_score: RunScore) -> float:
    """``J(P) = Σ over maximal contiguous runs of run_score(j, k)`` (lower = better to drop)."""
    return float(sum(run_score(j, k) for j, k in maximal_runs(blocks)))


def _check_n(n: int, free: Sequence[int], num_blocks: int, protect: set[int]) -> None:
    if n < 0:
        raise SelectionError(f"n must be >= 0, got {n}")
    if n > len(free):
        raise SelectionError(f"n={n} is larger than the {len(free)} unprotected blocks ({num_blocks} blocks, "
                             f"protected: {sorted(protect)})", hint=f"choose n <= {len(free)}")


def _protect_set(protect, L: int) -> set[int]:
    prot = {0, L - 1} if protect is None else {int(p) for p in protect}
    bad = sorted(p for p in prot if not 0 <= p < L)
    if bad:
        raise SelectionError(f"Protected block(s) {bad} out of range: there are blocks 0..{L - 1}")
    return prot


# ----------------------------------------------------------------------------------------------------
# Fast-Block-Select
# ----------------------------------------------------------------------------------------------------


@dataclass
class FBSResult:
    """Outcome of :func:`fast_block_select` (JSON-safe via :meth:`to_dict`)."""

    blocks: list[int]                 # layers to drop (sorted, 0-based)
    objective: float                  # J(blocks)
    runs: list[list[int]]             # maximal runs [j, k] of blocks
    iterations: int                   # swap iterations run (0: the initial pool was kept at once)
    converged: bool                   # stopped because P stopped changing (not max_iter)
    evaluations: int                  # distinct exact run scores computed
    initial: list[int]                # the pool from the single-block ranking
    initial_objective: float
    log: list[dict] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return clean_json(asdict(self))


def _window_candidates(length: int, allowed: set[int], s: np.ndarray, K: int | None,
                       incumbents: list[tuple[int, int]]) -> list[tuple[int, int, float, bool]]:
    """Windows of ``length`` inside ``allowed``: the K lowest by coarse Σ s (ties: lower start), plus the
    current runs of that length (so the current pool is always a feasible choice)."""
    L = len(s)
    wins = [(j, j + length - 1, float(np.sum(s[j:j + length])))
            for j in range(L - length + 1) if all(i in allowed for i in range(j, j + length))]
    wins.sort(key=lambda w: (w[2], w[0]))
    keep = wins if not K or K <= 0 else wins[:K]
    chosen = {(j, k) for j, k, _ in keep}
    out = [(j, k, c, (j, k) in incumbents) for j, k, c in keep]
    for j, k in incumbents:
        if k - j + 1 == length and (j, k) not in chosen:
            out.append((j, k, float(np.sum(s[j:k + 1])), True))
    return out


def _conflict_free(cands: dict[int, list[tuple[int, int, float]]], lengths: tuple[int, ...],
                   L: int) -> tuple[float, tuple[tuple[int, int], ...]]:
    """Exact ConflictFreeSelect: one window per entry of ``lengths`` (a multiset), pairwise neither
    overlapping nor adjacent (so each stays a maximal run and J is the sum of their exact scores),
    minimising the sum of exact scores. Dynamic programme over (position, lengths still to place);
    ties go to earlier windows. Returns ``(inf, ())`` if no placement exists."""
    distinct = sorted(set(lengths), reverse=True)
    need0 = tuple(lengths.count(x) for x in distinct)
    idx = {x: i for i, x in enumerate(distinct)}
    by_start: dict[int, list[tuple[int, int, int, float]]] = {}
    for length, ws in cands.items():
        if length not in idx:
            continue
        for j, k, e in ws:
            by_start.setdefault(j, []).append((idx[length], j, k, e))
    for v in by_start.values():
        v.sort(key=lambda t: (t[0], t[1]))

    @lru_cache(maxsize=None)
    def f(p: int, need: tuple[int, ...]) -> tuple[float, tuple]:
        if not any(need):
            return 0.0, ()
        if p >= L:
            return math.inf, ()
        best: tuple[float, tuple] = (math.inf, ())
        for li, j, k, e in by_start.get(p, ()):
            if need[li] == 0 or not math.isfinite(e):
                continue
            rest = need[:li] + (need[li] - 1,) + need[li + 1:]
            c, w = f(k + 2, rest)
            if c + e < best[0]:
                best = (c + e, ((j, k),) + w)
        skip = f(p + 1, need)
        if skip[0] < best[0]:
            best = skip
        return best

    res = f(0, need0)
    f.cache_clear()
    return res


def _neighbour_partitions(lengths: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Run-length multisets one merge (two runs → one) or one split (one run → two) away."""
    out = set()
    ls = list(lengths)
    for a, b in itertools.combinations(range(len(ls)), 2):
        rest = [x for i, x in enumerate(ls) if i not in (a, b)]
        out.add(tuple(sorted(rest + [ls[a] + ls[b]], reverse=True)))
    for a, x in enumerate(ls):
        for y in range(1, x // 2 + 1):
            rest = [v for i, v in enumerate(ls) if i != a]
            out.add(tuple(sorted(rest + [y, x - y], reverse=True)))
    out.discard(tuple(sorted(ls, reverse=True)))
    return sorted(out)


def fast_block_select(scores: Sequence[float], run_score: RunScore, n: int, K: int | None = 5,
                      alt_size: int | None = None, max_iter: int = 20, protect: Iterable[int] | None = None,
                      repartition: bool = False, refine: bool = True) -> FBSResult:
    """Fast-Block-Select (papers.md §2.5; the ⟨INF⟩ choices are documented here and in docs/mi-prun.md).

    ``scores[i]`` is the single-block score ``s_i = −MI(H_i, H_{i+1})`` (lower = more redundant);
    ``run_score(j, k)`` the exact score of dropping the contiguous layers ``j..k`` (0-based, inclusive).

    1. Rank unprotected blocks by ``s`` ascending (ties: lower index; NaN last). ``P`` = first ``n``,
       ``A`` = the next ``alt_size`` (default ``n``). ``protect`` defaults to ``{0, L−1}``.
    2. Each iteration: split P into maximal runs → multiset of run lengths. For each length ℓ, the
       candidate windows are the contiguous windows of ℓ blocks inside ``P ∪ A``; they are coarse-ranked
       by ``Σ s_i`` and the ``K`` lowest kept (``K=None``: all), plus P's current runs of that length.
    3. Exact score ``run_score(j, k)`` for every kept candidate (memoised across iterations).
    4. Conflict-free choice: one window per run length, pairwise neither overlapping nor adjacent,
       minimising the sum of exact scores (exact dynamic programme — the reviewer's outline leaves this
       objective open). With ``repartition=True`` (an extension, off by default) the multisets one merge
       or one split away are tried too, so the run structure can change; by default it never does.
    5. The new pool is accepted only if ``J`` strictly decreases (the current pool is always feasible,
       so J never increases); otherwise, or when P is unchanged, stop (converged). ``A`` becomes the
       ``alt_size`` best-ranked blocks not in P. At most ``max_iter`` iterations.
    6. ``refine=True`` (default; an extension): a final conflict-free step over *every* window of 1..n
       unprotected blocks and every run-length multiset — :func:`optimal_select`, a dynamic programme over
       (position, blocks left) with ``≤ L·n`` run scores — so the result is the exact optimum of ``J``
       (steps 1–5 keep the run lengths of the initial pool and can end far from it). ``refine=False`` is
       the reconstruction as outlined.

    Deterministic (no randomness; all ties broken by index). Returns :class:`FBSResult` with the full
    iteration log (pool, alternatives, runs, candidates with coarse and exact scores, chosen windows,
    swaps in/out, objective before/after).
    """
    s = np.asarray(scores, dtype=float)
    L = len(s)
    if L == 0:
        raise SelectionError("no blocks to select from")
    prot = _protect_set(protect, L)
    key = np.where(np.isnan(s), np.inf, s)
    rank = [i for i in sorted(range(L), key=lambda i: (key[i], i)) if i not in prot]
    _check_n(n, rank, L, prot)
    alt = n if alt_size is None else int(alt_size)
    if alt < 0:
        raise SelectionError(f"alt_size must be >= 0, got {alt_size}")
    rs = _Cached(run_score)
    s_fill = np.where(np.isnan(s), np.inf, s)
    P = sorted(rank[:n])
    A = rank[n:n + alt]
    params = {"n": n, "K": K, "alt_size": alt, "max_iter": max_iter, "protect": sorted(prot),
              "repartition": repartition, "conflict_free": "exact DP, windows neither overlapping nor adjacent",
              "acceptance": "strict decrease of J"}
    obj = run_objective(P, rs) if P else 0.0
    initial, initial_obj = list(P), obj
    log = [{"iteration": 0, "pool": list(P), "alternatives": list(A), "runs": [list(r) for r in maximal_runs(P)],
            "objective": obj}]
    converged, it = n == 0, 0
    while not converged and it < max_iter:
        it += 1
        runs = maximal_runs(P)
        lengths = tuple(sorted((k - j + 1 for j, k in runs), reverse=True))
        partitions = [lengths] + (_neighbour_partitions(lengths) if repartition else [])
        allowed = set(P) | set(A)
        cand_log: dict[str, list] = {}
        cands: dict[int, list[tuple[int, int, float]]] = {}
        for length in sorted({x for part in partitions for x in part}):
            ws = _window_candidates(length, allowed, s_fill, K, runs)
            cands[length] = [(j, k, rs(j, k)) for j, k, _, _ in ws]
            cand_log[str(length)] = [{"window": [j, k], "coarse": c, "exact": rs(j, k), "incumbent": inc}
                                     for j, k, c, inc in ws]
        best = (math.inf, (), lengths)
        for part in partitions:
            cost, wins = _conflict_free(cands, part, L)
            if cost < best[0]:
                best = (cost, wins, part)
        cost, wins, part = best
        new_P = sorted({i for j, k in wins for i in range(j, k + 1)})
        tol = 1e-12 * max(1.0, abs(obj))
        accepted = bool(wins) and new_P != P and cost < obj - tol
        entry = {"iteration": it, "pool": list(P), "alternatives": list(A), "runs": [list(r) for r in runs],
                 "lengths": list(lengths), "partitions_tried": [list(p) for p in partitions],
                 "candidates": cand_log, "chosen": [list(w) for w in wins], "chosen_lengths": list(part),
                 "objective_before": obj, "objective_after": cost if accepted else obj,
                 "swaps": {"out": sorted(set(P) - set(new_P)) if accepted else [],
                           "in": sorted(set(new_P) - set(P)) if accepted else []},
                 "accepted": accepted}
        log.append(entry)
        if not accepted:
            converged = True
            break
        P, obj = new_P, run_objective(new_P, rs)
        A = [i for i in rank if i not in set(P)][:alt]
    if refine and n > 0:
        opt = optimal_select(rs, L, n, prot)
        tol = 1e-12 * max(1.0, abs(obj))
        accepted = opt["objective"] < obj - tol
        log.append({"iteration": it + 1, "step": "refine", "pool": list(P), "method": opt["method"],
                    "chosen": opt["runs"], "objective_before": obj,
                    "objective_after": opt["objective"] if accepted else obj,
                    "swaps": {"out": sorted(set(P) - set(opt["blocks"])) if accepted else [],
                              "in": sorted(set(opt["blocks"]) - set(P)) if accepted else []},
                    "accepted": bool(accepted)})
        if accepted:
            P, obj = list(opt["blocks"]), run_objective(opt["blocks"], rs)
    params["refine"] = bool(refine)
    return FBSResult(blocks=list(P), objective=obj, runs=[list(r) for r in maximal_runs(P)], iterations=it,
                     converged=converged, evaluations=rs.evaluations, initial=initial,
                     initial_objective=initial_obj, log=log, params=params)


def optimal_select(run_score: RunScore, num_blocks: int, n: int, protect: Iterable[int] | None = None) -> dict:
    """Exact minimum of ``J(P)`` over all n-subsets of unprotected blocks, by dynamic programming.

    ``J`` is a sum over maximal runs, so a pool is a sequence of runs separated by at least one kept block:
    ``f(p, m) = min(f(p+1, m), min_ℓ run_score(p, p+ℓ−1) + f(p+ℓ+1, m−ℓ))`` over runs of unprotected
    blocks starting at ``p``, ``f(·, 0) = 0``. ``O(L·n²)`` steps and at most ``L·n`` distinct run scores
    (the exhaustive search enumerates ``C(L, n)`` subsets); equal to :func:`exhaustive_select`'s optimum
    (tested). Ties go to the pool found first (runs starting earlier, then shorter runs).
    """
    L = int(num_blocks)
    prot = _protect_set(protect, L)
    free = [i for i in range(L) if i not in prot]
    _check_n(n, free, L, prot)
    rs = run_score if isinstance(run_score, _Cached) else _Cached(run_score)
    t0 = time.perf_counter()
    before = rs.evaluations
    # longest run of unprotected blocks starting at p
    span = [0] * (L + 2)
    for p in range(L - 1, -1, -1):
        span[p] = 0 if p in prot else span[p + 1] + 1
    INF = math.inf
    f = [[INF] * (n + 1) for _ in range(L + 2)]
    choice: list[list[int]] = [[0] * (n + 1) for _ in range(L + 2)]   # 0: skip p; ℓ > 0: run of ℓ from p
    for p in range(L + 1, -1, -1):
        f[p][0] = 0.0
    for p in range(L - 1, -1, -1):
        for m in range(1, n + 1):
            best, arg = f[p + 1][m], 0
            for ell in range(1, min(m, span[p]) + 1):
                rest = f[min(p + ell + 1, L + 1)][m - ell]
                if rest == INF:
                    continue
                v = rs(p, p + ell - 1) + rest
                if v < best:
                    best, arg = v, ell
            f[p][m], choice[p][m] = best, arg
    if n > 0 and f[0][n] == INF:
        raise SelectionError(f"No subset of {n} unprotected blocks has finite run scores")
    blocks, p, m = [], 0, n
    while m > 0:
        ell = choice[p][m]
        if ell == 0:
            p += 1
            continue
        blocks += list(range(p, p + ell))
        p, m = p + ell + 1, m - ell
    return {"blocks": blocks, "objective": float(f[0][n]) if n else 0.0,
            "runs": [list(r) for r in maximal_runs(blocks)], "evaluations": rs.evaluations - before,
            "method": "dynamic programme over (position, blocks left)", "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------------
# exhaustive search
# ----------------------------------------------------------------------------------------------------


def exhaustive_select(run_score: RunScore, num_blocks: int, n: int, protect: Iterable[int] | None = None,
                      max_combinations: int = 50_000, partition: Sequence[int] | None = None) -> dict:
    """Minimum of ``J(P)`` over all n-subsets of unprotected blocks (ties: lexicographically first).

    ``partition`` (a multiset of run lengths summing to n) restricts the search to subsets with exactly
    those maximal-run lengths — the space Fast-Block-Select searches, which never changes the run
    structure of its initial pool. Raises :class:`SelectionError` when ``C(free, n) > max_combinations``.
    Returns ``blocks``, ``objective``, ``runs``, ``combinations`` (subsets enumerated), ``feasible``
    (subsets matching ``partition``) and ``evaluations`` (distinct run scores computed: at most
    L(L+1)/2, since runs are memoised).
    """
    L = int(num_blocks)
    prot = _protect_set(protect, L)
    free = [i for i in range(L) if i not in prot]
    _check_n(n, free, L, prot)
    total = math.comb(len(free), n)
    if total > max_combinations:
        raise SelectionError(f"Exhaustive search over C({len(free)}, {n}) = {total:,} subsets exceeds the "
                             f"limit of {max_combinations:,}", hint="use Fast-Block-Select or raise max_combinations")
    rs = _Cached(run_score)
    t0 = time.perf_counter()
    want = None if partition is None else sorted(int(x) for x in partition)
    if want is not None and sum(want) != n:
        raise SelectionError(f"partition {want} does not sum to n={n}")
    best, best_obj, feasible = None, math.inf, 0
    for combo in itertools.combinations(free, n):
        runs = maximal_runs(combo)
        if want is not None and sorted(k - j + 1 for j, k in runs) != want:
            continue
        feasible += 1
        obj = float(sum(rs(j, k) for j, k in runs))
        if obj < best_obj:
            best, best_obj = combo, obj
    if best is None and n > 0:
        raise SelectionError(f"No subset of {n} unprotected blocks has run lengths {want}")
    blocks = list(best) if best is not None else []
    return {"blocks": blocks, "objective": best_obj if best is not None else 0.0,
            "runs": [list(r) for r in maximal_runs(blocks)], "combinations": total, "feasible": feasible,
            "partition": want, "evaluations": rs.evaluations, "seconds": time.perf_counter() - t0}


def selection_gap(fbs_objective: float, exhaustive_objective: float) -> dict:
    """Gap of a heuristic to the optimum of the same (minimised) objective: absolute and relative."""
    gap = float(fbs_objective) - float(exhaustive_objective)
    rel = gap / abs(exhaustive_objective) if exhaustive_objective else (0.0 if gap == 0 else math.inf)
    tol = 1e-12 * max(1.0, abs(exhaustive_objective))
    out = {"absolute": gap, "relative": rel, "optimal": abs(gap) <= tol}
    if gap < -tol:     # the reference was not the optimum of the space the heuristic searched
        out["below_reference"] = True
    return out
