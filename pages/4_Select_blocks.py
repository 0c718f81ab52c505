"""Select blocks: rank blocks by any registered criterion, edit the choice by clicking bars, keep plans."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app_support import plots, state
from app_support.runs import adjusted_result, effective_protected, protection
from app_support.selecting import points_to_blocks, toggle, working_selection
from app_support.widgets import (INDEX_NOTE, chart, explain_criterion, explainer_popover, guarded, link, need,
                                 page_setup, show_error, table)

page_setup("Select blocks", ":material/checklist:", "Rank the blocks with a criterion, then click bars to add or remove blocks by "
           "hand. Protected blocks are locked. Keep as many named plans as you like. " + INDEX_NOTE)

s = st.session_state
need(state.current_run() is not None, "Run the analysis first: the criteria score blocks from its statistics.",
     "entropy", "Go to Entropy dynamics")

from analysis.score.criteria import CRITERIA, get_criterion, select  # noqa: E402
from analysis.errors import SelectionError  # noqa: E402
from analysis.score.selection import check_k  # noqa: E402

rec = state.current_run()
rid, r, L = rec.run_id, rec.result, rec.num_layers
protected = effective_protected(rec)
prot_info = protection(rec)
adj = adjusted_result(rec)
st.caption(f"Run `{rid}` ({rec.label}) · protection **{prot_info['mode']}**, boundary block {prot_info['boundary']}: "
           f":material/lock: {protected or 'none'} (change on the Entropy page).")

# ---- the evidence: the bake-off for this model, or the repository's evidence until it has run ----------------
from app_support.jobs import attached, follow, forget, start_job  # noqa: E402
from app_support.selecting import (BAKEOFF_SHOWN, bakeoff_cache, bakeoff_rows, bakeoff_slot,  # noqa: E402
                                   recommended_selection, standing_line, start_bakeoff)
from analysis.recommend.evidence import default_criterion  # noqa: E402

model_name = (rec.model or {}).get("spec")
bo_keys = s.setdefault("es.bakeoff", {})                    # run id → key of its finished bake-off
bo_results = s.setdefault("es.bakeoff_results", {})         # run id → its bake-off (kept by the session store)
bo_slot = bakeoff_slot(rid)


bo_applied = s.setdefault("es.bakeoff_applied", {})         # run id → key of the bake-off already pre-selected


def _keep_bakeoff(key: str, res: dict) -> None:
    """Keep a bake-off's result for this run (a complete one is pre-selected once, below)."""
    bo_keys[rid], bo_results[rid] = key, res


bjob = attached(bo_slot)                                    # running, or finished while the page was away
if bjob is not None and not bjob.running:
    forget(bo_slot)
    if bjob.error:
        state.flash("error", f"The bake-off failed: {bjob.error}")
    elif (bjob.result or {}).get("rows"):
        _keep_bakeoff(bjob.key, bjob.result)
        if bjob.result.get("stopped"):
            state.flash("warning", f"Bake-off stopped: {bjob.result['stopped']}. The rows below are what finished "
                                   "(partial: no recommendation is pre-selected).")
    else:
        state.flash("info", f"Bake-off stopped: {(bjob.result or {}).get('stopped') or 'before any row finished'}.")
    st.rerun()
bo = bo_results.get(rid) or (bakeoff_cache().get(bo_keys.get(rid)) if bo_keys.get(rid) else None)
bo_partial = bool(bo and bo.get("stopped"))
ev_crit, ev_why = default_criterion(model_name)
default_crit = recommended_selection(bo)["criterion"] if bo and not bo_partial else ev_crit
with st.expander("Which criterion, k and healing for this model? — the bake-off", expanded=bo is not None or bjob is not None,
                 icon=":material/science:"):
    st.caption("Every registered criterion this run supports, at several k, with and without healing, judged on held-out "
               "text of the built-in domains the calibration did not use, against the full model and a band of random "
               "choices (paired bootstrap over windows). Same code as `python -m analysis recommend`.")
    from analysis.recommend.config import RecommendConfig  # noqa: E402
    from analysis.settings import defaults as _defaults  # noqa: E402

    bdef = _defaults(RecommendConfig)
    b1, b2, b3, b4 = st.columns(4)
    bk = b1.text_input("k (comma list, or auto)", key=state.wkey("bo.ks", bdef["ks"]),
                       help="at most half of the unprotected blocks; auto = a quarter and a half")
    bheal = b2.multiselect("Healing", ["none", "linear", "distill"], key=state.wkey("bo.heal", list(bdef["heal"])),
                           help="none is always compared; distill is slow")
    btok = b3.number_input("Held-out tokens", min_value=128, step=512, key=state.wkey("bo.heldout_tokens", bdef["heldout_tokens"]))
    bseeds = b4.number_input("Random seeds", min_value=5, step=1, key=state.wkey("bo.seeds", bdef["seeds"]))
    state.sync("bo.ks", "bo.heal", "bo.heldout_tokens", "bo.seeds")
    bsettings = dict(zip(BAKEOFF_SHOWN, (bk, tuple(dict.fromkeys(["none", *bheal])), int(btok), int(bseeds))))
    bsettings.update(granularity=state.get("sel.gran", r.granularity), protect=r.protect)
    if st.button("Run the bake-off", type="primary", icon=":material/play_arrow:", key="run_bakeoff",
                 disabled=bjob is not None and bjob.running):
        try:
            from app_support.models import get_model

            if rec.tokens is None:
                raise SelectionError("This run has no calibration windows in this session", hint="re-run the analysis")
            key, new_job = start_bakeoff(get_model(rec.model), rec.tokens, rid, adj, bsettings)
            if new_job is None:                              # ran before with these inputs: its result at once
                _keep_bakeoff(key, bakeoff_cache()[key])
                st.rerun()
            bjob, joined = start_job(bo_slot, new_job)       # the same inputs running elsewhere: join it
            if joined:
                st.toast("This bake-off is already running (same model, data and settings): showing it.")
        except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
            show_error(exc, "Could not start the bake-off")
    if bjob is not None and bjob.running:
        follow(bjob, "Bake-off", "stop_bakeoff",
               "Stops after the current batch. Stopped while healing, the rows that finished are kept (labelled "
               "partial); earlier, the windows measured are cached and a new run resumes there")
        st.rerun()
    if bo is not None:
        if bo_partial:
            st.warning(f"**Partial bake-off** — {bo['stopped']}. Every unhealed plan was judged; healed rows that "
                       "did not finish are missing, so this is not the full comparison and nothing is pre-selected. "
                       "Run the bake-off again to finish it (what was measured is cached).", icon=":material/pause:")
        for k_, rk in bo["recommendations"].items():
            st.markdown(f"- {rk['sentence']}")
        ch = bo["choice"]
        (st.info if bo_partial else st.success)(f"Recommended: **{ch['label']}** at **k = {ch['k']}**"
                   + (f" with **{ch['heal']}** healing (apply it on Prune & compare)" if ch["heal"] != "none" else "")
                   + f" — {ch['why']}" + (" among the rows that finished" if bo_partial else "")
                   + f". Judged on {bo['judging']['tokens']} held-out tokens of "
                     f"{', '.join(bo['judging']['domains'])} ({bo['judging']['windows']} windows), never on calibration text.")
        table(pd.DataFrame(bakeoff_rows(bo)), "Held-out ΔPPL against the full model for every plan, with its paired "
              "bootstrap interval and its standing against the random band. Blocks 0-based.", name="bakeoff", height=300)
    else:
        st.caption(ev_why + " (run the bake-off to measure this model).")
if bo is not None and not bo_partial and bo_applied.get(rid) != bo_keys.get(rid):  # pre-select it once
    bo_applied[rid] = bo_keys.get(rid)
    pick = recommended_selection(bo)
    state.set_value("sel.crit", pick["criterion"])
    state.set_value("sel.gran", pick["granularity"])
    state.set_value("sel.k", pick["k"])
    for p_, v_ in pick["params"].items():
        state.set_value(f"sel.param.{pick['criterion']}.{p_}", v_)
    s.pop("es.selection", None)

def _rerun_adding(estimator: str | None = None, mi: bool = False, param_key: str | None = None) -> None:
    """Queue the run on screen again — its own settings, not whatever the Entropy page shows now — with one more
    estimator computed in the same pass and/or MI on; the Entropy page starts it. ``param_key``: the criterion's
    estimator setting, which then ranks with the added estimator."""
    for key_, val_ in rec.config.items():
        if key_ != "seed":
            state.set_value(f"an.{key_}", val_)
    if estimator is not None:
        extra = list(rec.config.get("extra_estimators") or [])
        if estimator != rec.config.get("estimator") and estimator not in extra:
            state.set_value("an.extra_estimators", extra + [estimator])
        if param_key is not None:       # rank with it once the re-run has it (the page below applies this)
            s.setdefault("es.rank_with", {})[param_key] = estimator
    if mi:
        state.set_value("an.mi", True)
    s["es.autorun"] = True


# ---- criterion, granularity, k, parameters ----------------------------------------------------------
names = list(CRITERIA)
avail = {n: (r.baselines.get(n) or {}).get("available", True) for n in names}
if state.get("sel.crit", default_crit) not in names:
    state.set_value("sel.crit", default_crit)
c1, c2, c3, c4 = st.columns([3, 2, 1, 2])
crit = c1.selectbox("Criterion", names, key=state.wkey("sel.crit", default_crit),
                    format_func=lambda n: CRITERIA[n].title + ("" if avail[n] else " (unavailable for this run)"))
first_class = dict.fromkeys([crit, "entrodrop", "mi-prun"])
lines = [f"**{CRITERIA[n].title}** — {line}" for n in first_class if (line := standing_line(bo, model_name, n))]
c1.caption(("Recommended by the bake-off on this model" if bo and not bo_partial and crit == default_crit else
            ev_why if (not bo or bo_partial) and crit == ev_crit else f"{ev_why}; you picked {crit}")
           + (". " + " · ".join(lines) if lines else ""))
c = get_criterion(crit)
grans = list(c.granularities)
if state.get("sel.gran", r.granularity) not in grans:
    state.set_value("sel.gran", r.granularity if r.granularity in grans else grans[0])
gran = c2.radio("Granularity", grans, horizontal=True, key=state.wkey("sel.gran", r.granularity),
                help="attention / MLP = drop that sub-block of a layer; layer = drop the whole decoder layer")
prunable = L - len(protected)
if prunable == 0:  # nothing to choose from: say so instead of silently selecting nothing
    try:
        check_k(1, [], L, protected)
    except SelectionError as exc:
        show_error(exc, "Cannot select")
k_max = max(prunable, 0)
if int(state.get("sel.k", min(4, k_max)) or 0) > k_max:      # e.g. the protection grew since k was set
    was = int(state.get("sel.k"))
    state.set_value("sel.k", k_max)
    c3.warning(f"k = {was} is more than the {k_max} unprotected blocks; set to {k_max}.")
k = c3.number_input("k", min_value=0, max_value=k_max, step=1, key=state.wkey("sel.k", min(4, k_max)),
                    help=f"Blocks to drop: at most the {prunable} unprotected blocks of {L}")
with c4:
    explainer_popover(criteria=[crit])
params = {}
if c.params:
    pc = st.columns(max(1, len(c.params)))
    for i, (p, default) in enumerate(c.params.items()):
        key = f"sel.param.{crit}.{p}"
        if p == "estimator":
            from app_support.story import ranking_estimator, ranking_why

            opts = r.estimators
            want = ranking_estimator()
            pref = want if want in opts else r.estimator
            if (s.get("es.rank_with") or {}).get(key) in opts:      # the re-run below asked for this estimator
                state.set_value(key, s["es.rank_with"].pop(key))
            if state.get(key) not in opts:
                state.set_value(key, pref)
            params[p] = pc[i].selectbox("Estimator", opts, key=state.wkey(key, pref), help=ranking_why())
            if want not in opts:      # KNN is opt-in in the analysis (issue 28): say so, and offer the re-run
                pc[i].caption(f"This run has no {want.upper()} entropies, so {c.title} ranks with "
                              f"{params[p].upper()} here; the evidence ranks with {want.upper()}.")
                if pc[i].button(f"Re-run the analysis with {want.upper()}", key="sel_rerun_est",
                                on_click=_rerun_adding, args=(want, False, key), icon=":material/play_arrow:"):
                    from app_support.widgets import switch_to

                    switch_to("entropy")
        elif isinstance(default, bool):
            params[p] = pc[i].checkbox(p, key=state.wkey(key, default))
        elif isinstance(default, int):
            params[p] = int(pc[i].number_input(p, step=1, key=state.wkey(key, default)))
        elif isinstance(default, float):
            params[p] = float(pc[i].number_input(p, key=state.wkey(key, default)))
        elif default is None:
            continue
        else:
            params[p] = pc[i].text_input(p, key=state.wkey(key, str(default)))
        state.sync(key)
state.sync("sel.crit", "sel.gran", "sel.k")
with st.expander(f"About {c.title}"):
    explain_criterion(crit)

sel = None
try:
    sel = select(adj, crit, int(k), gran, protected=protected, **params)
except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
    if crit == "delta-ppl" and not (r.extras.get("criteria_scores") or {}).get("delta-ppl", {}).get(gran):
        st.info(f"Drop-one ΔPPL is measured, not estimated: press **Compute drop-one ΔPPL for {gran} blocks** "
                "under *Compare with ground truth* below; the ranking appears here when it is done.")
    elif crit == "mi-prun" and "mi" not in (r.extras or {}):
        st.info("This run has no mutual-information data. MI-PRUN needs the analysis re-run with MI.")
        if st.button("Re-run the analysis with MI-PRUN", key="sel_rerun_mi", on_click=_rerun_adding, args=(None, True),
                     icon=":material/play_arrow:"):
            from app_support.widgets import switch_to

            switch_to("entropy")
    else:
        show_error(exc, "Cannot select")

# ---- the working selection: criterion's top-k, then edited by clicking --------------------------------
if sel is not None:
    with guarded("Selection"):
        sig = (crit, gran, int(k), tuple(sorted(params.items())), tuple(protected))
        ws = working_selection(rid, sig, sel.blocks)
        mkey = f"w:sel.blocks.{rid}"

        def _edit_multiselect() -> None:
            w = s["es.selection"][rid]
            w["blocks"] = sorted(int(b) for b in s[mkey])
            w["edited"] = True

        def _reset() -> None:
            s["es.selection"].pop(rid, None)

        def _clear() -> None:
            w = s["es.selection"][rid]
            w.update(blocks=[], edited=True)

        st.subheader("Scores — click bars to add or remove blocks")
        fig = plots.score_bars(sel.scores, ws["blocks"], protected, c.score_label, sel.order)
        event = chart(fig, f"{c.title}: {c.score_label} per {gran} block "
                           f"({'lowest' if c.redundant == 'low' else 'highest'} dropped first). Red ✕ = in the "
                           f"selection, blue = kept, grey 🔒 = protected (clicks refused). Click a bar, or box/lasso "
                           f"several, to toggle them. Scores from run `{rid}` ({r.n_sequences} sequences). "
                           "Blocks 0-based.", name="selection_scores",
                      key=f"selchart.{rid}.{ws['chart_rev']}", on_select="rerun",
                      selection_mode=("points", "box", "lasso"))
        pts = (event or {}).get("selection", {}).get("points", []) if event is not None else []
        clicked = points_to_blocks(pts)
        if clicked:
            new, refused = toggle(ws["blocks"], clicked, protected)
            if refused:
                s["es.sel_refused"] = (f"Block{'s' if len(refused) > 1 else ''} {', '.join(map(str, refused))} "
                                       f"{'are' if len(refused) > 1 else 'is'} protected and cannot be dropped "
                                       "(change the protection on the Entropy page).")
            if new != ws["blocks"]:
                ws["blocks"], ws["edited"] = new, True
            ws["chart_rev"] += 1                      # a fresh chart: the same bar can be clicked again
            s.pop(mkey, None)
            st.rerun()

        refused_msg = s.pop("es.sel_refused", None)
        if refused_msg:                               # next to the chart that was clicked, not at the top
            st.toast(refused_msg, icon="🔒")
            st.caption(f"🔒 {refused_msg}")
        s[mkey] = list(ws["blocks"])
        e1, e2, e3 = st.columns([5, 1, 1])
        e1.multiselect(f"Blocks to drop ({gran}, 0-based) — edit here or on the chart",
                       [b for b in range(L) if b not in protected], key=mkey, on_change=_edit_multiselect)
        e2.button("Reset to top-k", key="sel_reset", on_click=_reset)
        e3.button("Clear", key="sel_clear", on_click=_clear)
        blocks = ws["blocks"]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("Selected blocks", len(blocks))
        m2.metric("Unprotected blocks", prunable)
        m3.metric("Protected (locked)", len(protected))
        m4.metric("Source", f"{crit}{' + hand edits' if ws['edited'] else ''}")
        st.caption(f"Selection: {blocks or 'nothing'} — "
                   + ("edited by hand from " if ws["edited"] else "")
                   + f"the top-{k} of {c.title}" + (" (a contiguous window)" if c.needs_window else "") + ".")

        # ---- ranked table --------------------------------------------------------------------------
        rank = {b: i for i, b in enumerate(sel.order)}
        rows = [{"rank": rank.get(b), "block (0-based)": b, c.score_label: round(float(sel.scores[b]), 6),
                 "selected": "✕" if b in blocks else "", "protected": "🔒" if b in protected else ""}
                for b in sorted(range(L), key=lambda b: (rank.get(b, L + b)))]
        table(pd.DataFrame(rows), f"Blocks ranked by {c.title} (rank 0 = most droppable; protected blocks unranked, "
                                  "at the end). Block indices 0-based.", name="ranking", height=260)

        # ---- keep as a plan ----------------------------------------------------------------------
        st.subheader("Keep as a plan")
        p1, p2 = st.columns([3, 1])
        default_name = f"{crit}-{gran}-k{len(blocks)}" + ("-edited" if ws["edited"] else "")
        name = p1.text_input("Plan name", value=default_name, key=f"plan_name.{default_name}")
        if p2.button("Keep plan", icon=":material/bookmark_add:", type="primary", key="keep_plan", disabled=not blocks):
            try:
                from analysis.score.criteria import Selection
                from analysis.models.plan import Plan

                chosen = Selection(crit, gran, len(blocks), list(blocks), list(sel.order), list(sel.scores),
                                   list(protected))
                plan = Plan.from_selection(chosen, r)
                plan.source.update(edited_by_hand=ws["edited"], criterion_top_k=list(sel.blocks),
                                   boundary=prot_info["boundary"], protect_mode=prot_info["mode"],
                                   params={k_: v for k_, v in params.items()})
                plan.validate(L)
                state.plans()[name.strip() or default_name] = state.PlanRecord(
                    name.strip() or default_name, plan, rid, crit, gran, int(k), list(blocks), ws["edited"],
                    list(protected), dict(params))
                state.flash("success", f"Kept plan **{name}**: {plan.describe()}.")
                st.rerun()
            except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
                show_error(exc, "Could not keep the plan")

# ---- kept plans ------------------------------------------------------------------------------------------
with guarded("Plans"):
    plans = state.plans()
    if plans:
        st.subheader(f"Kept plans ({len(plans)})")
        table(pd.DataFrame([{"plan": p.name, "drops": p.plan.describe(), "granularity": p.granularity,
                             "criterion": p.criterion + (" + hand edits" if p.edited else ""), "k": len(p.blocks),
                             "run": p.run_id} for p in plans.values()]),
              "Plans kept in this session (indices 0-based, into the original model). Compare them on "
              "Prune & compare; export them on Export.", name="plans")
        d1, d2 = st.columns([3, 1])
        gone = d1.multiselect("Remove plans", list(plans), key="plans_remove")
        if d2.button("Remove", key="plans_remove_btn", disabled=not gone):
            for g_ in gone:
                plans.pop(g_, None)
            st.rerun()
        link("compare", "Next: prune & compare →")

# ---- agreement between criteria ---------------------------------------------------------------------------
with guarded("Agreement"):
    from analysis.score.agreement import agreement_matrix

    st.subheader("Do the criteria agree?")
    kk = max(1, min(int(k) or 1, prunable)) if prunable else 1
    names_all = [n for n in CRITERIA if gran in CRITERIA[n].granularities]
    am = agreement_matrix(adj, names_all, gran, kk, protected)
    names_a = am["criteria"]
    if len(names_a) < 2:
        st.info(f"Fewer than two criteria score {gran} blocks for this run.")
    else:
        a1, a2 = st.columns(2)
        with a1:
            chart(plots.matrix_heatmap(np.array(am["spearman"], dtype=float), names_a, "Spearman rank correlation",
                                       -1, 1),
                  f"Spearman ρ between the criteria's {gran}-block droppability (scores oriented so +1 = the same "
                  f"drop order) over the {prunable} unprotected blocks.", name="agreement_spearman", key="agree_rho")
        with a2:
            chart(plots.matrix_heatmap(np.array(am["topk_overlap"], dtype=float), names_a, f"Top-{am['k']} overlap",
                                       0, 1, colorscale="Blues"),
                  f"Fraction of the top-{am['k']} drop sets two criteria share (protected blocks excluded).",
                  name="agreement_topk", key="agree_ov")
        if am.get("unavailable"):
            st.caption("Not available for this run: " + "; ".join(f"{n} ({why_})" for n, why_ in
                                                                   am["unavailable"].items()))

# ---- ground truth and MI-PRUN extras -----------------------------------------------------------------------
with guarded("Ground truth"):
    from app_support.mi_views import render_fbs, render_ground_truth
    from app_support.models import get_model

    render_ground_truth(rec, adj, protected, gran, get_model(rec.model), rec.tokens)

if "mi" in (r.extras or {}):
    with guarded("Fast-Block-Select"):
        fplan = render_fbs(rec, adj, protected, int(k))
        if fplan and st.button("Keep the Fast-Block-Select choice as a plan", icon=":material/bookmark_add:", key="keep_fbs"):
            from analysis.models.plan import Plan

            name = f"mi-prun-fbs-k{len(fplan['drop_layers'])}"
            plan = Plan.from_dict(fplan)
            state.plans()[name] = state.PlanRecord(name, plan, rid, "mi-prun", "layer", len(plan.drop_layers),
                                                   list(plan.drop_layers), False, list(protected), {})
            state.flash("success", f"Kept plan **{name}**: {plan.describe()}.")
            st.rerun()
