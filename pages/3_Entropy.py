"""Entropy dynamics: run the analysis (live progress, Stop) and explore the per-layer curves."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app_support import plots, state
from app_support.runs import adjusted_result, analysis_settings, effective_protected, finish_job, protection, start_run
from app_support.widgets import INDEX_NOTE, chart, explainer_popover, guarded, link, need, page_setup, show_error, table

page_setup("Entropy dynamics", ":material/monitoring:")
# while an analysis runs, its progress and growing curve are the first thing under the title (filled below,
# once the run control has started or re-attached the job); the page's intro and settings come after
LIVE = st.container()
st.caption("How the entropy of the residual stream changes block by block. EntroDrop reports a fall then a rise "
           "(two stages); whether a run shows one depends on the model, the estimator and the massive-activation "
           "tokens — every run holds both views (sinks kept and excluded), and the story above the charts says what "
           "this run's curve actually does. " + INDEX_NOTE)

s = st.session_state


# ---- callbacks (run before the script, so they may change widget values) --------------------------
def _use_mix() -> None:
    from analysis.data import DOMAINS

    state.set_value("data.source", "builtin")
    state.set_value("data.domains", list(DOMAINS))
    for d in DOMAINS:
        state.set_value(f"data.w.{d}", 1.0)
    s["es.tokens"] = None
    s["es.autorun"] = True


def _use_all_estimators() -> None:
    from analysis.measure.estimators import ESTIMATORS

    primary = state.get("an.estimator", state.default_analysis()["estimator"])
    state.set_value("an.extra_estimators", [e for e in ESTIMATORS if e != primary])
    s["es.autorun"] = True


def _use_lenses() -> None:
    extra = list(state.get("an.extra_estimators", state.default_analysis()["extra_estimators"]) or [])
    primary = state.get("an.estimator", state.default_analysis()["estimator"])
    state.set_value("an.extra_estimators", extra + [e for e in ("matrix", "logit-lens") if e not in extra and e != primary])
    s["es.autorun"] = True


def _reset_boundary(rid: str, detected: int, mode: str) -> None:
    p = s["es.protect"][rid]
    p.update(boundary=detected, mode=mode, extra=[])
    s[f"w:boundary.{rid}"] = detected
    s[f"w:protect.{rid}"] = mode
    s[f"w:extra.{rid}"] = []


# ---- settings ----------------------------------------------------------------------------------------
# Every widget is an AnalysisConfig setting (analysis.settings): its default, choices and the key it is
# persisted under (``an.<key>``) come from the dataclass, so the page, the CLI and the export cannot drift.
from analysis.errors import DataError, SelectionError  # noqa: E402
from analysis.indices import GRANULARITIES  # noqa: E402
from analysis.measure.estimators import ESTIMATORS  # noqa: E402
from analysis.run import AnalysisConfig  # noqa: E402
from analysis.settings import specs  # noqa: E402

DEFAULTS = state.default_analysis()
SPECS = {sp.key: sp for sp in specs(AnalysisConfig, app=True)}


def _wk(key: str) -> str:
    """The persisted widget key of a setting, at its default until changed."""
    d = DEFAULTS[key]
    return state.wkey(f"an.{key}", list(d) if isinstance(d, tuple) else d)


with st.expander("Analysis settings", expanded=state.current_run() is None, icon=":material/tune:"):
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Estimator", SPECS["estimator"].choices(), format_func=lambda e: ESTIMATORS[e].title,
                 key=_wk("estimator"),
                 help="Bucket (default, scale-invariant) as EntroDrop's Mistral path; KNN as its Llama path")
    c2.multiselect("Also compute (same pass)", SPECS["extra_estimators"].choices(),
                   format_func=lambda e: ESTIMATORS[e].title, key=_wk("extra_estimators"),
                   help="For the side-by-side estimator comparison, and KNN for EntroDrop's ranking (its Llama "
                        "path). Each is opt-in because of its cost: KNN adds about a fifth of a forward per sinks "
                        "view (docs/benchmarks.md)")
    c3.radio("Granularity", SPECS["granularity"].choices(), horizontal=True, key=_wk("granularity"),
             help=SPECS["granularity"].help)
    c4.radio("Protected blocks", SPECS["protect"].choices(), horizontal=True, key=_wk("protect"),
             help="fixed = {0, 1, L−1} (EntroDrop's code); auto = the detected compression stage + the last block")
    d1, d2, d3, d4, d5, d6 = st.columns(6)
    d1.number_input("KNN k", min_value=1, max_value=200, key=_wk("k"), help=SPECS["k"].help)
    d2.number_input("Bucket bins", min_value=2, max_value=1000, key=_wk("bins"), help=SPECS["bins"].help)
    d3.number_input("Rényi α", min_value=0.5, max_value=10.0, step=0.5, key=_wk("alpha"), help=SPECS["alpha"].help)
    d4.number_input("Batch size", min_value=1, max_value=256, key=_wk("batch_size"), help=SPECS["batch_size"].help)
    d5.selectbox("Sinks", SPECS["sinks"].choices(), key=_wk("sinks"),
                 help="exclude = leave massive-activation tokens out of every statistic (default); keep = every "
                      "token, as EntroDrop's reference code; first = leave out position 0 only")
    d6.checkbox("MI-PRUN", key=_wk("mi"),
                help="Mutual information between each block's input and output (sampled token states per point, "
                     "set below; adds a MI tab and Fast-Block-Select)")
    if state.get("an.mi"):
        from analysis.measure.mi import MI_ESTIMATORS

        m1, m2, _ = st.columns([2, 2, 2])
        m1.selectbox("MI estimator", SPECS["mi.estimator"].choices(), format_func=lambda e: MI_ESTIMATORS[e].title,
                     key=_wk("mi.estimator"))
        token_steps = [128, 256, 512, 1024]                 # the slider's steps (any positive count in the CLI)
        if state.get("an.mi.n_tokens", DEFAULTS["mi.n_tokens"]) not in token_steps:
            state.set_value("an.mi.n_tokens", DEFAULTS["mi.n_tokens"])
        m2.select_slider("Token states per residual point", token_steps, key=_wk("mi.n_tokens"),
                         help="MI cost grows with the cube of this for the Rényi estimator; 256 keeps MI-PRUN at about "
                              "two analysis passes")
        from app_support.jobs import mi_token_counts

        n_tok, n_mat = mi_token_counts({"mi.n_tokens": state.get("an.mi.n_tokens", DEFAULTS["mi.n_tokens"])})
        st.caption(f"MI-PRUN keeps {n_tok:,} sampled token states per residual point (seeded) and estimates, on "
                   f"those same {n_mat:,}, the MI between every block's input and output and the boundary-to-"
                   "boundary matrix for Fast-Block-Select; after the token pass the progress bar counts MI pairs and "
                   "Stop works there too (the token pass is kept).")
    state.sync(*(f"an.{key}" for key in DEFAULTS))
    from app_support.story import SINKS_SENTENCE, ranking_why

    st.caption(":material/bolt: " + SINKS_SENTENCE)
    st.caption(":material/leaderboard: Default ranking: " + ranking_why())

settings = analysis_settings()

# ---- run control -----------------------------------------------------------------------------------
from app_support.data import data_label  # noqa: E402
from app_support.models import model_label, model_settings  # noqa: E402

job = s.get("es.job")
autorun = s.pop("es.autorun", False)
ready = s.get("es.model") and s.get("es.tokens") is not None
label = "Run analysis" if ready else "Load model & run analysis"
r1, r2 = st.columns([1, 3])
clicked = r1.button(label, type="primary", key="run_analysis", icon=":material/play_arrow:",
                    disabled=job is not None and job.running)
with r2:
    try:
        from app_support.data import data_spec

        what_data = data_label(s.get("es.data")) if s.get("es.tokens") is not None else data_label(data_spec())
    except DataError as exc:           # no file uploaded yet; the run will explain
        what_data = str(exc)
    st.caption(f"Model **{model_label(s.get('es.model') or model_settings())}** · data **{what_data}** · "
               f"estimator **{settings['estimator']}**"
               + (f" (+{', '.join(settings['extra_estimators'])})" if settings["extra_estimators"] else "")
               + f" · {settings['granularity']} blocks · protect {settings['protect']}. "
                 "Change them on Model & data or in the settings above.")

pending = s.get("es.model") and model_settings().get("spec") and model_settings() != s.get("es.model")
if pending:
    st.info(f"The Model & data page shows **{model_label(model_settings())}**, but "
            f"**{model_label(s.get('es.model'))}** is loaded; runs use the loaded model until you press "
            "*Load model* there.", icon=":material/info:")

if clicked or autorun:
    s["es.job_error"] = None
    try:
        outcome = start_run(settings)
        if outcome == "cached":
            state.flash("info", "Identical run found in the cache: shown instantly.")
            st.rerun()
    except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
        show_error(exc, "Could not start the analysis")

job = s.get("es.job")
if job is not None and job.running:                     # started just now, or re-attached after a reload (F5)
    from app_support.jobs import follow

    n_total = len(job.tokens.input_ids) if hasattr(job.tokens, "input_ids") else len(job.tokens)
    with LIVE:
        progress_box, live = st.container(), st.empty()
        shown = {"n": None}

        def _draw_live(j) -> None:
            pv = j.preview
            if pv is not None and pv["n_done"] != shown["n"]:     # the curve as it fills, batch by batch
                shown["n"] = pv["n_done"]
                live.plotly_chart(plots.partial_curves(pv["boundary"], pv["mid"], pv["n_done"], n_total,
                                                       pv["estimator"], settings.get("sinks")),
                                  width="stretch", key=f"live_{pv['n_done']}")

        with progress_box:
            follow(job, "Analysing", "stop_analysis", "Stops after the current batch (or MI pair); keeps what was "
                   "analysed", on_tick=_draw_live)
    finish_job()
    st.rerun()

err = s.get("es.job_error")
if err:
    st.error(f"The analysis failed: {err[0]}", icon=":material/error:")
    if err[1]:
        with st.expander("Details (for a bug report)"):
            st.code(err[1][-6000:], language="text")

# ---- results -----------------------------------------------------------------------------------------
need(state.current_run() is not None, f"No analysis yet. Press **{label}**: it analyses "
     f"**{model_label(s.get('es.model') or model_settings())}** on **{what_data}** (the current settings); the "
     "curve is drawn as it fills and the progress bar shows the time left.")

runs_ = state.runs()
if len(runs_) > 1:
    ids = list(runs_)[::-1]
    if s.get("es.current_run") not in ids:
        s["es.current_run"] = ids[0]
    s["w:entropy.run"] = s["es.current_run"]
    st.selectbox("Run", ids, format_func=lambda i: runs_[i].label, key="w:entropy.run",
                 on_change=lambda: s.__setitem__("es.current_run", s["w:entropy.run"]),
                 help="Every run of this session is kept; the Select and Export pages use the one chosen here")

rec = state.current_run()
r = rec.result
rid = rec.run_id
L = r.num_layers

for w in r.warnings:
    st.warning(w, icon=":material/warning:")

from app_support.lens_views import view_options  # noqa: E402
from app_support.story import sink_facts, story  # noqa: E402
from analysis.score.result import view_label  # noqa: E402

VIEWS = view_options(r)
if s.get("entropy_view") not in VIEWS:
    s["entropy_view"] = VIEWS[0]
st.radio("Sinks view", VIEWS, horizontal=True, key="entropy_view",
         format_func=lambda v: "both (overlay)" if v == "both" else view_label(v) + (" — primary" if v == r.sink_mode else ""),
         help="Every run computes its estimators with massive-activation tokens excluded and kept, in the same pass: "
              "switch or overlay without a re-run. The primary view (the --sinks setting) drives the boundary, the "
              "protection and the criteria." if len(VIEWS) > 1 else
              "This run holds one view (made without --both-views, or before both were computed).")
view = s["entropy_view"] if s["entropy_view"] != "both" else r.sink_mode
overlay = next((v for v in r.sink_views if v != r.sink_mode), None) if s["entropy_view"] == "both" else None

st.info(story(r, view=view), icon=":material/insights:")

with guarded("Boundary"):
    from analysis.measure.boundary import BOUNDARY_DEFINITION

    prot = protection(rec)
    bkey, mkey, ekey = f"w:boundary.{rid}", f"w:protect.{rid}", f"w:extra.{rid}"
    for k, v in ((bkey, prot["boundary"]), (mkey, prot["mode"]), (ekey, prot["extra"])):
        if k not in s:
            s[k] = v
    b1, b2, b3, b4 = st.columns([3, 2, 2, 1])
    b1.slider("Two-stage boundary: first block of the expansion stage (0-based)", 0, L - 1, key=bkey,
              help=BOUNDARY_DEFINITION + " With protection 'auto', blocks before the boundary are protected.")
    b2.radio("Protection", ["fixed", "auto", "none"], key=mkey, horizontal=True,
             help="fixed = {0, 1, L−1}; auto = blocks 0 … boundary−1 and the last block; none = nothing")
    b3.multiselect("Also protect", list(range(L)), key=ekey)
    b4.button("Reset", key=f"reset_boundary_{rid}", on_click=_reset_boundary,
              args=(rid, int(r.boundary), r.protect), help="Back to the detected boundary and the run's protection")
    prot.update(boundary=int(s[bkey]), mode=s[mkey], extra=list(s[ekey]))
    protected = effective_protected(rec)
    if prot["mode"] != "auto" and prot["boundary"] != r.boundary:
        st.caption(":material/info: The boundary only changes the protected blocks in **auto** mode.")

    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Two-stage boundary", f"block {prot['boundary']}" if prot["boundary"] > 0 else "none",
              delta=None if prot["boundary"] == r.boundary else f"{prot['boundary'] - r.boundary:+d} vs detected "
                                                                  f"{r.boundary}", delta_color="off",
              help="First block of the expansion stage (0-based)")
    m2.metric("Protected blocks", len(protected), help=", ".join(map(str, protected)) or "none")
    m3.metric("Blocks", L)
    m4.metric("Sequences", f"{r.n_sequences}" + ("" if r.manifest.get("completed", True) else " (stopped)"))
    m5.metric("Analysis time", f"{r.manifest.get('timings', {}).get('total_s', float('nan')):.1f} s")
    st.caption(f":material/lock: Protected ({prot['mode']}): {protected or 'none'} — locked on the Select page. "
               f"Run `{rid}`: {r.n_sequences} sequences × {r.manifest.get('data', {}).get('seq_len', '?')} tokens, "
               f"primary estimator {r.estimator}.")

adj = adjusted_result(rec)
tabs = ["Entropy curves", "ΔH per block", "Lenses", "Massive activations", "Domains", "Estimators",
        "Stability (bootstrap)", "Norms & sanity"]
if "mi" in (r.extras or {}):
    tabs.append("Mutual information")
T = dict(zip(tabs, st.tabs(tabs)))

with T["Entropy curves"], guarded("Entropy curves"):
    e1, e2, e3 = st.columns([2, 3, 2])
    est = e1.selectbox("Estimator", r.estimators, key="entropy_est", format_func=lambda e: ESTIMATORS[e].title
                       if e in ESTIMATORS else e)
    points = e2.multiselect("Residual points", ["resid_pre", "resid_mid", "resid_post"],
                            default=["resid_pre", "resid_mid", "resid_post"], key="entropy_points")
    with e3:
        explainer_popover(estimators=[est])
    if points:
        primary_view = view == r.sink_mode and est == r.estimator
        bi = r.boundary_info if prot["boundary"] == r.boundary and primary_view else None
        shown_b = prot["boundary"] if primary_view else 0      # the boundary belongs to the primary curve only
        jump = sink_facts(r).get("jump_at")
        fig = plots.entropy_curves(r, est, shown_b, protected, points=points, interval=bi, sink_onset=jump,
                                   view=view, overlay=overlay)
        stage = (f"compression stage blocks 0…{shown_b - 1}" if shown_b > 0
                 else "nothing (no compression stage detected)" if primary_view
                 else "nothing (the boundary belongs to the primary view and estimator)")
        chart(fig, f"Mean entropy (nats, {ESTIMATORS[est].title if est in ESTIMATORS else est}, {view_label(view)}) "
                   f"over {r.n_sequences} sequences of each block's input (resid_pre), after attention (resid_mid) and "
                   f"output (resid_post); each sequence's tokens are the samples"
                   + (f"; dashed = {view_label(overlay)} (same pass)" if overlay else "") + f". Shaded: {stage}"
                   + (f", band = 90 % bootstrap interval of the boundary ({bi['lo']}…{bi['hi']})" if bi and bi.get("detected") else "")
                   + (f"; red dotted = the massive activation appears ($Z^{{{jump}}}$)" if jump is not None else "")
                   + "; lock = protected. Blocks 0-based.",
              name="entropy_curves", key="entropy_curves_chart")

with T["ΔH per block"], guarded("ΔH"):
    g1, g2, g3 = st.columns([3, 2, 2])
    gran = g1.radio("Block granularity", list(GRANULARITIES), horizontal=True, key="dh_gran",
                    index=GRANULARITIES.index(r.granularity))
    est_dh = g2.selectbox("Estimator ", r.estimators, key="dh_est")
    with g3:
        explainer_popover(estimators=[est_dh], criteria=["entrodrop", "cosine"])
    cos = None
    try:
        cos = r.seq_cos(gran).mean(0)
    except SelectionError:             # a run without cosine statistics (written by an older version)
        pass
    dh_view = view if r.has_view(est_dh, view) else r.sink_mode
    chart(plots.delta_h_bars(r, est_dh, gran, protected, cos, "LLM-Drop cos(X, Y)", view=dh_view),
          f"ΔH per {gran} block = H(output) − H(input) in nats ({est_dh}, {view_label(dh_view)}), mean over "
          f"{r.n_sequences} sequences; "
          "EntroDrop drops the smallest first. Dotted: mean cosine similarity of the block's input and output "
          "(right axis; LLM-Drop drops the highest first). Grey 🔒 = protected. Blocks 0-based.",
          name="delta_h", key="dh_chart")
    dh_df = pd.DataFrame({"block (0-based)": range(L),
                          **{f"ΔH {g} ({est_dh})": np.round(r.delta_h(g, est_dh), 5) for g in GRANULARITIES},
                          "protected": [b in protected for b in range(L)]})
    with st.expander("ΔH table"):
        table(dh_df, f"Mean ΔH in nats over {r.n_sequences} sequences, estimator {est_dh}.", name="delta_h_table")

with T["Lenses"], guarded("Lenses"):
    from app_support.lens_views import render_lenses

    render_lenses(r, _use_lenses)

with T["Massive activations"], guarded("Massive activations"):
    from app_support.lens_views import render_massive

    est_m = st.selectbox("Entropy curve", r.estimators, key="massive_est",
                         index=r.estimators.index("matrix") if "matrix" in r.estimators else 0)
    render_massive(r, view if r.has_view(est_m, view) else r.sink_mode, est_m, rid)

with T["Domains"], guarded("Domains"):
    doms = list(dict.fromkeys(r.domains))
    if len(doms) < 2:
        st.info(f"This run has one calibration domain ({doms[0] if doms else '—'}). Analyse a hybrid mix to "
                "compare the curve across domains — the per-sequence values are split by each window's domain.")
        st.button("Re-run on all 6 built-in domains (equal weights)", key="rerun_mix", on_click=_use_mix)
    else:
        d1, d2 = st.columns([2, 2])
        est_d = d1.selectbox("Estimator  ", r.estimators, key="dom_est")
        norm = d2.toggle("Normalise each domain to [0, 1]", value=True, key="dom_norm")
        fig, labels = plots.domain_heatmap(r, est_d, norm)
        chart(fig, "Mean boundary entropy H($Z^i$) per calibration domain (rows = the windows of that domain in this "
                   "hybrid run; n = windows). Normalised: each row min–max scaled so the shapes compare. "
                   "$Z^0$ = embeddings, $Z^{l+1}$ = output of block l (0-based).", name="domain_heatmap", key="dom_chart")
        bd = plots.domain_argmins(r, est_d)
        table(pd.DataFrame({"domain": list(bd), "detected boundary (block, 0-based)": list(bd.values()),
                            "windows": [r.domains.count(d) for d in bd]}),
              "Boundary detected separately per domain (same rule as the run on that domain's mean curve; "
              "0 = no compression stage).",
              name="domain_boundaries")

with T["Estimators"], guarded("Estimators"):
    if len(r.estimators) < 2:
        st.info("This run computed one estimator. Add others under Analysis settings → *Also compute*, or:")
        st.button("Re-run with every estimator", key="rerun_all_est", on_click=_use_all_estimators)
    else:
        explainer_popover(estimators=r.estimators)
        chart(plots.estimator_comparison(r, r.estimators),
              f"Boundary entropy H($Z^i$) from each estimator on the same {r.n_sequences} sequences, min–max normalised "
              "per estimator (hover for nats): where they agree on the shape, the boundary is not an estimator "
              "artefact.", name="estimator_comparison", key="est_cmp")
        chart(plots.estimator_small_multiples(r, r.estimators), "The same curves in raw nats, side by side.",
              name="estimator_raw", key="est_raw")
        from analysis.measure.boundary import robust_boundary
        from analysis.score.selection import rank_correlation, topk_overlap

        rows = []
        base = r.estimators[0]
        for e in r.estimators:
            dh = r.delta_h(r.granularity, e)
            rows.append({"estimator": e, "boundary (0-based; 0 = no stage)": robust_boundary(r.entropy(e)["boundary"])[0],
                         f"Spearman ρ of ΔH vs {base}": round(rank_correlation(r.delta_h(r.granularity, base), dh)["spearman"], 3),
                         f"top-8 overlap vs {base}": topk_overlap(
                             np.argsort(r.delta_h(r.granularity, base)).tolist(), np.argsort(dh).tolist(), 8)})
        table(pd.DataFrame(rows), f"Agreement of the estimators on the {r.granularity} ΔH ranking "
                                  "(lowest ΔH first, before protection).", name="estimator_agreement")

with T["Stability (bootstrap)"], guarded("Bootstrap"):
    from analysis.score.criteria import CRITERIA, bootstrap

    boot_crits = [n for n, c in CRITERIA.items() if c.per_seq is not None]
    c1, c2, c3, c4 = st.columns(4)
    crit = c1.selectbox("Criterion", boot_crits, format_func=lambda n: CRITERIA[n].title, key="boot_crit")
    gran_b = c2.selectbox("Granularity", [g for g in CRITERIA[crit].granularities], key="boot_gran")
    n_boot = c3.select_slider("Resamples", [50, 100, 200, 500, 1000], value=200, key="boot_n")
    prunable = L - len(protected)
    k_b = c4.number_input("k (top-k frequency)", min_value=1, max_value=max(1, prunable), value=min(4, max(1, prunable)),
                          key="boot_k")

    @st.cache_data(show_spinner=False, max_entries=64)
    def _boot(rid_: str, prot_: tuple, crit_: str, g_: str, n_: int, k_: int, _res):
        return bootstrap(_res, crit_, g_, n_boot=n_, seed=0, k=k_)

    bres = _boot(rid, tuple(protected), crit, gran_b, int(n_boot), int(k_b), adj)
    chart(plots.bootstrap_chart(bres, protected, CRITERIA[crit].score_label),
          f"Calibration bootstrap: the {bres['n_sequences']} sequences resampled with replacement {n_boot}× "
          f"(seed 0). Bars = mean {CRITERIA[crit].score_label} per {gran_b} block, whiskers = 5–95 % band; lower "
          f"panel = how often each block is among the top-{k_b} to drop. Narrow bands and 0 %/100 % frequencies "
          "mean a stable choice. Blocks 0-based.", name="bootstrap", key="boot_chart")

with T["Norms & sanity"], guarded("Norms"):
    chart(plots.norms_chart(r), "Mean RMS token norm of the residual stream (log scale) at every boundary and after "
                                "each attention sub-block. Scale-sensitive estimators (KNN) rise by d·log c when "
                                "states grow by c, so a rising KNN curve can be norm growth — compare Bucket or "
                                "knn-norm. Blocks 0-based.", name="norms", key="norms_chart")
    d = r.manifest.get("model", {}).get("hidden_size")
    t = r.manifest.get("data", {}).get("seq_len")
    knn_warn = [w for w in r.warnings if "KNN" in w]
    if knn_warn:
        for w in knn_warn:
            st.warning(w, icon=":material/straighten:")
    elif any(e.startswith("knn") for e in r.estimators):
        st.success(f"KNN sampling is adequate: N={t} tokens per sequence ≥ d={d} dimensions.")
    else:
        st.caption(f"No KNN estimator in this run (d = {d}, N = {t} tokens per sequence).")
    nonfin = [w for w in r.warnings if "NonFinite" in w]
    if not nonfin:
        st.caption(":material/check_circle: No NaN/inf values were seen in the residual stream.")

if "Mutual information" in T:
    with T["Mutual information"], guarded("Mutual information"):
        from app_support.mi_views import render_mi

        render_mi(r, protected)

st.divider()
link("select", "Next: select blocks to drop →")
