"""The two-stage story a run's data supports, in words (no Streamlit; used by the Entropy page and the home)."""
from __future__ import annotations

#: which EntroDrop variant the app ranks with by default, and why (from docs/models.md, bench/models.py)
RANKING_DEFAULT = {"estimator": "knn", "sinks": "exclude"}
RANKING_WHY = ("EntroDrop ranks blocks with the KNN estimator, sinks excluded (computed in the same pass as the "
               "Bucket curve) when the run has it: in the held-out perplexity table of docs/models.md (calibrated on "
               "wiki, evaluated on news, k = 4 and 8 attention blocks, SmolLM2 / Gemma-3-270M / Qwen2.5-Coder-0.5B) "
               "it had the lowest geometric-mean ΔPPL of the EntroDrop variants (+417 %; Bucket with sinks kept "
               "+1458 %). The same table shows the LLM-Drop cosine criterion lower still (+177 %) and better than "
               "every EntroDrop variant at k = 8 on every model — pick `cosine` on the Select page when the goal is "
               "the smallest perplexity loss.")

SINKS_SENTENCE = ("Massive-activation tokens (a token whose norm is over 8× its window's median, often the first) "
                  "dominate per-dimension ranges and distances; *exclude* leaves them out of every statistic, "
                  "*keep* uses every token exactly as EntroDrop's reference code, *first* drops position 0 only.")


def sink_line(result) -> str:
    s = result.sinks or {}
    if not s.get("counts"):
        return "This run did not record massive activations (made before sink detection)."
    onset = result.sink_onset()
    n = s.get("n_sequences") or result.n_sequences
    mode = {"exclude": "excluded from the statistics", "keep": "kept (reference)",
            "first": "position 0 excluded, other flagged tokens kept"}.get(s.get("mode"), s.get("mode"))
    if onset is None:
        total = sum(s["counts"]["boundary"])
        return (f"No boundary has a massive-activation token in most windows ({total} flagged in all; {mode}).")
    c = s["counts"]["boundary"]
    p0 = s.get("counts_pos0", {}).get("boundary", [0] * len(c))
    late = [i for i in range(onset, len(c)) if c[i] >= 0.5 * n]
    share0 = sum(p0[i] for i in late) / max(1, sum(c[i] for i in late))
    return (f"Massive activations appear from Z^{onset} (the output of block {onset - 1}) in "
            f"{len(late)} of the {len(c)} residual boundaries, {share0:.0%} of them at position 0; {mode}.")


def story(result, boundary: int | None = None) -> str:
    """Markdown: which blocks compress, which expand, where sinks appear (for the loaded model's run)."""
    model = result.manifest.get("model", {}).get("name") or result.manifest.get("model", {}).get("spec") or "this model"
    L = result.num_layers
    info = dict(result.boundary_info or {})
    if boundary is not None and boundary != result.boundary:
        info = {"boundary": boundary, "detected": boundary > 0}
    if info.get("detected"):
        b = info["boundary"]
        lo, hi = info.get("lo", b), info.get("hi", b)
        ci = f" (90 % bootstrap interval {lo}…{hi})" if (lo, hi) != (b, b) else ""
        stage = (f"**{model}**, {result.estimator}: entropy falls through blocks 0…{b - 1} (compression) and "
                 f"rises from block {b} to {L - 1} (expansion){ci}.")
    else:
        p = info.get("p_detected")
        stage = (f"**{model}**, {result.estimator}: **no compression stage detected** — the entropy does not "
                 f"fall and then rise for good" + (f" (a stage appears in {p:.0%} of bootstrap resamples)" if p is not None else "")
                 + "; the data does not support the two-stage story here, so *auto* protection protects only the "
                   "last block.")
    return stage + " " + sink_line(result)
