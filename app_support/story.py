"""The story a run's data supports, in words (no Streamlit; used by the Entropy page, the tour and the home).

Every sentence is computed from the run: the shape of the curve (a two-stage fall-then-rise, a single cliff,
a rise, flat), the sinks view it describes, and where massive activations appear.
"""
from __future__ import annotations

import numpy as np

#: which EntroDrop variant the app ranks with by default (the estimator: :func:`ranking_estimator`, from the evidence)
RANKING_DEFAULT = {"estimator": "knn", "sinks": "exclude"}


#: how a run gets an opt-in estimator, said wherever the ranking estimator is named
OPT_IN = ("opt-in: *Also compute* on the Entropy page, or the re-run button on the Select page; without it EntroDrop "
          "ranks with the run's own estimator")


def _best_k(entry: dict) -> str | None:
    ks = sorted((entry.get("best") or {}), key=int)
    return ks[-1] if ks else None


def _entrodrop_best(entry: dict, k: str) -> tuple[str, list] | None:
    """The EntroDrop variant (unhealed) with the lowest held-out ΔPPL at ``k`` in one model's evidence entry."""
    rows = {lab: by_k[k] for lab, by_k in (entry.get("dppl") or {}).items()
            if lab.startswith("entrodrop") and "+" not in lab and k in by_k}
    if not rows:
        return None
    lab = min(rows, key=lambda n: rows[n][0])
    return lab, rows[lab]


def ranking_estimator(ev: dict | None = None) -> str:
    """The estimator EntroDrop ranks with by default: the one whose EntroDrop variant had the lowest held-out ΔPPL
    on the most models of the repository's evidence (at each model's largest k; a tie, or no such evidence: KNN,
    EntroDrop's Llama path)."""
    from collections import Counter

    from analysis.recommend.evidence import load_evidence

    ev = load_evidence() if ev is None else ev
    wins = Counter()
    for entry in (ev.get("models") or {}).values():
        k = _best_k(entry)
        best = _entrodrop_best(entry, k) if k else None
        if best and "[" in best[0]:
            wins[best[0].split("[", 1)[1].rstrip("]")] += 1
    if not wins:
        return RANKING_DEFAULT["estimator"]
    return max(wins, key=lambda e: (wins[e], e == RANKING_DEFAULT["estimator"]))   # a tie: KNN, the reference


def _fmt(v: list) -> str:
    return f"{v[0]:+.0f} % [{v[1]:.0f}, {v[2]:.0f}]"


def ranking_why(ev: dict | None = None) -> str:
    """Why EntroDrop ranks with this estimator, sinks excluded, and what the repository's evidence says about it and
    about the criterion it recommends — every number from ``analysis/recommend/evidence.json`` (the table
    ``bench/models.py --report --write`` regenerates), so the sentence follows the evidence."""
    from analysis.recommend.evidence import load_evidence

    ev = load_evidence() if ev is None else ev
    models = ev.get("models") or {}
    est = ranking_estimator(ev)
    d = ev.get("default") or {}
    crit = d.get("criterion")
    if not models:
        return (f"EntroDrop ranks blocks with the {est.upper()} estimator, sinks excluded, when the run has it "
                f"({OPT_IN}). The repository's evidence table holds no per-model bake-off "
                f"yet; its default criterion is `{crit}` ({d.get('why') or 'no reason recorded'}). Run the bake-off on "
                "the Select page to measure the loaded model.")
    parts = []
    for name, entry in models.items():
        k = _best_k(entry)
        if k is None:
            continue
        rec = entry["best"][k]
        rec_v = ((entry.get("dppl") or {}).get(rec) or {}).get(k)
        ed = _entrodrop_best(entry, k)
        if ed is not None:
            ed_text = f"the best EntroDrop variant {ed[0]} {_fmt(ed[1])}"
        else:                                        # an older table without ΔPPL: the standing against random
            st_ = {lab: by_k[k] for lab, by_k in (entry.get("standing") or {}).items()
                   if lab.startswith("entrodrop") and k in by_k}
            ed_text = ("EntroDrop " + ", ".join(f"{lab} {v}" for lab, v in sorted(st_.items()))) if st_ else ""
        jd = entry.get("judging") or {}
        on = f" ({jd['tokens']:,} held-out tokens of {', '.join(jd['domains'])})" if jd.get("tokens") else ""
        parts.append(f"{name}, k = {k}{on}: recommended {rec}" + (f" {_fmt(rec_v)}" if rec_v else "")
                     + (f", {ed_text}" if ed_text else ""))
    measured = any(_entrodrop_best(e, _best_k(e)) for e in models.values() if _best_k(e))
    lead = (f"EntroDrop ranks blocks with the {est.upper()} estimator, sinks excluded, when the run has it ({OPT_IN})"
            + (": the EntroDrop variant with the lowest held-out ΔPPL on the most "
                                                   "models of the repository's evidence" if measured else ""))
    tail = (f". Over models and k the bake-off recommends `{crit}` most often" if crit else "")
    if crit and crit != "entrodrop":
        tail += " — pick it on the Select page when the goal is the smallest perplexity loss"
    return lead + " (held-out ΔPPL with its paired interval; " + "; ".join(parts) + ")" + tail + "."


SINKS_SENTENCE = ("Massive-activation tokens (a token whose norm is over 8× its window's median, often the first) "
                  "dominate per-dimension ranges and distances; *exclude* leaves them out of every statistic, "
                  "*keep* uses every token exactly as EntroDrop's reference code, *first* drops position 0 only. "
                  "Every run also computes the other view (kept ↔ excluded) in the same pass, so the page can show "
                  "both without a re-run.")

#: a single step between consecutive boundaries that covers at least this share of the curve's range is a cliff
CLIFF_SHARE = 0.5



def z(i) -> str:
    """Residual boundary ``Z^i`` for the app's markdown (rendered as a superscript, never a literal ``^``)."""
    return f"$Z^{{{i}}}$"

def view_label(view: str | None) -> str:
    from analysis.score.result import view_label as _vl

    return _vl(view)


def cliff(curve) -> dict | None:
    """The curve's cliff, if one step ``Z^i → Z^(i+1)`` (block i) covers ≥ :data:`CLIFF_SHARE` of its range:
    ``{"block", "step", "share", "down"}``; None otherwise."""
    c = np.asarray(curve, dtype=float)
    if c.size < 3 or not np.isfinite(c).all():
        return None
    rng = float(c.max() - c.min())
    if rng <= 0:
        return None
    steps = np.diff(c)
    i = int(np.argmax(np.abs(steps)))
    share = abs(float(steps[i])) / rng
    if share < CLIFF_SHARE:
        return None
    return {"block": i, "step": float(steps[i]), "share": share, "down": bool(steps[i] < 0)}


def sink_facts(result) -> dict:
    """Where the sink rule fires: ``any_onset`` (first boundary with a flagged token in most windows),
    ``pos0_onset`` / ``pos0_last`` (first / last boundary with a flagged *position 0* in most windows), and the
    largest median max/median norm ratio with its boundary (``peak``, ``peak_at``; None for older runs)."""
    s = result.sinks or {}
    out = {"recorded": bool(s.get("counts")), "any_onset": None, "pos0_onset": None, "pos0_last": None,
           "peak": None, "peak_at": None}
    if not out["recorded"]:
        return out
    n = s.get("n_sequences") or result.n_sequences
    c = s["counts"]["boundary"]
    p0 = s.get("counts_pos0", {}).get("boundary", [0] * len(c))
    hit = [i for i, v in enumerate(c) if v >= 0.5 * n]
    hit0 = [i for i, v in enumerate(p0) if v >= 0.5 * n]
    out.update(any_onset=hit[0] if hit else None, pos0_onset=hit0[0] if hit0 else None,
               pos0_last=hit0[-1] if hit0 else None)
    out["jump_at"] = None
    if result.massive:
        med = np.median(np.asarray(result.massive["boundary"], dtype=float), axis=0)
        out.update(peak=float(np.nanmax(med)), peak_at=int(np.nanargmax(med)))
        grow = np.diff(np.log(np.clip(med, 1e-30, None)))
        j = int(np.nanargmax(grow)) + 1 if grow.size else None
        if j is not None and med[j] >= 8:          # where the largest token grows most, once it is over the rule
            out.update(jump_at=j, jump_from=float(med[j - 1]), jump_to=float(med[j]))
    return out


def onset_text(facts: dict) -> str:
    """The sink onset, stated one way everywhere (README, app): where the rule first flags position 0, and
    where the largest token norm peaks."""
    parts = []
    if facts.get("pos0_onset") is not None:
        a, b = facts["pos0_onset"], facts["pos0_last"]
        where = f"{z(a)} (the output of block {a - 1})" if a > 0 else "$Z^0$ (the embeddings)"
        parts.append(f"the sink rule flags the first token (position 0) in most windows from {where} to {z(b)}")
    if facts.get("any_onset") is not None and facts["any_onset"] != facts.get("pos0_onset"):
        a = facts["any_onset"]
        parts.append(f"a flagged token (any position) appears in most windows from {z(a)}")
    if facts.get("peak") and facts["peak"] >= 8:
        at = facts["peak_at"]
        parts.append(f"the largest token norm peaks at {facts['peak']:.0f}× the median at {z(at)}"
                     + (f" (the output of block {at - 1})" if at > 0 else ""))
    return "; ".join(parts)


def sink_line(result) -> str:
    f = sink_facts(result)
    if not f["recorded"]:
        return "This run did not record massive activations (made before sink detection)."
    s = result.sinks
    mode = {"exclude": "excluded from the primary statistics", "keep": "kept in the primary statistics (reference)",
            "first": "position 0 excluded, other flagged tokens kept"}.get(s.get("mode"), s.get("mode"))
    text = onset_text(f)
    if not text:
        total = sum(s["counts"]["boundary"])
        return f"No boundary has a massive-activation token in most windows ({total} flagged in all; {mode})."
    return f"Massive activations: {text}; flagged tokens are {mode}."


def shape_sentence(result, est: str | None = None, view: str | None = None, boundary: int | None = None) -> str:
    """What the curve of ``est`` in sinks ``view`` does, in words: one cliff, a two-stage fall-then-rise, or neither.
    A cliff is described as a cliff (never as "falls through blocks 0…b−1")."""
    from analysis.measure.boundary import robust_boundary

    est = est or result.estimator
    view = view or result.sink_mode
    curve = np.asarray(result.entropy(est, view=view)["boundary"], dtype=float)
    L = result.num_layers
    if view == result.sink_mode and est == result.estimator:
        info = dict(result.boundary_info or {"boundary": result.boundary, "detected": result.boundary > 0})
        if boundary is not None and boundary != result.boundary:
            info = {"boundary": boundary, "detected": boundary > 0}
    else:
        b, det = robust_boundary(curve)
        info = {"boundary": b, "detected": det}
    p = info.get("p_detected")
    boot = f" (a stage appears in {p:.0%} of bootstrap resamples)" if p is not None else ""
    c = cliff(curve)
    if c is not None:
        i = c["block"]
        parts = []
        if i >= 1:
            parts.append(f"{_trend(curve[: i + 1], curve)} over blocks 0…{i - 1}" if i > 1
                         else f"{_trend(curve[: i + 1], curve)} over block 0")
        verb = "falls" if c["down"] else "jumps"
        where = f"the last block, {i}" if i == L - 1 else f"block {i}"
        cl = (f"{verb} by {abs(c['step']):.3g} nats at {where} ({z(i)} → {z(i + 1)}, {c['share']:.0%} of "
              f"the curve's whole range in one block)")
        m = result.massive
        if m is not None and c["down"]:
            med = np.median(np.asarray(m["boundary"], dtype=float), axis=0)
            if med[i + 1] >= 8 and med[i + 1] >= 4 * med[i]:
                cl += (f" — exactly where a massive-activation token appears (largest token norm {med[i]:.0f}× → "
                       f"{med[i + 1]:.0f}× the median)")
        parts.append(cl)
        if i + 1 <= L - 1:
            parts.append(f"then {_trend(curve[i + 1:], curve)} over blocks {i + 1}…{L - 1}")
        text = ("**one cliff, not two stages**" if c["down"] else "**one jump**") + ": the curve " + ", ".join(parts)
        if info.get("detected"):
            text += (f". The boundary rule puts the boundary at block {info['boundary']}: that is this cliff, not a "
                     "gradual compression")
        else:
            text += f". No two-stage pattern is detected{boot}"
        return text + "."
    if info.get("detected"):
        b = info["boundary"]
        lo, hi = info.get("lo", b), info.get("hi", b)
        ci = f" (90 % bootstrap interval {lo}…{hi})" if (lo, hi) != (b, b) else ""
        return (f"entropy falls through blocks 0…{b - 1} (compression) and rises from block {b} to {L - 1} "
                f"(expansion){ci}.")
    return (f"**no compression stage detected** — the entropy does not fall and then rise for good{boot}; the curve "
            f"{_trend(curve, curve)}.")


def _trend(seg, whole) -> str:
    """How a segment of the curve moves, judged against the whole curve's range."""
    c = np.asarray(seg, dtype=float)
    rng = float(np.ptp(np.asarray(whole, dtype=float))) or 1.0
    steps = np.diff(c)
    if steps.size == 0:
        return "stays put"
    up, down = float(steps[steps > 0].sum()), float(-steps[steps < 0].sum())
    if up + down < 0.1 * rng:
        return "stays nearly flat"
    if up > 3 * down:
        return "rises"
    if down > 3 * up:
        return "falls"
    return "moves up and down"


def story(result, boundary: int | None = None, view: str | None = None, est: str | None = None) -> str:
    """Markdown: what the curve does (in the chosen sinks view), and where sinks appear, for the run's model."""
    model = result.manifest.get("model", {}).get("name") or result.manifest.get("model", {}).get("spec") or "this model"
    est = est or result.estimator
    view = view or result.sink_mode
    lead = f"**{model}**, {est}, {view_label(view)}: "
    text = lead + shape_sentence(result, est, view, boundary)
    if view == result.sink_mode and not (result.boundary_info or {}).get("detected", result.boundary > 0):
        text += " With no compression stage, *auto* protection protects only the last block."
    return text + " " + sink_line(result)
