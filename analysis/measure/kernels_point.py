"""One compiled pass over a residual point for the reference analysis (every token, one sinks view): token norms,
Bucket entropy and, at a block's end, the block's three token dot products (numba).

The capture's reference path reads each point several times: ``vector_norm`` for the token norms, the Bucket
kernel's range pass and counting pass, the cosines' dot products (which read the block's three points again), and
the sum of the ``[B, d · bins]`` cells. :func:`point_seq` reads each sequence of the point once from memory: one
pass over its tokens takes the norms, each dimension's range and the dots (with ``resid_pre`` and ``resid_mid``),
the second counts the tokens (the sequence is in the core's cache by then), and the cells' ``p log p`` are summed
in a per-sequence scratch row.

Every value is its PyTorch form's bit for bit:

* the norms are ``torch.linalg.vector_norm(x, dim=-1, dtype=float32)`` (``norm_kernel_tensor_iterator_impl``'s
  last-dimension path): squares added in 8 lanes (no fused multiply-add), the lanes in order, then the square root
  (:func:`norm_row`). Widths that are not a multiple of 8 are left to PyTorch: its scalar tail's order was not
  matched on every width (the hidden sizes of real models are multiples of 64);
* the counts and the table of ``p log p`` are :mod:`analysis.measure.kernels_numba`'s (shared code), and the sum
  of a sequence's cells is ATen's row sum (:func:`analysis.measure.kernels_dots.dot_row` with ones);
* the dots are :mod:`analysis.measure.kernels_dots`' rows.

:func:`analysis.measure.kernels.point_stats` checks the norms and the sums against PyTorch once per process and
width before it uses the kernel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from analysis.measure.kernels_dots import compile_slp, row
from analysis.measure.kernels_numba import count_ranged, range_row, range_start, scratch

f32 = np.float32


def norm_row(a, r0, d):  # pragma: no cover - compiled (by compile_slp)
    """``sqrt(sum(a[r0 : r0 + d] ** 2))`` in ``vector_norm``'s order for a width ``d`` that is a multiple of 8: 8 lanes,
    then the lanes in order."""
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = f32(0.0)
    nv = d // 8
    for v in range(nv):
        o = r0 + np.uint64(v * 8)
        e0 = a[o + np.uint64(0)]
        e1 = a[o + np.uint64(1)]
        e2 = a[o + np.uint64(2)]
        e3 = a[o + np.uint64(3)]
        e4 = a[o + np.uint64(4)]
        e5 = a[o + np.uint64(5)]
        e6 = a[o + np.uint64(6)]
        e7 = a[o + np.uint64(7)]
        c0 += e0 * e0
        c1 += e1 * e1
        c2 += e2 * e2
        c3 += e3 * e3
        c4 += e4 * e4
        c5 += e5 * e5
        c6 += e6 * e6
        c7 += e7 * e7
    s = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7
    return np.sqrt(s)


nrow = compile_slp(norm_row, "float32(float32[::1], uint64, int64)")


@njit(nogil=True, cache=True)
def take_row(x, s, t, xs, r, lo, hi, bad, norms):  # pragma: no cover - compiled
    """Token ``t`` of sequence ``s``: its norm into ``norms[s, t]``, its values into the range (:func:`token_range`'s
    rules) ``lo``/``hi``/``bad``."""
    norms[s, t] = nrow(xs, r, x.shape[2])
    range_row(x, s, t, lo, hi, bad)


@njit(nogil=True, cache=True)
def entropy_of(x, s, bins, work, tr, c, ones, acc):  # pragma: no cover - compiled
    """Sequence ``s``'s Bucket entropy once its range is in ``work`` (:func:`scratch`'s arrays, the range taken):
    counts (:func:`count_ranged`, from cache), each cell's ``p log p`` from the table row ``tr`` into the scratch
    ``c [d · bins]``, −(ATen's row sum)."""
    lo, hi, bad, scale, idx, base = work
    flat = np.zeros(x.shape[2] * bins, np.uint16)
    count_ranged(x, s, bins, lo, hi, bad, scale, idx, base, flat)
    for k in range(flat.shape[0]):
        c[k] = tr[flat[k]]
    return -row(c, ones, np.uint64(0), c.shape[0], acc)


@njit(nogil=True, cache=True)
def point_seq(x, p, m, dots, s, bins, tab, norms, h, norms_m, h_m, c, ones, acc):  # pragma: no cover - compiled
    """Sequence ``s`` of the point ``x [B, T, d]`` (float32, contiguous), every token: ``norms[s]`` ``[T]`` and
    ``h[s]`` = −Σ of its Bucket cells' ``p log p`` (``tab[s]`` row, ``c`` ``[d · bins]`` scratch). With ``dots``
    (``[3, B, T]``, else empty): the dots p·m, m·x, p·x of ``resid_pre`` ``p`` and ``resid_mid`` ``m``; with ``h_m``
    (``[B]``, else empty) also ``resid_mid``'s own ``norms_m[s]`` and ``h_m[s]``, its rows read once for both."""
    n, d = x.shape[1], x.shape[2]
    with_dots = dots.shape[0] == 3
    with_mid = h_m.shape[0] > 0
    xs = x[s].reshape(-1)
    ms = m[s].reshape(-1) if with_dots or with_mid else xs
    ps = p[s].reshape(-1) if with_dots else xs
    work = scratch(d, bins)                      # lo, hi, bad, scale, idx, base of x; of m where it is taken
    work_m = scratch(d, bins) if with_mid else work
    range_start(work[0], work[1], work[2])
    range_start(work_m[0], work_m[1], work_m[2])
    for t in range(n):                           # pass 1: norms, ranges, dots
        r = np.uint64(t * d)
        take_row(x, s, t, xs, r, work[0], work[1], work[2], norms)
        if with_mid:
            take_row(m, s, t, ms, r, work_m[0], work_m[1], work_m[2], norms_m)
        if with_dots:
            dots[0, s, t] = row(ps, ms, r, d, acc)
            dots[1, s, t] = row(ms, xs, r, d, acc)
            dots[2, s, t] = row(ps, xs, r, d, acc)
    if with_mid:
        h_m[s] = entropy_of(m, s, bins, work_m, tab[s], c, ones, acc)
    h[s] = entropy_of(x, s, bins, work, tab[s], c, ones, acc)


@njit(nogil=True, cache=True)
def point(x, p, m, dots, bins, tab, norms, h, norms_m, h_m, cells, ones):  # pragma: no cover - compiled
    acc = np.empty((4, 32), np.float32)
    for s in range(x.shape[0]):
        point_seq(x, p, m, dots, s, bins, tab, norms, h, norms_m, h_m, cells[s], ones, acc)


@njit(nogil=True, cache=True, parallel=True)
def point_par(x, p, m, dots, bins, tab, norms, h, norms_m, h_m, cells, ones):  # pragma: no cover - compiled
    for s in prange(x.shape[0]):
        acc = np.empty((4, 32), np.float32)
        point_seq(x, p, m, dots, s, bins, tab, norms, h, norms_m, h_m, cells[s], ones, acc)


@njit(nogil=True, cache=True)
def cosines(dots, n_pre, n_mid, n_post, out_attn, out_mlp, out_layer, ones, eps):  # pragma: no cover - compiled
    """A block's three mean token cosines per sequence, ``(dot / clamp_min(|a|·|b|, eps)).mean(-1)`` for the pairs
    (pre, mid), (mid, post), (pre, post): ``dots [3, B, T]``, token norms ``[B, T]``, outputs ``[B]``. The mean is
    ATen's: the row's sum (:func:`~analysis.measure.kernels_dots.dot_row` with ones), then ÷ T."""
    acc = np.empty((4, 32), np.float32)
    n = dots.shape[2]
    c = np.empty(n, np.float32)
    for k in range(3):
        na = n_mid if k == 1 else n_pre
        nb = n_mid if k == 0 else n_post
        out = out_attn if k == 0 else (out_mlp if k == 1 else out_layer)
        for b in range(dots.shape[1]):
            for t in range(n):
                q = na[b, t] * nb[b, t]
                if q < eps:                          # clamp_min; NaN stays NaN
                    q = eps
                c[t] = dots[k, b, t] / q
            out[b] = row(c, ones, np.uint64(0), n, acc) / f32(n)


@njit(nogil=True, cache=True)
def norms_only(x, out):  # pragma: no cover - compiled
    """Every token's norm (:func:`norm_row`), for the check against PyTorch."""
    xs = x.reshape(-1)
    d = x.shape[1]
    for t in range(x.shape[0]):
        out[t] = nrow(xs, np.uint64(t * d), d)


@njit(nogil=True, cache=True)
def row_sums(x, ones, out):  # pragma: no cover - compiled
    """Every row's ATen sum (:func:`~analysis.measure.kernels_dots.dot_row` with ones), for the check."""
    acc = np.empty((4, 32), np.float32)
    for i in range(x.shape[0]):
        out[i] = row(x[i], ones, np.uint64(0), x.shape[1], acc)


KERNELS = {"point": point, "point_par": point_par, "cosines": cosines, "norms_only": norms_only, "row_sums": row_sums}
