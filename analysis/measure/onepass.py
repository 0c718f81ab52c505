"""The reference path's one read per point (numba kernels in :mod:`analysis.measure.kernels_point`), each result its
PyTorch form's bit for bit.

With every token in one sinks view, the capture reads a residual point several times over: ``vector_norm`` for the
token norms, Bucket's range and counting passes, the cosines' dot products (the block's three points again) and
the sum of the ``[B, d · bins]`` cells; then a dozen small PyTorch operations per block for the mean cosines.
:func:`bucket_point` reads each sequence of a block's end once from memory for all of it — ``resid_post``'s and,
waiting for it, ``resid_mid``'s entropy and token norms, and the block's dots — and :func:`block_cosines` takes the
three mean cosines in one call. Each checks its bits against PyTorch once per width or shape here before it is
used (:func:`_point_agrees`, :func:`_cosines_agree`), and where it does not apply the caller runs the PyTorch forms.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from analysis.measure.kernels import (_NONE, _NONE3, _counts_fit, _enabled, _kernels, _launch, _scratch, _table_rows,
                                      _warm_plogp, bucket_plogp)


def bucket_point(x: Tensor, bins: int, plogp: Callable[[Tensor, int], Tensor], h: Tensor, norms: Tensor,
                 pre: Tensor | None = None, mid: Tensor | None = None, dots: Tensor | None = None,
                 mid_out: tuple[Tensor, Tensor] | None = None, split: bool | None = None) -> bool:
    """One read of the point ``x [B, T, d]`` (float32 CPU, contiguous) for the reference analysis, every token, into
    the given float32 CPU tensors (any strides): ``h [B]`` = ``entropy_bucket(x, bins)`` (cells' ``p log p`` by
    ``plogp``) and ``norms [B, T]`` = ``torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)``; with the block's
    ``pre`` and ``mid`` points, ``dots [3, B, T]`` = :func:`cosine_dots`' ``(pre·mid, mid·x, pre·x)``; with
    ``mid_out = (h_mid [B], norms_mid [B, T])``, ``mid``'s own entropy and norms, its rows read once for those and the
    dots. Each is bit for bit its PyTorch form (:mod:`analysis.measure.kernels_point`). Returns False, writing
    nothing, where the kernel does not apply (compute them one at a time): one sequence (ATen splits a lone row's sum
    over threads, another order), a width ``d`` that is not a multiple of 8, a width where the check against PyTorch
    fails (:func:`_point_agrees`), or :func:`bucket_counts`' cases."""
    if not (_counts_fit(x) and x.is_contiguous() and x.shape[0] > 1 and x.shape[2] % 8 == 0):
        return False
    given = [y for y in (pre, mid) if y is not None]
    if ((dots is not None and len(given) < 2) or (mid_out is not None and mid is None)
            or not all(y.dtype == torch.float32 and y.device == x.device and y.shape == x.shape and y.is_contiguous()
                       for y in given)):
        return False
    b, n, d = x.shape
    tab = _table_rows(plogp, (n,) * b, n)                                          # [B, n + 1]
    if tab is None or not _point_agrees(d, bins, plogp):
        return False
    cells = _scratch("point cells", (b, d * bins), True)                           # [B, d · bins] per thread
    xa = x.detach().numpy()
    pa = pre.detach().numpy() if pre is not None else xa
    ma = mid.detach().numpy() if mid is not None else xa
    hm, nm = (mid_out[0].numpy(), mid_out[1].numpy()) if mid_out is not None else (_NONE1, _NONE)
    _launch("point", (xa, pa, ma, dots.numpy() if dots is not None else _NONE3, bins, tab.numpy(), norms.numpy(),
                      h.numpy(), nm, hm, cells.numpy(), _ones(d * bins)), x, split=split)
    return True


_NONE1 = np.zeros(0, np.float32)              # "no mid point"


def block_cosines(dots: Tensor, n_pre: Tensor, n_mid: Tensor, n_post: Tensor, out_attn: Tensor, out_mlp: Tensor,
                  out_layer: Tensor) -> bool:
    """A block's mean token cosines per sequence into ``out_attn``/``out_mlp``/``out_layer`` ``[B]`` (float32 CPU, any
    strides): bit for bit ``(dots[k] / (na * nb).clamp_min(1e-8)).mean(-1)`` for the pairs (pre, mid), (mid, post),
    (pre, post) of ``dots [3, B, T]`` and the token norms ``[B, T]`` — one compiled call instead of a dozen small
    PyTorch operations. False, writing nothing, where it does not apply or the shape's check fails
    (:func:`_cosines_agree`)."""
    b, t = n_pre.shape
    if not (_enabled(dots) and t >= 8 and all(n.dtype == torch.float32 for n in (n_pre, n_mid, n_post))
            and _cosines_agree(b, t)):
        return False
    _kernels()["cosines"](dots.numpy(), n_pre.numpy(), n_mid.numpy(), n_post.numpy(), out_attn.numpy(),
                          out_mlp.numpy(), out_layer.numpy(), _ones(t), _EPS)
    return True


_EPS = np.float32(1e-8)          # the cosines' clamp (a Python float scalar: PyTorch rounds it to the tensor's float32)
_COS_OK: dict = {}               # (B, T) -> the compiled cosines give PyTorch's bits at this shape (checked once)


def _cosines_agree(b: int, t: int) -> bool:
    """:func:`block_cosines` gives PyTorch's bits for ``[b, t]`` here (ATen picks its reduction's order by shape), on
    random dots and norms with zeros, a NaN and an infinity; checked once per shape, else PyTorch runs."""
    key = (b, t)
    hit = _COS_OK.get(key)
    if hit is None:
        g = torch.Generator().manual_seed(t)
        dots = torch.randn(3, b, t, generator=g) * 100
        na, nm, nq = (torch.rand(b, t, generator=g) * 30 for _ in range(3))
        na[0, 0], nm[-1, -1], dots[1, 0, 1], dots[2, -1, 2] = 0.0, float("nan"), float("inf"), 0.0
        got = torch.empty(3, b)
        _kernels()["cosines"](dots.numpy(), na.numpy(), nm.numpy(), nq.numpy(), got[0].numpy(), got[1].numpy(),
                              got[2].numpy(), _ones(t), _EPS)
        want = torch.stack([(dots[k] / (x * y).clamp_min(1e-8)).mean(-1)
                            for k, (x, y) in enumerate(((na, nm), (nm, nq), (na, nq)))])
        hit = _COS_OK[key] = bool(torch.equal(got.view(torch.int32), want.view(torch.int32)))
    return hit


_ONES: dict = {}                 # length -> float32 ones (the row sum is the dot with them)
_POINT_OK: dict = {}             # (d, bins, plogp) -> the point kernel gives PyTorch's bits at this width (checked once)


def _ones(n: int) -> np.ndarray:
    hit = _ONES.get(n)
    if hit is None:
        hit = _ONES[n] = np.ones(n, np.float32)
    return hit


def _point_agrees(d: int, bins: int, plogp: Callable[[Tensor, int], Tensor]) -> bool:
    """:func:`bucket_point` gives the PyTorch forms' bits at width ``d`` here: entropies (the Bucket cells of
    :func:`~analysis.measure.kernels.bucket_plogp`, themselves the PyTorch form's, summed by ATen), token norms and
    dots, for ``resid_post`` and ``resid_mid``; checked once per process and ``(d, bins, plogp)`` on random states of
    mixed scales, else the PyTorch forms run."""
    key = (d, bins, plogp)
    hit = _POINT_OK.get(key)
    if hit is None:
        g = torch.Generator().manual_seed(d)
        x, p, m = (torch.randn(2, 64, d, generator=g) * torch.rand(2, 64, 1, generator=g).pow(4).mul(1e3)
                   for _ in range(3))
        n = x.shape[1]
        tab = _table_rows(plogp, (n,) * 2, n)
        ref_cells = [bucket_plogp(y, bins, plogp) for y in (x, m)]
        ok = tab is not None and all(c is not None for c in ref_cells)
        if ok:
            h, hm, norms, nm = torch.empty(2), torch.empty(2), torch.empty(2, n), torch.empty(2, n)
            dots = torch.empty(3, 2, n)
            _kernels()["point"](x.numpy(), p.numpy(), m.numpy(), dots.numpy(), bins, tab.numpy(), norms.numpy(),
                                h.numpy(), nm.numpy(), hm.numpy(), np.empty((2, d * bins), np.float32), _ones(d * bins))
            entropy = lambda cells: cells.view(2, -1).sum(dim=1).neg_()  # noqa: E731 - entropy_bucket's sum
            norm = lambda y: torch.linalg.vector_norm(y, dim=-1, dtype=torch.float32)  # noqa: E731
            want = (entropy(ref_cells[0]), norm(x), torch.stack([(p * m).sum(-1), (m * x).sum(-1), (p * x).sum(-1)]),
                    entropy(ref_cells[1]), norm(m))
            ok = all(torch.equal(a.view(torch.int32), w.view(torch.int32))
                     for a, w in zip((h, norms, dots, hm, nm), want))
        hit = _POINT_OK[key] = bool(ok)
    return hit


def warm(split: bool) -> None:
    """Compile (or load from numba's cache) this module's kernels as the capture calls them: whole buffers, and its
    views (a column of its entropies and norms; the first rows of its dots in a short last batch)."""
    z = torch.zeros(2, 8, 8)
    plogp = _warm_plogp
    whole = (torch.empty(2), torch.empty(2, 8))
    views = (torch.empty(2, 3)[:, 1], torch.empty(2, 3, 8)[:, 1])
    for h, norms in (whole, views):
        bucket_point(z, 80, plogp, h, norms, split=split)
        for dots in (torch.empty(3, 2, 8), torch.empty(3, 3, 8)[:, :2]):
            bucket_point(z, 80, plogp, h, norms, z, z, dots, (h, norms), split=split)
            block_cosines(dots, norms, norms, norms, h, h, h)
