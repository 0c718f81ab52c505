"""Sweeps: perplexity of every criterion × k pruning plan on the same windows, the plans walked as a trie so
that each forward starts where the plan first differs from the previous one (:mod:`analysis.models.prefix`)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch

from analysis.errors import SelectionError
from analysis.evaluate.cost import latency, param_report
from analysis.evaluate.quality import eval_protocol
from analysis.evaluate.windows import EvalConfig, EvalWindows, Progress, prepare_eval
from analysis.models.forward import final_hidden, nll_sum, oom_guard, ppl_result
from analysis.models.loading import LoadedModel
from analysis.models.plan import Plan
from analysis.models.prefix import plan_key, prefix_batch, prefix_schedule
from analysis.models.surgery import pruned_view
from analysis.score.criteria import get_criterion, select

_GRANULARITY_KEY = {"attention": "drop_attn", "mlp": "drop_mlp", "layer": "drop_layers"}


@dataclass
class SweepRow:
    """One row of a sweep: a criterion's plan at one k and its perplexity and size."""

    criterion: str
    k: int
    granularity: str
    blocks: list[int]
    plan: dict
    perplexity: float
    nll: float
    tokens: int
    params: int
    params_removed_fraction: float
    latency: dict | None = None


def _plans_for(run_or_orders, criteria: Sequence[str], ks: Iterable[int], granularity: str | None,
               **params) -> tuple[list[tuple[str, int, str, Plan]], list[dict]]:
    """(criterion, k, granularity, plan) per feasible pair, and the skipped ones with the reason."""
    plans, skipped = [], []
    for name in criteria:
        for k in ks:
            try:
                if isinstance(run_or_orders, dict):
                    if name not in run_or_orders:
                        raise SelectionError(f"no drop order given for criterion {name!r}")
                    g = granularity or "layer"
                    order = list(run_or_orders[name])
                    if k > len(order):
                        raise SelectionError(f"k={k} but the {name} order has only {len(order)} blocks")
                    plan = Plan(source={"criterion": name, "k": k, "granularity": g, "order": order,
                                        "index_base": 0})
                    setattr(plan, _GRANULARITY_KEY[g], sorted(order[:k]))
                else:
                    c = get_criterion(name)
                    sel = select(run_or_orders, name, k, granularity,
                                 **{p: v for p, v in params.items() if p in c.params})
                    g, plan = sel.granularity, Plan.from_selection(sel, run_or_orders)
                plans.append((name, k, g, plan))
            except SelectionError as exc:
                skipped.append({"criterion": name, "k": k, "reason": str(exc)})
    return plans, skipped


def sweep(lm: LoadedModel, run_or_orders, criteria: Sequence[str] = ("entrodrop",), ks: Iterable[int] = range(13),
          data=None, granularity: str | None = None, cfg: EvalConfig | None = None, split: str = "eval",
          reuse: bool = True, with_latency: bool = False, latency_kwargs: dict | None = None,
          progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
          **criterion_params) -> dict:
    """Perplexity for every criterion × k plan (rows), sharing the work between plans.

    ``run_or_orders``: an AnalysisResult (plans via :func:`analysis.score.criteria.select`) or
    ``{criterion: drop order}``. With ``reuse`` plans are walked as a trie (see
    :func:`~analysis.models.prefix.prefix_schedule`): each plan's forward starts where it first differs from
    the previous plan, from the cached ``resid_pre`` there; the NLL is bit-identical to
    :func:`~analysis.evaluate.quality.perplexity` with that plan. ``should_stop()`` is polled between window
    batches: a stopped sweep scores every plan on the batches done so far (``"stopped": True`` and the
    protocol's ``tokens_scored`` say how many).
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    windows = prepare_eval(lm, data, cfg, split)
    plans, skipped = _plans_for(run_or_orders, criteria, list(ks), granularity, **criterion_params)
    unique: dict[tuple, Plan] = {}
    for _, _, _, p in plans:
        unique.setdefault(plan_key(p), p)
    sums = sweep_nll(lm, list(unique.items()), windows, cfg, reuse, progress, should_stop)
    windows = EvalWindows(windows.batches[: sums.batches_done], windows.meta)
    rows, base = [], param_report(lm.model)["total"]
    for name, k, g, plan in plans:
        res = ppl_result(sums[plan_key(plan)], windows.tokens_scored)
        params = param_report(lm.model, plan)["total"]
        blocks = plan.to_dict()[_GRANULARITY_KEY[g]]
        row = SweepRow(name, k, g, blocks, plan.to_dict(), res["perplexity"], res["nll"], res["tokens"], params,
                       (base - params) / base if base else 0.0)
        if with_latency:
            row.latency = latency(lm, plan, **(latency_kwargs or {}))
        rows.append(asdict(row))
    return {"protocol": eval_protocol(lm, windows), "rows": rows, "skipped": skipped, "reuse": reuse,
            "unique_plans": len(unique), "seconds": time.perf_counter() - t0, "stopped": sums.stopped}


class NLLSums(dict):
    """``{plan key: summed NLL}`` over the first ``batches_done`` window batches (all of them unless stopped)."""

    batches_done: int = 0
    stopped: bool = False


def sweep_nll(lm: LoadedModel, plans: list[tuple[tuple, Plan]], windows: EvalWindows, cfg: EvalConfig,
              reuse: bool, progress: Progress | None, should_stop: Callable[[], bool] | None = None) -> NLLSums:
    """Summed NLL over ``windows`` of every ``(key, plan)``: walked as a trie with ``reuse``
    (:func:`~analysis.models.prefix.prefix_schedule`), else one view per plan; bit-identical either way.
    ``should_stop()`` is polled between batches (so at least one is scored); the sums then cover
    ``batches_done`` batches."""
    sums = NLLSums({key: 0.0 for key, _ in plans})
    steps = prefix_schedule(lm, plans) if reuse else None
    views = None if reuse else {key: (lm.model if p.is_empty else pruned_view(lm.model, p)) for key, p in plans}
    n = len(windows.batches)
    with torch.inference_mode():
        for b, (ids, first) in enumerate(windows.batches):
            if b > 0 and should_stop is not None and should_stop():    # between batches: one is always done
                sums.stopped = True
                break
            ids = ids.to(lm.device)
            if reuse:
                for key, view, hidden in prefix_batch(steps, ids):
                    sums[key] += nll_sum(view, hidden, ids, first, cfg.logits_chunk)
            else:
                for key, v in views.items():
                    sums[key] += oom_guard(lambda: nll_sum(v, final_hidden(v, ids), ids, first, cfg.logits_chunk),
                                           "sweep")
            sums.batches_done = b + 1
            if progress:
                progress((b + 1) / n, f"sweep: window batch {b + 1}/{n} × {len(plans)} plans")
    return sums
