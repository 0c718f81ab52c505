"""Export: every table and chart, the plans, the manifest, the pruned checkpoint and the CLI commands."""
from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from app_support import healing, state
from app_support.commands import analyze_argv, session_script
from analysis.errors import EntroscopeError
from app_support.exporting import (FIGURE_FORMATS, dir_listing, fig_html, figures_zip, llama_cpp_routes, mergekit_yaml,
                                   card_evaluation, png_export_works, save_checkpoint, server_paths_allowed,
                                   session_folder, zip_bytes)
from app_support.runs import adjusted_result, effective_protected
from app_support.widgets import INDEX_NOTE, guarded, link, need, page_setup, show_error

page_setup("Export", ":material/download:", "Download what this session produced and reproduce it from the command line. "
           + INDEX_NOTE)

s = st.session_state
need(state.current_run() is not None, "Nothing to export yet: run the analysis first.", "entropy",
     "Go to Entropy dynamics")

rec = state.current_run()
r = rec.result
plans = state.plans()
protected = effective_protected(rec)


def _json(obj) -> str:
    from analysis.export import to_json

    return to_json(obj)


# ---- reproduce: CLI and manifest -----------------------------------------------------------------------------
with guarded("Reproduce"):
    st.subheader("Reproduce from the command line")
    chosen = st.selectbox("Plan for the select step", ["(none)"] + list(plans), key="cli_plan",
                          index=1 if plans else 0)
    prec = plans.get(chosen)
    cmp_data = state.get("cmp.data", "(calibration source)")
    if cmp_data == "(calibration source)":
        w = [k for k, v in (rec.data.get("weights") or {}).items() if float(v) > 0]
        cmp_data = w[0] if rec.data.get("source", "builtin") == "builtin" and w else None
    eval_settings = {k: state.get(f"cmp.{k}", d) for k, d in (("window", 256), ("max_tokens", 4096),
                                                               ("prompt_len", 64), ("new_tokens", 16), ("repeats", 3))}
    script = session_script(rec, prec, protected, cmp_data, eval_settings, s.get("es.last_sweep_meta"),
                            healing.heal_argv(healing.choice(chosen)) if prec else None, runs=state.runs())
    st.code(script, language="bash")
    st.caption("Each command was checked against this version's CLI parser (`python -m analysis --help`). The "
               "analysis is deterministic for a given model, data spec and seed, so `analyze` reproduces the plan's own "
               "run (its sinks mode, estimators, MI settings and seed), and the selection step rebuilds the plan the "
               "way it was made: the criterion's top-k with the protection it was kept with, hand edits as "
               "`--add`/`--remove`, or MI-PRUN's Fast-Block-Select (`miprun`).")
    c1, c2, c3 = st.columns(3)
    c1.download_button("reproduce.sh", data=script, file_name="reproduce.sh", mime="text/x-shellscript",
                       key="dl_script", on_click="ignore", icon=":material/download:")

    from analysis.export import reproduction_manifest

    from app_support.models import get_model

    lm = get_model(rec.model)
    manifest = reproduction_manifest(lm, prec.plan if prec else None, r.manifest.get("data"), analyze_argv(rec),
                                     results={"run_id": rec.run_id, "boundary": int(s["es.protect"].get(
                                         rec.run_id, {}).get("boundary", r.boundary)), "protected": protected,
                                              "index_base": 0, "analysis": r.manifest,
                                              "settings": {"model": rec.model, "data": rec.data,
                                                           "analysis": rec.config},
                                              "healing": healing.choice(chosen) if prec else None})
    c2.download_button("manifest.json", data=_json(manifest), file_name=f"manifest-{rec.run_id}.json",
                       mime="application/json", key="dl_manifest", on_click="ignore", icon=":material/download:")
    c3.download_button("run.json (curves, per-sequence values)", data=lambda: _json(r.to_dict()),
                       file_name=f"run-{rec.run_id}.json", mime="application/json", key="dl_run", on_click="ignore", icon=":material/download:")
    with st.expander("Manifest (model fingerprint, data protocol, versions, command)"):
        st.json(manifest, expanded=False)
    from app_support.exporting import session_zip

    st.download_button("Whole session (zip): runs, plans, comparison, tables, every chart, reproduce.sh",
                       data=lambda: session_zip(state.runs(), plans, script, s.get("es.last_comparison"),
                                                s.get("es.tables"), s.get("es.figures"),
                                                (s.get("es.sweeps") or {}).get(s.get("es.last_sweep"))),
                       file_name=f"entroscope-session-{rec.run_id}.zip", mime="application/zip", key="dl_session",
                       on_click="ignore", icon=":material/folder_zip:",
                       help="Every run with static figures of that run, every kept plan, the comparison's raw results "
                            "and static charts (incl. the Pareto view), the session's tables and interactive charts "
                            "(HTML), the last sweep and the reproduce script.")

# ---- plans ---------------------------------------------------------------------------------------------------
with guarded("Plans"):
    st.subheader("Plans")
    if not plans:
        st.info("No plans kept yet.")
        link("select", "Select blocks and keep a plan")
    for name, p in plans.items():
        with st.container(border=True):
            prun = state.runs().get(p.run_id)
            st.markdown(f"**{name}** — drops {p.plan.describe()} (0-based) · {p.criterion}"
                        f"{' + hand edits' if p.edited else ''} · run `{p.run_id}`")
            cols = st.columns([1, 1, 1, 2])
            cols[0].download_button("plan.json", data=p.plan.to_json(), file_name=f"{name}.plan.json",
                                    mime="application/json", key=f"dl_plan_{name}", on_click="ignore", icon=":material/download:")
            csv = "kind,block\n" + "".join(f"{k.replace('drop_', '')},{b}\n"
                                           for k in ("drop_layers", "drop_attn", "drop_mlp") for b in getattr(p.plan, k))
            cols[1].download_button("blocks.csv", data=csv, file_name=f"{name}.blocks.csv", mime="text/csv",
                                    key=f"dl_plancsv_{name}", on_click="ignore", icon=":material/download:")
            plm = get_model(prun.model if prun else rec.model)
            try:
                y = mergekit_yaml(p.plan, plm)
                cols[2].download_button("mergekit.yaml", data=y, file_name=f"{name}.mergekit.yaml",
                                        mime="text/yaml", key=f"dl_mk_{name}", on_click="ignore", icon=":material/download:")
                if "WARNING" in y:
                    cols[2].caption("This model's config has per-layer fields mergekit 0.1.5 cannot slice: write "
                                    "the YAML with `python -m analysis prune … --mergekit FILE`, which adds the "
                                    "config folder mergekit reads (see the YAML header).")
            except EntroscopeError as exc:      # sub-block plans: passthrough slices whole layers
                cols[2].caption(f"mergekit: not available — {exc}")
            routes = llama_cpp_routes(p.plan, plm)
            if routes["refused"]:
                cols[3].warning(f"llama.cpp: {routes['refused']}. {routes['hint']}.")
            else:
                cols[3].code("\n".join(c for c in (routes["command"], routes["convert"]) if c), language="bash")
                cols[3].caption(routes.get("note", "") + " `<your-llama.cpp>` is your llama.cpp checkout; "
                                "`<pruned-checkpoint>` the folder saved below.")

# ---- pruned checkpoint ---------------------------------------------------------------------------------------
with guarded("Checkpoint"):
    st.subheader("Pruned checkpoint")
    if plans:
        k1, k2, k3 = st.columns([2, 2, 2])
        ck_plan = k1.selectbox("Plan", list(plans), key="ck_plan")
        if server_paths_allowed():           # server-side setting: a single-user machine may pick folders
            root = k2.text_input("Output folder (root)", key=state.wkey("ck.root", os.path.join(os.getcwd(), "out")),
                                 help="The checkpoint is written inside this folder only")
            state.sync("ck.root")
        else:                                 # shared app: only this session's private folder, then a zip
            import uuid

            root = str(session_folder(s.setdefault("es.export_session", uuid.uuid4().hex[:16])))
            k2.caption("Written to this session's private folder on the server; download it below as a zip.")
        folder = k3.text_input("Checkpoint folder name", value=f"{rec.model['spec'].replace('/', '_')}-{ck_plan}",
                               key=f"ck_name_{ck_plan}")
        overwrite = st.checkbox("Overwrite an existing checkpoint folder", key="ck_overwrite")
        if healing.choice(ck_plan)["method"] != "none":
            st.caption(f"Saved healed ({healing.choice(ck_plan)['method']}), as chosen on Prune & compare; the "
                       "healing settings go into entroscope-heal.json and the plan's source.")
        if st.button("Save pruned checkpoint", icon=":material/save:", key="ck_save", type="primary"):
            try:
                prun = state.runs().get(plans[ck_plan].run_id, rec)
                ck_lm, ch = get_model(prun.model), healing.choice(ck_plan)
                with st.spinner("Healing and writing the checkpoint …" if ch["method"] != "none" else
                                "Writing the checkpoint …"):
                    healed = healing.healed_model(ck_lm, plans[ck_plan].plan, ch) if ch["method"] != "none" else None
                    evaluation = card_evaluation(s.get("es.last_comparison"), ck_plan, plans[ck_plan].plan, ch)
                    out = save_checkpoint(ck_lm, plans[ck_plan].plan, root, folder, overwrite, healed,
                                          card={"evaluation": evaluation} if evaluation else None)
                s["es.last_checkpoint"] = str(out)
                state.flash("success", f"Saved {ck_plan} to {out if server_paths_allowed() else out.name}"
                            + (" — its model card carries the Prune & compare results" if evaluation else ""))
                st.rerun()
            except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
                show_error(exc, "Could not save the checkpoint")
        last = s.get("es.last_checkpoint")
        if last and os.path.isdir(last):
            st.success(f"Last checkpoint: `{last if server_paths_allowed() else os.path.basename(last)}`")
            st.dataframe(pd.DataFrame(dir_listing(last)), hide_index=True)
            st.download_button(f"{os.path.basename(last)}.zip", data=lambda last=last: zip_bytes(last),
                               file_name=f"{os.path.basename(last)}.zip", mime="application/zip", key="dl_ck_zip",
                               on_click="ignore", icon=":material/folder_zip:")
            st.caption("Every plan reloads exactly with plain `AutoModelForCausalLM.from_pretrained`: dropped attention/"
                       "MLP sub-blocks are stored with zeroed output projections (listed in config.json "
                       "`per_layer_config`), so the files keep the dense size and plain transformers still runs them; "
                       "`python -m analysis load` removes them physically (entroscope-plan.json).")
            card = os.path.join(last, "README.md")
            if os.path.isfile(card):
                with st.expander("Model card (README.md: Hugging Face front matter, plan, source model, licence)"):
                    with open(card, encoding="utf-8") as f:
                        st.code(f.read(), language="markdown")
                    st.caption("The card carries this plan's Prune & compare results (perplexity with its protocol; "
                               "task accuracy ± standard error) when the comparison measured this very plan to the "
                               "end before saving. From the command line: `python -m analysis eval --plan plan.json … "
                               "--out eval.json`, then `python -m analysis prune --plan plan.json --eval eval.json …`.")
    else:
        st.caption("Keep a plan first.")

# ---- tables and charts ---------------------------------------------------------------------------------------
with guarded("Tables and charts"):
    st.subheader("Tables")
    tables = s.get("es.tables") or {}
    if not tables:
        st.caption("Tables appear here once the pages that make them have been visited.")
    for name, (df, caption) in tables.items():
        c1, c2, c3 = st.columns([5, 1, 1])
        c1.markdown(f"**{name}** — {len(df)} rows · <small>{caption}</small>", unsafe_allow_html=True)
        c2.download_button("CSV", data=df.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv",
                           key=f"dl_csv_{name}", on_click="ignore", icon=":material/download:")
        c3.download_button("JSON", data=df.to_json(orient="records", indent=1), file_name=f"{name}.json",
                           mime="application/json", key=f"dl_json_{name}", on_click="ignore", icon=":material/download:")

    st.subheader("Charts")
    st.markdown("**Static figures** of every chart of this run (and the last sweep), for papers and slides: "
                "PNG, SVG and PDF, drawn with matplotlib (offline; same as `python -m analysis figures`).")
    last_sweep = (s.get("es.sweeps") or {}).get(s.get("es.last_sweep"))
    fcols = st.columns(len(FIGURE_FORMATS) + 1)
    for col, fmts in zip(fcols, [(f,) for f in FIGURE_FORMATS] + [FIGURE_FORMATS]):
        label = "all formats" if len(fmts) > 1 else fmts[0].upper()
        col.download_button(f"Figures · {label} (zip)", data=lambda fmts=fmts: figures_zip(adjusted_result(rec),
                                                                                            last_sweep, fmts),
                            file_name=f"figures-{rec.run_id}-{'-'.join(fmts)}.zip", mime="application/zip",
                            key=f"dl_figs_{'_'.join(fmts)}", on_click="ignore", icon=":material/image:")
    figures = s.get("es.figures") or {}
    png = png_export_works()
    if not png:
        st.caption("Interactive charts below download as self-contained HTML (works offline); plotly's own PNG "
                   "export needs the `kaleido` package and a browser engine, not available here.")
    if not figures:
        st.caption("Charts appear here once the pages that make them have been visited.")
    for name, (fig, caption) in figures.items():
        c1, c2, c3 = st.columns([5, 1, 1])
        c1.markdown(f"**{name}** · <small>{caption}</small>", unsafe_allow_html=True)
        c2.download_button("HTML", data=lambda fig=fig, caption=caption: fig_html(fig, caption),
                           file_name=f"{name}.html", mime="text/html", key=f"dl_html_{name}", on_click="ignore", icon=":material/download:")
        if png:
            c3.download_button("PNG", data=lambda fig=fig: fig.to_image(format="png", scale=2),
                               file_name=f"{name}.png", mime="image/png", key=f"dl_png_{name}", on_click="ignore", icon=":material/download:")
