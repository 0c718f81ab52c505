"""Task accuracy for many plans (sweep rows, the app's kept plans); identical plans are evaluated once."""
from __future__ import annotations

from typing import Callable, Sequence

from analysis.models.plan import Plan
from analysis.tasks.runner import TaskConfig, check_tasks, evaluate_tasks, flat_columns, parse_tasks


def plan_key(plan: Plan | None) -> tuple:
    n = (plan or Plan()).normalized()
    return tuple(n.drop_layers), tuple(n.drop_attn), tuple(n.drop_mlp)


def evaluate_plans(lm, plans: dict[str, Plan | None], tasks: str | Sequence[str], cfg: TaskConfig | None = None,
                   progress: Callable[[float, str], None] | None = None, tm=None) -> dict[str, dict]:
    """``{plan name: evaluate_tasks result}``; plans with the same blocks share one evaluation."""
    cfg = cfg or TaskConfig()
    names = parse_tasks(tasks)
    tm = tm or check_tasks(names, cfg)
    done: dict[tuple, dict] = {}
    out = {}
    for i, (name, plan) in enumerate(plans.items()):
        key = plan_key(plan)
        if key not in done:
            if progress:
                progress(i / max(len(plans), 1), f"tasks: plan {i + 1}/{len(plans)} ({name})")
            done[key] = evaluate_tasks(lm, names, plan, cfg, tm=tm)
        out[name] = done[key]
    if progress:
        progress(1.0, f"tasks: {len(done)} distinct plans evaluated")
    return out


def add_task_accuracy(lm, sweep_result: dict, prepared, progress=None) -> dict:
    """Add ``tasks`` (nested) and flat ``<task>/<metric>`` columns to every row of a sweep result."""
    names, cfg, tm = prepared
    rows = sweep_result["rows"]
    plans = {str(i): Plan.from_dict(row["plan"]) for i, row in enumerate(rows)}
    results = evaluate_plans(lm, plans, names, cfg, progress, tm=tm)
    for i, row in enumerate(rows):
        row["tasks"] = results[str(i)]["tasks"]
        row.update(flat_columns(results[str(i)]))
    sweep_result["task_config"] = next(iter(results.values()))["config"] if results else cfg.describe()
    return sweep_result
