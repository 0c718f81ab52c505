"""Channel pruning: iterative structured pruning of MLP channels with a hybrid multi-domain calibration set.

A thin view over :mod:`analysis.channels`. The cached (shared) model is never modified: the library
prunes a deep copy, which this session keeps for saving.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_support import state
from app_support.models import loaded_model
from app_support.widgets import chart, guarded, need, page_setup, show_error, table

page_setup("Channel pruning", ":material/content_cut:",
           "Width pruning: remove whole MLP intermediate channels (gate/up rows + down columns), scored on a "
           "calibration set mixed from several domains and re-scored on the partially pruned model at every step. "
           "Provisional recipe (the paper's formulas are not public): every choice below is an option. "
           "Layers and channels are 0-based.")

RESULT_KEY = "es.channels"          # {"report", "pruned" (LoadedModel of the pruned copy), "model_fp", "saved"}
LAYER_AXIS = "layer (0-based)"


# ---- pure helpers (figures and tables from a report) ----------------------------------------------------

def kept_figure(report: dict) -> go.Figure:
    orig, kept = report["original"]["widths"], report["final"]["widths"]
    x = list(range(len(orig)))
    fig = go.Figure([go.Bar(x=x, y=orig, name="original", marker_color="#B8BBC6", opacity=0.55),
                     go.Bar(x=x, y=kept, name="kept", marker_color="#4C5BD4",
                            hovertemplate="layer %{x}: %{y} channels kept<extra></extra>")])
    fig.update_layout(barmode="overlay", height=340, template="plotly_white", margin=dict(l=10, r=10, t=20, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      xaxis_title=LAYER_AXIS, yaxis_title="MLP channels")
    return fig


def ppl_table(report: dict) -> pd.DataFrame:
    rows = []
    for d, v in (report.get("evaluation") or {}).get("domains", {}).items():
        b, a = v.get("before"), v.get("after")
        rows.append({"domain": d, "before": b, "after": a,
                     "change %": (100 * (a / b - 1)) if a and b else None, "tokens": v.get("tokens")})
    return pd.DataFrame(rows, columns=["domain", "before", "after", "change %", "tokens"])


def ppl_figure(df: pd.DataFrame) -> go.Figure:
    fig = go.Figure([go.Bar(x=df["domain"], y=df["before"], name="dense", marker_color="#B8BBC6"),
                     go.Bar(x=df["domain"], y=df["after"], name="pruned", marker_color="#E4572E")])
    fig.update_layout(barmode="group", height=320, template="plotly_white", margin=dict(l=10, r=10, t=20, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      xaxis_title="domain (held-out eval split)", yaxis_title="perplexity")
    return fig


def steps_table(report: dict) -> pd.DataFrame:
    return pd.DataFrame([{"step": s["step"], "target ratio": round(s["target_ratio"], 4),
                          "ratio reached": round(s["ratio_reached"], 4), "re-calibrated": s["calibrated"],
                          "params": s["params"]["total"], "non-embedding params": s["params"]["non_embedding"],
                          "min width": min(s["widths"]), "max width": max(s["widths"]),
                          "seconds": round(s["seconds"], 2)} for s in report["steps"]])


def _fmt_m(n) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,}"


# ---- page -------------------------------------------------------------------------------------------------

s = st.session_state
need(s.get("es.model") is not None, "Load a model first (Model & data page).", "data", "Go to Model & data")

lm = None
with guarded("Model"):
    lm = loaded_model()
need(lm is not None, "The model could not be loaded.", "data", "Go to Model & data")

import analysis.channels as CH  # noqa: E402
from analysis.data import DOMAINS  # noqa: E402
from analysis.models.channel_checkpoint import read_channels_meta  # noqa: E402
from analysis.settings import defaults  # noqa: E402
from app_support.commands import channels_argv, shell  # noqa: E402

D = defaults(CH.ChannelConfig)     # the recipe's defaults, the same as the CLI's
EVAL_TOKENS = 2048                 # the page's smaller held-out budget (the CLI's default is D["eval_tokens"])

widths0 = CH.mlp_widths(lm.model)
groups0 = CH.kv_groups(lm.model)
st.caption(f"Model **{lm.name}**: {lm.num_layers} layers, MLP width {min(widths0)}"
           f"{'' if len(set(widths0)) == 1 else f'–{max(widths0)}'}, {groups0[0]} KV head(s) per layer.")

with guarded("Settings"):
    st.subheader("Hybrid calibration set")
    doms = st.multiselect("Domains", list(DOMAINS), key=state.wkey("ch.domains", list(D["domains"])),
                          format_func=lambda d: f"{d} — {DOMAINS[d].title}",
                          help="Built-in offline domains; windows are split across them in proportion to the weights "
                               "(exact counts).")
    weights = {}
    if doms:
        wc = st.columns(len(doms))
        for col, d in zip(wc, doms):
            weights[d] = col.number_input(f"weight {d}", min_value=0.0, max_value=100.0, step=0.5,
                                          key=state.wkey(f"ch.w.{d}", float(D["domains"].get(d, 1.0))))
    c1, c2, c3 = st.columns(3)
    n_samples = c1.number_input("Calibration windows (total)", 1, 4096, step=8, key=state.wkey("ch.samples", D["n_samples"]))
    seq_len = c2.number_input("Tokens per window", 8, 4096, step=32, key=state.wkey("ch.seq_len", D["seq_len"]))
    seed = c3.number_input("Seed", 0, 2**31 - 1, key=state.wkey("ch.seed", D["seed"]))

    st.subheader("Pruning")
    p1, p2, p3, p4 = st.columns(4)
    ratio = p1.slider("Ratio r (MLP channels removed)", 0.0, 0.9, step=0.05, key=state.wkey("ch.ratio", D["ratio"]))
    steps = p2.number_input("Steps T (1 = one-shot)", 1, 32, key=state.wkey("ch.steps", D["steps"]),
                            help="Cumulative removal after step t: round(t·r/T · original); re-calibrated each step.")
    method = p3.selectbox("Score", list(CH.METHODS), key=state.wkey("ch.method", D["method"]),
                          help="; ".join(f"{k}: {v}" for k, v in CH.METHODS.items()))
    agg = p4.selectbox("Domain aggregation", list(CH.DOMAIN_AGGS), key=state.wkey("ch.agg", D["domain_agg"]),
                       help="; ".join(f"{k}: {v}" for k, v in CH.DOMAIN_AGGS.items()))
    q1, q2, q3, q4 = st.columns(4)
    allocation = q1.radio("Allocation", list(CH.ALLOCATIONS), horizontal=True,
                          key=state.wkey("ch.allocation", D["allocation"]),
                          help="; ".join(f"{k}: {v}" for k, v in CH.ALLOCATIONS.items()))
    min_keep = q2.slider("Per-layer floor (global)", 0.0, 1.0, step=0.05, key=state.wkey("ch.floor", D["min_keep_frac"]),
                         disabled=allocation != "global")
    mult_opts = [1, 8, 16, 32, 64, 128, 256]
    multiple_of = q3.selectbox("Round widths to a multiple of", mult_opts, key=state.wkey("ch.multiple", D["multiple_of"]),
                               help="Efficient kernels; kept widths are at least this multiple.")
    bias = q4.checkbox("Bias compensation (FLAP)", key=state.wkey("ch.bias", D["bias_compensation"]),
                       help="Adds W_down[:, pruned] · E[a_pruned] as a down_proj bias.")
    if min(groups0) > 1:
        head_ratio = st.slider("Also remove this fraction of KV groups per layer (0 = off)", 0.0, 0.9, step=0.05,
                               key=state.wkey("ch.head_ratio", D["head_ratio"]),
                               help="Whole KV groups with their query heads; same number in every layer.")
    else:
        head_ratio = 0.0
        st.caption("Attention-head pruning is not available: this model has 1 KV head per layer.")

    with st.expander("Evaluation"):
        e1, e2, e3 = st.columns(3)
        eval_tokens = e1.number_input("Held-out tokens per domain", 16, 1_000_000, step=256,
                                      key=state.wkey("ch.eval_tokens", EVAL_TOKENS))
        eval_window = e2.number_input("Perplexity window", 8, 8192, step=64, key=state.wkey("ch.eval_window", D["eval_window"]))
        do_latency = e3.checkbox("Measure latency (prefill / decode)", key=state.wkey("ch.latency", False))
    state.sync("ch.domains", *[f"ch.w.{d}" for d in doms], "ch.samples", "ch.seq_len", "ch.seed", "ch.ratio",
               "ch.steps", "ch.method", "ch.agg", "ch.allocation", "ch.floor", "ch.multiple", "ch.bias",
               "ch.head_ratio", "ch.eval_tokens", "ch.eval_window", "ch.latency")

if st.button("Run channel pruning", icon=":material/content_cut:", type="primary", key="ch_run"):
    try:
        cfg = CH.ChannelConfig(domains={d: w for d, w in weights.items()}, n_samples=int(n_samples),
                               seq_len=int(seq_len), seed=int(seed), method=method, domain_agg=agg, ratio=float(ratio),
                               steps=int(steps), allocation=allocation, min_keep_frac=float(min_keep),
                               multiple_of=int(multiple_of), bias_compensation=bool(bias),
                               head_ratio=float(head_ratio), eval_tokens=int(eval_tokens),
                               eval_window=int(eval_window)).validated()
        bar = st.progress(0.0, text="starting")

        def _progress(frac: float, msg: str) -> None:
            bar.progress(min(max(float(frac), 0.0), 1.0), text=msg)

        run = CH.run_channels(lm, cfg, latency=bool(do_latency), progress=_progress)
        s[RESULT_KEY] = {"report": run.report, "pruned": run.pruned, "model_fp": lm.fingerprint, "saved": None,
                         "command": shell(channels_argv(s["es.model"], cfg, latency=bool(do_latency)))}
    except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
        show_error(exc, "Channel pruning failed")

res = s.get(RESULT_KEY)
if res is not None and res.get("model_fp") != lm.fingerprint:
    st.info("The last channel-pruning result belongs to another model; run again for this one.")
    res = None

if res is not None:
    rep = res["report"]
    with guarded("Results"):
        st.subheader("Result")
        fin, orig = rep["final"], rep["original"]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("MLP channels removed", f"{fin['ratio_reached']:.1%}", help="of the original channels")
        m2.metric("Parameters", _fmt_m(fin["params"]["total"]), f"-{fin['params_removed_fraction']:.1%}",
                  delta_color="off")
        m3.metric("Non-embedding parameters", _fmt_m(fin["params"]["non_embedding"]),
                  f"-{fin['non_embedding_removed_fraction']:.1%}", delta_color="off")
        m4.metric("Steps done", f"{rep['steps_done']}/{rep['config']['steps']}")
        if res.get("command"):
            st.caption("The same recipe on the command line:")
            st.code(res["command"], language="bash")
        if not rep.get("completed", True):
            st.warning("Stopped early: the result holds the last completed step.")
        chart(kept_figure(rep), "Kept MLP channels per layer (blue) against the original width (grey); "
              f"layers are 0-based. Allocation {rep['config']['allocation']}, widths rounded to multiples of "
              f"{rep['config']['multiple_of']}.", name="channels_kept", key="ch_kept_fig")
        df = ppl_table(rep)
        if len(df):
            st.markdown("**Perplexity per domain (held-out eval split)**")
            table(df, "Token perplexity over disjoint windows of each domain's eval split "
                  f"(first {rep['config']['eval_tokens']} tokens), dense vs pruned.", name="channels_ppl")
            chart(ppl_figure(df), "Perplexity per domain before (grey) and after (red) pruning.",
                  name="channels_ppl_fig", key="ch_ppl_fig")
        table(steps_table(rep), "Every step re-calibrates the current pruned model, re-scores and cuts to the "
              "cumulative target.", name="channels_steps")
        lat = rep.get("latency")
        if lat:
            st.markdown("**Latency**")
            st.dataframe(pd.DataFrame([
                {"": "prefill tok/s", "dense": lat["dense"]["prefill_tokens_per_s"],
                 "pruned": lat["pruned"]["prefill_tokens_per_s"], "speedup": lat["prefill_speedup"],
                 "FLOP-ideal": lat["prefill_ideal_speedup"]},
                {"": "decode tok/s", "dense": lat["dense"]["decode_tokens_per_s"],
                 "pruned": lat["pruned"]["decode_tokens_per_s"], "speedup": lat["decode_speedup"],
                 "FLOP-ideal": lat["decode_ideal_speedup"]}]), hide_index=True)
        cal = rep["manifest"]
        st.caption("Calibration: " + ", ".join(f"{d}: {n} windows / {cal['tokens_per_domain'].get(d, 0)} tokens"
                                               for d, n in (cal.get("samples_per_domain") or {}).items())
                   + f" · seed {rep['config']['seed']} · method {rep['config']['method']} · "
                     f"aggregation {rep['config']['domain_agg']}.")
        st.download_button("Report JSON", icon=":material/download:", data=json.dumps(rep, indent=1),
                           file_name="channels-report.json", mime="application/json", key="ch_dl_report",
                           on_click="ignore")

    with guarded("Save"):
        st.subheader("Save the pruned model")
        k1, k2 = st.columns(2)
        from app_support.exporting import server_paths_allowed, session_folder, zip_bytes

        if server_paths_allowed():           # server-side setting: a single-user machine may pick folders
            root = k1.text_input("Output folder (root)", key=state.wkey("ch.root", os.path.join(os.getcwd(), "out")),
                                 help="The checkpoint is written inside this folder only.")
            state.sync("ch.root")
        else:                                 # shared app: only this session's private folder, then a zip
            import uuid

            root = str(session_folder(st.session_state.setdefault("es.export_session", uuid.uuid4().hex[:16])))
            k1.caption("Written to this session's private folder on the server; download it below as a zip.")
        default_name = f"{str(lm.name).replace('/', '_')}-channels-r{int(round(fin['ratio_reached'] * 100))}"
        name = k2.text_input("Checkpoint folder name", value=default_name, key="ch_save_name")
        overwrite = st.checkbox("Overwrite an existing checkpoint folder", key="ch_overwrite")
        if st.button("Save pruned model", icon=":material/save:", key="ch_save"):
            try:
                from analysis.errors import DataError

                name = (name or "").strip()
                if not (root or "").strip():
                    raise DataError("Choose an output folder")
                if not name or "/" in name or "\\" in name or name in (".", ".."):
                    raise DataError(f"Invalid checkpoint folder name {name!r}", hint="a plain folder name")
                root_p = Path(root.strip()).expanduser()
                with st.spinner("Writing the checkpoint …"):
                    out = CH.save_channel_pruned(res["pruned"], root_p / name, report=rep, overwrite=overwrite,
                                                 root=root_p)
                res["saved"] = str(out)
            except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
                show_error(exc, "Could not save")
        if res.get("saved"):
            meta = read_channels_meta(res["saved"])
            how = ("plain `AutoModelForCausalLM.from_pretrained(dir)`" if meta["loader"] == "standard"
                   else "`analysis.channels.load_channel_pruned(dir)` (per-layer shapes)")
            shown = res["saved"] if server_paths_allowed() else Path(res["saved"]).name
            st.success(f"Saved to `{shown}` — reload with {how}.")
            st.download_button(f"{Path(res['saved']).name}.zip", data=lambda p=res["saved"]: zip_bytes(p),
                               file_name=f"{Path(res['saved']).name}.zip", mime="application/zip", key="ch_dl_zip",
                               on_click="ignore", icon=":material/folder_zip:")
