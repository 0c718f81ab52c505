"""Entropy page tabs for the other lenses (matrix, logit lens), both sinks views, and massive activations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from . import plots
from .widgets import chart, explainer_popover, table

LENSES = ("matrix", "logit-lens")


def view_options(result) -> list[str]:
    """The sinks views the page can show: every view the run holds, and "both" (overlay) when there are two."""
    views = list(result.sink_views)
    return views + (["both"] if len(views) > 1 else [])


def render_lenses(result, on_rerun) -> None:
    """Lens curves in every sinks view (solid = primary, dashed = other view), plus dataset entropy."""
    have = [e for e in result.estimators if e in LENSES]
    if not have:
        st.info("This run has neither lens. **Matrix entropy** (von Neumann, α = 1; Skean et al. 2025) and the "
                "**logit lens** (next-token entropy of every residual point; Entropy-Lens, Ali et al. 2025) are "
                "computed in the same pass when added under Analysis settings → *Also compute*, or:")
        st.button("Re-run with the matrix and logit-lens entropies", key="rerun_lenses", on_click=on_rerun)
        return
    explainer_popover(estimators=have)
    chart(plots.lens_curves(result, have),
          "Boundary entropy H(Z^i) of each lens, in every sinks view of this run (solid = "
          f"{plots._view_label(result.sink_mode)}, dashed = the other view; same pass, no re-run). Matrix entropy "
          "is bounded by log N (tokens per sequence), the logit lens by log V (vocabulary). Z^0 = embeddings, "
          "Z^(l+1) = output of block l (0-based).", name="lens_curves", key="lens_curves_chart")
    ll = result.manifest.get("estimator_params", {}).get("logit-lens")
    if ll:
        st.caption(f":material/casino: The logit lens decodes {ll.get('lens_positions')} seeded token positions per "
                   f"sequence (seed {ll.get('seed')}), the same positions at every residual point, through the "
                   "model's final norm and unembedding.")
    ds = (result.extras or {}).get("dataset_entropy") or {}
    if ds:
        rows = {f"{est}, {plots._view_label(v)}": np.round(np.asarray(d["boundary"], dtype=float), 4)
                for est, by_view in ds.items() for v, d in by_view.items()}
        df = pd.DataFrame({"boundary Z^i": range(result.num_layers + 1), **rows})
        with st.expander("Dataset entropy (matrix entropy of the per-sequence mean states)"):
            table(df, f"Dataset entropy: the estimator's pooled form over the {result.n_sequences} sequence means at "
                      "each boundary (matrix: Skean et al.'s dataset entropy, at most log of the number of sequences).",
                  name="dataset_entropy")


def _token_labels(result, ids: list[int]) -> list[str]:
    """Token strings when the session's loaded model is the run's model (else the ids)."""
    from analysis.errors import EntroscopeError

    from .models import loaded_model

    try:
        lm = loaded_model()
    except EntroscopeError:                   # the session's model cannot be loaded: ids are shown instead
        lm = None
    name = result.manifest.get("model", {}).get("name")
    if lm is not None and getattr(lm, "name", None) == name and getattr(lm, "tokenizer", None) is not None:
        try:
            return [repr(lm.tokenizer.decode([i]))[1:-1][:14] for i in ids]
        except (TypeError, ValueError, KeyError, IndexError):   # an id this tokenizer cannot decode
            pass
    return [f"id {i}" for i in ids]


def render_massive(result, view: str | None, est: str, rid: str) -> None:
    """The massive-activation view: norm ratio vs entropy, Pearson r with intervals, token-level flags."""
    from analysis.score.massive import correlation_table, first_sequence_flags

    from .story import onset_text, sink_facts

    if not result.massive:
        st.info("This run was made before massive-activation norms were recorded; run the analysis again to see them.")
        return
    facts = sink_facts(result)
    st.markdown("**Where:** " + (onset_text(facts) or "no token reaches the sink rule in most windows") + ".")
    chart(plots.massive_chart(result, est, view),
          "Red: the largest token norm divided by the median token norm of each sequence, at every residual "
          "boundary (median over sequences, band = 25–75 %); dotted red = the sink rule's threshold. Blue dotted: "
          f"the {est} entropy ({plots._view_label(view or result.sink_mode)}). A massive-norm token forces one "
          "dominant direction, so entropy measured with it kept must dip where it appears (Queipo-de-Llano et al. "
          "2025).", name="massive_activations", key="massive_chart")
    form = st.radio("Correlate", ["changes", "levels"], horizontal=True, key="massive_form",
                    format_func=lambda f: {"changes": "changes (Δ per block, as Queipo-de-Llano et al.)",
                                           "levels": "levels (the curves themselves)"}[f])

    @st.cache_data(show_spinner=False, max_entries=16)
    def _table(rid: str, form_: str, _res):
        return correlation_table(_res, form_, n_boot=1000, seed=0)

    rows = _table(rid, form, result)
    df = pd.DataFrame([{"entropy curve": c["estimator"], "sinks view": plots._view_label(c["view"]),
                        "Pearson r": round(c["r"], 3), "95 % interval": f"{c['lo']:.2f} … {c['hi']:.2f}"}
                       for c in rows])
    table(df, f"Pearson r between log(largest / median token norm) and each entropy curve across the "
              f"{result.num_layers + 1} residual boundaries ({form}); interval: percentile bootstrap over the "
              f"{result.n_sequences} sequences (1000 resamples, seed 0). Strongly negative with sinks kept and near "
              "zero with them excluded means the massive token, not the other tokens, drives the curve.",
          name="norm_entropy_correlation")
    ff = first_sequence_flags(result)
    if ff is not None:
        flags, ids = ff
        st.markdown("**Which tokens:** the first calibration sequence, token by token (red = flagged by the sink rule "
                    "at that boundary).")
        chart(plots.flags_heatmap(flags, _token_labels(result, ids) if ids else []),
              "Rows = the tokens of sequence 0 (position: text), columns = residual boundaries Z^0 … Z^L. "
              "A token is flagged when its norm exceeds the sink ratio × the sequence's median token norm.",
              name="sink_flags", key="sink_flags_chart")
