"""Streaming capture: forward hooks feed per-sequence statistics to accumulators, batch by batch.

One forward pass of the *base* model (no LM head, no autograd) over the calibration tokens. Hooks on
every decoder layer see ``resid_pre``, ``resid_mid`` and ``resid_post`` (see :mod:`analysis.models.adapters`)
and reduce them at once to per-sequence numbers (entropies, cosines, norms) written into preallocated
device tensors: no activation outlives its layer, and nothing synchronises with the host until the end.
Optionally a seeded, capped token subsample of the states is kept for mutual-information estimators.

Because ``resid_post[l] == resid_pre[l + 1]``, entropies are computed once per residual *boundary*::

    boundary 0      = resid_pre[0]      (embeddings)
    boundary l + 1  = resid_post[l]
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from analysis.measure import kernels, onepass
from analysis.measure.estimators import get_estimator
from analysis.registry import resolve
from analysis.models.loading import LoadedModel
from analysis.measure.sinks import DEFAULT_MAX_FRAC, DEFAULT_RATIO, MASKED, bind_masked, check_mode, detect_sinks

#: the other sinks view computed beside the primary one (``alt_view``): excluded ↔ kept; "first" → kept
ALT_VIEW = {"exclude": "keep", "keep": "exclude", "first": "keep"}

Progress = Callable[[float, str], None]
#: Within a batch, progress is reported after a block finishes at most this often (seconds).
PROGRESS_EVERY_S = 0.5


class StopRequested(Exception):
    """Raised inside the pass when ``should_stop()`` turns true; partial results are kept."""


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


def bind_view(name: str, params: dict, mode: str, head=None):
    """Estimator ``name`` with parameters fixed, in sinks view ``mode``: ``(x [B, T, d], keep [B, T] | None) -> [B]``.

    ``keep``/``first`` use the registered function (the caller slices position 0 off for ``first``),
    ``exclude`` its sink-masked form (:attr:`EstimatorInfo.masked`, else :data:`analysis.measure.sinks.MASKED`).
    An estimator that decodes states through the model's head (``needs_head``) gets ``head`` bound.
    ``None`` when the estimator has no form for ``mode``."""
    info = get_estimator(name)
    head_fn = getattr(info, "needs_head", False)
    if mode != "exclude":
        fn = info.bind(**params)
        if head_fn:      # decoded through the head; ``memo`` shares per-position work between the views of one point
            kw = {k: v for k, v in info.params(**params).items() if v is not None}
            f = info.function
            return lambda x, keep=None, memo=None: f(x, **kw, head=head, memo=memo)
        return lambda x, keep=None, memo=None: fn(x)
    masked = getattr(info, "masked", None)
    if masked is not None:
        from analysis.registry import resolve

        f = resolve(masked) if isinstance(masked, str) else masked
        kw = {k: v for k, v in info.params(**params).items() if v is not None}
        if head_fn:
            return lambda x, keep, memo=None: f(x, keep, **kw, head=head, memo=memo)
        return lambda x, keep, memo=None: f(x, keep, **kw)
    if name not in MASKED:
        return None
    fn = bind_masked(name, params)
    return lambda x, keep, memo=None: fn(x, keep)


class _Recorder:
    """Hook state for one pass. Hooks act only on the thread that runs the pass, so a model shared by
    several app sessions can be analysed by one while another evaluates it."""

    def __init__(self, lm: LoadedModel, n: int, cfg: CaptureConfig, device: torch.device):
        self.lm, self.cfg, self.dev = lm, cfg, device
        L = lm.num_layers
        self.L = L
        self.thread = threading.get_ident()
        self.mode = cfg.sink_mode
        check_mode(self.mode)
        head = None
        if any(getattr(get_estimator(name), "needs_head", False) for name in cfg.estimators):
            from analysis.measure.lenses import lens_head

            head = lens_head(lm)
        # per view: estimator name -> (x, keep) -> [B]; the primary view must exist for every estimator
        self.est = {}
        # estimators that decode states through the model's head get the states in the model's dtype; every
        # other one gets the point's float32 copy, made once and shared (bf16/fp16 models)
        self.raw = {name for name in cfg.estimators if getattr(get_estimator(name), "needs_head", False)}
        self._f32s: dict[int, tuple[Tensor, Tensor]] = {}
        for name, params in cfg.estimators.items():
            fn = bind_view(name, params, self.mode, head)
            if fn is None:
                bind_masked(name, params)      # raises the SelectionError that says why (no sink-masked form)
            self.est[name] = fn
        self.alt_mode = cfg.alt_mode
        self.alt = {}
        if self.alt_mode is not None:
            for name, params in cfg.estimators.items():
                fn = bind_view(name, params, self.alt_mode, head)
                if fn is not None:
                    self.alt[name] = fn
        # estimators with a form for both views at once (kept ↔ excluded): one call per point fills both
        self.views = {}
        if {self.mode, self.alt_mode} == {"keep", "exclude"}:
            for name, params in cfg.estimators.items():
                info = get_estimator(name)
                if info.views is not None and name in self.alt and name not in self.raw:
                    f = resolve(info.views) if isinstance(info.views, str) else info.views
                    kw = {k: v for k, v in info.params(**params).items() if v is not None}
                    self.views[name] = lambda x, keep, f=f, kw=kw: f(x, keep, **kw)
        zi = lambda *shape: torch.zeros(*shape, device=device, dtype=torch.int64)  # noqa: E731
        self.sink_counts = {"boundary": zi(L + 1), "mid": zi(L), "boundary_pos0": zi(L + 1), "mid_pos0": zi(L)}
        self.state_sink: Tensor | None = None   # [N·m] bool: sampled state row is a sink at some point
        z = lambda *shape: torch.zeros(*shape, device=device, dtype=torch.float32)  # noqa: E731
        self.entropy = {name: {"boundary": z(n, L + 1), "mid": z(n, L)} for name in self.est}
        self.entropy_alt = {name: {"boundary": z(n, L + 1), "mid": z(n, L)} for name in self.alt}
        # the per-view loops run the estimators that have no both-views form
        self.est = {name: fn for name, fn in self.est.items() if name not in self.views}
        self.alt = {name: fn for name, fn in self.alt.items() if name not in self.views}
        # every token in one view (float32 states): the first estimator with a ``point`` form also takes the token
        # norms and the block's dots in its read of the point (EstimatorInfo.point), else they are computed apart
        self.point: tuple[str, Callable] | None = None
        self.mid_later = False      # resid_mid waits for the block's end, to be read once with resid_post
        if self.mode == "keep" and lm.dtype == torch.float32 and device.type == "cpu":
            for name, params in cfg.estimators.items():
                info = get_estimator(name)
                if info.point is not None and name in self.est and name not in self.raw:
                    f = resolve(info.point) if isinstance(info.point, str) else info.point
                    kw = {k: v for k, v in info.params(**params).items() if v is not None}
                    self.point = (name, lambda x, pre, mid, h, norms, dots, mid_out, f=f, kw=kw:
                                  f(x, pre, mid, h, norms, dots, mid_out, **kw))
                    break
        self.massive = {"boundary": z(n, L + 1), "mid": z(n, L)}   # max token norm / median token norm
        self.first_flags: Tensor | None = None  # [L+1, T] bool, set when the pass holds sequence 0 (offset 0)
        self.flag_first = False                 # the current batch's row 0 is the set's first sequence
        self.seq_means = None                   # view -> point -> [N, P, d] (estimators with a pooled form)
        if any(getattr(get_estimator(name), "pooled", None) is not None for name in cfg.estimators):
            d = lm.adapter.hidden_size
            self.seq_means = {v: {"boundary": z(n, L + 1, d), "mid": z(n, L, d)}
                              for v in dict.fromkeys(m for m in (self.mode, self.alt_mode) if m is not None)}
        self.cos_attn = z(n, L) if cfg.cosine else None
        self.cos_mlp = z(n, L) if cfg.cosine else None
        self.cos_layer = z(n, L) if cfg.cosine else None
        # last-token states of the current batch only; reduced to pairwise cosines at each batch end
        self.last = z(min(n, cfg.batch_size), L + 1, lm.adapter.hidden_size) if cfg.cosine else None
        self.last_cos = z(n, L + 1, L + 1) if cfg.cosine else None
        self.norm_boundary, self.norm_mid = z(n, L + 1), z(n, L)
        self.nonfinite = {"boundary": torch.zeros((), dtype=torch.int64, device=device),
                          "mid": torch.zeros((), dtype=torch.int64, device=device)}
        self.states = None
        self.rows = slice(0, 0)
        self.pos_idx: Tensor | None = None      # [B, m] token positions kept for MI in this batch
        self.state_rows = slice(0, 0)
        self.pre: Tensor | None = None
        self.mid: Tensor | None = None
        self.pre_norms = self.mid_norms = self.post_norms = None   # [B, T'] token norms of the points
        self.on_layer: Callable[[int], None] | None = None         # progress within a batch (block done)
        self.pre_keep = self.mid_keep = self.post_keep = None      # [B, T] kept tokens (sinks="exclude")
        self.b_full = self.b_med = self.b_sink = self.b_dots = None   # per batch, see start_batch / end_batch
        # the sink mask is needed at each point only where a view excludes sinks; else end_batch applies the rule
        self.sinks_now = "exclude" in (self.mode, self.alt_mode)

    def _view(self, x: Tensor) -> Tensor:
        return x[:, 1:] if self.mode == "first" and x.shape[1] > 1 else x

    def _f32(self, x: Tensor) -> Tensor:
        """The float32 copy of residual state ``x``, converted once per point and shared by every estimator
        and cosine that reads it (a no-op for float32 models)."""
        if x.dtype == torch.float32:
            return x
        hit = self._f32s.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        x32 = x.float()
        self._f32s[id(x)] = (x, x32)
        return x32

    def _stats(self, kind: str, col: int, x: Tensor, done: bool = False) -> tuple[Tensor, Tensor | None]:
        """Entropies, RMS norm, non-finite count, sink counts and sampled states of one residual point.

        Returns the per-token L2 norms ``[B, T']`` (reused by the cosines of this point's neighbours) and,
        with sinks="exclude", the kept-token mask ``[B, T]`` (else None). ``done``: the point estimator's entropy and
        the token norms are written already (:meth:`_point_write`)."""
        r = self.rows
        b = x.shape[0]
        # once per point: token norms → the sink mask → every estimator in the primary view, then the other view
        if not done and self.point is not None:
            done = self._point_write(kind, col, x)
        if done:
            full = self.b_full[kind][:b, col]                                     # [B, T]
        else:
            full = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)      # [B, T]
            # kept for the batch's end (:meth:`end_batch`): sink counts, massive ratios, RMS norms, non-finite counts
            self.b_full[kind][:b, col] = full
        sink = None
        if self.sinks_now:      # the pass needs the sink mask here (a view excludes sinks); else the batch's end
            med = full.median(dim=1, keepdim=True).values                         # [B, 1]
            sink = detect_sinks(full, self.cfg.sink_ratio, self.cfg.sink_max_frac, median=med)   # [B, T]
            self.b_med[kind][:b, col] = med.view(-1)
            self.b_sink[kind][:b, col] = sink
        x32 = self._f32(x)                                                         # [B, T, d] float32
        kept = ~sink if sink is not None else None                               # [B, T] one mask for both views
        keep = None
        memo = {} if self.alt else None          # per point: work an estimator can share between the two views
        for name, fn in self.views.items():     # both views in one call: (every token, kept tokens)
            h_all, h_kept = fn(x32, kept)
            self.entropy[name][kind][r, col] = h_kept if self.mode == "exclude" else h_all
            self.entropy_alt[name][kind][r, col] = h_all if self.mode == "exclude" else h_kept
        if self.mode == "exclude":
            keep = kept
            norms = full
            for name, fn in self.est.items():
                self.entropy[name][kind][r, col] = fn(x if name in self.raw else x32, keep, memo=memo)
        else:
            xs = self._view(x)
            norms = full[:, 1:] if xs is not x else full                          # [B, T']
            xs32 = self._view(x32)
            for name, fn in self.est.items():
                if done and name == self.point[0]:
                    continue
                self.entropy[name][kind][r, col] = fn(xs if name in self.raw else xs32, memo=memo)
        if self.seq_means is not None:
            for v, means in self.seq_means.items():
                w = (~sink if v == "exclude" else torch.ones_like(full, dtype=torch.bool)).to(torch.float32)  # [B, T]
                if v == "first":
                    w[:, 0] = 0
                means[kind][r, col] = (x32 * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        if self.alt:
            ka = kept if self.alt_mode == "exclude" else None
            for name, fn in self.alt.items():
                xv = x if name in self.raw else x32
                self.entropy_alt[name][kind][r, col] = fn(xv, ka, memo=memo) if ka is not None else fn(xv, memo=memo)
        if self.states is not None:
            b, m = self.pos_idx.shape
            picked = torch.gather(x, 1, self.pos_idx.unsqueeze(-1).expand(b, m, x.shape[-1]))
            # a view of the (pinned, on CUDA) host buffer: the copy runs asynchronously, no per-layer sync
            self.states[kind][self.state_rows, col].copy_(picked.reshape(b * m, -1), non_blocking=True)
            if keep is not None:
                self.batch_state_sink |= torch.gather(sink, 1, self.pos_idx).reshape(-1)
        return norms, keep

    def _point_write(self, kind: str, col: int, x: Tensor, block: tuple[Tensor, Tensor] | None = None,
                     mid_col: int | None = None) -> bool:
        """The point estimator's one read of ``x`` (:attr:`EstimatorInfo.point`): its entropy and the token norms into
        this batch's rows; with ``block`` (``resid_pre``, ``resid_mid``) the block's token dots into ``b_dots``; with
        ``mid_col`` also ``resid_mid``'s entropy and norms (column ``mid_col``). False where it does not run."""
        name, fn = self.point
        b, r = x.shape[0], self.rows
        mid_out = None if mid_col is None else (self.entropy[name]["mid"][r, mid_col], self.b_full["mid"][:b, mid_col])
        return fn(x, *(block or (None, None)), self.entropy[name][kind][r, col], self.b_full[kind][:b, col],
                  self.b_dots[:, :b] if block is not None else None, mid_out)

    def start_batch(self, b: int, t: int) -> None:
        """Per-batch buffers of every point's token norms ``[B, P, T]``, their medians ``[B, P]`` and sink flags."""
        if self.b_full is None or self.b_full["mid"].shape[0] < b or self.b_full["mid"].shape[2] != t:
            z = lambda *shape, dtype=torch.float32: torch.empty(*shape, device=self.dev, dtype=dtype)  # noqa: E731
            L = self.L
            self.b_full = {"boundary": z(b, L + 1, t), "mid": z(b, L, t)}
            self.b_med = {"boundary": z(b, L + 1), "mid": z(b, L)}
            self.b_sink = {"boundary": z(b, L + 1, t, dtype=torch.bool), "mid": z(b, L, t, dtype=torch.bool)}
            self.b_dots = z(3, b, t)             # the block's token dots, when the point estimator takes them

    def end_batch(self, b: int) -> None:
        """The per-point bookkeeping of the batch's ``b`` sequences, over all its points at once: sink counts, the
        massive-activation ratio, RMS token norms (over the view's tokens) and non-finite counts. Each is the
        same per-row operation as at the point itself, so the values are bit for bit those of one point at a time."""
        r = self.rows
        for kind in ("boundary", "mid"):
            full = self.b_full[kind][:b]                                                      # [B, P, T]
            if not self.sinks_now:      # the sink rule over every point at once: the same per-row operations
                p_, t = full.shape[1:]
                med = full.median(dim=2, keepdim=True).values                                  # [B, P, 1]
                flags = detect_sinks(full.reshape(b * p_, t), self.cfg.sink_ratio, self.cfg.sink_max_frac,
                                     median=med.reshape(b * p_, 1))
                self.b_med[kind][:b] = med.squeeze(2)
                self.b_sink[kind][:b] = flags.view(b, p_, t)
            med, sink = self.b_med[kind][:b], self.b_sink[kind][:b]                           # [B, P], [B, P, T]
            self.sink_counts[kind] += sink.sum(dim=(0, 2))
            self.sink_counts[kind + "_pos0"] += sink[:, :, 0].sum(0)
            self.massive[kind][r] = full.amax(-1) / med.clamp_min(1e-30)
            if self.mode == "exclude":
                keep = ~sink
                ms = (full.pow(2) * keep).sum(-1) / keep.sum(-1).clamp_min(1)
            else:
                ms = (full[..., 1:] if self.mode == "first" and full.shape[-1] > 1 else full).pow(2).mean(-1)
            (self.norm_boundary if kind == "boundary" else self.norm_mid)[r] = ms.sqrt()
            self.nonfinite[kind] += (~torch.isfinite(full)).sum()  # a NaN/inf anywhere in a token → its norm
        if self.flag_first:
            self.first_flags.copy_(self.b_sink["boundary"][0])

    def _cos(self, a: Tensor, b: Tensor, na: Tensor, nb: Tensor, ka: Tensor | None = None,
             kb: Tensor | None = None, dot: Tensor | None = None) -> Tensor:
        """Per-sequence mean over (kept) tokens of cos(a_t, b_t), from precomputed token norms: ``[B]``.
        ``dot`` ``[B, T']``: the token dot products when computed already (:func:`analysis.measure.kernels.cosine_dots`)."""
        if dot is None:
            dot = (self._view(self._f32(a)) * self._view(self._f32(b))).sum(-1)
        cos = dot / (na * nb).clamp_min(1e-8)
        if ka is None:
            return cos.mean(-1)
        keep = ka & kb
        return (cos * keep).sum(-1) / keep.sum(-1).clamp_min(1)

    def _here(self, x: Tensor) -> Tensor:
        return x if x.device == self.dev else x.to(self.dev)  # layer offloaded / on another GPU (device_map)

    # hook bodies -----------------------------------------------------------------------------------
    def layer_pre(self, layer: int, x: Tensor) -> None:
        if threading.get_ident() != self.thread:
            return
        self.pre = x = self._here(x)
        if layer == 0 or self.post_norms is None:
            self.pre_norms, self.pre_keep = self._stats("boundary", layer, x)
            if self.last is not None:
                self.last[: x.shape[0], layer] = x[:, -1].float()
        else:  # resid_pre[l] is resid_post[l-1]: its statistics were taken there
            self.pre_norms, self.pre_keep = self.post_norms, self.post_keep

    def layer_mid(self, layer: int, x: Tensor) -> None:
        if threading.get_ident() != self.thread:
            return
        self.mid = x = self._here(x)
        if self.point is not None and self.cos_mlp is not None:
            self.mid_later = True    # read at the block's end with resid_post and the dots (one read of it, not two)
            return
        self.mid_norms, self.mid_keep = self._stats("mid", layer, x)   # the block's cosines: at resid_post

    def layer_post(self, layer: int, y: Tensor) -> None:
        if threading.get_ident() != self.thread:
            return
        y = self._here(y)
        block = (self.pre, self.mid) if self.cos_mlp is not None else None
        # the point estimator's one read of the block's end: resid_post, the dots, and resid_mid when it waited
        done = self.point is not None and self._point_write("boundary", layer + 1, y, block,
                                                            layer if self.mid_later else None)
        if self.mid_later:
            self.mid_later = False
            self.mid_norms, self.mid_keep = self._stats("mid", layer, self.mid, done=done)
        self.post_norms, self.post_keep = self._stats("boundary", layer + 1, y, done=done)
        dots = self.b_dots[:, : y.shape[0]] if done and block is not None else None
        if self.cos_mlp is not None:
            # the three token dot products of the block in one compiled pass over its points (else None: PyTorch)
            t0 = 1 if self.mode == "first" and y.shape[1] > 1 else 0
            if dots is None:
                dots = kernels.cosine_dots(self._f32(self.pre), self._f32(self.mid), self._f32(y), t0)  # [3, B, T']
            r = self.rows
            outs = (self.cos_attn[r, layer], self.cos_mlp[r, layer], self.cos_layer[r, layer])   # [B] views
            norms = (self.pre_norms, self.mid_norms, self.post_norms)
            keeps = (self.pre_keep, self.mid_keep, self.post_keep)
            # every token (no masks) with the dots at hand: the three means in one compiled call, else PyTorch
            if not (dots is not None and all(k is None for k in keeps) and onepass.block_cosines(dots, *norms, *outs)):
                for k, (a, b, i, j) in enumerate(((self.pre, self.mid, 0, 1), (self.mid, y, 1, 2), (self.pre, y, 0, 2))):
                    outs[k].copy_(self._cos(a, b, norms[i], norms[j], keeps[i], keeps[j],
                                            dot=None if dots is None else dots[k]))
            self.last[: y.shape[0], layer + 1] = y[:, -1].float()
        self.pre = self.mid = None
        hit = self._f32s.get(id(y))       # only resid_post's copy outlives the layer (it is the next resid_pre)
        self._f32s = {id(y): hit} if hit is not None and hit[0] is y else {}
        if self.on_layer is not None:
            self.on_layer(layer)


def _first_tensor(args, kwargs, key: str = "hidden_states") -> Tensor:
    if args:
        return args[0]
    return kwargs[key]


def _output_tensor(out) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _install(rec: _Recorder) -> list:
    ad = rec.lm.adapter
    handles = []
    for i in range(ad.num_layers):
        layer = ad.layers[i]
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, kw, i=i: rec.layer_pre(i, _first_tensor(a, kw)), with_kwargs=True))
        handles.append(ad.mid_norm(i).register_forward_pre_hook(
            lambda m, a, kw, i=i: rec.layer_mid(i, _first_tensor(a, kw)), with_kwargs=True))
        handles.append(layer.register_forward_hook(
            lambda m, a, kw, out, i=i: rec.layer_post(i, _output_tensor(out)), with_kwargs=True))
    return handles


def _state_positions(n: int, t: int, total: int, seed: int, skip_first: bool) -> Tensor:
    """Seeded token positions per sequence: ``[N, m]`` with ``m = ceil(total / N)``, sorted."""
    lo = 1 if skip_first and t > 1 else 0
    m = max(1, min(t - lo, math.ceil(total / n)))
    g = torch.Generator().manual_seed(seed)
    pos = torch.stack([torch.randperm(t - lo, generator=g)[:m] + lo for _ in range(n)])
    return pos.sort(dim=1).values


def capture(lm: LoadedModel, input_ids: Tensor, cfg: CaptureConfig, progress: Progress | None = None,
            should_stop: Callable[[], bool] | None = None, offset: int = 0, total: int | None = None,
            checkpoint: Callable[[CaptureStats], None] | None = None,
            checkpoint_every_s: float = 30.0, preview: Callable[[CaptureStats], None] | None = None,
            preview_every_s: float = 2.0) -> CaptureStats:
    """Run the analysis pass over ``input_ids [N, T]`` and return per-sequence statistics.

    ``should_stop`` is polled between batches; when it returns True the pass ends early and the
    returned stats cover the first ``n_done`` sequences (``completed=False``). To resume an
    interrupted run, pass the remaining rows with ``offset`` (their index in the full set of ``total``
    rows, which keeps the seeded state subsample identical) and :func:`merge_stats` the parts.
    ``checkpoint(partial_stats)`` is called at most every ``checkpoint_every_s`` seconds.
    ``progress`` is also told, at most every half second, how far the current batch is (blocks done), so a
    slow batch never looks frozen. ``preview(partial_stats)`` (without the sampled MI states) is called
    after the first batch and then at most every ``preview_every_s`` seconds, to draw curves as they fill.
    """
    t0 = time.perf_counter()
    n, t = input_ids.shape
    total = total or offset + n
    dev = lm.device if lm.device is not None else torch.device("cpu")
    rec = _Recorder(lm, n, cfg, dev)
    if cfg.state_tokens > 0:
        rec.all_pos = _state_positions(total, t, cfg.state_tokens, cfg.seed, cfg.sink_mode == "first")[offset:offset + n]
        m = rec.all_pos.shape[1]
        pin = dev.type == "cuda"
        rec.states = {"boundary": torch.zeros(n * m, lm.num_layers + 1, lm.adapter.hidden_size, pin_memory=pin),
                      "mid": torch.zeros(n * m, lm.num_layers, lm.adapter.hidden_size, pin_memory=pin)}
        rec.state_sink = torch.zeros(n * m, dtype=torch.bool)
    if cfg.first_flags and offset == 0 and n > 0:
        rec.first_flags = torch.zeros(lm.num_layers + 1, t, dtype=torch.bool, device=dev)
    handles = _install(rec)
    base = lm.adapter.base
    done, last_ckpt, last_preview = 0, time.perf_counter(), None
    if progress is not None:
        tick = [time.perf_counter()]

        def _within_batch(layer: int) -> None:
            now = time.perf_counter()
            if now - tick[0] < PROGRESS_EVERY_S or layer + 1 >= rec.L:
                return
            tick[0] = now
            b = rec.rows.stop - rec.rows.start
            progress((offset + rec.rows.start + b * (layer + 1) / rec.L) / total,
                     f"analysed {offset + rec.rows.start}/{total} sequences · block {layer + 1}/{rec.L} "
                     f"of the next {b}")

        rec.on_layer = _within_batch
    try:
        with torch.inference_mode():
            for s in range(0, n, cfg.batch_size):
                if should_stop is not None and should_stop():
                    break
                e = min(n, s + cfg.batch_size)
                rec.rows = slice(s, e)
                rec.flag_first = rec.first_flags is not None and s == 0
                if rec.states is not None:
                    m = rec.all_pos.shape[1]
                    rec.pos_idx = rec.all_pos[s:e].to(dev)
                    rec.state_rows = slice(s * m, e * m)
                    rec.batch_state_sink = torch.zeros((e - s) * m, dtype=torch.bool, device=dev)
                rec.start_batch(e - s, t)
                base(input_ids=input_ids[s:e].to(dev), use_cache=False)
                rec.end_batch(e - s)
                if rec.last is not None:
                    rec.last_cos[s:e] = _pairwise_cos(rec.last[: e - s])
                if rec.states is not None and rec.mode == "exclude":
                    rec.state_sink[rec.state_rows] = rec.batch_state_sink.cpu()
                done = e
                if progress is not None:
                    progress((offset + done) / total, f"analysed {offset + done}/{total} sequences")
                if preview is not None and e < n and (last_preview is None
                                                      or time.perf_counter() - last_preview > preview_every_s):
                    preview(_collect(rec, done, time.perf_counter() - t0, n, with_states=False))
                    last_preview = time.perf_counter()
                if checkpoint is not None and e < n and time.perf_counter() - last_ckpt > checkpoint_every_s:
                    checkpoint(_collect(rec, done, time.perf_counter() - t0, n))
                    last_ckpt = time.perf_counter()
    finally:
        for h in handles:
            h.remove()
        rec.pre = rec.mid = rec.pre_norms = rec.mid_norms = rec.post_norms = None
        rec.pre_keep = rec.mid_keep = rec.post_keep = None
        rec._f32s = {}
    return _collect(rec, done, time.perf_counter() - t0, n)


def _collect(rec: _Recorder, done: int, seconds: float, n: int, with_states: bool = True) -> CaptureStats:
    """Stats of the first ``done`` rows, moved to the CPU (the only host transfer of the pass)."""
    if rec.dev.type == "cuda":
        torch.cuda.synchronize(rec.dev)  # the asynchronous state copies must have landed
    keep = slice(0, done)
    cpu = lambda x: None if x is None else x[keep].cpu()  # noqa: E731
    states = None
    if rec.states is not None and with_states:
        m = rec.all_pos.shape[1]
        ok = ~rec.state_sink[: done * m]   # sampled tokens that are a sink anywhere leave the MI states
        states = {k: v[: done * m][ok] if rec.mode == "exclude" else v[: done * m].clone()
                  for k, v in rec.states.items()}
    return CaptureStats(
        num_layers=rec.L, n_done=done,
        entropy={name: {k: cpu(v) for k, v in d.items()} for name, d in rec.entropy.items()},
        cos_attn=cpu(rec.cos_attn), cos_mlp=cpu(rec.cos_mlp), cos_layer=cpu(rec.cos_layer),
        last_cos=cpu(rec.last_cos),
        norm_boundary=cpu(rec.norm_boundary), norm_mid=cpu(rec.norm_mid),
        nonfinite={k: int(v) for k, v in rec.nonfinite.items()}, states=states,
        seconds=seconds, completed=done == n, sinks={k: v.cpu() for k, v in rec.sink_counts.items()},
        entropy_alt={name: {k: cpu(v) for k, v in d.items()} for name, d in rec.entropy_alt.items()}
        if rec.alt_mode is not None else None,
        alt_mode=rec.alt_mode, massive={k: cpu(v) for k, v in rec.massive.items()},
        first_flags=rec.first_flags.cpu() if rec.first_flags is not None and done > 0 else None,
        seq_means=None if rec.seq_means is None or not with_states
        else {v: {k: cpu(t) for k, t in d.items()} for v, d in rec.seq_means.items()})


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


def _pairwise_cos(last: Tensor) -> Tensor:
    """``[N, L+1, d]`` last-token states → ``[N, L+1, L+1]`` cosine between every pair of boundaries."""
    u = last / last.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (u @ u.transpose(1, 2)).clamp_(-1.0, 1.0)
