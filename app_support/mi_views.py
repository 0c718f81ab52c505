"""Views of MI-PRUN (``result.extras["mi"]`` from :mod:`analysis.measure.mi_states`) and of the ground truth
(:mod:`analysis.evaluate.groundtruth`) and Fast-Block-Select (:mod:`analysis.score.miprun`)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.errors import EntroscopeError

from . import plots, state
from .widgets import chart, table


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def render_mi(result, protected) -> None:
    """Entropy page tab: MI per block, the layer-by-layer MI matrix, DPI statistics."""
    mi = result.extras.get("mi") or {}
    units = mi.get("units", "nats")
    st.caption(f"Estimator: **{mi.get('title', mi.get('estimator'))}** ({units}) on {mi.get('n_tokens')} sampled "
               f"token states per point (seed {mi.get('seed')}); parameters {mi.get('params')}. "
               f"{mi.get('assumptions', '')}")
    for w in mi.get("warnings") or []:
        st.warning(w)
    per = mi.get("mi") or {}
    if per:
        grans = list(per)
        g = st.radio("Block granularity", grans, horizontal=True, key="mi_gran",
                     index=grans.index(result.granularity) if result.granularity in grans else 0)
        v = _arr(per[g])
        prot = set(protected)
        fig = go.Figure(go.Bar(x=list(range(len(v))), y=v, marker_color=[plots.C_PROTECTED if i in prot
                                                                          else "#8E6C8A" for i in range(len(v))],
                               text=[plots.LOCK if i in prot else "" for i in range(len(v))], textposition="outside",
                               hovertemplate="block %{x}<br>MI %{y:.4g}<extra></extra>"))
        fig.update_xaxes(title=plots.BLOCK_AXIS, dtick=1 if len(v) <= 32 else 2)
        fig.update_yaxes(title=f"MI(input, output) ({units})")
        chart(plots._layout(fig, hovermode="closest"),
              f"Mutual information between each {g} block's input and output ({(mi.get('definition') or {}).get(g, '')}), "
              f"tokens as paired samples. MI-PRUN drops the highest-MI blocks first (score −MI). Values are only "
              "comparable within one estimator and configuration. Grey 🔒 = protected. Blocks 0-based.",
              name="mi_per_block", key="mi_bar")
    mat = mi.get("matrix")
    if mat:
        m = np.array([[np.nan if x is None else x for x in row] for row in mat], dtype=float)
        chart(plots.mi_heatmap(m, "MI between residual boundaries", "boundary Z<sup>j</sup> (0 = embeddings)",
                               "boundary Z<sup>i</sup> (0 = embeddings)"),
              f"$\\mathrm{{MI}}(Z^i, Z^j)$ between every pair of residual boundaries ({mi.get('matrix_tokens')} token states): "
              "$Z^0$ = embeddings, $Z^{l+1}$ = output of block l (0-based). Dropping blocks j…k costs $-\\mathrm{MI}(Z^j, Z^{k+1})$ "
              "(Fast-Block-Select's run score).", name="mi_matrix", key="mi_matrix")
        dpi = mi.get("dpi") or {}
        if dpi.get("rate") is not None:
            st.metric("Data-processing-inequality violations", f"{dpi['rate']:.1%}",
                      help="Share of windows where MI over a longer run exceeds MI over a run inside it; the DPI "
                           "says this never happens for exact MI, so it measures estimator noise.")
            st.caption(f"{dpi.get('violations')} of {dpi.get('windows')} nested-window comparisons violate the DPI.")


def _finish_ground_truth(rec) -> None:
    """Follow this session's ground-truth job (re-attached after a reload) and store its scores in the run."""
    from analysis.evaluate.groundtruth import store_ground_truth

    from .jobs import attached, follow, forget

    job = attached("ground_truth")
    if job is None or getattr(job, "run_id", None) != rec.run_id:
        return
    r = rec.result
    if job.running:
        follow(job, "Ground truth", "gt_stop", "Stops after the current window batch; every block is then scored "
                                               "on the windows done")
    forget("ground_truth")
    if job.error:
        st.error(f"Ground truth failed: {job.error}", icon=":material/error:")
        return
    det = job.result
    store_ground_truth(r, det["granularity"], det["scores"], det)
    if det.get("stopped"):
        state.flash("warning", f"Ground truth stopped: every block is scored on the {det['windows'][0]} windows "
                               "done before Stop.")
    else:
        state.flash("success", f"Ground truth computed in {det['seconds']:.1f} s on {det['windows'][0]} windows × "
                               f"{det['windows'][1]} tokens.")
    st.rerun()


def render_ground_truth(rec, adj, protected, granularity: str, lm, tokens) -> None:
    """Select page: drop-one ΔPPL ground truth (on demand), agreement with MI-PRUN, Fast-Block-Select."""
    from analysis.evaluate.groundtruth import delta_ppl_details
    from analysis.score.criteria import scores_for
    from analysis.score.selection import rank_correlation

    r = rec.result
    st.subheader("Compare with ground truth")
    gt = (r.extras.get("criteria_scores") or {}).get("delta-ppl", {}).get(granularity)
    c1, c2 = st.columns([2, 3])
    n_max = len(tokens) if tokens is not None else 0
    n_win = c1.number_input("Calibration windows for the ground truth", min_value=1, max_value=max(1, n_max),
                            value=min(4, max(1, n_max)), key="gt_windows",
                            help="Drop-one ΔPPL runs L+1 forward passes over these windows")
    c2.caption(f"Drop-one ΔPPL = calibration perplexity without block i − with it, for every {granularity} block "
               f"({r.num_layers + 1} evaluations on views of the model; the model is not changed). It is the "
               "reference the cheap criteria try to predict; it then appears as criterion “delta-ppl” above.")
    if st.button(f"Compute drop-one ΔPPL for {granularity} blocks", key="gt_go", disabled=tokens is None):
        from .jobs import Job, start_job

        sub = tokens.subset(slice(0, int(n_win))) if hasattr(tokens, "subset") else tokens[: int(n_win)]
        key = state.stable_hash({"kind": "ground-truth", "run": rec.run_id, "fp": lm.fingerprint,
                                 "granularity": granularity, "windows": int(n_win)})
        job = Job(key, lambda job: delta_ppl_details(lm, sub, granularity, progress=lambda f, m: job.progress(
            f, m, stage="gt"), should_stop=job.should_stop), kind="ground-truth", label="the drop-one ground truth")
        job.run_id = rec.run_id
        start_job("ground_truth", job)
    _finish_ground_truth(rec)
    gt = (r.extras.get("criteria_scores") or {}).get("delta-ppl", {}).get(granularity)
    if gt is None:
        return
    truth = _arr(gt)
    free = [i for i in range(r.num_layers) if i not in set(protected)]
    rows = []
    for name in ("mi-prun", "entrodrop", "block-influence", "cosine", "angular"):
        try:
            sc = np.asarray(scores_for(adj, name, granularity), dtype=float)
        except EntroscopeError:          # this criterion is not available for this run / granularity
            continue
        from analysis.score.criteria import CRITERIA

        key = sc if CRITERIA[name].redundant == "low" else -sc
        rc = rank_correlation(key[free], truth[free])
        rows.append({"criterion": name, "Spearman ρ vs ground truth": round(rc["spearman"], 3),
                     "Kendall τ": round(rc["kendall"], 3)})
    if rows:
        table(pd.DataFrame(rows), f"Rank agreement of each criterion with drop-one ΔPPL over the {len(free)} "
                                  "unprotected blocks (1 = the criterion ranks blocks exactly like the measured damage).",
              name="ground_truth_agreement")
    fig = go.Figure(go.Bar(x=list(range(len(truth))), y=truth, marker_color=[plots.C_PROTECTED if i in protected
                                                                             else "#2CA58D" for i in range(len(truth))]))
    fig.update_xaxes(title=plots.BLOCK_AXIS)
    fig.update_yaxes(title="ΔPPL when dropped alone")
    chart(plots._layout(fig, hovermode="closest"), "Measured perplexity increase when only this block is dropped "
                                                   "(calibration windows; lower = safer to drop). Blocks 0-based.",
          name="ground_truth", key="gt_chart")


def _blocks(xs) -> str:
    return ", ".join(map(str, xs)) if xs else "—"


def _runs(runs) -> str:
    return ", ".join(f"{a}–{b}" if a != b else f"{a}" for a, b in runs) if runs else "—"


def fbs_log_table(log: list[dict]) -> pd.DataFrame:
    """Fast-Block-Select's log as a readable table (no raw dicts): one row per iteration."""
    rows = []
    for e in log:
        before = e.get("objective_before", e.get("objective"))
        after = e.get("objective_after", before)
        sw = e.get("swaps") or {}
        rows.append({"iteration": e.get("iteration"), "layers in the pool": _blocks(e.get("pool")),
                     "runs": _runs(e.get("runs")), "J before": None if before is None else round(float(before), 6),
                     "J after": None if after is None else round(float(after), 6),
                     "candidate windows": sum(len(v) for v in (e.get("candidates") or {}).values()) or None,
                     "swapped out": _blocks(sw.get("out")), "swapped in": _blocks(sw.get("in")),
                     "accepted": {True: "yes", False: "no"}.get(e.get("accepted"), "start")})
    return pd.DataFrame(rows)


def render_fbs(rec, adj, protected, k: int) -> dict | None:
    """Select page: MI-PRUN's Fast-Block-Select for k layers, with its log; returns the plan dict."""
    from analysis.score.miprun import miprun_select

    mi = adj.extras.get("mi") or {}
    if not mi.get("matrix"):
        return None
    st.subheader("MI-PRUN Fast-Block-Select")
    if k < 1:
        st.caption("Choose k ≥ 1 to run Fast-Block-Select.")
        return None
    key = state.stable_hash(["fbs", rec.run_id, k, list(protected)])
    store = st.session_state.setdefault("es.fbs", {})
    if key not in store:
        n_free = adj.num_layers - len(protected)
        method = "both" if math.comb(n_free, k) <= 50_000 else "fast"
        store[key] = miprun_select(adj, int(k), method=method, protect=protected)
    plan = store[key]
    src = plan["source"]
    fbs = src.get("fast_block_select") or {}
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Whole layers chosen (0-based)", ", ".join(map(str, plan["drop_layers"])),
              help="MI-PRUN scores the boundaries between decoder layers, so Fast-Block-Select always drops whole "
                   f"layers, whatever the run's granularity ({adj.granularity}).")
    m2.metric("Objective J = Σ run scores", f"{src.get('objective', float('nan')):.4g}")
    gap = (src.get("gap") or {})
    m3.metric("Gap to exhaustive optimum", (f"{gap['relative']:.1%}" + (" (optimal)" if gap.get("optimal") else ""))
              if gap else "not computed", help="(J_fast − J_best) / |J_best| over all k-subsets, when affordable")
    m4.metric("Exact run scores computed", fbs.get("evaluations", "?"))
    st.caption("Fast-Block-Select on the boundary MI matrix: start from the k lowest single-block scores, then "
               "swap contiguous windows in from an alternative pool while the DPI-aware run score improves; a final "
               "exact step (dynamic programme over run lengths) returns the optimum of the objective. "
               + ("The exhaustive optimum over all k-subsets is shown for comparison." if "exhaustive" in src else ""))
    log = fbs.get("log") or []
    if log:
        table(fbs_log_table(log), "Fast-Block-Select log: one row per iteration; J = the run objective "
                                  "(lower is better); layers 0-based, runs written first–last.", name="fbs_log")
    return plan
