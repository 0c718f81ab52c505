"""Plotly figures: pure functions of analysis results (no Streamlit), so they are easy to test.

Every figure with block indices says "0-based" on its axis title.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

POINT_COLORS = {"resid_pre": "#4C5BD4", "resid_mid": "#F28E2B", "resid_post": "#2CA58D"}
POINT_LABELS = {"resid_pre": "resid_pre (block input)", "resid_mid": "resid_mid (after attention)",
                "resid_post": "resid_post (block output)"}
GRAN_COLORS = {"attention": "#4C5BD4", "mlp": "#F28E2B", "layer": "#2CA58D"}
C_SELECTED = "#E4572E"
C_NORMAL = "#4C5BD4"
C_PROTECTED = "#B8BBC6"
BLOCK_AXIS = "block index (0-based)"
LOCK = "🔒"


def _layout(fig: go.Figure, title: str | None = None, height: int = 380, hovermode: str = "x unified",
            **kw) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50 if title else 20, b=10),
                      template="plotly_white", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      hovermode=hovermode, **kw)
    return fig


def _finite(a) -> np.ndarray:
    return np.asarray(a, dtype=float)


def _view_label(view: str | None) -> str:
    from analysis.score.result import view_label

    return view_label(view)


def entropy_curves(result, est: str, boundary: int, protected: Sequence[int], rows=None,
                   points: Iterable[str] = ("resid_pre", "resid_mid", "resid_post"), interval: dict | None = None,
                   sink_onset: int | None = None, view: str | None = None, overlay: str | None = None) -> go.Figure:
    """resid_pre / resid_mid / resid_post entropy per block with the compression stage shaded (only when
    ``boundary > 0``: a detected stage). The title names the sinks ``view``; ``overlay``: another view of the
    same run drawn dashed (no re-run).

    ``interval``: the boundary's bootstrap result (``lo``/``hi`` drawn as a band); ``sink_onset``: the boundary
    ``Z^i`` where the massive activation appears (a red dotted line before block ``i``)."""
    view = view or result.sink_mode
    ent = result.entropy(est, rows, view=view)
    L = result.num_layers
    x = np.arange(L)
    fig = go.Figure()
    if boundary > 0:
        fig.add_vrect(x0=-0.5, x1=boundary - 0.5, fillcolor="#4C5BD4", opacity=0.08, line_width=0,
                      annotation_text="compression stage", annotation_position="top left")
        fig.add_vrect(x0=boundary - 0.5, x1=L - 0.5, fillcolor="#2CA58D", opacity=0.05, line_width=0,
                      annotation_text="expansion stage", annotation_position="top right")
        fig.add_vline(x=boundary - 0.5, line_dash="dash", line_color="#555",
                      annotation_text=f"boundary = {boundary}", annotation_position="bottom right")
        if interval and interval.get("detected") and (interval["lo"], interval["hi"]) != (boundary, boundary):
            fig.add_vrect(x0=interval["lo"] - 0.5, x1=interval["hi"] - 0.5 + 1e-3, fillcolor="#555", opacity=0.12,
                          line_width=0, annotation_text="90 % interval", annotation_position="bottom left")
    else:
        fig.add_annotation(x=0, y=1.0, xref="x", yref="paper", showarrow=False, xanchor="left",
                           text="no compression stage detected")
    if sink_onset is not None:
        fig.add_vline(x=sink_onset - 0.5, line_dash="dot", line_color=C_SELECTED,
                      annotation_text=f"massive activation at Z<sup>{sink_onset}</sup>", annotation_position="top right")
    vl = _view_label(view)
    for p in points:
        fig.add_trace(go.Scatter(x=x, y=_finite(ent[p]), mode="lines+markers",
                                 name=POINT_LABELS[p] + (f" · {vl}" if overlay else ""),
                                 line=dict(color=POINT_COLORS[p], width=2), marker=dict(size=5),
                                 hovertemplate=f"block %{{x}}<br>{p} ({vl}): %{{y:.4g}} nats<extra></extra>"))
    if overlay and overlay != view and result.has_view(est, overlay):
        other = result.entropy(est, rows, view=overlay)
        ol = _view_label(overlay)
        for p in points:
            fig.add_trace(go.Scatter(x=x, y=_finite(other[p]), mode="lines", name=f"{p} · {ol}",
                                     line=dict(color=POINT_COLORS[p], width=1.5, dash="dash"),
                                     hovertemplate=f"block %{{x}}<br>{p} ({ol}): %{{y:.4g}} nats<extra></extra>"))
    prot = sorted(set(protected))
    if prot:
        lo = np.nanmin([np.nanmin(_finite(ent[p])) for p in points])
        fig.add_trace(go.Scatter(x=prot, y=[lo] * len(prot), mode="markers+text", text=[LOCK] * len(prot),
                                 textposition="top center", name="protected block",
                                 marker=dict(symbol="square", size=9, color=C_PROTECTED),
                                 hovertemplate="block %{x} is protected<extra></extra>"))
    fig.update_xaxes(title=BLOCK_AXIS, dtick=1 if L <= 32 else 2, range=[-0.6, L - 0.4])
    fig.update_yaxes(title=f"entropy H (nats, {est})")
    title = f"{est} · {vl}" + (f" (dashed: {_view_label(overlay)})" if overlay and overlay != view else "")
    return _layout(fig, title)


def partial_curves(boundary: np.ndarray, mid: np.ndarray, n_done: int, total: int, est: str,
                   view: str | None = None) -> go.Figure:
    """The entropy curves while the pass runs: means over the ``n_done`` sequences finished so far.

    ``boundary`` is ``[L+1]`` (``resid_pre[0]``, then every ``resid_post``), ``mid`` is ``[L]``."""
    b, m = _finite(boundary), _finite(mid)
    L = len(m)
    x = np.arange(L)
    fig = go.Figure()
    for p, y in (("resid_pre", b[:-1]), ("resid_mid", m), ("resid_post", b[1:])):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=POINT_LABELS[p],
                                 line=dict(color=POINT_COLORS[p], width=2), marker=dict(size=5),
                                 hovertemplate=f"block %{{x}}<br>{p}: %{{y:.4g}} nats<extra></extra>"))
    fig.update_xaxes(title=BLOCK_AXIS, dtick=1 if L <= 32 else 2, range=[-0.6, L - 0.4])
    fig.update_yaxes(title=f"entropy H (nats, {est})")
    return _layout(fig, f"Live: mean over the first {n_done} of {total} sequences (still running)"
                        + (f" · {_view_label(view)}" if view else ""))


def delta_h_bars(result, est: str, granularity: str, protected: Sequence[int], cosine: np.ndarray | None = None,
                 cos_label: str = "cos(X, Y)", view: str | None = None) -> go.Figure:
    """ΔH per block (bars; protected blocks grey) with the cosine baseline on a secondary axis (sinks ``view``)."""
    dh = _finite(result.delta_h(granularity, est, view=view))
    L = len(dh)
    prot = set(protected)
    colors = [C_PROTECTED if i in prot else GRAN_COLORS.get(granularity, C_NORMAL) for i in range(L)]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=list(range(L)), y=dh, marker_color=colors, name=f"ΔH {granularity}",
                         text=[LOCK if i in prot else "" for i in range(L)], textposition="outside",
                         hovertemplate="block %{x}<br>ΔH %{y:.4g} nats<extra></extra>"), secondary_y=False)
    if cosine is not None:
        fig.add_trace(go.Scatter(x=list(range(L)), y=_finite(cosine), mode="lines+markers", name=cos_label,
                                 line=dict(color="#333", dash="dot"), marker=dict(size=4),
                                 hovertemplate="block %{x}<br>" + cos_label + " %{y:.4f}<extra></extra>"),
                      secondary_y=True)
        fig.update_yaxes(title_text=cos_label, secondary_y=True, showgrid=False)
    fig.update_xaxes(title=BLOCK_AXIS, dtick=1 if L <= 32 else 2, range=[-0.6, L - 0.4])
    fig.update_yaxes(title_text=f"ΔH (nats, {est})", secondary_y=False)
    return _layout(fig, f"ΔH per {granularity} block · {est} · {_view_label(view or result.sink_mode)}")


def domain_heatmap(result, est: str, normalise: bool = True) -> tuple[go.Figure, list[str]]:
    """Mean boundary entropy H(Z^0..Z^L) per calibration domain (rows), from the per-sequence values."""
    domains = list(dict.fromkeys(result.domains))
    L = result.num_layers
    z, labels = [], []
    for d in domains:
        rows = [i for i, x in enumerate(result.domains) if x == d]
        if not rows:
            continue
        curve = _finite(result.entropy(est, rows)["boundary"])
        if normalise:
            lo, hi = np.nanmin(curve), np.nanmax(curve)
            curve = (curve - lo) / (hi - lo) if hi > lo else curve * 0
        z.append(curve)
        labels.append(f"{d} (n={len(rows)})")
    fig = go.Figure(go.Heatmap(z=z, x=[f"Z{i}" for i in range(L + 1)], y=labels, colorscale="Viridis",
                               colorbar=dict(title="min–max" if normalise else "nats"),
                               hovertemplate="%{y}<br>%{x}: %{z:.3g}<extra></extra>"))
    fig.update_xaxes(title="residual boundary Z<sup>i</sup> (Z<sup>0</sup> = embeddings, Z<sup>l+1</sup> = output of block l)")
    return _layout(fig, height=120 + 40 * max(1, len(labels)), hovermode="closest"), labels


def domain_argmins(result, est: str) -> dict[str, int]:
    """Detected boundary per domain (same rule as the run, :func:`analysis.measure.boundary.robust_boundary`; 0 = none)."""
    from analysis.measure.boundary import robust_boundary

    out = {}
    for d in dict.fromkeys(result.domains):
        rows = [i for i, x in enumerate(result.domains) if x == d]
        out[d] = robust_boundary(result.entropy(est, rows)["boundary"])[0]
    return out


def estimator_comparison(result, estimators: Sequence[str]) -> go.Figure:
    """Boundary-entropy curves of several estimators, each min–max normalised to [0, 1]."""
    fig = go.Figure()
    palette = ["#4C5BD4", "#F28E2B", "#2CA58D", "#E4572E", "#8E6C8A"]
    L = result.num_layers
    for i, e in enumerate(estimators):
        c = _finite(result.entropy(e)["boundary"])
        lo, hi = np.nanmin(c), np.nanmax(c)
        n = (c - lo) / (hi - lo) if hi > lo else c * 0
        fig.add_trace(go.Scatter(x=list(range(L + 1)), y=n, mode="lines+markers", name=e,
                                 line=dict(color=palette[i % len(palette)]),
                                 customdata=c, hovertemplate=e + " Z%{x}: %{customdata:.4g} nats "
                                 "(normalised %{y:.2f})<extra></extra>"))
    fig.update_xaxes(title="residual boundary Z<sup>i</sup> (0 = embeddings; Z<sup>l+1</sup> = output of block l, 0-based)")
    fig.update_yaxes(title="H, min–max normalised per estimator")
    return _layout(fig)


def estimator_small_multiples(result, estimators: Sequence[str]) -> go.Figure:
    n = len(estimators)
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(estimators), shared_xaxes=True)
    L = result.num_layers
    for i, e in enumerate(estimators):
        fig.add_trace(go.Scatter(x=list(range(L + 1)), y=_finite(result.entropy(e)["boundary"]),
                                 mode="lines", name=e, showlegend=False), row=1, col=i + 1)
        fig.update_xaxes(title_text="Z<sup>i</sup> (0-based)", row=1, col=i + 1)
    fig.update_yaxes(title_text="H (nats)", row=1, col=1)
    return _layout(fig, height=300)


def lens_curves(result, estimators: Sequence[str]) -> go.Figure:
    """Boundary entropy of each estimator (one panel each) in every sinks view of the run: solid = primary,
    dashed = the other view, from the same pass."""
    n = len(estimators)
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(estimators), horizontal_spacing=0.06)
    L = result.num_layers
    views = result.sink_views
    colors = ["#4C5BD4", "#E4572E", "#2CA58D"]
    for i, e in enumerate(estimators):
        for j, v in enumerate(views):
            if not result.has_view(e, v):
                continue
            fig.add_trace(go.Scatter(x=list(range(L + 1)), y=_finite(result.entropy(e, view=v)["boundary"]),
                                     mode="lines+markers", marker=dict(size=4), name=_view_label(v),
                                     legendgroup=v, showlegend=i == 0,
                                     line=dict(color=colors[j % 3], dash="solid" if j == 0 else "dash"),
                                     hovertemplate=f"{e} ({_view_label(v)}) Z%{{x}}: %{{y:.4g}} nats<extra></extra>"),
                          row=1, col=i + 1)
        fig.update_xaxes(title_text="Z^i (0 = embeddings)", row=1, col=i + 1)
    fig.update_yaxes(title_text="H (nats)", row=1, col=1)
    return _layout(fig, height=330)


def massive_chart(result, est: str, view: str | None = None) -> go.Figure:
    """Largest / median token norm per boundary (log axis; median over sequences, 25–75 % band) with the
    entropy curve of ``est`` in sinks ``view`` on the second axis."""
    m = np.asarray(result.massive["boundary"], dtype=float)                      # [N, L+1]
    L = result.num_layers
    x = list(range(L + 1))
    q1, med, q3 = np.percentile(m, [25, 50, 75], axis=0)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x + x[::-1], y=list(q3) + list(q1[::-1]), fill="toself", fillcolor="rgba(228,87,46,0.15)",
                             line=dict(width=0), hoverinfo="skip", name="25–75 % of sequences"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=med, mode="lines+markers", name="largest / median token norm",
                             line=dict(color=C_SELECTED, width=2),
                             hovertemplate="Z%{x}: largest token %{y:.1f}× the median<extra></extra>"), secondary_y=False)
    thr = (result.sinks or {}).get("ratio", 8.0)
    fig.add_hline(y=thr, line_dash="dot", line_color=C_SELECTED, annotation_text=f"sink rule: {thr:g}×",
                  annotation_position="bottom right")
    vl = _view_label(view or result.sink_mode)
    fig.add_trace(go.Scatter(x=x, y=_finite(result.entropy(est, view=view)["boundary"]), mode="lines+markers",
                             name=f"H ({est}, {vl})", line=dict(color=C_NORMAL, width=2, dash="dot"),
                             hovertemplate=f"Z%{{x}}: H %{{y:.4g}} nats ({vl})<extra></extra>"), secondary_y=True)
    lo_v = float(np.nanmin(q1[q1 > 0])) if (q1 > 0).any() else 1.0
    hi_v = max(float(np.nanmax(q3)), thr)
    fig.update_yaxes(title_text="largest / median token norm", type="log", secondary_y=False,
                     range=[math.log10(min(lo_v, 1.0) * 0.8), math.log10(hi_v * 1.5)])
    fig.update_yaxes(title_text=f"H (nats, {est})", secondary_y=True, showgrid=False)
    fig.update_xaxes(title="residual boundary Z^i (0 = embeddings; Z^(l+1) = output of block l, 0-based)")
    return _layout(fig, f"Massive activations vs {est} entropy · {vl}")


def flags_heatmap(flags: np.ndarray, tokens: Sequence[str]) -> go.Figure:
    """Which tokens of one sequence the sink rule flags at which boundary: ``flags [L+1, T]`` bool."""
    f = np.asarray(flags, dtype=float)
    n_b, T = f.shape
    labels = [f"{i}: {t}" for i, t in enumerate(tokens)] if len(tokens) == T else [str(i) for i in range(T)]
    fig = go.Figure(go.Heatmap(z=f.T, x=[f"Z{i}" for i in range(n_b)], y=labels, zmin=0, zmax=1, showscale=False,
                               colorscale=[[0, "#F3F4F8"], [1, C_SELECTED]],
                               hovertemplate="token %{y}<br>%{x}: %{z}<extra>1 = flagged</extra>"))
    fig.update_yaxes(autorange="reversed", title="token (position: text)", tickfont=dict(size=9))
    fig.update_xaxes(title="residual boundary Z^i (0 = embeddings; 0-based)")
    return _layout(fig, height=min(900, 120 + 14 * T), hovermode="closest")


def bootstrap_chart(boot: dict, protected: Sequence[int], label: str) -> go.Figure:
    """Bootstrap mean and 5–95% band per block, and how often each block lands in the top-k."""
    mean, lo, hi = _finite(boot["mean"]), _finite(boot["lo"]), _finite(boot["hi"])
    L = len(mean)
    prot = set(protected)
    has_freq = "top_k_frequency" in boot
    fig = make_subplots(rows=2 if has_freq else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.65, 0.35] if has_freq else None)
    colors = [C_PROTECTED if i in prot else C_NORMAL for i in range(L)]
    fig.add_trace(go.Bar(x=list(range(L)), y=mean, marker_color=colors, name=label,
                         error_y=dict(type="data", symmetric=False, array=hi - mean, arrayminus=mean - lo,
                                      color="#333", thickness=1.2),
                         hovertemplate="block %{x}<br>mean %{y:.4g}<extra></extra>"), row=1, col=1)
    if has_freq:
        freq = _finite(boot["top_k_frequency"])
        fig.add_trace(go.Bar(x=list(range(L)), y=freq, marker_color=[C_PROTECTED if i in prot else C_SELECTED
                                                                     for i in range(L)],
                             name="top-k frequency", hovertemplate="block %{x}<br>in top-k %{y:.0%}<extra></extra>"),
                      row=2, col=1)
        fig.update_yaxes(title_text="P(in top-k)", range=[0, 1], tickformat=".0%", row=2, col=1)
    fig.update_yaxes(title_text=label, row=1, col=1)
    fig.update_xaxes(title_text=BLOCK_AXIS, row=2 if has_freq else 1, col=1, dtick=1 if L <= 32 else 2)
    return _layout(fig, height=460 if has_freq else 360, hovermode="closest")


def norms_chart(result) -> go.Figure:
    """Mean RMS token norm of the residual stream at every boundary and mid point (log scale)."""
    b = _finite(result.norms["boundary"])
    m = _finite(result.norms["mid"])
    L = result.num_layers
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(range(L + 1)), y=b, mode="lines+markers", name="boundary Z<sup>i</sup> (resid_pre/post)",
                             line=dict(color=POINT_COLORS["resid_pre"])))
    fig.add_trace(go.Scatter(x=[i + 0.5 for i in range(L)], y=m, mode="markers", name="resid_mid (block i, x=i+0.5)",
                             marker=dict(color=POINT_COLORS["resid_mid"], size=6)))
    fig.update_xaxes(title="residual boundary Z<sup>i</sup> (0 = embeddings; 0-based)")
    fig.update_yaxes(title="RMS token norm", type="log")
    return _layout(fig)


def score_bars(scores: Sequence[float], selected: Iterable[int], protected: Iterable[int], score_label: str,
               order: Sequence[int] = ()) -> go.Figure:
    """Clickable per-block scores: selected blocks red, protected blocks grey with a lock.

    ``customdata`` holds the block index so click/box/lasso events map back to blocks.
    """
    s = _finite(scores)
    L = len(s)
    sel, prot = set(selected), set(protected)
    rank = {b: r for r, b in enumerate(order)}
    colors = [C_PROTECTED if i in prot else C_SELECTED if i in sel else C_NORMAL for i in range(L)]
    status = ["protected (locked)" if i in prot else "selected to drop" if i in sel else "kept" for i in range(L)]
    y = np.where(np.isfinite(s), s, 0.0)
    text = [LOCK if i in prot else ("✕" if i in sel else "") for i in range(L)]
    hover = [f"rank {rank[i]}" if i in rank else "not ranked" for i in range(L)]
    fig = go.Figure(go.Bar(
        x=list(range(L)), y=y, marker_color=colors, marker_line_color=["#777" if i in prot else "rgba(0,0,0,0)"
                                                                       for i in range(L)],
        marker_line_width=1, text=text, textposition="outside", customdata=list(range(L)),
        hovertext=[f"{st_}; {h}" for st_, h in zip(status, hover)],
        hovertemplate="block %{customdata}<br>" + score_label + " %{y:.4g}<br>%{hovertext}<extra></extra>",
        name=score_label))
    fig.update_xaxes(title=BLOCK_AXIS + " — click a bar to add/remove it", dtick=1 if L <= 32 else 2,
                     range=[-0.6, L - 0.4])
    fig.update_yaxes(title=score_label)
    _layout(fig, hovermode="closest", clickmode="event+select")
    fig.update_layout(showlegend=False)
    return fig


def matrix_heatmap(mat: np.ndarray, labels: Sequence[str], title: str, zmin: float, zmax: float,
                   fmt: str = ".2f", colorscale: str = "RdBu") -> go.Figure:
    mat = np.asarray(mat, dtype=float)
    text = [[("—" if not math.isfinite(v) else format(v, fmt)) for v in row] for row in mat]
    fig = go.Figure(go.Heatmap(z=mat, x=list(labels), y=list(labels), zmin=zmin, zmax=zmax, colorscale=colorscale,
                               text=text, texttemplate="%{text}", hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title=title, height=120 + 45 * len(labels), hovermode="closest")


def mi_heatmap(mat, title: str, x_label: str, y_label: str) -> go.Figure:
    mat = np.asarray(mat, dtype=float)
    fig = go.Figure(go.Heatmap(z=mat, colorscale="Magma", hovertemplate="%{y}, %{x}: %{z:.3g}<extra></extra>"))
    fig.update_xaxes(title=x_label)
    fig.update_yaxes(title=y_label)
    return _layout(fig, title=title, height=420, hovermode="closest")


def sweep_chart(df, metric: str = "perplexity", metric_label: str = "perplexity") -> go.Figure:
    """Metric vs k (blocks dropped), one line per criterion."""
    fig = go.Figure()
    palette = ["#4C5BD4", "#F28E2B", "#2CA58D", "#E4572E", "#8E6C8A", "#6B7A8F", "#D4A017"]
    for i, (crit, g) in enumerate(df.groupby("criterion", sort=False)):
        g = g.sort_values("k")
        fig.add_trace(go.Scatter(x=g["k"], y=g[metric], mode="lines+markers", name=str(crit),
                                 line=dict(color=palette[i % len(palette)])))
    fig.update_xaxes(title="k = blocks dropped", dtick=1)
    fig.update_yaxes(title=metric_label, type="log" if metric == "perplexity" else "linear")
    fig.update_layout(showlegend=True)                   # also for a single criterion: say which it is
    return _layout(fig, hovermode="closest")


def pareto_chart(df, x: str, y: str, size: str | None, x_label: str, y_label: str,
                 y_higher_better: bool = False, y_err: str | None = None, x_higher_better: bool = True) -> go.Figure:
    """Quality vs speed (marker size = parameters); the Pareto-optimal points are outlined.
    ``y_higher_better`` for accuracy as the quality axis; ``y_err``: a column of ± error bars;
    ``x_higher_better=False`` for a cost axis such as parameters (the fallback when latency is noise)."""
    fig = go.Figure()
    xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
    if y_higher_better:
        ys = -ys
    xo = xs if x_higher_better else -xs
    # x: higher is better after orientation (tok/s, or −parameters); y: lower is better (perplexity)
    pareto = [not any((xo[j] >= xo[i] and ys[j] <= ys[i]) and (xo[j] > xo[i] or ys[j] < ys[i])
                      for j in range(len(xs))) for i in range(len(xs))]
    sizes = None
    if size and size in df:
        p = df[size].to_numpy(float)
        sizes = 12 + 28 * (p - p.min()) / (p.max() - p.min()) if p.max() > p.min() else [20] * len(p)
    if y_higher_better:
        ys = -ys
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers+text", text=df["plan"], textposition="top center",
        error_y=dict(type="data", array=df[y_err].fillna(0).to_numpy(float), visible=True)
        if y_err and y_err in df else None,
        marker=dict(size=sizes if sizes is not None else 14, color=[C_SELECTED if p else C_NORMAL for p in pareto],
                    line=dict(width=[2 if p else 0 for p in pareto], color="#222"), opacity=0.85),
        customdata=df[size] if size and size in df else None,
        hovertemplate="%{text}<br>" + x_label + " %{x:.4g}<br>" + y_label + " %{y:.4g}"
                      + ("<br>params %{customdata:,}" if size and size in df else "") + "<extra></extra>"))
    fig.update_traces(cliponaxis=False)
    fig.update_xaxes(title=x_label, range=_padded(xs, 0.12))
    fig.update_yaxes(title=y_label, range=_padded(ys, 0.15))
    fig.update_layout(showlegend=False, margin=dict(l=40, r=40, t=40, b=10))
    return _layout(fig, hovermode="closest")


def _padded(v: np.ndarray, frac: float) -> list[float] | None:
    """An axis range with room on both sides, so labels at the extremes are not clipped."""
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    lo, hi = float(v.min()), float(v.max())
    pad = (hi - lo) * frac if hi > lo else max(abs(hi) * frac, 1.0)
    return [lo - pad, hi + pad]


def toy_cloud(x: np.ndarray, lim: float) -> go.Figure:
    fig = go.Figure(go.Scatter(x=x[:, 0], y=x[:, 1], mode="markers", marker=dict(size=4, color=C_NORMAL, opacity=0.6)))
    fig.update_xaxes(range=[-lim, lim], title="dimension 0", zeroline=True)
    fig.update_yaxes(range=[-lim, lim], title="dimension 1", scaleanchor="x", zeroline=True)
    return _layout(fig, height=340, hovermode="closest")
