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
import time
from typing import Callable

import torch
from torch import Tensor

from analysis.models.loading import LoadedModel
# the pass's types and hooks, re-exported: callers import them from here
from analysis.measure.capture_types import ALT_VIEW, CaptureConfig, CaptureStats, merge_stats  # noqa: F401
from analysis.measure.recorder import _Recorder, bind_view  # noqa: F401

Progress = Callable[[float, str], None]
#: Within a batch, progress is reported after a block finishes at most this often (seconds).
PROGRESS_EVERY_S = 0.5


class StopRequested(Exception):
    """Raised inside the pass when ``should_stop()`` turns true; partial results are kept."""


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


def _pairwise_cos(last: Tensor) -> Tensor:
    """``[N, L+1, d]`` last-token states → ``[N, L+1, L+1]`` cosine between every pair of boundaries."""
    u = last / last.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (u @ u.transpose(1, 2)).clamp_(-1.0, 1.0)
