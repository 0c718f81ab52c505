"""The numba kernels behind :mod:`analysis.measure.kernels` (imported on first use, so numba stays optional).

Defined at module level so that numba's on-disk cache (``cache=True``, beside this file) serves every later
process: compiled once per installation, loaded in well under a second after that.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

f32 = np.float32
tiny = f32(np.finfo(np.float32).tiny)
big = f32(2147483648.0)            # 2^31: float → int32 is defined (truncation) strictly inside ±2^31
NEG_INF_KEY = np.int32(np.float32(-np.inf).view(np.int32) ^ np.int32(2147483647))   # -inf's order key


@njit(nogil=True, cache=True)
def token_range(x, b, keep, lo, hi, bad):  # pragma: no cover - compiled
    """Per dimension, min / max over sequence ``b``'s tokens (its kept ones unless ``keep`` is None) into ``lo``/``hi``;
    ``bad[j]`` where a NaN was seen. Returns whether any token was taken."""
    some = False
    range_start(lo, hi, bad)
    for t in range(x.shape[1]):
        if keep is not None and not keep[b, t]:
            continue
        some = True
        range_row(x, b, t, lo, hi, bad)
    return some


@njit(nogil=True, cache=True)
def range_start(lo, hi, bad):  # pragma: no cover - compiled
    """An empty range: ``lo`` = +inf, ``hi`` = −inf, no NaN seen."""
    for j in range(lo.shape[0]):
        lo[j] = np.inf
        hi[j] = -np.inf
        bad[j] = False


@njit(nogil=True, cache=True)
def range_row(x, b, t, lo, hi, bad):  # pragma: no cover - compiled
    """Token ``t`` of sequence ``b`` into the per-dimension range ``lo``/``hi`` (NaN skipped, flagged in ``bad``)."""
    for j in range(x.shape[2]):
        v = x[b, t, j]
        if v < lo[j]:
            lo[j] = v
        if v > hi[j]:
            hi[j] = v
        if v != v:
            bad[j] = True


@njit(nogil=True, cache=True)
def bin_scale(lo, hi, bins, scale):  # pragma: no cover - compiled
    """``scale = reciprocal(clamp_min(hi − lo, tiny)) · bins`` in float32, NaN kept (PyTorch's ``bins / t``)."""
    for j in range(lo.shape[0]):
        r = hi[j] - lo[j]
        if r < tiny:                              # clamp_min(tiny); NaN stays NaN
            r = tiny
        scale[j] = (f32(1.0) / r) * f32(bins)


@njit(nogil=True, cache=True)
def scratch(d, bins):  # pragma: no cover - compiled
    """Per-sequence work arrays: ``lo``, ``hi``, ``bad`` (NaN seen), ``scale``, bin ``idx`` and each dimension's
    first cell ``base = j · bins``."""
    return (np.empty(d, np.float32), np.empty(d, np.float32), np.empty(d, np.bool_), np.empty(d, np.float32),
            np.empty(d, np.int32), np.arange(d).astype(np.int32) * np.int32(bins))


@njit(nogil=True, cache=True)
def emit(flat, b, out, tab, outp):  # pragma: no cover - compiled
    """Sequence ``b``'s cell counts ``flat [d · bins]`` into ``out[b]`` (counts), or, where ``tab`` is given
    (``[B, N + 1]``, row ``b`` = ``p log p`` of every possible count of that sequence), their ``p log p`` into
    ``outp[b]``."""
    if tab.shape[0] == 0:
        o = out[b].reshape(-1)
        for c in range(flat.shape[0]):
            o[c] = flat[c]
    else:
        o = outp[b].reshape(-1)
        row = tab[b]
        for c in range(flat.shape[0]):
            o[c] = row[flat[c]]


@njit(nogil=True, cache=True)
def plain_counts(x, b, bins):  # pragma: no cover - compiled
    """Sequence ``b`` of ``x [B, N, d]``, every token: its Bucket cell counts ``[d · bins]`` with
    :func:`~analysis.measure.estimators.entropy_bucket`'s range (``amin``/``amax``, NaN propagates) and bins, and
    whether every dimension's range and scale are finite."""
    lo, hi, bad, scale, idx, base = scratch(x.shape[2], bins)
    flat = np.zeros(x.shape[2] * bins, np.uint16)  # [d · bins] this sequence's cells (16-bit: N ≤ 65535, half the cache)
    token_range(x, b, None, lo, hi, bad)
    finite = count_ranged(x, b, bins, lo, hi, bad, scale, idx, base, flat)
    return flat, finite


@njit(nogil=True, cache=True)
def count_ranged(x, b, bins, lo, hi, bad, scale, idx, base, flat):  # pragma: no cover - compiled
    """:func:`plain_counts` once sequence ``b``'s range is in ``lo``/``hi``/``bad`` (:func:`token_range`): every token
    counted into ``flat`` (zeroed ``[d · bins]``); returns whether every dimension's range and scale are finite."""
    n, d = x.shape[1], x.shape[2]
    last = np.int32(bins - 1)
    zero = f32(0.0)
    for j in range(d):
        if bad[j]:
            lo[j] = np.nan
            hi[j] = np.nan
    bin_scale(lo, hi, bins, scale)
    for t in range(n):
        for j in range(d):                       # branch-free, so it vectorises
            f = (x[b, t, j] - lo[j]) * scale[j]
            # x86's cvttps2dq: NaN and |f| >= 2^31 give INT32_MIN, which the clamp sends to 0
            g = f if (f >= zero) & (f < big) else zero
            idx[j] = min(np.int32(g), last) + base[j]
        for j in range(d):
            flat[np.uint64(idx[j])] += 1      # unsigned: no negative-index check
    finite = True
    for j in range(d):
        finite &= np.isfinite(lo[j]) & np.isfinite(hi[j]) & np.isfinite(hi[j] - lo[j]) & np.isfinite(scale[j])
    return finite


@njit(nogil=True, cache=True)
def plain_seq(x, b, bins, out, tab, outp):  # pragma: no cover - compiled
    """Sequence ``b``, every token: its Bucket counts (:func:`plain_counts`) emitted (:func:`emit`)."""
    flat, _ = plain_counts(x, b, bins)
    emit(flat, b, out, tab, outp)


@njit(nogil=True, cache=True)
def masked_seq(x, keep, lo_in, hi_in, given, b, bins, out, tab, outp):  # pragma: no cover - compiled
    """Sequence ``b``, kept tokens only. Range: ``lo_in``/``hi_in [B, d]`` when ``given``, else the kept tokens'
    min/max with :func:`~analysis.measure.sinks.kept_range`'s semantics (0 where none is kept, NaN/±inf → 0).
    Bin: ``nan_to_num`` (NaN → 0, ±inf → ±max), clamp to ``[0, bins − 1]`` in float, truncate."""
    n, d = x.shape[1], x.shape[2]
    lo, hi, bad, scale, idx, base = scratch(d, bins)
    zero = f32(0.0)
    top = f32(bins - 1)
    flat = np.zeros(d * bins, np.uint16)
    if given:
        for j in range(d):
            lo[j] = lo_in[b, j]
            hi[j] = hi_in[b, j]
    else:
        some = token_range(x, b, keep, lo, hi, bad)
        for j in range(d):
            if not some or bad[j] or lo[j] == np.inf or lo[j] == -np.inf:
                lo[j] = zero
            if not some or bad[j] or hi[j] == np.inf or hi[j] == -np.inf:
                hi[j] = zero
    bin_scale(lo, hi, bins, scale)
    for t in range(n):
        if not keep[b, t]:
            continue
        for j in range(d):                       # nan_to_num → clamp in float → truncate, branch-free
            f = (x[b, t, j] - lo[j]) * scale[j]
            g = f if f > zero else zero          # NaN, -inf and negatives → 0
            idx[j] = np.int32(min(g, top)) + base[j]
        for j in range(d):
            flat[np.uint64(idx[j])] += 1      # unsigned: no negative-index check
    emit(flat, b, out, tab, outp)


@njit(nogil=True, cache=True)
def views_seq(x, keep, b, bins, tab_all, tab_kept, out_all, out_kept):  # pragma: no cover - compiled
    """Sequence ``b`` in both sinks views: every token with :func:`plain_seq`'s rules into ``out_all[b]``, the kept
    tokens with :func:`masked_seq`'s into ``out_kept[b]``, each cell's ``p log p`` looked up in its table row
    (``tab_all[b]``, ``tab_kept[b]``).

    A sequence that keeps every token, with every dimension's range and scale finite, has the same counts in both
    views (the same range, hence the same scale, and the two bin rules agree on finite values in range), so it is
    counted once; any other is counted again by :func:`masked_seq`. Where no token is a sink (about a third of
    SmolLM2's sequences and points at 256 tokens) that halves the work. (Deriving the kept counts by taking the
    excluded tokens out does not pay: a sink holds an extreme in most dimensions, and those must be counted again.)"""
    no_counts = np.zeros((0, 0, 0), np.int32)   # p log p is written, not counts
    flat, same = plain_counts(x, b, bins)
    emit(flat, b, no_counts, tab_all, out_all)
    for t in range(x.shape[1]):
        same &= keep[b, t]
    if same:
        emit(flat, b, no_counts, tab_kept, out_kept)
    else:
        no_range = np.zeros((1, 1), np.float32)  # the kept tokens' own range
        masked_seq(x, keep, no_range, no_range, False, b, bins, no_counts, tab_kept, out_kept)


@njit(nogil=True, cache=True)
def views(x, keep, bins, tab_all, tab_kept, out_all, out_kept):  # pragma: no cover - compiled
    for b in range(x.shape[0]):
        views_seq(x, keep, b, bins, tab_all, tab_kept, out_all, out_kept)


@njit(nogil=True, cache=True, parallel=True)
def views_par(x, keep, bins, tab_all, tab_kept, out_all, out_kept):  # pragma: no cover - compiled
    for b in prange(x.shape[0]):
        views_seq(x, keep, b, bins, tab_all, tab_kept, out_all, out_kept)


@njit(nogil=True, cache=True)
def plain(x, bins, out, tab, outp):  # pragma: no cover - compiled
    for b in range(x.shape[0]):
        plain_seq(x, b, bins, out, tab, outp)


@njit(nogil=True, cache=True)
def masked(x, keep, lo_in, hi_in, given, bins, out, tab, outp):  # pragma: no cover - compiled
    for b in range(x.shape[0]):
        masked_seq(x, keep, lo_in, hi_in, given, b, bins, out, tab, outp)


@njit(nogil=True, cache=True, parallel=True)
def plain_par(x, bins, out, tab, outp):  # pragma: no cover - compiled
    for b in prange(x.shape[0]):                 # sequences write disjoint cells: the same counts
        plain_seq(x, b, bins, out, tab, outp)


@njit(nogil=True, cache=True, parallel=True)
def masked_par(x, keep, lo_in, hi_in, given, bins, out, tab, outp):  # pragma: no cover - compiled
    for b in prange(x.shape[0]):
        masked_seq(x, keep, lo_in, hi_in, given, b, bins, out, tab, outp)


@njit(nogil=True, cache=True)
def kth_seq(d2, b, k, val, idx, tied):  # pragma: no cover - compiled
    """Rows of ``d2[b] [N, N]``: ``val[b, i]`` = the rank-``k`` entry (0-based, ascending) and ``idx[b, i]`` its column
    where that value occurs once in the row; ``tied[b, i]`` where it does not (``±0`` count as one value, as in
    topk's comparator) or the row holds a NaN. Found on the float's order-preserving integer key: bisection
    (vectorised counting passes) until at most 16 entries are left in the bracket, then those few sorted."""
    n = d2.shape[2]
    keys = np.empty(n, np.int32)
    cand = np.empty(n, np.int32)
    for i in range(n):
        row = d2[b, i]
        bits = row.view(np.int32)
        kmin = np.int32(2147483647)
        kmax = np.int32(-2147483648)
        ninf = 0                                 # entries at -inf (the diagonal): below every bracket
        nan = False
        for j in range(n):                       # negative floats: flip the magnitude bits so keys ascend with value
            if row[j] != row[j]:
                nan = True
            u = bits[j]
            key = u ^ np.int32(2147483647) if u < 0 else u
            keys[j] = key
            if key == NEG_INF_KEY:
                ninf += 1
            else:
                kmin = min(kmin, key)
                kmax = max(kmax, key)
        if nan:
            tied[b, i] = True
            continue
        # invariant: the answer's key is in [lo, hi]; below = #keys < lo <= k < upto = #keys <= hi
        lo, hi = np.int64(kmin), np.int64(kmax)
        below, upto = ninf, n
        if k < ninf:                             # the answer is -inf itself
            lo = hi = np.int64(NEG_INF_KEY)
            below, upto = 0, ninf
        while lo < hi and upto - below > 16:
            mid = np.int32((lo + hi) >> 1)
            c = 0
            for j in range(n):
                c += keys[j] <= mid
            if c >= k + 1:
                hi, upto = np.int64(mid), c
            else:
                lo, below = np.int64(mid) + 1, c
        m = 0                                    # the few keys left in [lo, hi], sorted: rank k is at k - below
        for j in range(n):
            if lo <= keys[j] <= hi:
                q = m
                while q > 0 and cand[q - 1] > keys[j]:
                    cand[q] = cand[q - 1]
                    q -= 1
                cand[q] = keys[j]
                m += 1
        key = cand[k - below]
        at = -1
        for j in range(n):
            if keys[j] == key:
                at = j
        v = row[at]
        count = 0
        for j in range(n):
            count += row[j] == v
        val[b, i] = v
        idx[b, i] = at
        tied[b, i] = count != 1


@njit(nogil=True, cache=True)
def kth(d2, k, val, idx, tied):  # pragma: no cover - compiled
    for b in range(d2.shape[0]):
        kth_seq(d2, b, k, val, idx, tied)


@njit(nogil=True, cache=True, parallel=True)
def kth_par(d2, k, val, idx, tied):  # pragma: no cover - compiled
    for b in prange(d2.shape[0]):
        kth_seq(d2, b, k, val, idx, tied)


KERNELS = {"plain": plain, "masked": masked, "plain_par": plain_par, "masked_par": masked_par,
           "views": views, "views_par": views_par, "kth": kth, "kth_par": kth_par}

