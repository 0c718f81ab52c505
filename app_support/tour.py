"""The guided tour on Home, "Why does the curve fall?": five steps, one sentence and one chart each, on a small
precomputed SmolLM2 run (``app_support/tour/smollm2.json``, made by ``bench/lenses.py … --tour``), so it opens
in seconds without loading the model. Every sentence is computed from that run's numbers.

:func:`tour_steps` is pure (run in, ``[(title, sentence, figure)]`` out) and tested; :func:`render_tour` draws it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plots
from .story import cliff, onset_text, sink_facts, view_label, z

TOUR_RUN = Path(__file__).resolve().parent / "tour" / "smollm2.json"
TOUR_CMD = ".venv/bin/python bench/lenses.py --model smollm2 --n 8 --t 128 --tour app_support/tour/smollm2.json"


def load_tour_run(path: Path = TOUR_RUN):
    from analysis.score.result import AnalysisResult

    return AnalysisResult.load(path)


def _other(r) -> str:
    return next((v for v in r.sink_views if v != "keep"), r.sink_mode)


def tour_steps(r, est: str = "bucket") -> list[tuple[str, str, object]]:
    """The five steps for run ``r`` (needs both sinks views and the massive-activation norms)."""
    from analysis.score.massive import norm_entropy_correlation

    L = r.num_layers
    kept = np.asarray(r.entropy(est, view="keep")["boundary"], dtype=float)
    c = cliff(kept)
    model = r.manifest.get("model", {}).get("name", "the model")
    n, t = r.n_sequences, r.manifest.get("data", {}).get("seq_len", "?")
    steps = []
    # 1 — the curve with sinks kept
    lo, hi = int(np.argmin(kept)), int(np.argmax(kept))
    steps.append(("1 · The curve, every token kept",
                  f"EntroDrop's reference keeps every token: on {model} ({n} Wikipedia windows × {t} tokens) the "
                  f"{est} entropy of the residual stream goes from {kept[0]:.4g} nats at the embeddings to a low of "
                  f"{kept[lo]:.4g} at {z(lo)} and a high of {kept[hi]:.4g} at {z(hi)} — it looks like a fall and a rise.",
                  plots.entropy_curves(r, est, 0, [], view="keep", points=("resid_pre", "resid_post"))))
    # 2 — the cliff
    if c is not None:
        i = c["block"]
        s2 = (f"But it does not fall gradually: one block, block {i}, takes it down by {abs(c['step']):.4g} nats "
              f"({z(i)} → {z(i + 1)}), {c['share']:.0%} of the curve's whole range. That is a cliff, not a compression "
              "stage.")
    else:
        s2 = "No single block dominates this curve: the change is spread over several blocks."
    steps.append(("2 · The cliff", s2, plots.delta_h_bars(r, est, "layer", [], view="keep")))
    # 3 — the massive token
    f = sink_facts(r)
    cc = norm_entropy_correlation(r, est, "keep", form="changes", n_boot=500, seed=0)
    s3 = (f"The cause is one token with a massive activation: {onset_text(f) or 'no token is flagged'}. Where its "
          f"norm jumps, the entropy drops: across depth, the change of log(largest / median token norm) and the "
          f"change of {est} entropy correlate at r = {cc['r']:.2f} (95 % interval {cc['lo']:.2f} … {cc['hi']:.2f}), "
          "as Queipo-de-Llano et al. (2025) found on larger models.")
    steps.append(("3 · The massive token that causes it", s3, plots.massive_chart(r, est, "keep")))
    # 4 — the same curve, excluded
    other = _other(r)
    ex = np.asarray(r.entropy(est, view=other)["boundary"], dtype=float)
    ce = cliff(ex)
    if c is not None and (ce is None or ce["block"] != c["block"]):
        i = c["block"]
        shape = (f"the cliff at block {i} is gone (block {i} now changes H by {ex[i + 1] - ex[i]:+.3g} nats)")
        moral = " The fall was the massive token, not the other tokens' geometry."
    else:
        shape = "the curve keeps its shape"
        moral = ""
    s4 = (f"Leave the flagged tokens out ({view_label(other)}; same pass, no re-run) and {shape}: the curve goes "
          f"{'up' if ex[L - 1] > ex[0] else 'down'} from {ex[0]:.4g} to {ex[L - 1]:.4g} nats by {z(L - 1)}.{moral}")
    steps.append(("4 · The same curve, sinks excluded", s4,
                  plots.entropy_curves(r, est, 0, [], view=other, overlay="keep", points=("resid_post",))))
    # 5 — the other lenses
    lenses = [e for e in ("matrix", "logit-lens") if e in r.estimators]
    if lenses:
        bits = []
        if "matrix" in lenses:
            mk = np.asarray(r.entropy("matrix", view="keep")["boundary"], dtype=float)
            cm = cliff(mk)
            me = cliff(np.asarray(r.entropy("matrix", view=other)["boundary"], dtype=float)) if r.has_view("matrix", other) else None
            if cm is not None and cm["down"]:
                gone = me is None or me["block"] != cm["block"]
                bits.append(f"matrix entropy (Skean et al.'s prompt entropy) shows the same cliff at block {cm['block']} "
                            f"with sinks kept" + (" and not without them" if gone else ", and keeps it without them"))
            else:
                bits.append("matrix entropy (Skean et al.'s prompt entropy) has no single cliff with sinks kept")
        if "logit-lens" in lenses:
            ll = {v: np.asarray(r.entropy("logit-lens", view=v)["boundary"], dtype=float) for v in r.sink_views}
            gap = max(float(np.nanmax(np.abs(ll["keep"] - ll[other]))), 0.0) if other in ll else float("nan")
            bits.append(f"the logit lens (next-token entropy, Entropy-Lens) barely notices the token: kept and excluded "
                        f"differ by at most {gap:.2g} nats, because it reads each position in token space")
        s5 = "Two other lenses, from the same pass: " + "; ".join(bits) + "."
        fig5 = plots.lens_curves(r, lenses)
    else:
        s5 = "This run has no other lenses; add matrix and logit-lens on the Entropy page."
        fig5 = plots.estimator_comparison(r, r.estimators)
    steps.append(("5 · The other lenses", s5, fig5))
    return steps


def render_tour() -> None:
    import streamlit as st

    s = st.session_state
    from analysis.errors import EntroscopeError

    try:
        r = load_tour_run()
    except EntroscopeError as exc:        # a missing or unreadable tour file: say so, the rest of Home works
        st.warning(f"The tour's precomputed run is not available ({exc}); regenerate it with `{TOUR_CMD}`.")
        return
    steps = tour_steps(r)
    i = min(max(int(s.get("tour.step", 0)), 0), len(steps) - 1)
    title, sentence, fig = steps[i]
    st.markdown(f"**{title}** ({i + 1} of {len(steps)})")
    st.markdown(sentence)
    st.plotly_chart(fig, width="stretch", key=f"tour_chart_{i}")
    b1, b2, b3 = st.columns([1, 1, 4])
    b1.button("← Back", key="tour_back", disabled=i == 0, on_click=lambda: s.__setitem__("tour.step", i - 1))
    b2.button("Next →", key="tour_next", disabled=i == len(steps) - 1,
              on_click=lambda: s.__setitem__("tour.step", i + 1))
    b3.caption(f"Precomputed: SmolLM2-135M, {r.n_sequences} × {r.manifest.get('data', {}).get('seq_len')} Wikipedia "
               f"tokens (`{TOUR_CMD}`). Run it on your own data on the Entropy page: every run shows both sinks views.")
