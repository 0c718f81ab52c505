"""Static figures (PNG, SVG, PDF) of every chart the app draws, from a run JSON and optional eval/sweep JSON.

Rendered with matplotlib's object API (``matplotlib.figure.Figure``, no pyplot, no GUI backend, no browser),
so it works offline, headless and from several threads. The app's charts are interactive plotly; plotly's
own static export needs a browser engine (kaleido), which is not available offline here. Block indices are
0-based on every axis, as in the app.

    figs = run_figures(AnalysisResult.load("run.json"), eval_result=..., sweep_result=...)
    save_figures(figs, "figures/")             # figures/entropy_curves.png / .svg / .pdf, ...
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from analysis.errors import DataError

FORMATS = ("png", "svg", "pdf")
POINT_COLORS = {"resid_pre": "#4C5BD4", "resid_mid": "#F28E2B", "resid_post": "#2CA58D"}
POINT_LABELS = {"resid_pre": "resid_pre (block input)", "resid_mid": "resid_mid (after attention)",
                "resid_post": "resid_post (block output)"}
GRAN_COLORS = {"attention": "#4C5BD4", "mlp": "#F28E2B", "layer": "#2CA58D"}
COS_KEYS = {"attention": "cos_attn", "mlp": "cos_mlp", "layer": "cos_layer"}
C_PROTECTED, C_SELECTED, C_NORMAL = "#B8BBC6", "#E4572E", "#4C5BD4"
PALETTE = ["#4C5BD4", "#F28E2B", "#2CA58D", "#E4572E", "#8E6C8A", "#6B7A8F", "#D4A017"]
BLOCK_AXIS = "block index (0-based)"


def _fig(w: float = 7.0, h: float = 3.6) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig


def _arr(x) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x] if isinstance(x, list) and x and not isinstance(x[0], list)
                    else x, dtype=float)


def _ticks(ax, n: int) -> None:
    step = 1 if n <= 32 else 2
    ax.set_xticks(range(0, n, step))
    ax.tick_params(axis="x", labelsize=7 if n > 16 else 9)


# ---- run figures -----------------------------------------------------------------------------------------
def entropy_curves(run, est: str | None = None, view: str | None = None) -> Figure:
    """resid_pre / resid_mid / resid_post entropy per block; when a compression stage is detected (the one
    definition, :data:`analysis.measure.boundary.BOUNDARY_DEFINITION`) it is shaded and the boundary dashed;
    otherwise the chart says there is no stage and shades nothing. The title names the sinks view."""
    from analysis.score.result import view_label

    est = est or run.estimator
    ent = run.entropy(est, view=view)
    L = run.num_layers
    primary = view is None or view == run.sink_mode
    info = run.boundary_info or {"boundary": run.boundary, "detected": run.boundary > 0}
    if not primary:
        from analysis.measure.boundary import robust_boundary

        b0, det = robust_boundary(ent["boundary"])
        info = {"boundary": b0, "detected": det}
    b = int(info.get("boundary", 0)) if info.get("detected") else 0
    fig = _fig()
    ax = fig.add_subplot()
    if b > 0:
        ax.axvspan(-0.5, b - 0.5, color="#4C5BD4", alpha=0.08, lw=0, label="compression stage")
        ax.axvspan(b - 0.5, L - 0.5, color="#2CA58D", alpha=0.05, lw=0, label="expansion stage")
        ax.axvline(b - 0.5, ls="--", color="#555", lw=1, label=f"boundary = {b}")
    else:
        ax.text(0.01, 0.98, "no compression stage detected", transform=ax.transAxes, va="top", fontsize=8,
                color="#555")
    x = np.arange(L)
    for p in ("resid_pre", "resid_mid", "resid_post"):
        ax.plot(x, ent[p], marker="o", ms=3, lw=1.6, color=POINT_COLORS[p], label=POINT_LABELS[p])
    for j, i in enumerate(sorted(set(run.protected))):      # a strip on the block axis, not a point that reads as data
        ax.axvspan(i - 0.5, i + 0.5, ymin=0, ymax=0.035, facecolor=C_PROTECTED, edgecolor="#777", lw=0.5, zorder=3,
                   label="protected block (never dropped)" if j == 0 else None)
    ax.set_xlim(-0.6, L - 0.4)
    _ticks(ax, L)
    ax.set_xlabel(BLOCK_AXIS)
    ax.set_ylabel(f"entropy H (nats, {est})")
    ax.set_title(f"Entropy of the residual stream per block ({view_label(view or run.sink_mode)})")
    ax.legend(fontsize=7, ncol=3, loc="best")
    return fig


def sink_views(run, est: str | None = None) -> Figure:
    """The boundary entropy of one estimator in every sinks view of the run, overlaid."""
    from analysis.score.result import view_label

    est = est or run.estimator
    fig = _fig()
    ax = fig.add_subplot()
    L = run.num_layers
    for i, v in enumerate(run.sink_views):
        if run.has_view(est, v):
            ax.plot(range(L + 1), run.entropy(est, view=v)["boundary"], marker="o", ms=3, lw=1.6,
                    ls="-" if i == 0 else "--", color=PALETTE[i], label=view_label(v))
    _ticks(ax, L + 1)
    ax.set_xlabel("residual boundary Z^i (0 = embeddings; Z^(l+1) = output of block l, 0-based)")
    ax.set_ylabel(f"entropy H (nats, {est})")
    ax.set_title(f"{est}: sinks kept vs excluded, same pass")
    ax.legend(fontsize=7, loc="best")
    return fig


def massive_chart(run, est: str | None = None, view: str | None = None) -> Figure:
    """Largest / median token norm per boundary (log scale, median over sequences) beside an entropy curve,
    with Pearson r across depth and its bootstrap interval."""
    from analysis.score.massive import massive_ratio, norm_entropy_correlation
    from analysis.score.result import view_label

    est = est or run.estimator
    ratio = np.median(massive_ratio(run), axis=0)
    L = run.num_layers
    fig = _fig()
    ax = fig.add_subplot()
    ax.plot(range(L + 1), ratio, marker="o", ms=3, color=C_SELECTED, label="largest / median token norm")
    ax.axhline(run.sinks.get("ratio", 8.0) if run.sinks else 8.0, ls=":", color=C_SELECTED, lw=1,
               label="sink rule threshold")
    ax.set_yscale("log")
    ax.set_ylabel("largest / median token norm")
    ax2 = ax.twinx()
    ax2.plot(range(L + 1), run.entropy(est, view=view)["boundary"], marker="s", ms=3, color=C_NORMAL,
             label=f"H ({est}, {view_label(view or run.sink_mode)})")
    ax2.set_ylabel(f"entropy H (nats, {est})")
    c = norm_entropy_correlation(run, est, view, form="changes")
    _ticks(ax, L + 1)
    ax.set_xlabel("residual boundary Z^i (0 = embeddings; 0-based)")
    ax.set_title(f"Massive activations vs entropy: r(Δlog norm ratio, ΔH) = {c['r']:.2f} "
                 f"[{c['lo']:.2f}, {c['hi']:.2f}]", fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    return fig


def delta_h_bars(run, granularity: str, est: str | None = None) -> Figure:
    """ΔH per block (protected blocks grey) with the LLM-Drop cosine baseline cos(X, Y) on a second axis."""
    est = est or run.estimator
    dh = run.delta_h(granularity, est)
    L = len(dh)
    prot = set(run.protected)
    fig = _fig()
    ax = fig.add_subplot()
    colors = [C_PROTECTED if i in prot else GRAN_COLORS.get(granularity, C_NORMAL) for i in range(L)]
    ax.bar(range(L), np.nan_to_num(dh), color=colors, label=f"ΔH {granularity}")
    ax.axhline(0, color="#999", lw=0.6)
    ax.set_xlabel(BLOCK_AXIS)
    ax.set_ylabel(f"ΔH (nats, {est})")
    ax.set_xlim(-0.6, L - 0.4)
    _ticks(ax, L)
    key = COS_KEYS.get(granularity)
    if key in run.per_seq:
        cos = run.seq_cos(granularity).mean(0)
        ax2 = ax.twinx()
        ax2.plot(range(L), cos, ls=":", marker=".", color="#333", label="LLM-Drop cos(X, Y)")
        ax2.set_ylabel("cos(X, Y)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()       # below the plot: never over the bars or the cosine line
        fig.legend(h1 + h2, l1 + l2, fontsize=7, loc="outside lower center", ncol=2, frameon=False)
    ax.set_title(f"ΔH per {granularity} block (grey = protected)")
    return fig


def norms_chart(run) -> Figure:
    """Mean RMS token norm at every residual boundary and mid point (log scale)."""
    b, m = _arr(run.norms["boundary"]), _arr(run.norms["mid"])
    L = run.num_layers
    fig = _fig()
    ax = fig.add_subplot()
    ax.plot(range(L + 1), b, marker="o", ms=3, color=POINT_COLORS["resid_pre"], label="boundary Z^i (resid_pre/post)")
    ax.scatter([i + 0.5 for i in range(L)], m, s=12, color=POINT_COLORS["resid_mid"], label="resid_mid (block i, x=i+0.5)")
    if np.nanmin(np.concatenate([b, m])) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("residual boundary Z^i (0 = embeddings; 0-based)")
    ax.set_ylabel("RMS token norm")
    ax.set_title("Residual-stream norm")
    ax.legend(fontsize=7)
    return fig


def estimator_comparison(run) -> Figure:
    """Boundary-entropy curves of every estimator, each min–max normalised to [0, 1]."""
    fig = _fig()
    ax = fig.add_subplot()
    L = run.num_layers
    for i, e in enumerate(run.estimators):
        c = run.entropy(e)["boundary"]
        lo, hi = np.nanmin(c), np.nanmax(c)
        ax.plot(range(L + 1), (c - lo) / (hi - lo) if hi > lo else c * 0, marker="o", ms=3,
                color=PALETTE[i % len(PALETTE)], label=e)
    ax.set_xlabel("residual boundary Z^i (0 = embeddings; 0-based)")
    ax.set_ylabel("H, min–max normalised per estimator")
    ax.set_title("Estimators compared")
    ax.legend(fontsize=7)
    return fig


def domain_heatmap(run, est: str | None = None) -> Figure:
    """Mean boundary entropy per calibration domain (rows), min–max normalised per row."""
    est = est or run.estimator
    domains = list(dict.fromkeys(run.domains))
    z, labels = [], []
    for d in domains:
        rows = [i for i, x in enumerate(run.domains) if x == d]
        c = run.entropy(est, rows)["boundary"]
        lo, hi = np.nanmin(c), np.nanmax(c)
        z.append((c - lo) / (hi - lo) if hi > lo else c * 0)
        labels.append(f"{d} (n={len(rows)})")
    fig = _fig(7.0, 1.2 + 0.4 * max(1, len(labels)))
    ax = fig.add_subplot()
    im = ax.imshow(np.array(z), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("residual boundary Z^i (0 = embeddings; 0-based)")
    ax.set_title("Boundary entropy per domain")
    fig.colorbar(im, ax=ax, label="min–max")
    return fig


def score_bars(scores: Sequence[float], protected: Sequence[int], label: str, selected: Sequence[int] = (),
               title: str | None = None) -> Figure:
    """Per-block criterion scores: dropped blocks red, protected grey."""
    s = _arr(list(scores))
    L = len(s)
    prot, sel = set(protected), set(selected)
    fig = _fig()
    ax = fig.add_subplot()
    ax.bar(range(L), np.nan_to_num(s), color=[C_PROTECTED if i in prot else C_SELECTED if i in sel else C_NORMAL
                                              for i in range(L)])
    ax.axhline(0, color="#999", lw=0.6)
    ax.set_xlim(-0.6, L - 0.4)
    _ticks(ax, L)
    ax.set_xlabel(BLOCK_AXIS)
    ax.set_ylabel(label)
    ax.set_title(title or label)
    return fig


def matrix_heatmap(mat, labels: Sequence[str] | None, title: str, vmin: float | None = None,
                   vmax: float | None = None, cmap: str = "RdBu", annotate: bool = True,
                   xlabel: str = "", ylabel: str = "") -> Figure:
    mat = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
    n = mat.shape[0]
    fig = _fig(5.5 if labels else 6.0, 4.6 if labels else 5.0)
    ax = fig.add_subplot()
    im = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if labels:
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    if annotate and n <= 12:
        for i in range(n):
            for j in range(mat.shape[1]):
                v = mat[i, j]
                ax.text(j, i, "—" if not math.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return fig


def _agreement(run) -> dict[str, Figure]:
    from analysis.score.agreement import agreement_matrix
    from analysis.score.criteria import CRITERIA

    g = run.granularity
    names = [n for n in CRITERIA if g in CRITERIA[n].granularities]
    prunable = run.num_layers - len(set(run.protected))
    k = max(1, min(max(1, run.num_layers // 4), prunable)) if prunable else 1
    am = agreement_matrix(run, names, g, k, run.protected)
    if len(am["criteria"]) < 2:
        return {}
    return {"agreement_spearman": matrix_heatmap(am["spearman"], am["criteria"], f"Spearman rank correlation ({g})",
                                                 -1, 1),
            "agreement_topk": matrix_heatmap(am["topk_overlap"], am["criteria"], f"Top-{am['k']} overlap ({g})", 0, 1,
                                             cmap="Blues")}


def bootstrap_chart(boot: dict, protected: Sequence[int], label: str) -> Figure:
    """Bootstrap mean and 5–95 % band per block, and how often each block lands in the top-k."""
    mean, lo, hi = _arr(boot["mean"]), _arr(boot["lo"]), _arr(boot["hi"])
    L = len(mean)
    prot = set(protected)
    freq = boot.get("top_k_frequency")
    fig = _fig(7.0, 4.6 if freq is not None else 3.6)
    axes = fig.subplots(2 if freq is not None else 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [0.65, 0.35]} if freq is not None else None)[:, 0]
    axes[0].bar(range(L), np.nan_to_num(mean), color=[C_PROTECTED if i in prot else C_NORMAL for i in range(L)],
                yerr=[np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)], ecolor="#333", capsize=2)
    axes[0].set_ylabel(label)
    axes[0].set_title(f"Calibration bootstrap ({boot.get('n_boot', '')} resamples): mean and 5–95 % band")
    if freq is not None:
        axes[1].bar(range(L), _arr(freq), color=[C_PROTECTED if i in prot else C_SELECTED for i in range(L)])
        axes[1].set_ylim(0, 1)
        axes[1].set_ylabel("P(in top-k)")
    axes[-1].set_xlabel(BLOCK_AXIS)
    _ticks(axes[-1], L)
    return fig


def _bootstrap(run) -> dict[str, Figure]:
    from analysis.score.criteria import CRITERIA, bootstrap

    prunable = run.num_layers - len(set(run.protected))
    k = min(4, max(1, prunable))
    boot = bootstrap(run, "entrodrop", run.granularity, n_boot=200, seed=0, k=k)
    return {"bootstrap_entrodrop": bootstrap_chart(boot, run.protected, CRITERIA["entrodrop"].score_label)}


def _ground_truth(run) -> dict[str, Figure]:
    out = {}
    for g, d in ((run.extras or {}).get("ground_truth") or {}).items():
        if d.get("ppl") is not None and d.get("base_ppl") is not None:
            out[f"ground_truth_{g}"] = score_bars(_arr(d["ppl"]) - float(d["base_ppl"]), run.protected,
                                                  "ΔPPL when dropped alone",
                                                  title=f"Drop-one ΔPPL per {g} block (lower = safer to drop)")
    return out


def _mi(run) -> dict[str, Figure]:
    mi = (run.extras or {}).get("mi") or {}
    out = {}
    per = mi.get("mi") or {}
    if isinstance(per, dict):
        for g, v in per.items():
            if isinstance(v, list) and v:
                out[f"mi_per_block_{g}"] = score_bars(v, run.protected, "MI(input, output)",
                                                      title=f"MI between each {g} block's input and output")
    if mi.get("matrix") is not None:
        out["mi_matrix"] = matrix_heatmap(mi["matrix"], None, "MI between residual boundaries", cmap="magma",
                                          annotate=False, xlabel="boundary Z^j (0 = embeddings)",
                                          ylabel="boundary Z^i (0 = embeddings)")
    return out


def run_figures(run) -> dict[str, Figure]:
    """Every chart that a run JSON alone determines, by name."""
    from analysis.indices import GRANULARITIES

    figs: dict[str, Figure] = {"entropy_curves": entropy_curves(run)}
    for g in GRANULARITIES:
        figs[f"delta_h_{g}"] = delta_h_bars(run, g)
    if run.domains and len(set(run.domains)) >= 1:
        figs["domain_heatmap"] = domain_heatmap(run)
    if len(run.estimators) > 1:
        figs["estimator_comparison"] = estimator_comparison(run)
    if run.norms and run.norms.get("boundary") is not None:
        figs["norms"] = norms_chart(run)
    if len(run.sink_views) > 1:
        for e in run.estimators:
            figs[f"sink_views_{e}"] = sink_views(run, e)
    if run.massive:
        figs["massive_activations"] = massive_chart(run)
    for name, b in (run.baselines or {}).items():
        if isinstance(b, dict) and b.get("scores") is not None:
            figs[f"scores_{name}"] = score_bars(b["scores"], run.protected, f"{name} score",
                                                title=f"{name} score per {b.get('granularity', run.granularity)} block")
    if run.angular is not None and len(run.angular):
        figs["angular_distance"] = matrix_heatmap(run.angular, None, "Angular distance between residual boundaries",
                                                  0, None, cmap="viridis", annotate=False,
                                                  xlabel="boundary Z^j (0 = embeddings)",
                                                  ylabel="boundary Z^i (0 = embeddings)")
    for fn in (_agreement, _bootstrap, _ground_truth, _mi):
        try:
            figs.update(fn(run))
        except Exception:  # noqa: BLE001 - optional views: a run without the data simply has no such figure
            pass
    return figs


# ---- evaluation and sweep figures --------------------------------------------------------------------------
def eval_figures(result: dict) -> dict[str, Figure]:
    """Perplexity before/after (with KL and top-1 agreement) of one ``eval`` JSON."""
    if not isinstance(result, dict) or "perplexity" not in result:
        raise DataError("The eval JSON has no perplexity", hint="create it with `python -m analysis eval ... --out`")
    names, vals = [], []
    if result.get("perplexity_original") is not None:
        names.append("original")
        vals.append(result["perplexity_original"])
    names.append("pruned" if names else "model")
    vals.append(result["perplexity"])
    fig = _fig(5.0, 3.4)
    ax = fig.add_subplot()
    ax.bar(names, vals, color=[C_PROTECTED, C_SELECTED][-len(vals):])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("perplexity (lower is better)")
    extra = [f"KL {result['kl']:.4g}" if result.get("kl") is not None else "",
             f"top-1 {result['top1']:.1%}" if result.get("top1") is not None else ""]
    plan = ((result.get("manifest") or {}).get("plan") or {})
    desc = ", ".join(f"{k.replace('drop_', '')} {v}" for k, v in plan.items() if k.startswith("drop_") and v)
    ax.set_title("Perplexity" + (f": drop {desc}" if desc else "") + ("\n" + " · ".join(e for e in extra if e)
                                                                       if any(extra) else ""), fontsize=9)
    return {"eval_perplexity": fig}


def sweep_figures(result: dict) -> dict[str, Figure]:
    """Perplexity vs k per criterion, and quality vs size (Pareto) of a ``sweep`` JSON."""
    rows = result.get("rows") if isinstance(result, dict) else None
    if not rows:
        raise DataError("The sweep JSON has no rows", hint="create it with `python -m analysis sweep ... --out`")
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(str(r["criterion"]), []).append(r)
    fig = _fig()
    ax = fig.add_subplot()
    for i, (crit, rs) in enumerate(by.items()):
        rs = sorted(rs, key=lambda r: r["k"])
        ax.plot([r["k"] for r in rs], [r["perplexity"] for r in rs], marker="o", ms=3, color=PALETTE[i % len(PALETTE)],
                label=crit)
    ax.set_yscale("log")
    ax.set_xlabel("k = blocks dropped")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"Sweep: perplexity after dropping the top-k {rows[0].get('granularity', '')} blocks")
    ax.legend(fontsize=7)
    figs = {"sweep": fig}
    xs = np.array([100 * float(r.get("params_removed_fraction") or 0) for r in rows])
    ys = np.array([float(r["perplexity"]) for r in rows])
    pareto = [not any(xs[j] >= xs[i] and ys[j] <= ys[i] and (xs[j] > xs[i] or ys[j] < ys[i]) for j in range(len(xs)))
              for i in range(len(xs))]
    fig2 = _fig()
    ax2 = fig2.add_subplot()
    ax2.scatter(xs, ys, c=[C_SELECTED if p else C_NORMAL for p in pareto], edgecolors=["#222" if p else "none"
                                                                                       for p in pareto], s=30)
    for x, y, r, p in zip(xs, ys, rows, pareto):
        if p:
            ax2.annotate(f"{r['criterion']} k={r['k']}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax2.set_yscale("log")
    ax2.set_xlabel("parameters removed (%)")
    ax2.set_ylabel("perplexity (log scale)")
    ax2.set_title("Quality vs size (red outlined = Pareto-optimal)")
    figs["sweep_pareto"] = fig2
    return figs


def comparison_figures(rows: Sequence[dict], speed_trusted: bool = True) -> dict[str, Figure]:
    """The app's comparison as static charts: perplexity per plan, and quality vs speed (Pareto).

    ``rows``: one dict per plan with ``plan``, ``perplexity`` and optionally ``decode tok/s (median)`` and
    ``parameters`` (the comparison table's columns). With ``speed_trusted=False`` (latency was noise: a busy
    machine or spreads that never settled) the Pareto chart uses parameters (fewer is better) and says so."""
    rows = [r for r in rows if r.get("perplexity") is not None]
    if not rows:
        raise DataError("The comparison has no evaluated plans")
    names = [str(r["plan"]) for r in rows]
    ppl = np.array([float(r["perplexity"]) for r in rows])
    fig = _fig(max(4.5, 0.9 * len(rows) + 2), 3.4)
    ax = fig.add_subplot()
    ax.bar(range(len(rows)), ppl, color=[C_PROTECTED if n == "original" else C_SELECTED for n in names])
    for i, v in enumerate(ppl):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Comparison: held-out perplexity per plan", fontsize=9)
    figs = {"comparison_perplexity": fig}
    xkey = "decode tok/s (median)" if speed_trusted else "parameters"
    xs = np.array([float(r.get(xkey) if r.get(xkey) is not None else np.nan) for r in rows])
    if len(rows) > 1 and np.isfinite(xs).all():
        xo = xs if speed_trusted else -xs
        pareto = [not any(xo[j] >= xo[i] and ppl[j] <= ppl[i] and (xo[j] > xo[i] or ppl[j] < ppl[i])
                          for j in range(len(xs))) for i in range(len(xs))]
        fig2 = _fig(5.5, 3.6)
        ax2 = fig2.add_subplot()
        ax2.scatter(xs, ppl, c=[C_SELECTED if p else C_NORMAL for p in pareto],
                    edgecolors=["#222" if p else "none" for p in pareto], s=36)
        for x, y, n in zip(xs, ppl, names):
            ax2.annotate(n, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax2.set_xlabel("decode tokens/s (median, higher is better)" if speed_trusted
                       else "parameters (fewer is better; latency was noise)")
        ax2.set_ylabel("perplexity (lower is better)")
        ax2.set_title("Quality vs " + ("speed" if speed_trusted else "size") + " (red outlined = Pareto-optimal)",
                      fontsize=9)
        figs["comparison_pareto"] = fig2
    return figs


# ---- all, and writing ------------------------------------------------------------------------------------
def all_figures(run=None, eval_result: dict | None = None, sweep_result: dict | None = None) -> dict[str, Figure]:
    figs: dict[str, Figure] = {}
    if run is not None:
        figs.update(run_figures(run))
    if eval_result is not None:
        figs.update(eval_figures(eval_result))
    if sweep_result is not None:
        figs.update(sweep_figures(sweep_result))
    return figs


def figure_bytes(fig: Figure, fmt: str = "png", dpi: int = 200) -> bytes:
    """The figure as PNG / SVG / PDF bytes."""
    if fmt not in FORMATS:
        raise DataError(f"Unknown figure format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi if fmt == "png" else None, metadata=_metadata(fmt))
    return buf.getvalue()


def _metadata(fmt: str) -> dict:
    """Stable files: no creation date (PDF) or generator date stamp (SVG)."""
    if fmt == "pdf":
        return {"CreationDate": None, "Creator": "Entroscope"}
    if fmt == "svg":
        return {"Date": None, "Creator": "Entroscope"}
    return {"Software": "Entroscope"}


def save_figures(figs: dict[str, Figure], out_dir: str | Path, formats: Sequence[str] = FORMATS,
                 overwrite: bool = False, progress: Callable[[float, str], None] | None = None) -> list[Path]:
    """Write ``out_dir/<name>.<fmt>`` for every figure and format; returns the paths written.

    Every file goes through :mod:`analysis.store.outdir` (checked before anything is written): figure files
    Entroscope wrote are replaced, any other existing file only with ``overwrite``, and a FIFO, device or
    folder at a figure's name is refused, never opened. Each file is written under a temporary name and
    renamed into place, so a reader never sees half a figure."""
    from analysis.errors import SaveError
    from analysis.store.outdir import check_out_file, path_kind, write_bytes_atomic

    out = Path(out_dir).expanduser()
    kind = path_kind(out)
    if kind not in ("absent", "folder"):
        raise SaveError(f"Figures folder {out} is a {kind}, not a folder", hint="give a folder name for --out")
    targets = [(name, fmt, out / f"{name}.{fmt}") for name in figs for fmt in formats]
    if kind == "folder":
        for _, _, p in targets:
            check_out_file(p, "Figure file", overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from analysis.store.outdir import describe_os_error

        raise SaveError(f"Cannot create {out}: {describe_os_error(exc)}") from None
    paths = []
    for i, (name, fmt, p) in enumerate(targets):
        paths.append(write_bytes_atomic(p, figure_bytes(figs[name], fmt), overwrite))
        if progress:
            progress((i + 1) / len(targets), f"figure {name}.{fmt}")
    return paths
