"""Compiled CPU kernels (numba) for the analysis pass, each exactly its PyTorch form (today: the Bucket counts).

**Bucket counts** (:func:`bucket_counts`). The PyTorch form of :func:`~analysis.measure.estimators.entropy_bucket`
makes an ``int32`` bin index per token and dimension (five elementwise passes and two reductions over
``[B, N, d]``), then counts them with a serial ``index_add_``. Here one compiled loop per sequence takes each
dimension's range, then bins and counts every token, with that sequence's histogram in cache. The *counts* are
integers, so they equal the PyTorch form's exactly, and the entropy that follows (``p = count / N``, ``p log p``,
the sum) stays in PyTorch. Every float operation is the PyTorch form's, in float32 and in its order:
``scale = reciprocal(max(hi − lo, tiny)) · bins`` (PyTorch computes ``bins / t`` as ``t.reciprocal() * bins``),
``(x − lo) · scale``, then x86's float → int32 conversion (NaN and ``|f| ≥ 2³¹`` give ``INT32_MIN``, which the
clamp sends to bin 0).

The results are bit-identical to the PyTorch form (``tests/measure/test_kernels.py``,
``tests/measure/test_kernels_identical.py``). Elsewhere — tensors not on the CPU or not float32, processors other
than x86 (they convert float → int differently), numba missing, or ``ENTROSCOPE_FUSED_KERNELS=0`` — the functions
return ``None`` and the caller runs the PyTorch form. Sequences are split over threads on numba's thread-safe
layer (OpenMP or TBB); ``ENTROSCOPE_KERNELS_PARALLEL=0`` keeps them serial.
"""
from __future__ import annotations

import os
import platform

import numpy as np
import torch
from torch import Tensor

_X86 = platform.machine().lower() in ("x86_64", "amd64")
_KERNELS = None          # name -> numba kernel, compiled on first use; False when numba is missing


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        try:
            _KERNELS = _compile()
        except ImportError:
            _KERNELS = False
    return _KERNELS


def _compile():
    import numpy as np
    from numba import njit, prange

    f32 = np.float32
    tiny = f32(np.finfo(np.float32).tiny)
    big = f32(2147483648.0)            # 2^31: float → int32 is defined (truncation) strictly inside ±2^31

    @njit(nogil=True, cache=True)
    def plain_seq(x, b, bins, out):  # pragma: no cover - compiled
        """Sequence ``b`` of ``x [B, N, d]``, every token: ``out[b] [d, bins]`` += its Bucket counts."""
        n, d = x.shape[1], x.shape[2]
        lo = np.empty(d, np.float32)
        hi = np.empty(d, np.float32)
        bad = np.zeros(d, np.bool_)
        scale = np.empty(d, np.float32)
        idx = np.empty(d, np.int32)
        base = np.arange(d).astype(np.int32) * np.int32(bins)
        last = np.int32(bins - 1)
        zero = f32(0.0)
        flat = out[b].reshape(-1)                    # [d · bins] this sequence's cells
        for j in range(d):
            lo[j] = np.inf
            hi[j] = -np.inf
        for t in range(n):                           # amin / amax over tokens (NaN propagates, as in PyTorch)
            for j in range(d):
                v = x[b, t, j]
                if v < lo[j]:
                    lo[j] = v
                if v > hi[j]:
                    hi[j] = v
                if v != v:
                    bad[j] = True
        for j in range(d):
            if bad[j]:
                lo[j] = np.nan
                hi[j] = np.nan
            r = hi[j] - lo[j]
            if r < tiny:                              # clamp_min(tiny); NaN stays NaN
                r = tiny
            scale[j] = (f32(1.0) / r) * f32(bins)
        for t in range(n):
            for j in range(d):                       # branch-free, so it vectorises
                f = (x[b, t, j] - lo[j]) * scale[j]
                # x86's cvttps2dq: NaN and |f| >= 2^31 give INT32_MIN, which the clamp sends to 0
                g = f if (f >= zero) & (f < big) else zero
                idx[j] = min(np.int32(g), last) + base[j]
            for j in range(d):
                flat[idx[j]] += 1

    @njit(nogil=True, cache=True)
    def masked_seq(x, keep, lo_in, hi_in, given, b, bins, out):  # pragma: no cover - compiled
        """Sequence ``b``, kept tokens only. Range: ``lo_in``/``hi_in [B, d]`` when ``given``, else the kept tokens'
        min/max with :func:`~analysis.measure.sinks.kept_range`'s semantics (0 where none is kept, NaN/±inf → 0).
        Bin: ``nan_to_num`` (NaN → 0, ±inf → ±max), clamp to ``[0, bins − 1]`` in float, truncate."""
        n, d = x.shape[1], x.shape[2]
        lo = np.empty(d, np.float32)
        hi = np.empty(d, np.float32)
        bad = np.zeros(d, np.bool_)
        scale = np.empty(d, np.float32)
        idx = np.empty(d, np.int32)
        base = np.arange(d).astype(np.int32) * np.int32(bins)
        zero = f32(0.0)
        top = f32(bins - 1)
        flat = out[b].reshape(-1)
        if given:
            for j in range(d):
                lo[j] = lo_in[b, j]
                hi[j] = hi_in[b, j]
        else:
            some = False
            for j in range(d):
                lo[j] = np.inf
                hi[j] = -np.inf
            for t in range(n):
                if not keep[b, t]:
                    continue
                some = True
                for j in range(d):
                    v = x[b, t, j]
                    if v < lo[j]:
                        lo[j] = v
                    if v > hi[j]:
                        hi[j] = v
                    if v != v:
                        bad[j] = True
            for j in range(d):
                if not some or bad[j] or lo[j] == np.inf or lo[j] == -np.inf:
                    lo[j] = zero
                if not some or bad[j] or hi[j] == np.inf or hi[j] == -np.inf:
                    hi[j] = zero
        for j in range(d):
            r = hi[j] - lo[j]
            if r < tiny:
                r = tiny
            scale[j] = (f32(1.0) / r) * f32(bins)
        for t in range(n):
            if not keep[b, t]:
                continue
            for j in range(d):                       # nan_to_num → clamp in float → truncate, branch-free
                f = (x[b, t, j] - lo[j]) * scale[j]
                g = f if f > zero else zero          # NaN, -inf and negatives → 0
                idx[j] = np.int32(min(g, top)) + base[j]
            for j in range(d):
                flat[idx[j]] += 1

    @njit(nogil=True, cache=True)
    def plain(x, bins, out):  # pragma: no cover - compiled
        for b in range(x.shape[0]):
            plain_seq(x, b, bins, out)

    @njit(nogil=True, cache=True)
    def masked(x, keep, lo_in, hi_in, given, bins, out):  # pragma: no cover - compiled
        for b in range(x.shape[0]):
            masked_seq(x, keep, lo_in, hi_in, given, b, bins, out)

    @njit(nogil=True, cache=True, parallel=True)
    def plain_par(x, bins, out):  # pragma: no cover - compiled
        for b in prange(x.shape[0]):                 # sequences write disjoint cells: the same counts
            plain_seq(x, b, bins, out)

    @njit(nogil=True, cache=True, parallel=True)
    def masked_par(x, keep, lo_in, hi_in, given, bins, out):  # pragma: no cover - compiled
        for b in prange(x.shape[0]):
            masked_seq(x, keep, lo_in, hi_in, given, b, bins, out)

    return {"plain": plain, "masked": masked, "plain_par": plain_par, "masked_par": masked_par}


_PARALLEL: bool | None = None   # numba has a thread-safe threading layer (OpenMP or TBB) for the parallel kernels


def _parallel(x: Tensor) -> bool:
    """Split the sequences over threads? Only with more than one intra-op thread and more than one sequence, and only
    on a thread-safe numba layer: the app analyses from several threads at once, and numba's ``workqueue`` layer
    aborts the process on concurrent launches. A layer the user chose (``NUMBA_THREADING_LAYER``) is kept; the
    default becomes ``threadsafe`` (OpenMP or TBB), and where neither loads the serial kernels run."""
    global _PARALLEL
    if x.shape[0] < 2 or torch.get_num_threads() < 2 or os.environ.get("ENTROSCOPE_KERNELS_PARALLEL", "1") == "0":
        return False
    if _PARALLEL is None:
        import numba

        layer = numba.config.THREADING_LAYER
        if layer == "default":
            numba.config.THREADING_LAYER = layer = "threadsafe"
        _PARALLEL = layer in ("threadsafe", "omp", "tbb")
    return _PARALLEL


def _enabled(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 3 and x.numel() > 0 and _X86
            and os.environ.get("ENTROSCOPE_FUSED_KERNELS", "1") != "0" and bool(_kernels()))


def bucket_counts(x: Tensor, bins: int, keep: Tensor | None = None, lo: Tensor | None = None,
           hi: Tensor | None = None) -> Tensor | None:
    """``int32 [B, d, bins]`` Bucket counts of ``x [B, N, d]`` (float32), or ``None`` (use the PyTorch form).

    ``keep`` ``[B, N]`` bool: only kept tokens are counted, with the masked form's range and bin rules
    (:func:`analysis.measure.sinks.entropy_bucket_masked`); ``lo``/``hi`` ``[B, 1, d]``: a given range for it
    (the robust form's quantiles). Without ``keep``: every token, :func:`entropy_bucket`'s rules."""
    if not _enabled(x):
        return None
    b, n, d = x.shape
    out = torch.zeros(b, d, bins, dtype=torch.int32)
    xa, oa = x.detach().numpy(), out.numpy()
    if keep is None:
        args = (xa, bins, oa)
    else:
        ka = keep.detach().to(device="cpu").contiguous().numpy()
        given = lo is not None
        if given:
            la = lo.detach().reshape(b, d).contiguous().numpy()
            ha = hi.detach().reshape(b, d).contiguous().numpy()
        else:
            la = ha = np.zeros((1, 1), np.float32)
        args = (xa, ka, la, ha, given, bins, oa)
    _launch("plain" if keep is None else "masked", args, x, reset=out.zero_)
    return out


def _launch(name: str, args: tuple, x: Tensor, reset=None) -> None:
    """Run kernel ``name`` (its ``_par`` form where :func:`_parallel` allows) on ``args``."""
    global _PARALLEL
    k = _kernels()
    if _parallel(x):
        try:
            import numba

            numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
            k[name + "_par"](*args)
            return
        except ValueError:              # no thread-safe threading layer loads here: serial from now on
            _PARALLEL = False
            if reset is not None:
                reset()
    k[name](*args)
