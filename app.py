"""Entroscope — Home. Run with ``make run`` (``streamlit run app.py``)."""
from __future__ import annotations

import math

import numpy as np
import streamlit as st

from app_support import session_store, state
from app_support.widgets import (INDEX_NOTE, explain_criterion, explain_estimator, guarded, link, navigation,
                                 page_setup, switch_to)


def home() -> None:
    page_setup("Entroscope", ":material/biotech:")

    st.markdown(
        "**Entroscope looks inside a causal language model and prunes it with information theory.** "
        "It streams calibration text through the model with forward hooks and measures how the entropy of the "
        "residual stream changes across every block. EntroDrop describes a *fall* then a *rise* (compression, then "
        "expansion); on small models much of that fall is one massive-activation token, so every run shows the "
        "curve with those tokens kept and excluded — the tour below walks through it. Blocks that add little "
        "information are candidates to drop: pick them by "
        "EntroDrop ΔH, mutual information, cosine baselines or by hand, prune without touching the original "
        "weights, compare perplexity and latency live, and export the plan, the pruned checkpoint and the exact "
        "CLI command.")

    # ---- one-click start ---------------------------------------------------------------------------
    with guarded("Home"):
        c1, c2 = st.columns([2, 3])
        with c1:
            if st.button("One-click demo: SmolLM2 on Wikipedia text", type="primary", key="home_demo",
                         icon=":material/rocket_launch:",
                         help="Loads the embedded SmolLM2-135M (cached), samples 32 × 256 tokens of the built-in "
                              "Wikipedia text and runs the Bucket-entropy analysis; the curve is drawn as it fills, "
                              "with the time left measured as it runs."):
                st.session_state["es.autorun"] = True
                switch_to("entropy")
        with c2:
            st.caption("Or go step by step below. Defaults: model **smollm2** (fp32, device auto), data **wiki**, "
                       "32 samples × 256 tokens, seed 2024, estimator **Bucket** (80 bins), massive-activation tokens "
                       "(attention sinks) **excluded** from the statistics.")

        # ---- the guided tour: why does the curve fall? -------------------------------------------------
        st.subheader(":material/route: Why does the curve fall?")
        with st.expander("A five-step tour on SmolLM2 (precomputed, opens in seconds)", expanded=False,
                         icon=":material/school:"):
            from app_support.tour import render_tour

            render_tour()

        # ---- the pipeline, with the session's state of each step --------------------------------------
        st.subheader("The pipeline")
        from app_support.data import data_label
        from app_support.models import model_label

        s = st.session_state
        rec = state.current_run()
        steps = [
            ("data", "1 · Model & data", f"Model: {model_label(s.get('es.model'))}<br>"
                                         f"Data: {data_label(s.get('es.data')) if s.get('es.tokens') is not None else '—'}",
             s.get("es.tokens") is not None),
            ("entropy", "2 · Entropy dynamics",
             (f"Run `{rec.run_id}`: " + (f"boundary at block {rec.result.boundary}" if rec.result.boundary > 0
                                         else "no compression stage") + f", {rec.result.num_layers} blocks"
              if rec else "Per-layer entropy, two-stage boundary, ΔH"), rec is not None),
            ("select", "3 · Select blocks", f"{len(state.plans())} plan(s) kept" if state.plans()
             else "Rank blocks by a criterion, click to edit", bool(state.plans())),
            ("compare", "4 · Prune & compare", f"{len(s.get('es.evals') or {})} evaluation(s)" if s.get("es.evals")
             else "Perplexity, KL, latency, parameters", bool(s.get("es.evals"))),
            ("export", "5 · Export", "Plan, tables, charts, checkpoint, CLI command", False),
            ("channels", "6 · Channel pruning", "Width pruning: MLP channels, hybrid multi-domain calibration",
             bool(s.get("es.channels"))),
        ]
        cols = st.columns(len(steps))
        for col, (page, title, text, done) in zip(cols, steps):
            with col.container(border=True):
                st.markdown(f"**{title}** {':material/check_circle:' if done else ''}")
                st.markdown(f"<small>{text}</small>", unsafe_allow_html=True)
                link(page, "Open")

        # ---- explainer -----------------------------------------------------------------------------
        st.subheader(":material/school: How the numbers are computed")
        st.caption("Formulas come straight from the library's registries (analysis.measure.estimators.ESTIMATORS and "
                   "analysis.score.criteria.CRITERIA), so new estimators and criteria show up here automatically. "
                   + INDEX_NOTE)
        from analysis.score.criteria import CRITERIA
        from analysis.measure.estimators import ESTIMATORS

        tab_est, tab_crit, tab_toy, tab_terms = st.tabs(["Estimators", "Criteria", "Toy: scale a point cloud",
                                                         "Terms"])
        with tab_est:
            for name in ESTIMATORS:
                with st.container(border=True):
                    explain_estimator(name)
        with tab_crit:
            for name in CRITERIA:
                with st.container(border=True):
                    explain_criterion(name)
        with tab_terms:
            from analysis.measure.boundary import BOUNDARY_DEFINITION

            st.markdown(
                "- **Residual stream** at block *l*: `resid_pre[l]` (block input), `resid_mid[l]` (after the attention "
                "sub-block), `resid_post[l]` (block output = `resid_pre[l+1]`). Boundaries `Z^0 … Z^L`: `Z^0` = "
                "embeddings, `Z^(l+1)` = output of block *l*.\n"
                "- **ΔH** of a block: attention = H(resid_mid) − H(resid_pre); MLP = H(resid_post) − H(resid_mid); "
                "layer = H(resid_post) − H(resid_pre). Entropies are per sequence (its tokens are the samples), "
                "averaged over the calibration sequences.\n"
                f"- **Two-stage boundary**: {BOUNDARY_DEFINITION}\n"
                "- **Sinks view**: *sinks excluded* leaves the tokens the sink rule flags (norm over 8× the window's "
                "median) out of every statistic; *sinks kept* is EntroDrop's reference. Every run computes both.\n"
                "- **Protected blocks** are never dropped: *fixed* = {0, 1, L−1} (EntroDrop's code), *auto* = the "
                "compression stage plus the last block, *none*.\n"
                "- **Perplexity** = exp(mean next-token negative log-likelihood) on held-out windows; **KL** and "
                "**top-1 agreement** compare the pruned model's next-token distribution with the original's.")

        with tab_toy:
            st.markdown("Scale a Gaussian point cloud by *c*. The **KNN** (Kozachenko–Leonenko) estimate moves by "
                        "exactly **d·log c** because every neighbour distance scales by *c*; the **Bucket** estimate "
                        "(per-dimension min–max histograms) does not move at all. This is why a KNN entropy *rise* "
                        "across layers can partly be norm growth — compare with Bucket or `knn-norm`.")
            t1, t2 = st.columns([1, 2])
            with t1:
                c = st.slider("scale c", 0.25, 4.0, step=0.25, key=state.wkey("toy.c", 1.0))
                d = st.select_slider("dimensions d", options=[2, 4, 8, 16, 32, 64], key=state.wkey("toy.d", 8))
                state.sync("toy.c", "toy.d")

            @st.cache_data(show_spinner=False)
            def _toy(c: float, d: int, n: int = 400, seed: int = 0):
                import torch

                from analysis.measure.estimators import entropy_bucket, entropy_knn

                g = torch.Generator().manual_seed(seed)
                x = torch.randn(1, n, d, generator=g)
                return (float(entropy_knn(x, k=10)[0]), float(entropy_knn(c * x, k=10)[0]),
                        float(entropy_bucket(x, bins=20)[0]), float(entropy_bucket(c * x, bins=20)[0]),
                        (c * x[0, :, :2]).numpy())

            h_knn, h_knn_c, h_b, h_b_c, pts = _toy(float(c), int(d))
            with t1:
                st.metric("KNN entropy H(c·x)", f"{h_knn_c:.3f} nats", f"{h_knn_c - h_knn:+.3f} vs c=1", delta_color="off")
                st.caption(f"Predicted shift d·log c = {d}·log {c:g} = **{d * math.log(c):+.3f}** nats")
                st.metric("Bucket entropy H(c·x)", f"{h_b_c:.3f} nats", f"{h_b_c - h_b:+.3f} vs c=1", delta_color="off")
            with t2:
                from app_support.plots import toy_cloud

                st.plotly_chart(toy_cloud(np.asarray(pts), 12.0), width="stretch", key="toy_plot")
                st.caption(f"First two of d={d} dimensions of N=400 standard-normal points times c={c:g} "
                           "(fixed axes). Estimators: KNN with k=10, Bucket with 20 bins per dimension, one sequence.")


# an emoji tab icon before the navigation: a ``:material/…:`` page icon would become a favicon URL on a font
# CDN, which an offline machine cannot reach (the icons inside the pages come from the bundled font)
st.set_page_config(page_title="Entroscope", page_icon="🔬", layout="wide")
try:
    st.navigation(navigation(home)).run()
finally:  # also on st.rerun / st.switch_page: the session's results survive a browser reload
    session_store.save()
