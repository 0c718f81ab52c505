"""A row dot product summed exactly as ATen sums a contiguous float32 row, compiled (numba) for the capture's cosines.

``(a * b).sum(-1)`` writes the ``[B, T, d]`` product and reads it back; :func:`dot_row` forms each product and adds it
in ATen's order directly (``aten/src/ATen/native/cpu/SumKernel.cpp``, ``vectorized_inner_sum``):

* products rounded to float32 (no fused multiply-add: numba contracts nothing without ``fastmath``);
* ``row_sum`` over 8-lane vectors (the sum kernel's vector width on x86, AVX-512 machines included): the row as
  ``(-1, 4)`` vectors, four interleaved partial vectors (``ilp_factor``) — their 4 × 8 lanes are the 32 consecutive
  elements of one step — and ``multi_row_sum``'s four-level cascade (a level is pushed up every
  ``2^level_power`` steps, ``level_power = max(4, CeilLog2(steps) / 4)``);
* the vectors left over join partial 0; the partials are added 0 + 1 + 2 + 3; then the row's scalar tail, and last
  the 8 lanes in order.

The 32 level-0 accumulators are written out as scalars so that LLVM's SLP vectoriser packs them into four 8-lane
vectors; numba leaves SLP off by default, so :func:`compile_slp` compiles :func:`dot_row` with it on, eagerly
(:data:`SIGNATURES`), at import. Vectorised or not, the additions are the same, so the bits are too (≈ 1.5× faster).
:func:`analysis.measure.kernels.cosine_dots` checks the bits against PyTorch once per process before using them.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

f32 = np.float32
#: eager signatures, so that the module is compiled (or loaded from numba's cache) where SLP is switched on
SIGNATURES = {
    "dot_row": "float32(float32[::1], float32[::1], uint64, int64, float32[:, ::1])",
}


@njit(nogil=True, cache=True)
def ceil_log2(x):  # pragma: no cover - compiled
    """c10's ``CeilLog2``: 1 for ``x <= 2``, else the bit width of ``x − 1``."""
    if x <= 2:
        return 1
    c = 0
    v = x - 1
    while v > 0:
        c += 1
        v >>= 1
    return c


def dot_row(a, b, r0, d, acc):  # pragma: no cover - compiled (by compile_slp)
    """``sum(a[r0 : r0 + d] * b[r0 : r0 + d])`` in ATen's order (module doc); ``acc`` ``[4, 32]`` float32 scratch
    (cascade levels 1–3; level 0 lives in ``c0 … c31``)."""
    nv = d // 8
    size = nv // 4                                       # steps of four 8-lane vectors
    level_power = max(4, ceil_log2(size) // 4)
    level_mask = (1 << level_power) - 1
    acc[:] = f32(0.0)
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = c12 = c13 = c14 = c15 = c16 = c17 = c18 = c19 = c20 = c21 = c22 = c23 = c24 = c25 = c26 = c27 = c28 = c29 = c30 = c31 = f32(0.0)
    i = 0
    while i < size:
        o = r0 + np.uint64(i * 32)
        c0 += a[o + np.uint64(0)] * b[o + np.uint64(0)]
        c1 += a[o + np.uint64(1)] * b[o + np.uint64(1)]
        c2 += a[o + np.uint64(2)] * b[o + np.uint64(2)]
        c3 += a[o + np.uint64(3)] * b[o + np.uint64(3)]
        c4 += a[o + np.uint64(4)] * b[o + np.uint64(4)]
        c5 += a[o + np.uint64(5)] * b[o + np.uint64(5)]
        c6 += a[o + np.uint64(6)] * b[o + np.uint64(6)]
        c7 += a[o + np.uint64(7)] * b[o + np.uint64(7)]
        c8 += a[o + np.uint64(8)] * b[o + np.uint64(8)]
        c9 += a[o + np.uint64(9)] * b[o + np.uint64(9)]
        c10 += a[o + np.uint64(10)] * b[o + np.uint64(10)]
        c11 += a[o + np.uint64(11)] * b[o + np.uint64(11)]
        c12 += a[o + np.uint64(12)] * b[o + np.uint64(12)]
        c13 += a[o + np.uint64(13)] * b[o + np.uint64(13)]
        c14 += a[o + np.uint64(14)] * b[o + np.uint64(14)]
        c15 += a[o + np.uint64(15)] * b[o + np.uint64(15)]
        c16 += a[o + np.uint64(16)] * b[o + np.uint64(16)]
        c17 += a[o + np.uint64(17)] * b[o + np.uint64(17)]
        c18 += a[o + np.uint64(18)] * b[o + np.uint64(18)]
        c19 += a[o + np.uint64(19)] * b[o + np.uint64(19)]
        c20 += a[o + np.uint64(20)] * b[o + np.uint64(20)]
        c21 += a[o + np.uint64(21)] * b[o + np.uint64(21)]
        c22 += a[o + np.uint64(22)] * b[o + np.uint64(22)]
        c23 += a[o + np.uint64(23)] * b[o + np.uint64(23)]
        c24 += a[o + np.uint64(24)] * b[o + np.uint64(24)]
        c25 += a[o + np.uint64(25)] * b[o + np.uint64(25)]
        c26 += a[o + np.uint64(26)] * b[o + np.uint64(26)]
        c27 += a[o + np.uint64(27)] * b[o + np.uint64(27)]
        c28 += a[o + np.uint64(28)] * b[o + np.uint64(28)]
        c29 += a[o + np.uint64(29)] * b[o + np.uint64(29)]
        c30 += a[o + np.uint64(30)] * b[o + np.uint64(30)]
        c31 += a[o + np.uint64(31)] * b[o + np.uint64(31)]
        i += 1
        if (i & level_mask) == 0:                        # a whole block of 2^level_power steps: push level 0 up
            acc[1, 0] += c0
            acc[1, 1] += c1
            acc[1, 2] += c2
            acc[1, 3] += c3
            acc[1, 4] += c4
            acc[1, 5] += c5
            acc[1, 6] += c6
            acc[1, 7] += c7
            acc[1, 8] += c8
            acc[1, 9] += c9
            acc[1, 10] += c10
            acc[1, 11] += c11
            acc[1, 12] += c12
            acc[1, 13] += c13
            acc[1, 14] += c14
            acc[1, 15] += c15
            acc[1, 16] += c16
            acc[1, 17] += c17
            acc[1, 18] += c18
            acc[1, 19] += c19
            acc[1, 20] += c20
            acc[1, 21] += c21
            acc[1, 22] += c22
            acc[1, 23] += c23
            acc[1, 24] += c24
            acc[1, 25] += c25
            acc[1, 26] += c26
            acc[1, 27] += c27
            acc[1, 28] += c28
            acc[1, 29] += c29
            acc[1, 30] += c30
            acc[1, 31] += c31
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = c12 = c13 = c14 = c15 = c16 = c17 = c18 = c19 = c20 = c21 = c22 = c23 = c24 = c25 = c26 = c27 = c28 = c29 = c30 = c31 = f32(0.0)
            if (i & (level_mask << level_power)) == 0:
                for j in range(2, 4):
                    for m in range(32):
                        acc[j, m] += acc[j - 1, m]
                        acc[j - 1, m] = f32(0.0)
                    if (i & (level_mask << (j * level_power))) != 0:
                        break
    acc[0, 0] = c0
    acc[0, 1] = c1
    acc[0, 2] = c2
    acc[0, 3] = c3
    acc[0, 4] = c4
    acc[0, 5] = c5
    acc[0, 6] = c6
    acc[0, 7] = c7
    acc[0, 8] = c8
    acc[0, 9] = c9
    acc[0, 10] = c10
    acc[0, 11] = c11
    acc[0, 12] = c12
    acc[0, 13] = c13
    acc[0, 14] = c14
    acc[0, 15] = c15
    acc[0, 16] = c16
    acc[0, 17] = c17
    acc[0, 18] = c18
    acc[0, 19] = c19
    acc[0, 20] = c20
    acc[0, 21] = c21
    acc[0, 22] = c22
    acc[0, 23] = c23
    acc[0, 24] = c24
    acc[0, 25] = c25
    acc[0, 26] = c26
    acc[0, 27] = c27
    acc[0, 28] = c28
    acc[0, 29] = c29
    acc[0, 30] = c30
    acc[0, 31] = c31
    for j in range(1, 4):
        for m in range(32):
            acc[0, m] += acc[j, m]
    for v in range(size * 4, nv):                        # row_sum's leftover vectors join partial 0
        for lane in range(8):
            acc[0, lane] += a[r0 + np.uint64(v * 8 + lane)] * b[r0 + np.uint64(v * 8 + lane)]
    for k in range(1, 4):
        for lane in range(8):
            acc[0, lane] += acc[0, k * 8 + lane]
    s = f32(0.0)
    for e in range(nv * 8, d):                           # the scalar tail first, then the 8 lanes in order
        s += a[r0 + np.uint64(e)] * b[r0 + np.uint64(e)]
    for lane in range(8):
        s += acc[0, lane]
    return s


def compile_slp(fn, signature: str):
    """``fn`` compiled eagerly for ``signature`` with LLVM's SLP vectoriser on (numba's default leaves it off), this one
    function only; numba's on-disk cache serves later processes."""
    from numba.core import config

    slp = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        return njit(signature, nogil=True, cache=True)(fn)
    finally:
        config.SLP_VECTORIZE = slp


row = compile_slp(dot_row, SIGNATURES["dot_row"])


@njit(nogil=True, cache=True)
def cos3_seq(p, m, q, t0, s, out):  # pragma: no cover - compiled
    """Sequence ``s``: per token ``t >= t0``, ``out[:, s, t − t0]`` = the dots (p·m, m·q, p·q) of the residual points
    ``resid_pre``, ``resid_mid`` and ``resid_post`` (``[B, T, d]`` float32, contiguous), each row read once."""
    d = p.shape[2]
    acc = np.empty((4, 32), np.float32)
    x, y, z = p[s].reshape(-1), m[s].reshape(-1), q[s].reshape(-1)
    for t in range(t0, p.shape[1]):
        r = np.uint64(t * d)
        out[0, s, t - t0] = row(x, y, r, d, acc)
        out[1, s, t - t0] = row(y, z, r, d, acc)
        out[2, s, t - t0] = row(x, z, r, d, acc)


@njit(nogil=True, cache=True)
def cos3(p, m, q, t0, out):  # pragma: no cover - compiled
    for s in range(p.shape[0]):
        cos3_seq(p, m, q, t0, s, out)


@njit(nogil=True, cache=True, parallel=True)
def cos3_par(p, m, q, t0, out):  # pragma: no cover - compiled
    for s in prange(p.shape[0]):
        cos3_seq(p, m, q, t0, s, out)


KERNELS = {"cos3": cos3, "cos3_par": cos3_par}
