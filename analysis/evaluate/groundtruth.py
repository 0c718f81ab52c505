"""Ground truth for block pruning, evaluated on the model (papers.md §2.6, checklist 17).

Ground truth on a calibration subset: drop-one ΔPPL (criterion ``"delta-ppl"``), SLEB-style iterative
greedy removal (:func:`sleb_select`) and BlockPruner-style removal over attention and MLP sub-blocks
(:func:`blockpruner_select`). These run forward passes (on :func:`analysis.models.surgery.pruned_view`
views, never modifying the model) and are computed on demand, not in the analysis pass.

:func:`plan_losses` walks the plans as a trie like :func:`analysis.evaluate.sweeps.sweep`, so a drop-one scan
runs the original model once and each plan only from its dropped block on. :func:`store_ground_truth` puts the
drop-one scores into a run, where the ``"delta-ppl"`` criterion (:data:`analysis.score.criteria.CRITERIA`) reads them.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from analysis.errors import DataError, SelectionError
from analysis.evaluate.sweeps import sweep_nll
from analysis.evaluate.windows import EvalConfig, EvalWindows, batch_windows
from analysis.models.forward import ppl_from_nll
from analysis.models.prefix import plan_key, prefix_schedule
from analysis.indices import GRANULARITY_KEY
from analysis.models.plan import Plan
from analysis.score.baselines import compute_baselines

Progress = Callable[[float, str], None]


def _ids_of(tokens):
    ids = tokens.input_ids if hasattr(tokens, "input_ids") else torch.as_tensor(tokens)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise DataError(f"Calibration tokens must be a [N, T] array with T >= 2, got shape {tuple(ids.shape)}")
    return ids.long()


def _calib_windows(ids, batch_size: int):
    """Calibration windows as :class:`analysis.evaluate.windows.EvalWindows`: every window scored whole (first
    token is context only), no BOS added, ``batch_size`` windows per forward."""
    meta = {"corpus": "tokens", "split": None, "window": int(ids.shape[1]), "stride": None,
            "remainder": "none (windows given)", "tokens_used": int(ids.numel()), "bos": False}
    return EvalWindows(batch_windows([(r, 1) for r in ids], batch_size), meta)


def _as_plan(p, L: int):
    p = p if isinstance(p, Plan) else Plan.from_dict(p) if isinstance(p, dict) else Plan()
    return p.validate(L).normalized()


def plan_losses(lm, tokens, plans: Sequence, batch_size: int = 8, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None, done: dict | None = None) -> list[float]:
    """Mean next-token NLL (nats) on the calibration windows for each plan (``None`` = original model).

    Every window is scored whole (its first token is context only). Plans run on
    :func:`analysis.models.surgery.pruned_view` views and are walked as a trie exactly like
    :func:`analysis.evaluate.sweeps.sweep` (:func:`analysis.models.prefix.prefix_schedule`): each plan starts where it
    first differs from the plan before it, fed the cached residual stream there, so a drop-one scan runs
    the original once and each plan only from its dropped block on, and a SLEB step runs each candidate
    only from the candidate layer on (on top of the layers already removed). The NLL is bit-identical to
    :func:`analysis.evaluate.quality.perplexity` of each plan on the same windows (``EvalConfig(batch_size=
    batch_size, bos=False)``), tested.
    """
    ids_all = _ids_of(tokens)
    L = lm.num_layers
    keyed = [(plan_key(p), p) for p in (_as_plan(p, L) for p in plans)]
    unique: dict = {}
    for key, p in keyed:
        unique.setdefault(key, p)
    windows = _calib_windows(ids_all, batch_size)
    cfg = EvalConfig(batch_size=batch_size, bos=False)
    sub = None if progress is None else (lambda f, m: progress(f, f"calibration loss: {m}"))
    sums = sweep_nll(lm, list(unique.items()), windows, cfg, True, sub, should_stop)
    scored = EvalWindows(windows.batches[: sums.batches_done], windows.meta)
    count = scored.tokens_scored
    if done is not None:
        done.update(windows=sum(ids.shape[0] for ids, _ in scored.batches), tokens=count, stopped=sums.stopped)
    return [sums[key] / count for key, _ in keyed]


def plan_cost(lm, plans: Sequence, reuse: bool = True) -> dict:
    """Work of evaluating ``plans`` (``None`` = original) on one batch, counted from the schedule:
    decoder-layer forwards, LM-head calls, and ``passes`` = layer forwards / L (one full forward = 1).
    ``reuse=False`` counts one separate evaluation per plan (what :func:`analysis.evaluate.quality.perplexity`
    runs)."""
    L = lm.num_layers
    unique: dict = {}
    for p in plans:
        p = _as_plan(p, L)
        unique.setdefault(plan_key(p), p)
    if not reuse:
        layers = sum(len(p.kept_layers(L)) for p in unique.values())
        return {"layer_forwards": layers, "heads": len(unique), "passes": layers / L, "plans": len(unique)}
    steps = prefix_schedule(lm, list(unique.items()))
    layers = sum(len(st.layer_ids) for st in steps if st.view is not None)
    return {"layer_forwards": layers, "heads": len(unique), "passes": layers / L, "plans": len(unique)}


def calibration_loss(lm, tokens, plan=None, batch_size: int = 8) -> float:
    """Mean next-token NLL of the model with ``plan`` (a Plan / plan dict / None) skipped."""
    return plan_losses(lm, tokens, [plan], batch_size)[0]


def _plan_for(kind_blocks: dict[str, Iterable[int]]):
    return Plan(**{k: sorted(int(i) for i in v) for k, v in kind_blocks.items()})


def _ppl(loss: float) -> float:
    return ppl_from_nll(loss)


def delta_ppl_details(lm, tokens, granularity: str = "layer", blocks: Iterable[int] | None = None,
                      batch_size: int = 8, progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None) -> dict:
    """Drop-one ground truth: ``ΔPPL_i = PPL(model without block i) − PPL(model)`` on the calibration
    windows, for every block (or only ``blocks``; the others are NaN). Lower = more redundant.
    ``should_stop()``: stop between window batches and score every block on the windows done
    (``"stopped": True``, ``"windows"`` then counts those)."""
    if granularity not in GRANULARITY_KEY:
        raise SelectionError(f"Unknown granularity {granularity!r}", hint="use attention, mlp or layer")
    L = lm.num_layers
    todo = list(range(L)) if blocks is None else sorted(set(int(b) for b in blocks))
    if granularity == "layer" and L < 2:
        raise SelectionError("a model with one layer has no layer to drop")
    t0 = time.perf_counter()
    plans = [None] + [_plan_for({GRANULARITY_KEY[granularity]: [i]}) for i in todo]
    done: dict = {}
    losses = plan_losses(lm, tokens, plans, batch_size, progress, should_stop, done)
    base = losses[0]
    ppl = np.full(L, np.nan)
    loss = np.full(L, np.nan)
    for i, lo in zip(todo, losses[1:]):
        loss[i], ppl[i] = lo, _ppl(lo)
    ids = _ids_of(tokens)
    return {"granularity": granularity, "scores": (ppl - _ppl(base)).tolist(), "ppl": ppl.tolist(),
            "loss": loss.tolist(), "base_ppl": _ppl(base), "base_loss": base, "stopped": done["stopped"],
            "tokens": int(done["tokens"]), "windows": [int(done["windows"]), int(ids.shape[1])],
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


def delta_ppl_score(r, g: str, **_):
    """The ``"delta-ppl"`` criterion's score when the run holds none (stored scores are read first)."""
    raise SelectionError(f"This run has no drop-one ΔPPL ground truth for {g} blocks",
                         hint="compute it with `python -m analysis groundtruth --into RUN.json ...` or "
                              "analysis.evaluate.groundtruth.ground_truth_delta_ppl + store_ground_truth")
