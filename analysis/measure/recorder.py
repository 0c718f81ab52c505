"""The capture's forward hooks (:class:`_Recorder`): at each ``resid_pre``, ``resid_mid`` and ``resid_post`` point of a
batch they reduce the states at once to per-sequence statistics (entropies in one or both sinks views, token norms,
sink flags, cosines, sampled MI states) written into preallocated tensors. :mod:`analysis.measure.capture` installs
them and drives the pass."""
from __future__ import annotations

import threading
from typing import Callable

import torch
from torch import Tensor

from analysis.measure import kernels, onepass
from analysis.measure.capture_types import CaptureConfig
from analysis.measure.estimators import get_estimator
from analysis.registry import resolve
from analysis.models.loading import LoadedModel
from analysis.measure.sinks import MASKED, bind_masked, check_mode, detect_sinks


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
