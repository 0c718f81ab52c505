"""Block-set selection for MI-PRUN and its ground-truth baselines (papers.md §2.4–2.6, checklist 12–13, 17).

* :func:`fast_block_select` — Fast-Block-Select, reconstructed from the reviewer's outline (papers.md
  §2.5): a prune pool P and an alternative pool A, contiguous candidate windows of the lengths of P's
  runs, a coarse ranking by summed single-block scores, exact DPI-aware run scores for the top K, a
  conflict-free combination swapped into P, repeated until P stops changing. Works on any
  ``run_score(j, k)`` callable, so it is testable on synthetic tables.
* :func:`exhaustive_select` — the optimum of the same objective over all n-block subsets when
  ``C(L, n)`` is affordable, to measure Fast-Block-Select's gap.
* Ground truth on a calibration subset: drop-one ΔPPL (criterion ``"delta-ppl"``), SLEB-style iterative
  greedy removal (:func:`sleb_select`) and BlockPruner-style removal over attention and MLP sub-blocks
  (:func:`blockpruner_select`). These run forward passes (on :func:`analysis.models.surgery.pruned_view`
  views, never modifying the model) and are computed on demand, not in the analysis pass.
* :func:`agreement_matrix` — Spearman, Kendall and top-k overlap between criteria.

**Objective** (shared by Fast-Block-Select and exhaustive search): a set P of layers to drop is split
into maximal contiguous runs ``[j..k]`` (0-based, inclusive) and scored
``J(P) = Σ_runs run_score(j, k)``, with ``run_score(j, k) = −MI(H_j, H_{k+1})`` for MI-PRUN (``H_j`` is
the input of layer j, ``H_{k+1}`` the output of layer k); lower = more redundant = better to drop.
A single-layer run's score equals the block score ``s_j``.

Only numpy is imported at module level (this module is imported by :mod:`analysis.score.criteria`); torch,
the surgery and the plan modules are imported by the functions that run the model.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np

from analysis.score.criteria import Criterion, register_criterion
from analysis.errors import DataError, SelectionError
from analysis.indices import GRANULARITY_KEY

RunScore = Callable[[int, int], float]
Progress = Callable[[float, str], None]

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
        from analysis.score.result import _clean

        return _clean(asdict(self))


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


# ----------------------------------------------------------------------------------------------------
# MI-PRUN selection from a run's cached MI data
# ----------------------------------------------------------------------------------------------------


def miprun_select(result, n: int, method: str = "fast", protect: Iterable[int] | None = None, K: int | None = 5,
                  alt_size: int | None = None, max_iter: int = 20, repartition: bool = False,
                  max_combinations: int = 50_000, refine: bool = True) -> dict:
    """Layers to drop with MI-PRUN from a run's ``extras["mi"]["matrix"]`` (no states, no forward passes).

    Block and run scores both come from the boundary MI matrix (the same token subsample, so the DPI
    comparison is consistent): ``s_i = −M[i][i+1]``, ``run_score(j, k) = −M[j][k+1]``. ``protect``
    defaults to the run's protected blocks. ``method``: ``fast`` (Fast-Block-Select), ``exhaustive``, or
    ``both`` (Fast-Block-Select, plus the exhaustive optimum and the gap). Returns a plan dict
    (``drop_attn``, ``drop_mlp``, ``drop_layers``, ``source``).
    """
    from analysis.score.mi import matrix_block_scores, matrix_run_score, run_mi_data

    d = run_mi_data(result)
    if not d.get("matrix"):
        raise SelectionError("This run's MI data has no boundary MI matrix (needed for run scores)",
                             hint="re-run the analysis with --mi and the matrix enabled (matrix_tokens > 0)")
    if method not in ("fast", "exhaustive", "both"):
        raise SelectionError(f"Unknown method {method!r}", hint="use fast, exhaustive or both")
    s = matrix_block_scores(d["matrix"])
    rs = matrix_run_score(d["matrix"])
    prot = list(result.protected if protect is None else protect)
    source: dict = {"criterion": "mi-prun", "granularity": "layer", "n": n, "k": n, "index_base": 0,
                    "protected": sorted(int(p) for p in prot), "estimator": d.get("estimator"),
                    "estimator_params": d.get("params"), "matrix_tokens": d.get("matrix_tokens"),
                    "block_scores": s.tolist(), "run_manifest": getattr(result, "manifest", {})}
    t0 = time.perf_counter()
    if method in ("fast", "both"):
        fbs = fast_block_select(s, rs, n, K=K, alt_size=alt_size, max_iter=max_iter, protect=prot,
                                repartition=repartition, refine=refine)
        blocks = fbs.blocks
        source.update(method="fast-block-select", objective=fbs.objective, fast_block_select=fbs.to_dict())
    if method in ("exhaustive", "both"):
        exh = exhaustive_select(rs, len(s), n, prot, max_combinations)
        source["exhaustive"] = exh
        if method == "exhaustive":
            blocks = exh["blocks"]
            source.update(method="exhaustive", objective=exh["objective"])
        else:
            # the run lengths of the returned pool (with repartition/refine they differ from the initial
            # pool's, and an optimum over the initial partition is no bound for the result: negative gaps)
            part = [k - j + 1 for j, k in maximal_runs(fbs.blocks)]
            same = exhaustive_select(rs, len(s), n, prot, max_combinations, partition=part)
            source["exhaustive_same_partition"] = same
            source["gap"] = selection_gap(fbs.objective, exh["objective"])
            source["gap_same_partition"] = selection_gap(fbs.objective, same["objective"])
    source["seconds"] = time.perf_counter() - t0
    from analysis.score.result import _clean

    return {"drop_attn": [], "drop_mlp": [], "drop_layers": sorted(int(b) for b in blocks), "source": _clean(source)}


# ----------------------------------------------------------------------------------------------------
# ground truth: calibration loss with blocks skipped
# ----------------------------------------------------------------------------------------------------


def _ids_of(tokens):
    import torch

    ids = tokens.input_ids if hasattr(tokens, "input_ids") else torch.as_tensor(tokens)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise DataError(f"Calibration tokens must be a [N, T] array with T >= 2, got shape {tuple(ids.shape)}")
    return ids.long()


def _calib_windows(ids, batch_size: int):
    """Calibration windows as :class:`analysis.evaluate.perplexity.EvalWindows`: every window scored whole (first
    token is context only), no BOS added, ``batch_size`` windows per forward."""
    from analysis.evaluate.perplexity import EvalWindows, _batch

    meta = {"corpus": "tokens", "split": None, "window": int(ids.shape[1]), "stride": None,
            "remainder": "none (windows given)", "tokens_used": int(ids.numel()), "bos": False}
    return EvalWindows(_batch([(r, 1) for r in ids], batch_size), meta)


def _as_plan(p, L: int):
    from analysis.models.plan import Plan

    p = p if isinstance(p, Plan) else Plan.from_dict(p) if isinstance(p, dict) else Plan()
    return p.validate(L).normalized()


def plan_losses(lm, tokens, plans: Sequence, batch_size: int = 8, progress: Progress | None = None) -> list[float]:
    """Mean next-token NLL (nats) on the calibration windows for each plan (``None`` = original model).

    Every window is scored whole (its first token is context only). Plans run on
    :func:`analysis.models.surgery.pruned_view` views and are walked as a trie exactly like
    :func:`analysis.evaluate.perplexity.sweep` (:func:`analysis.evaluate.perplexity._prefix_schedule`): each plan starts where it
    first differs from the plan before it, fed the cached residual stream there, so a drop-one scan runs
    the original once and each plan only from its dropped block on, and a SLEB step runs each candidate
    only from the candidate layer on (on top of the layers already removed). The NLL is bit-identical to
    :func:`analysis.evaluate.perplexity.perplexity` of each plan on the same windows (``EvalConfig(batch_size=
    batch_size, bos=False)``), tested.
    """
    from analysis.evaluate.perplexity import EvalConfig, _plan_key, _sweep_nll

    ids_all = _ids_of(tokens)
    L = lm.num_layers
    keyed = [(_plan_key(p), p) for p in (_as_plan(p, L) for p in plans)]
    unique: dict = {}
    for key, p in keyed:
        unique.setdefault(key, p)
    windows = _calib_windows(ids_all, batch_size)
    cfg = EvalConfig(batch_size=batch_size, bos=False)
    sub = None if progress is None else (lambda f, m: progress(f, f"calibration loss: {m}"))
    sums = _sweep_nll(lm, list(unique.items()), windows, cfg, True, sub)
    count = windows.tokens_scored
    return [sums[key] / count for key, _ in keyed]


def plan_cost(lm, plans: Sequence, reuse: bool = True) -> dict:
    """Work of evaluating ``plans`` (``None`` = original) on one batch, counted from the schedule:
    decoder-layer forwards, LM-head calls, and ``passes`` = layer forwards / L (one full forward = 1).
    ``reuse=False`` counts one separate evaluation per plan (what :func:`analysis.evaluate.perplexity.perplexity`
    runs)."""
    from analysis.evaluate.perplexity import _plan_key, _prefix_schedule

    L = lm.num_layers
    unique: dict = {}
    for p in plans:
        p = _as_plan(p, L)
        unique.setdefault(_plan_key(p), p)
    if not reuse:
        layers = sum(len(p.kept_layers(L)) for p in unique.values())
        return {"layer_forwards": layers, "heads": len(unique), "passes": layers / L, "plans": len(unique)}
    steps = _prefix_schedule(lm, list(unique.items()))
    layers = sum(len(st.layer_ids) for st in steps if st.view is not None)
    return {"layer_forwards": layers, "heads": len(unique), "passes": layers / L, "plans": len(unique)}


def calibration_loss(lm, tokens, plan=None, batch_size: int = 8) -> float:
    """Mean next-token NLL of the model with ``plan`` (a Plan / plan dict / None) skipped."""
    return plan_losses(lm, tokens, [plan], batch_size)[0]


def _plan_for(kind_blocks: dict[str, Iterable[int]]):
    from analysis.models.plan import Plan

    return Plan(**{k: sorted(int(i) for i in v) for k, v in kind_blocks.items()})


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def delta_ppl_details(lm, tokens, granularity: str = "layer", blocks: Iterable[int] | None = None,
                      batch_size: int = 8, progress: Progress | None = None) -> dict:
    """Drop-one ground truth: ``ΔPPL_i = PPL(model without block i) − PPL(model)`` on the calibration
    windows, for every block (or only ``blocks``; the others are NaN). Lower = more redundant."""
    if granularity not in GRANULARITY_KEY:
        raise SelectionError(f"Unknown granularity {granularity!r}", hint="use attention, mlp or layer")
    L = lm.num_layers
    todo = list(range(L)) if blocks is None else sorted(set(int(b) for b in blocks))
    if granularity == "layer" and L < 2:
        raise SelectionError("a model with one layer has no layer to drop")
    t0 = time.perf_counter()
    plans = [None] + [_plan_for({GRANULARITY_KEY[granularity]: [i]}) for i in todo]
    losses = plan_losses(lm, tokens, plans, batch_size, progress)
    base = losses[0]
    ppl = np.full(L, np.nan)
    loss = np.full(L, np.nan)
    for i, lo in zip(todo, losses[1:]):
        loss[i], ppl[i] = lo, _ppl(lo)
    ids = _ids_of(tokens)
    return {"granularity": granularity, "scores": (ppl - _ppl(base)).tolist(), "ppl": ppl.tolist(),
            "loss": loss.tolist(), "base_ppl": _ppl(base), "base_loss": base,
            "tokens": int(ids.shape[0] * (ids.shape[1] - 1)), "windows": list(ids.shape),
            "evaluations": len(plans), "cost_passes": plan_cost(lm, plans)["passes"],
            "seconds": time.perf_counter() - t0,
            "definition": "PPL(without block i) − PPL(full), token perplexity on the calibration windows"}


def ground_truth_delta_ppl(lm, tokens, granularity: str = "layer", batch_size: int = 8,
                           progress: Progress | None = None) -> np.ndarray:
    """Drop-one ΔPPL per block (``[L]``, lower = more redundant); see :func:`delta_ppl_details`."""
    return np.asarray(delta_ppl_details(lm, tokens, granularity, batch_size=batch_size, progress=progress)["scores"])


def store_ground_truth(result, granularity: str, scores, details: dict | None = None) -> None:
    """Put drop-one ΔPPL into ``result.extras["criteria_scores"]["delta-ppl"][granularity]`` (and the
    details under ``extras["ground_truth"]``) so the criterion registry finds it; refreshes baselines."""
    result.extras.setdefault("criteria_scores", {}).setdefault("delta-ppl", {})[granularity] = \
        [None if not np.isfinite(v) else float(v) for v in np.asarray(scores, dtype=float)]
    if details is not None:
        result.extras.setdefault("ground_truth", {})[granularity] = {k: v for k, v in details.items() if k != "scores"}
    try:
        from analysis.run import compute_baselines

        compute_baselines(result)
    except Exception:  # noqa: BLE001 - baselines are a convenience view
        pass


def _greedy_removal(lm, tokens, n: int, units: list[tuple[str, int]], batch_size: int,
                    progress: Progress | None, what: str) -> dict:
    """Iterative greedy removal: at each step drop the unit whose removal (on top of the ones already
    removed) gives the lowest calibration loss; re-evaluate all remaining units after every removal."""
    if n < 0 or n > len(units):
        raise SelectionError(f"n={n} but only {len(units)} {what} can be removed", hint=f"choose n <= {len(units)}")
    t0 = time.perf_counter()
    removed: list[tuple[str, int]] = []
    base = None
    steps, evals, passes = [], 1, 0.0
    if n == 0:
        base = plan_losses(lm, tokens, [None], batch_size)[0]
        passes += plan_cost(lm, [None])["passes"]
    for step in range(n):
        cands = [u for u in units if u not in removed]
        plans = []
        for u in cands:
            parts: dict[str, list[int]] = {"drop_attn": [], "drop_mlp": [], "drop_layers": []}
            for kind, i in removed + [u]:
                parts[GRANULARITY_KEY[kind]].append(i)
            plans.append(_plan_for(parts))
        sub = None if progress is None else (lambda f, m, s=step: progress((s + f) / n, f"{what} step {s + 1}/{n}: {m}"))
        if base is None:                      # the first step also scores the full model (one shared walk)
            losses = plan_losses(lm, tokens, [None] + plans, batch_size, sub)
            passes += plan_cost(lm, [None] + plans)["passes"]
            base, losses = losses[0], losses[1:]
        else:
            losses = plan_losses(lm, tokens, plans, batch_size, sub)
            passes += plan_cost(lm, plans)["passes"]
        evals += len(plans)
        best = min(range(len(cands)), key=lambda c: (losses[c], c))
        removed.append(cands[best])
        steps.append({"step": step + 1, "removed": list(cands[best]), "loss": losses[best], "ppl": _ppl(losses[best]),
                      "candidates": [{"unit": list(u), "ppl": _ppl(lo)} for u, lo in zip(cands, losses)]})
    return {"removed": removed, "steps": steps, "base_loss": base, "base_ppl": _ppl(base), "evaluations": evals,
            "cost_passes": passes, "seconds": time.perf_counter() - t0}


def sleb_select(lm, tokens, n: int, protect: Iterable[int] = (), batch_size: int = 8,
                progress: Progress | None = None) -> dict:
    """SLEB-style selection (Song et al. 2024, arXiv 2402.09025): remove ``n`` whole layers one at a time,
    each time the one whose removal gives the lowest calibration perplexity, re-scoring all remaining
    layers after every removal. Returns ``blocks`` (sorted), ``order`` (removal order), per-step
    candidate perplexities, ``evaluations`` (calibration passes) and ``seconds``."""
    L = lm.num_layers
    prot = set(int(p) for p in protect)
    units = [("layer", i) for i in range(L) if i not in prot]
    if n >= L:
        raise SelectionError(f"SLEB cannot remove n={n} of {L} layers; keep at least one", hint=f"choose n < {L}")
    out = _greedy_removal(lm, tokens, n, units, batch_size, progress, "SLEB")
    order = [i for _, i in out.pop("removed")]
    return {"method": "sleb", "granularity": "layer", "blocks": sorted(order), "order": order, **out,
            "plan": {"drop_attn": [], "drop_mlp": [], "drop_layers": sorted(order)}}


def blockpruner_select(lm, tokens, n: int, protect: Iterable[int] = (), batch_size: int = 8,
                       progress: Progress | None = None) -> dict:
    """BlockPruner-style selection (Zhong et al. 2024, arXiv 2406.10594): like SLEB, but the units are the
    2L attention and MLP sub-blocks (a layer with both removed is a removed layer). ``protect`` lists
    layers whose sub-blocks are kept. Returns ``drop_attn``, ``drop_mlp``, the removal ``order`` as
    ``[kind, layer]`` pairs, per-step perplexities, ``evaluations`` and ``seconds``."""
    L = lm.num_layers
    prot = set(int(p) for p in protect)
    units = [(kind, i) for i in range(L) if i not in prot for kind in ("attention", "mlp")]
    out = _greedy_removal(lm, tokens, n, units, batch_size, progress, "BlockPruner")
    removed = out.pop("removed")
    attn = sorted(i for k, i in removed if k == "attention")
    mlp = sorted(i for k, i in removed if k == "mlp")
    return {"method": "blockpruner", "drop_attn": attn, "drop_mlp": mlp, "order": [list(u) for u in removed], **out,
            "plan": {"drop_attn": attn, "drop_mlp": mlp, "drop_layers": []}}


# ----------------------------------------------------------------------------------------------------
# agreement between criteria
# ----------------------------------------------------------------------------------------------------


def agreement_matrix(result, criteria: Sequence[str], granularity: str | None = None, k: int | None = None,
                     protected: Iterable[int] | None = None) -> dict:
    """Pairwise agreement of criteria on one run: Spearman and Kendall rank correlation of their
    *droppability* (score for ``redundant="low"`` criteria, −score for ``"high"``, so +1 means the same
    drop order) over the unprotected blocks, and top-k overlap of their drop orders (``k`` defaults to
    a quarter of the blocks). Criteria the run cannot score are listed in ``unavailable`` with the reason.
    """
    from analysis.score.criteria import get_criterion, scores_for
    from analysis.score.selection import rank_blocks, rank_correlation, topk_overlap

    g = granularity or result.granularity
    prot = list(result.protected if protected is None else protected)
    keys, orders, unavailable = {}, {}, {}
    for name in criteria:
        try:
            c = get_criterion(name)
            s = scores_for(result, name, g)
        except SelectionError as exc:
            unavailable[name] = str(exc)
            continue
        keys[name] = s if c.redundant == "low" else -s
        orders[name] = rank_blocks(s, c.redundant, prot)
    names = list(keys)
    L = result.num_layers
    free = [i for i in range(L) if i not in set(prot)]
    kk = max(1, L // 4) if k is None else int(k)
    m = len(names)
    sp, kd, ov = (np.full((m, m), np.nan) for _ in range(3))
    for a in range(m):
        for b in range(m):
            rc = rank_correlation(keys[names[a]][free], keys[names[b]][free])
            sp[a, b], kd[a, b] = rc["spearman"], rc["kendall"]
            ov[a, b] = topk_overlap(orders[names[a]], orders[names[b]], kk)
    from analysis.score.result import _clean

    return _clean({"criteria": names, "granularity": g, "k": kk, "protected": prot, "spearman": sp,
                   "kendall": kd, "topk_overlap": ov, "orders": orders, "unavailable": unavailable})


# ----------------------------------------------------------------------------------------------------
# the "delta-ppl" criterion (ground truth, computed on demand)
# ----------------------------------------------------------------------------------------------------


def _delta_ppl_score(r, g: str, **_):
    raise SelectionError(f"This run has no drop-one ΔPPL ground truth for {g} blocks",
                         hint="compute it with `python -m analysis groundtruth --into RUN.json ...` or "
                              "analysis.score.blockselect.ground_truth_delta_ppl + store_ground_truth")


register_criterion(Criterion(
    "delta-ppl", "Drop-one ΔPPL (ground truth)",
    "Calibration perplexity after removing only this block minus the full model's; the blocks whose removal "
    "hurts least are dropped first. Needs forward passes, so it is computed on demand (groundtruth command), "
    "not in the analysis pass.",
    score=_delta_ppl_score, redundant="low", reference="drop-one ablation (as in SLEB / BlockPruner scoring)",
    score_label="ΔPPL"))
