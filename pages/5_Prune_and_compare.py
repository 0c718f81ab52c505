"""Prune & compare: quality, speed and size of the kept plans against the original model."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app_support import healing, plots, state
from app_support.evaluation import (busy_warning, comparison_job, comparison_row, eval_cfg, eval_data,
                                    generation_job, latency_text, latency_trusted, protocol_text)
from app_support.jobs import Job, attached, follow, forget, start_job
from app_support.runs import adjusted_result
from app_support.tasks import (accuracy_axes, accuracy_chart, task_columns, task_picker,
                               tasks_caption)
from app_support.widgets import INDEX_NOTE, chart, guarded, link, need, page_setup, show_error, table

page_setup("Prune & compare", ":material/compare_arrows:", "Each plan runs as a view that shares the original weights (latency uses a "
           "physically pruned copy); the cached model itself is never changed. " + INDEX_NOTE)

s = st.session_state
need(state.current_run() is not None, "Run the analysis and keep a plan first.", "entropy", "Go to Entropy dynamics")

from analysis.data import DOMAINS  # noqa: E402
from analysis.indices import GRANULARITIES  # noqa: E402
import analysis.evaluate as ev  # noqa: E402

from app_support.models import get_model  # noqa: E402

rec = state.current_run()
plans = state.plans()
lm = get_model(rec.model)

# ---- settings ----------------------------------------------------------------------------------------------
with st.expander("Evaluation settings", expanded=False, icon=":material/tune:"):
    e1, e2, e3 = st.columns(3)
    data_choice = e1.selectbox("Held-out text", ["(calibration source)"] + list(DOMAINS),
                               key=state.wkey("cmp.data", "(calibration source)"),
                               help="The eval split of a corpus: documents never used for calibration")
    e2.number_input("Window (tokens)", min_value=16, max_value=8192, step=64, key=state.wkey("cmp.window", 256),
                    help="Disjoint windows; the papers' protocol uses 2048 (slow on a CPU)")
    e3.number_input("Token budget", min_value=64, max_value=2_000_000, step=1024,
                    key=state.wkey("cmp.max_tokens", 4096), help="Tokens read from the held-out stream")
    l1, l2, l3 = st.columns(3)
    l1.number_input("Latency prompt (tokens)", min_value=1, max_value=8192, key=state.wkey("cmp.prompt_len", 64))
    l2.number_input("Decode steps", min_value=0, max_value=1024, key=state.wkey("cmp.new_tokens", 16))
    l3.number_input("Repeats", min_value=1, max_value=50, key=state.wkey("cmp.repeats", 3))
    state.sync("cmp.data", "cmp.window", "cmp.max_tokens", "cmp.prompt_len", "cmp.new_tokens", "cmp.repeats")
settings = {"window": int(state.get("cmp.window", 256)), "max_tokens": int(state.get("cmp.max_tokens", 4096)),
            "prompt_len": int(state.get("cmp.prompt_len", 64)), "new_tokens": int(state.get("cmp.new_tokens", 16)),
            "repeats": int(state.get("cmp.repeats", 3))}
with st.expander("Task accuracy (lm-evaluation-harness)", expanded=False, icon=":material/quiz:"):
    task_settings = task_picker()

# ---- comparison of kept plans ---------------------------------------------------------------------------------
st.subheader("Kept plans vs the original")
if not plans:
    st.info("No plans kept yet. Select blocks and press **Keep plan** — or compare the criteria directly "
            "with the sweep below.")
    link("select", "Go to Select blocks")
else:
    c1, c2 = st.columns([4, 1])
    chosen = c1.multiselect("Plans to compare", list(plans), default=list(plans), key="cmp_plans")
    go_cmp = c2.button("Run comparison", icon=":material/play_arrow:", type="primary", key="run_compare",
                       disabled=not chosen)
    healing.heal_widgets(chosen, rec.data)
    ckey = "es.last_comparison"
    if go_cmp:
        try:
            data = eval_data(state.get("cmp.data"), rec.data)
            lms = {n: (get_model(state.runs()[plans[n].run_id].model) if plans[n].run_id in state.runs() else lm)
                   for n in chosen}
            lms["original"] = lm
            job, joined = start_job("comparison", comparison_job(
                lms, chosen, plans, settings, data, task_settings, {n: healing.choice(n) for n in chosen},
                dict(s.get("es.evals") or {}), dict(s.get("es.task_evals") or {})))
            if joined:
                st.toast("The same comparison is already running or done: showing it instead of starting it "
                         "again.")
        except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
            show_error(exc, "Comparison failed")
    cjob = attached("comparison")
    if cjob is not None:
        if cjob.running:                              # also after a reload (F5): re-attached to the same job
            follow(cjob, "Comparing", "cmp_stop", "Stops after the current window batch; the models already "
                                                  "evaluated stay in the table, the one being evaluated is left out")
        s[ckey] = cjob.result if cjob.result is not None else dict(cjob.partial)
        s.setdefault("es.evals", {}).update(getattr(cjob, "evals", {}))
        s.setdefault("es.task_evals", {}).update(getattr(cjob, "task_evals", {}))
        forget("comparison")
        if cjob.error:
            st.error(f"Comparison failed: {cjob.error}", icon=":material/error:")
            if cjob.error_detail:
                with st.expander("Details (for a bug report)"):
                    st.code(cjob.error_detail[-6000:], language="text")
    last = s.get(ckey)
    intr = (last or {}).get("interrupted")                 # the model whose evaluation Stop cut short
    if last and "original" not in last["results"] and intr:
        st.warning(f"Stopped during the evaluation of {intr['name']} (stopped at {intr['at']}): nothing finished, and a "
                   "partial evaluation is not a result. Run the comparison again.", icon=":material/stop:")
    if last and "original" in last["results"]:
        with guarded("Comparison table"):
            missing = [n for n in last["names"] if n not in last["results"] and not (intr and n == intr["name"])]
            parts = [f"{', '.join(missing)} not evaluated"] if missing else []
            if intr and intr["name"] in last["results"]:
                parts.insert(0, f"{intr['name']}: task accuracy not measured (stopped before it)")
            elif intr:
                parts.insert(0, f"{intr['name']} stopped part way (at {intr['at']}; a partial evaluation is not a "
                                "result, so it is left out)")
            if parts:
                st.warning(f"Stopped — a partial comparison: {'; '.join(parts)}. The table shows what finished.",
                           icon=":material/stop:")
            base = last["results"]["original"]
            busy = busy_warning(last["results"])
            if busy:
                st.warning(busy, icon=":material/speed:")
            ts = last.get("tasks") or {}
            rows = [{**comparison_row(n, healing.drops_of(n, plans), last["results"][n], base),
                     **task_columns(ts.get(n))} for n in last["names"] if n in last["results"]]
            df = pd.DataFrame(rows)
            for start_ in range(0, len(rows), 4):          # a metric card for every row (healed rows too)
                chunk_ = rows[start_:start_ + 4]
                for col, row in zip(st.columns(4), chunk_):
                    col.metric(f"Perplexity · {row['plan']}", f"{row['perplexity']:.2f}",
                               None if row["plan"] == "original" else f"{row['Δ perplexity %']:+.1f} %",
                               delta_color="inverse")
            task_cols = [c for c in df.columns if c in {k for r in rows for k in task_columns(ts.get(r["plan"]))}]
            quality = ["plan", "drops (0-based)", "perplexity", "Δ perplexity %", "KL (nats/token)",
                       "top-1 agreement", *task_cols]
            cost = ["plan"] + [c for c in df.columns if c not in quality]
            table(df[[c for c in quality if c in df]], "Quality" + (" (task accuracy ± standard error from "
                  "lm-evaluation-harness)" if task_cols else "") + ". Perplexity: " + protocol_text(base["protocol"])
                  + ". KL(original ‖ pruned) and top-1 agreement of next-token predictions on the same tokens.")
            table(df[[c for c in cost if c in df]], "Speed and size. " + latency_text(base.get("latency"))
                  + " Parameters counted with tied weights once; KV bytes per token over the attention layers "
                  "that still run.")
            state.register_table("comparison", df, "Comparison: quality, speed and size of every plan. "
                                 + protocol_text(base["protocol"]) + ". " + latency_text(base.get("latency")))
            if (acc_fig := accuracy_chart(rows)) is not None:
                chart(acc_fig, tasks_caption(ts.get("original")), name="task_accuracy", key="task_accuracy_chart")
            if len(rows) > 1:
                quality = st.radio("Pareto quality axis", ["perplexity", *accuracy_axes(df.columns)], horizontal=True,
                                   key="pareto_quality")
                acc = quality != "perplexity"
                speed_ok = latency_trusted(last["results"])
                x_col, x_label = (("decode tok/s (median)", "decode tokens/s (median, higher is better)") if speed_ok
                                  else ("parameters", "parameters (lower is better; latency was noise)"))
                chart(plots.pareto_chart(df, x_col, quality, "parameters", x_label,
                                         f"{quality} ({'higher' if acc else 'lower'} is better)", y_higher_better=acc,
                                         y_err=quality.rsplit(" ", 1)[0] + " ±" if acc else None,
                                         x_higher_better=speed_ok),
                      (f"Pareto view: quality ({quality}) vs speed (decode tokens/s), marker size = parameters. "
                       "Outlined red points are Pareto-optimal (no other plan is both faster and better). "
                       if speed_ok else
                       f"Pareto view: quality ({quality}) vs parameters — the latency measurements were noise (busy "
                       "machine or spreads that did not settle), so no point is called faster; outlined points are "
                       "Pareto-optimal for quality and size. ") + "Protocols as in the table above.",
                      name="pareto", key="pareto_chart")

# ---- side-by-side generation ---------------------------------------------------------------------------------
with guarded("Generation"):
    st.subheader("Side-by-side generation")
    if not plans:
        st.caption("Keep a plan to compare its generations with the original model.")
    else:
        g1, g2, g3 = st.columns([4, 2, 1])
        prompt = g1.text_area("Prompt", key=state.wkey("gen.prompt", "The history of the city begins"), height=80)
        gplan = g2.selectbox("Plan", list(plans), key="gen_plan")
        n_new = g3.number_input("New tokens", min_value=1, max_value=256, key=state.wkey("gen.n", 30))
        state.sync("gen.prompt", "gen.n")
        if st.button("Generate", icon=":material/edit_note:", key="gen_go"):
            try:
                gjob, _ = start_job("generation", generation_job(lm, gplan, plans[gplan].plan, prompt, int(n_new),
                                                                 healing.choice(gplan)))
            except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
                show_error(exc, "Generation failed")
        gjob = attached("generation")
        if gjob is not None:
            if gjob.running:
                follow(gjob, "Generating", "gen_stop", "Stops before the next model (the healed one is skipped)")
            forget("generation")
            if gjob.error:
                st.error(f"Generation failed: {gjob.error}", icon=":material/error:")
            elif gjob.result is not None:
                s["es.generations"][gjob.key] = gjob.result
                s["es.last_generation"] = (getattr(gjob, "plan_name", gplan), gjob.key)
        lastg = s.get("es.last_generation")
        if lastg and lastg[1] in s["es.generations"]:
            g = s["es.generations"][lastg[1]]
            a, b, *c = st.columns(3 if "healed" in g else 2)
            with a.container(border=True):
                st.markdown("**Original**")
                st.markdown(f"_{g['prompt']}_ {g['original']}")
            with b.container(border=True):
                st.markdown(f"**Pruned: {lastg[0]}**")
                st.markdown(f"_{g['prompt']}_ {g['pruned']}")
            if c:
                with c[0].container(border=True):
                    st.markdown(f"**Healed ({g['healed_method']}): {lastg[0]}**")
                    st.markdown(f"_{g['prompt']}_ {g['healed']}")
            div = g.get("first_divergence")
            st.caption(f"Greedy decoding, {g['max_new_tokens']} new tokens. "
                       + ("Identical continuations." if div is None else f"The continuations diverge at new token "
                                                                         f"{div} (0-based)."))

# ---- sweep ------------------------------------------------------------------------------------------------
with guarded("Sweep"):
    from analysis.score.criteria import CRITERIA

    st.subheader("Sweep: perplexity vs k for each criterion")
    r = rec.result
    adj = adjusted_result(rec)
    w1, w2, w3, w4 = st.columns([3, 2, 1, 1])
    gran = w2.radio("Granularity", list(GRANULARITIES), horizontal=True, key=state.wkey("sw.gran",
                                                                                                  r.granularity))
    options = [n for n, c in CRITERIA.items() if gran in c.granularities
               and (r.baselines.get(n) or {}).get("available", True)]
    default = [n for n in ("entrodrop", "block-influence", "random") if n in options]
    crits = w1.multiselect("Criteria", options, default=default, key="sw_crits",
                           format_func=lambda n: CRITERIA[n].title)
    prunable = r.num_layers - len(adj.protected)
    kmax = w3.number_input("max k", min_value=1, max_value=max(1, prunable), value=min(6, max(1, prunable)),
                           key="sw_kmax")
    run_sw = w4.button("Sweep", icon=":material/play_arrow:", key="run_sweep", disabled=not crits)
    state.sync("sw.gran")
    skey = state.stable_hash([rec.run_id, adj.protected, gran, crits, int(kmax), settings["window"],
                              settings["max_tokens"], state.get("cmp.data")])
    if run_sw and skey not in s["es.sweeps"]:
        sw_data = eval_data(state.get("cmp.data"), rec.data)
        sw_meta = {"criteria": list(crits), "kmax": int(kmax), "granularity": gran}

        def _sweep_work(job, crits=tuple(crits), kmax=int(kmax), gran=gran, data=sw_data, cfg=eval_cfg(settings)):
            return ev.sweep(lm, adj, criteria=list(crits), ks=range(0, kmax + 1), granularity=gran, data=data, cfg=cfg,
                            progress=lambda f, m: job.progress(f, m, stage="sweep"), should_stop=job.should_stop)

        swjob = Job(skey, _sweep_work, kind="sweep", label="the sweep")
        swjob.meta = sw_meta
        start_job("sweep", swjob)
    swjob = attached("sweep")
    if swjob is not None:
        if swjob.running:
            follow(swjob, "Sweeping", "sweep_stop", "Stops after the current window batch; every plan is then "
                                                   "scored on the windows done")
        forget("sweep")
        if swjob.error:
            st.error(f"Sweep failed: {swjob.error}", icon=":material/error:")
        elif swjob.result is not None and swjob.result.get("rows"):
            if swjob.result.get("stopped"):
                st.warning("Sweep stopped: every plan is scored on the windows done before Stop "
                           f"({swjob.result['protocol'].get('tokens_scored', 0):,} tokens).", icon=":material/stop:")
            else:
                s["es.sweeps"][swjob.key] = swjob.result     # only a complete sweep is reused for these settings
            s["es.last_sweep_result"] = swjob.result
            s["es.last_sweep_meta"] = getattr(swjob, "meta", None)
            s["es.last_sweep"] = swjob.key
    if skey in s["es.sweeps"] and (run_sw or s.get("es.last_sweep") != skey):
        s["es.last_sweep"] = skey
        s["es.last_sweep_result"] = None
    res = s["es.sweeps"].get(s.get("es.last_sweep")) or s.get("es.last_sweep_result")
    if res:
        df = pd.DataFrame([{k: v for k, v in row.items() if k not in ("plan", "latency")} for row in res["rows"]])
        chart(plots.sweep_chart(df), f"Perplexity (log scale) after dropping the top-k {df['granularity'].iloc[0]} "
                                     f"blocks of each criterion, k = 0…{df['k'].max()}; protected blocks never "
                                     f"dropped. {protocol_text(res['protocol'])}.", name="sweep", key="sweep_chart")
        chart(plots.pareto_chart(df.assign(plan=df["criterion"] + " k=" + df["k"].astype(str),
                                           speed=df["params_removed_fraction"] * 100),
                                 "speed", "perplexity", None, "parameters removed (%)", "perplexity"),
              "Quality vs size for every sweep point (parameters removed on the x axis); outlined red = "
              "Pareto-optimal. Same protocol as the sweep chart.", name="sweep_pareto", key="sweep_pareto")
        table(df.assign(blocks=df["blocks"].astype(str)), "Sweep rows: blocks are 0-based; params counted with tied "
                                                          "weights once.", name="sweep")
        if res.get("skipped"):
            st.caption("Skipped: " + "; ".join(f"{x['criterion']} k={x['k']}: {x['reason']}" for x in res["skipped"][:6]))

st.divider()
link("export", "Next: export →")
