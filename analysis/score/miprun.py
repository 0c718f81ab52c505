"""MI-PRUN: the criterion and block selection from a run's MI data (papers.md §2).

MI-PRUN (Zhang et al. 2026, arXiv 2601.07212) scores a block by ``s_i = −MI(H_{i−1}, H_i)``: a block whose
output shares a lot of information with its input transforms little and is redundant (lowest ``s``
dropped first). For a contiguous run of blocks ``j..k`` the score is ``−MI(H_{j−1}, H_k)``; by the data
processing inequality (DPI) along the Markov chain of hidden states this is ``≥ max_i s_i`` over the run.

The MI estimates come from the ``mi`` analysis extension (:mod:`analysis.measure.mi_states`, stored in
``result.extras["mi"]``): :func:`mi_prun_score` is the ``"mi-prun"`` criterion's score, and
:func:`miprun_select` chooses layers with Fast-Block-Select (:mod:`analysis.score.blocksearch`) on the
DPI-aware run scores read from the boundary MI matrix (no states, no forward passes).

Only numpy is imported at module level.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np

from analysis.errors import SelectionError
from analysis.measure.mi_states import mi_matrix
from analysis.score.blocksearch import exhaustive_select, fast_block_select, maximal_runs, selection_gap
from analysis.store.jsonio import clean_json


def run_mi_data(r) -> dict:
    """The run's ``extras["mi"]`` or a clear error."""
    d = (getattr(r, "extras", None) or {}).get("mi")
    if not d:
        raise SelectionError("This run has no MI data", hint="run the analysis with --mi")
    return d


def mi_prun_score(r, g: str, **_) -> np.ndarray:
    """The ``"mi-prun"`` criterion's score: the run's stored ``−MI(in_i, out_i)`` per ``g`` block."""
    d = run_mi_data(r)
    sc = (d.get("scores") or {}).get(g)
    if sc is None:
        raise SelectionError(f"This run has no MI-PRUN scores for {g} blocks", hint="run the analysis with --mi")
    return np.array([np.nan if v is None else v for v in sc], dtype=float)


def matrix_block_scores(matrix) -> np.ndarray:
    """Layer scores ``−MI(H_i, H_{i+1})`` from a boundary MI matrix (None → NaN)."""
    m = mi_matrix(matrix)
    return -np.array([m[i, i + 1] for i in range(m.shape[0] - 1)])


def matrix_run_score(matrix) -> Callable[[int, int], float]:
    """``run_score(j, k) = −MI(H_j, H_{k+1})`` read from a boundary MI matrix (layers j..k, 0-based)."""
    m = mi_matrix(matrix)

    def run_score(j: int, k: int) -> float:
        return -float(m[j, k + 1])

    return run_score


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
    return {"drop_attn": [], "drop_mlp": [], "drop_layers": sorted(int(b) for b in blocks), "source": clean_json(source)}
