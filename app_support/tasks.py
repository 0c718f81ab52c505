"""Task accuracy on the Prune & compare page: the picker, cached per-plan runs, table columns and charts.

The work is :func:`analysis.tasks.evaluate_tasks` (lm-eval on a what-if view; the cached model is never
modified). Results are kept in ``st.session_state["es.task_evals"]`` keyed by the model fingerprint, the
plan's blocks and the task settings, so re-running a comparison only evaluates what changed.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from . import state

DEFAULT_LIMIT = 20


def task_picker() -> dict:
    """The task picker (local tasks, a limit, the code-execution opt-in); returns the task settings."""
    from analysis.tasks import LOCAL_TASKS

    t1, t2 = st.columns([4, 1])
    names = t1.multiselect("Tasks (lm-evaluation-harness, offline)", list(LOCAL_TASKS),
                           key=state.wkey("cmp.tasks", []), format_func=lambda n: n,
                           help="\n".join(f"- **{n}**: {d}" for n, d in LOCAL_TASKS.items()))
    limit = t2.number_input("Examples per task", min_value=1, max_value=10_000, step=10,
                            key=state.wkey("cmp.task_limit", DEFAULT_LIMIT),
                            help="The first N examples of each task (the same ones for every plan)")
    allow = False
    if "humaneval" in names:
        allow = st.checkbox("Allow code execution (HumanEval runs model-written Python on this machine)",
                            key=state.wkey("cmp.allow_code", False))
        if allow:
            st.warning("HumanEval executes code the model wrote, each program contained: no network, no file "
                       "outside its own temporary folder, capped processes, memory, disk and time, nothing left "
                       "running (docs/tasks.md). Where the machine can't contain it, the run is refused.",
                       icon=":material/warning:")
    state.sync("cmp.tasks", "cmp.task_limit", "cmp.allow_code")
    return {"tasks": list(names), "limit": int(limit), "allow_code_execution": bool(allow)}


def evaluate_plan_tasks(lm, plan, settings: dict, store: dict | None = None, progress=None) -> dict | None:
    """``evaluate_tasks`` result for one plan (None: no task picked); cached in ``store`` (default: session
    state; a job passes its own dict). ``progress``: told before every model call (the job's Stop raises there)."""
    if not settings.get("tasks"):
        return None
    from analysis.tasks import TaskConfig, evaluate_tasks
    from analysis.tasks.sweep import plan_key

    key = state.stable_hash({"fp": lm.fingerprint, "dtype": str(lm.dtype), "plan": list(plan_key(plan)),
                             "settings": settings})
    store = st.session_state.setdefault("es.task_evals", {}) if store is None else store
    if key not in store:
        cfg = TaskConfig(limit=settings["limit"], allow_code_execution=settings["allow_code_execution"], batch_size=4)
        store[key] = evaluate_tasks(lm, settings["tasks"], plan, cfg, progress=progress)
    return store[key]


def task_columns(res: dict | None) -> dict:
    """Table columns ``"<task> <metric>"`` and ``"<task> ±"`` (standard error) of the primary metric."""
    out = {}
    for task, r in ((res or {}).get("tasks") or {}).items():
        m = r["metrics"].get(r["primary"]) or {}
        out[f"{task} {r['primary']}"] = _round(m.get("value"))
        out[f"{task} ±"] = _round(m.get("stderr"))
    return out


def _round(v):
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def accuracy_axes(columns) -> list[str]:
    """The accuracy columns of a comparison table (candidate quality axes for the Pareto view)."""
    return [c for c in columns if " " in c and not c.endswith(" ±") and c.split(" ")[-1] in
            ("acc", "exact_match", "pass@1", "acc_norm")]


def accuracy_chart(rows: list[dict]) -> go.Figure | None:
    """Grouped bars: per task, the primary metric of every plan with ± 1 standard error bars."""
    axes = accuracy_axes(rows[0]) if rows else []
    if not axes:
        return None
    fig = go.Figure()
    for row in rows:
        fig.add_trace(go.Bar(name=row["plan"], x=[a.rsplit(" ", 1)[0] for a in axes], y=[row.get(a) for a in axes],
                             error_y=dict(type="data", array=[row.get(a.rsplit(" ", 1)[0] + " ±") or 0 for a in axes],
                                          visible=True)))
    fig.update_layout(barmode="group", height=360, template="plotly_white", margin=dict(l=10, r=10, t=20, b=10),
                      yaxis=dict(title="accuracy (higher is better)", range=[0, 1]),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def tasks_caption(res: dict | None) -> str:
    if not res:
        return ""
    c = res["config"]
    return (f"Task accuracy by lm-evaluation-harness {c['lm_eval']} on the first {c['limit']} examples of each task "
            f"(seed {c['seed']}); error bars and ± are one standard error. Local tasks are held out from "
            "calibration (cloze: eval-split paragraphs; math-champ: eval-split problems).")
