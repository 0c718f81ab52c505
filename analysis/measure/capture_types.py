"""What a capture is asked for (:class:`CaptureConfig`) and what it returns (:class:`CaptureStats`), with
:func:`merge_stats` for the parts of a resumed pass. Kept apart from the hooks (:mod:`analysis.measure.recorder`)
and the driver (:mod:`analysis.measure.capture`, which re-exports every name here)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from analysis.measure.sinks import DEFAULT_MAX_FRAC, DEFAULT_RATIO

#: the other sinks view computed beside the primary one (``alt_view``): excluded ↔ kept; "first" → kept
ALT_VIEW = {"exclude": "keep", "keep": "exclude", "first": "keep"}


@dataclass
class CaptureConfig:
    estimators: dict[str, dict] = field(default_factory=lambda: {"bucket": {}})  # name -> params (k, bins, alpha)
    batch_size: int = 8            # sequences per forward pass
    skip_first_token: bool = False  # legacy alias of sinks="first"
    sinks: str = "keep"            # keep (reference: every token) | exclude (detected sinks) | first (position 0)
    sink_ratio: float = DEFAULT_RATIO      # sink rule: norm > ratio × the sequence's median token norm ...
    sink_max_frac: float = DEFAULT_MAX_FRAC  # ... and among its largest max(1, ⌊frac·T⌋) norms (analysis.measure.sinks)

    @property
    def sink_mode(self) -> str:
        return "first" if self.skip_first_token and self.sinks == "keep" else self.sinks
    state_tokens: int = 0          # >0: keep this many sampled tokens of every boundary/mid state (for MI)
    seed: int = 2024               # token subsample seed
    cosine: bool = True            # LLM-Drop cosine / Block Influence / angular statistics
    alt_view: bool = False         # also every estimator in the other sinks view (ALT_VIEW[sinks]), same pass
    first_flags: bool = True       # keep the sink flags of the pass's first sequence ([L+1, T], token-level view)

    @property
    def alt_mode(self) -> str | None:
        return ALT_VIEW[self.sink_mode] if self.alt_view else None


@dataclass
class CaptureStats:
    """Per-sequence statistics; ``[N, ...]`` tensors on the CPU after the pass.

    entropy[est]["boundary"]: [N, L+1]    H of resid_pre[0], resid_post[0..L-1]
    entropy[est]["mid"]:      [N, L]      H of resid_mid[l]
    cos_attn / cos_mlp / cos_layer: [N, L]   cos(resid_pre, resid_mid) / (resid_mid, resid_post) / (pre, post)
    last_cos: [N, L+1, L+1]   cosine between boundary states of the last token (angular distance, Gromov)
    norm_boundary [N, L+1], norm_mid [N, L]: RMS token norms
    nonfinite: {point: count} of NaN/inf values seen
    sinks: {"boundary": [L+1], "mid": [L], "boundary_pos0": [L+1], "mid_pos0": [L]} int64 counts of tokens
        flagged as sinks by the rule (in every mode; excluded from the statistics only with sinks="exclude")
    states: {"boundary": [M, L+1, d], "mid": [M, L, d]} sampled tokens (float32) when state_tokens > 0
    entropy_alt: like ``entropy`` in the other sinks view ``alt_mode`` (estimators with a form for it), or None
    massive: {"boundary": [N, L+1], "mid": [N, L]} largest token norm / median token norm of each sequence
    first_flags: [L+1, T] bool, the sink flags of the first sequence (offset 0) at every boundary, or None
    seq_means: {view: {"boundary": [N, L+1, d], "mid": [N, L, d]}} mean token state of every sequence (float32),
        per sinks view, when an estimator with a ``pooled`` (dataset-level) form is on, e.g. ``matrix``
    """

    num_layers: int
    n_done: int
    entropy: dict[str, dict[str, Tensor]]
    cos_attn: Tensor | None
    cos_mlp: Tensor | None
    cos_layer: Tensor | None
    last_cos: Tensor | None
    norm_boundary: Tensor
    norm_mid: Tensor
    nonfinite: dict[str, int]
    states: dict[str, Tensor] | None
    seconds: float
    completed: bool
    sinks: dict[str, Tensor] | None = None
    entropy_alt: dict[str, dict[str, Tensor]] | None = None
    alt_mode: str | None = None
    massive: dict[str, Tensor] | None = None
    first_flags: Tensor | None = None
    seq_means: dict[str, dict[str, Tensor]] | None = None


def merge_stats(a: CaptureStats, b: CaptureStats) -> CaptureStats:
    """Concatenate the statistics of consecutive row ranges (resume after an interruption)."""
    cat = lambda x, y: None if x is None else torch.cat([x, y])  # noqa: E731
    return CaptureStats(
        num_layers=a.num_layers, n_done=a.n_done + b.n_done,
        entropy={e: {k: torch.cat([v, b.entropy[e][k]]) for k, v in d.items()} for e, d in a.entropy.items()},
        cos_attn=cat(a.cos_attn, b.cos_attn), cos_mlp=cat(a.cos_mlp, b.cos_mlp),
        cos_layer=cat(a.cos_layer, b.cos_layer), last_cos=cat(a.last_cos, b.last_cos),
        norm_boundary=cat(a.norm_boundary, b.norm_boundary), norm_mid=cat(a.norm_mid, b.norm_mid),
        nonfinite={k: a.nonfinite[k] + b.nonfinite[k] for k in a.nonfinite},
        states=None if a.states is None or b.states is None
        else {k: torch.cat([v, b.states[k]]) for k, v in a.states.items()},
        seconds=a.seconds + b.seconds, completed=b.completed,
        sinks=None if a.sinks is None or b.sinks is None else {k: v + b.sinks[k] for k, v in a.sinks.items()},
        entropy_alt=None if a.entropy_alt is None or b.entropy_alt is None
        else {e: {k: torch.cat([v, b.entropy_alt[e][k]]) for k, v in d.items()} for e, d in a.entropy_alt.items()},
        alt_mode=a.alt_mode if a.entropy_alt is not None and b.entropy_alt is not None else None,
        massive=None if a.massive is None or b.massive is None
        else {k: torch.cat([v, b.massive[k]]) for k, v in a.massive.items()},
        first_flags=a.first_flags if a.first_flags is not None else b.first_flags,
        seq_means=None if a.seq_means is None or b.seq_means is None
        else {v: {k: torch.cat([t, b.seq_means[v][k]]) for k, t in d.items()} for v, d in a.seq_means.items()})
