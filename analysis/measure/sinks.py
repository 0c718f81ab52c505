"""Attention sinks / massive activations: detection per sequence and residual point, and masked statistics.

Many LLMs put a few tokens (usually position 0, sometimes a delimiter) into a "massive activation"
state from some block on: their residual norm jumps by one to two orders of magnitude (Sun et al.
2024). One such token dominates per-dimension ranges (Bucket), nearest-neighbour radii (KNN) and mean
cosines, so the entropy curve shows the artefact rather than the other tokens' geometry.

**Rule** (documented, configurable): at every residual point (``resid_pre/mid/post``) and for every
sequence separately, token ``t`` is a *sink* when

    ‖x_t‖ > ratio × median_s ‖x_s‖            (default ratio = 8)

and it is among the ``max(1, ⌊max_frac·T⌋)`` largest norms of that sequence (default ``max_frac`` = 0.05,
so at most 5 % of the tokens are ever left out and KNN keeps enough neighbours).

**Modes** (``--sinks``): ``exclude`` leaves sinks out of every statistic (entropies, cosines, norms, MI
states); ``keep`` uses every token exactly as EntroDrop's reference code (sinks are still counted);
``first`` leaves out position 0 only (the older ``--skip-first-token``).

Everything here is batched: a boolean ``keep [B, T]`` mask (True = token used) rides along with the
states ``x [B, T, d]``, so sequences with different numbers of sinks share one tensor; masked tokens are
never neighbours, never set a range, and never enter a mean.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from analysis.errors import SelectionError
from analysis.measure import kernels
from analysis.measure.estimators import BUCKET_BINS, KNN_K, RENYI_ALPHA, ROBUST_CLIP, _centered, as_float32, cell_counts, cell_offsets, counts_plogp, entropy_bucket, entropy_knn, entropy_renyi, exact_duplicates, knn_radii  # noqa: F401

SINK_MODES = ("exclude", "keep", "first")
DEFAULT_RATIO = 8.0
DEFAULT_MAX_FRAC = 0.05


def check_mode(mode: str) -> None:
    if mode not in SINK_MODES:
        raise SelectionError(f"Unknown sinks mode {mode!r}", hint=f"use one of {', '.join(SINK_MODES)}")


def max_sinks(t: int, max_frac: float = DEFAULT_MAX_FRAC) -> int:
    """The most tokens of a ``t``-token sequence the rule may flag."""
    return max(1, int(math.floor(max_frac * t)))


def detect_sinks(norms: Tensor, ratio: float = DEFAULT_RATIO, max_frac: float = DEFAULT_MAX_FRAC,
                 median: Tensor | None = None) -> Tensor:
    """``norms [B, T]`` token L2 norms → ``[B, T]`` bool, True where the token is a sink (see module doc).
    ``median`` ``[B, 1]``: the norms' per-sequence median, when the caller has it already."""
    b, t = norms.shape
    med = norms.median(dim=1, keepdim=True).values if median is None else median       # [B, 1]
    flag = norms > ratio * med
    cap = max_sinks(t, max_frac)
    if cap < t:
        top = torch.topk(norms, cap, dim=1).indices                                     # [B, cap] largest norms
        flag &= torch.zeros_like(flag).scatter_(1, top, True)
    return flag


# ---- masked estimators: (x [B, N, d], keep [B, N] bool, **params) -> [B] ------------------------------

def _count(keep: Tensor) -> Tensor:
    return keep.sum(dim=1).to(torch.float32)                                            # [B]


def masked_mean_tokens(v: Tensor, keep: Tensor) -> Tensor:
    """Per-sequence mean over kept tokens of ``v [B, N]``: ``[B]``."""
    return (v * keep).sum(dim=1) / _count(keep).clamp_min(1)


def _bucket_idx(x: Tensor, lo: Tensor, hi: Tensor, keep: Tensor, bins: int) -> Tensor:
    """Flat histogram cell of every (sequence, token, dimension); masked tokens go to a spare cell."""
    b, n, d = x.shape
    scale = bins / (hi - lo).clamp_min_(torch.finfo(torch.float32).tiny)
    idx = (x - lo).mul_(scale).nan_to_num_(0.0).clamp_(0, bins - 1).to(torch.int32)   # [B, N, d]
    idx.masked_fill_(~keep.unsqueeze(-1), bins)
    idx += cell_offsets(b, d, bins + 1, x.device)
    return idx


def _bucket_from_idx(idx: Tensor, keep: Tensor, b: int, d: int, bins: int) -> Tensor:
    cells = b * d * (bins + 1)
    return _bucket_from_counts(cell_counts(idx, cells).view(b, d, bins + 1)[..., :bins], keep)


def _bucket_from_counts(counts: Tensor, keep: Tensor) -> Tensor:
    """``counts [B, d, bins]`` (integer) of the kept tokens → Bucket entropy ``[B]``."""
    return _cells_plogp(counts, _count(keep).clamp_min(1).view(-1, 1, 1)).sum(dim=(1, 2)).neg_()


def _cells_plogp(counts: Tensor, n: Tensor) -> Tensor:
    """``p log p`` of integer cell counts, ``p = count / n`` (float32 ``n``, broadcast) clamped to >= 1e-10."""
    p = (counts.to(torch.float32) / n).clamp_min_(1e-10)
    return p.log().mul_(p)


def _table_plogp(counts: Tensor, n: int) -> Tensor:
    """:func:`_cells_plogp` for one sequence's count ``n`` (the compiled kernels' table of every possible count)."""
    return _cells_plogp(counts, torch.tensor([float(n)]))


def _fused_bucket(x: Tensor, bins: int, keep: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor | None:
    """Bucket entropy ``[B]`` of the kept tokens from the compiled kernels (cells' ``p log p`` looked up, else counts),
    or ``None`` where they do not run (the caller uses the PyTorch form)."""
    cells = kernels.bucket_plogp(x, bins, _table_plogp, keep, lo, hi, reuse=True)
    if cells is not None:
        return cells.sum(dim=(1, 2)).neg_()
    counts = kernels.bucket_counts(x, bins, keep, lo, hi)
    return None if counts is None else _bucket_from_counts(counts, keep)


def kept_range(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Per sequence and dimension, min and max over the kept tokens: ``[B, 1, d]`` each (0 where a sequence
    keeps none, or where the value is not finite). Masked tokens are replaced by their sequence's first kept
    token, so one ``where`` and the plain reductions give the kept tokens' extremes."""
    b = x.shape[0]
    first = keep.to(torch.uint8).argmax(dim=1)                                          # [B] first kept token
    ref = x[torch.arange(b, device=x.device), first].unsqueeze(1)                       # [B, 1, d]
    xf = torch.where(keep.unsqueeze(-1), x, ref)
    lo, hi = xf.amin(dim=1, keepdim=True), xf.amax(dim=1, keepdim=True)
    some = keep.any(dim=1).view(b, 1, 1)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return (torch.where(some, lo, zero).nan_to_num_(0.0, 0.0, 0.0),
            torch.where(some, hi, zero).nan_to_num_(0.0, 0.0, 0.0))


def entropy_bucket_masked(x: Tensor, keep: Tensor, bins: int = BUCKET_BINS) -> Tensor:
    """:func:`~analysis.measure.estimators.entropy_bucket` over the kept tokens only (ranges from kept tokens)."""
    x = as_float32(x)
    b, n, d = x.shape
    fused = _fused_bucket(x, bins, keep)                                # [B] on the CPU, else None
    if fused is not None:
        return fused
    lo, hi = kept_range(x, keep)
    return _bucket_from_idx(_bucket_idx(x, lo, hi, keep, bins), keep, b, d, bins)


def entropy_bucket_views(x: Tensor, keep: Tensor, bins: int = BUCKET_BINS) -> tuple[Tensor, Tensor]:
    """Bucket in both sinks views, ``(every token [B], kept tokens [B])``: bit for bit ``entropy_bucket(x, bins)`` and
    ``entropy_bucket_masked(x, keep, bins)``. Where the compiled kernels run, a sequence with no excluded token is
    counted once for both (:func:`analysis.measure.kernels.bucket_plogp_views`)."""
    x = as_float32(x)
    b = x.shape[0]
    both = kernels.bucket_plogp_views(x, bins, counts_plogp, _table_plogp, keep, reuse=True)
    if both is None:
        return entropy_bucket(x, bins), entropy_bucket_masked(x, keep, bins)
    cells_all, cells_kept = both
    return cells_all.view(b, -1).sum(dim=1).neg_(), cells_kept.sum(dim=(1, 2)).neg_()


def _quantile_range(x: Tensor, keep: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Per sequence and dimension, the ``clip`` and ``1 − clip`` quantiles (nearest rank) of the kept tokens."""
    b, n, d = x.shape
    srt = torch.where(keep.unsqueeze(-1), x, torch.inf).sort(dim=1).values              # kept first, ascending
    cnt = keep.sum(dim=1)                                                               # [B]
    last = (cnt - 1).clamp_min(0).to(torch.float32)
    i_lo = torch.floor(clip * last).long().view(b, 1, 1).expand(b, 1, d)
    i_hi = torch.ceil((1 - clip) * last).long().view(b, 1, 1).expand(b, 1, d)
    return torch.gather(srt, 1, i_lo), torch.gather(srt, 1, i_hi)


def entropy_bucket_robust_masked(x: Tensor, keep: Tensor, bins: int = BUCKET_BINS, clip: float = ROBUST_CLIP) -> Tensor:
    """Bucket with robust ranges: per dimension the bins span the ``clip`` … ``1 − clip`` quantiles of the
    tokens (values beyond fall into the edge bins), so one outlier token cannot stretch the range."""
    x = as_float32(x)
    b, n, d = x.shape
    lo, hi = _quantile_range(x, keep, clip)
    lo, hi = lo.nan_to_num(0.0, 0.0, 0.0), hi.nan_to_num(0.0, 0.0, 0.0)
    fused = _fused_bucket(x, bins, keep, lo, hi)
    if fused is not None:
        return fused
    return _bucket_from_idx(_bucket_idx(x, lo, hi, keep, bins), keep, b, d, bins)


def entropy_bucket_robust(x: Tensor, bins: int = BUCKET_BINS, clip: float = ROBUST_CLIP) -> Tensor:
    return entropy_bucket_robust_masked(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device), bins, clip)


def _masked_centered(x: Tensor, keep: Tensor) -> Tensor:
    """Centre on the kept tokens' mean and zero the masked rows (they never enter any sum)."""
    km = keep.unsqueeze(-1).to(x.dtype)
    mu = (x * km).sum(dim=1, keepdim=True) / _count(keep).clamp_min(1).view(-1, 1, 1)
    return (x - mu).masked_fill_(~keep.unsqueeze(-1), 0.0)      # = where(keep, x − mu, 0), one tensor fewer


def _masked_sq_dists(xc: Tensor) -> Tensor:
    sq = xc.pow(2).sum(-1)
    return torch.baddbmm(sq.unsqueeze(2) + sq.unsqueeze(1), xc, xc.transpose(1, 2), alpha=-2.0)


def knn_radii_masked(x: Tensor, keep: Tensor, k: int) -> Tensor:
    """Distance from each token to its k-th nearest *kept* other token: ``[B, N]`` (rows of masked tokens
    are meaningless and must be masked by the caller). The same code as the reference path
    (:func:`~analysis.measure.estimators.knn_radii`): ranked on the fused matmul, the k-th distance recomputed from
    the coordinate difference, so identical kept states are exactly 0 apart; a kept token with at most k
    kept others gets NaN."""
    # centre on the kept tokens first: a massive excluded token would otherwise shift the common offset and
    # drown the fused ranking in cancellation error (identical kept states stay identical after centring)
    return knn_radii(_masked_centered(as_float32(x), keep), k, exclude=~keep)


def entropy_knn_masked(x: Tensor, keep: Tensor, k: int = KNN_K, normalize: bool = False,
                       dedup: bool = False) -> Tensor:
    """Kozachenko–Leonenko entropy over the kept tokens (``N`` = kept count of each sequence).
    ``dedup``: as :func:`~analysis.measure.estimators.entropy_knn`, each exactly repeated state counts once."""
    x = as_float32(x)
    if dedup:
        keep = keep & ~exact_duplicates(x)
    b, n, d = x.shape
    if normalize:
        x = _masked_centered(x, keep)
        x = x / x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        ms = masked_mean_tokens(x.pow(2).sum(-1), keep)
        x = x / ms.sqrt().clamp_min(1e-30).view(b, 1, 1)
    r = knn_radii_masked(x, keep, k)
    cnt = _count(keep).clamp_min(1)
    logr = torch.where(keep, torch.log(r + 1e-10), torch.zeros((), device=x.device))
    const = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1) - math.log(k)
    return d * logr.sum(dim=1) / cnt + const + torch.log(cnt)


def entropy_renyi_masked(x: Tensor, keep: Tensor, alpha: float = RENYI_ALPHA) -> Tensor:
    """:func:`~analysis.measure.estimators.entropy_renyi` over the kept tokens (z-scores, σ and means from them)."""
    x = as_float32(x)
    b, n = x.shape[:2]
    if n < 2:
        raise SelectionError(f"Rényi entropy needs at least 2 tokens per sequence, got {n}")
    km = keep.unsqueeze(-1)
    cnt = _count(keep).clamp_min(2).view(b, 1, 1)
    xc = _masked_centered(x, keep)
    std = (xc.pow(2).sum(dim=1, keepdim=True) / (cnt - 1)).sqrt()
    z = torch.where(km, xc / (std + 1e-10), torch.zeros((), device=x.device))
    d2 = _masked_sq_dists(z).clamp_min_(0)
    pair = keep.unsqueeze(2) & keep.unsqueeze(1)                                        # [B, N, N]
    sigma2 = torch.where(pair, d2, torch.nan).reshape(b, -1).nanmedian(dim=1).values
    sigma2 = sigma2.clamp_min(1e-24).view(b, 1, 1)
    kern = torch.exp(-d2 / (2 * sigma2)).clamp_min(1e-10)
    if abs(alpha - 1.0) < 1e-9:
        kern = kern * pair
        p = kern / kern.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        h = -(p * p.clamp_min(1e-30).log()).sum(dim=-1)
        return masked_mean_tokens(h, keep)
    return torch.log((kern.pow(alpha - 1) * pair).sum(dim=(1, 2)) / cnt.view(b).pow(2)) / (1 - alpha)


#: estimator name -> masked form ``fn(x, keep, **params)``; the capture uses these in ``exclude`` mode
MASKED = {
    "bucket": entropy_bucket_masked,
    "bucket-robust": entropy_bucket_robust_masked,
    "knn": entropy_knn_masked,
    "knn-norm": lambda x, keep, k=KNN_K, dedup=False: entropy_knn_masked(x, keep, k=k, normalize=True, dedup=dedup),
    "renyi": entropy_renyi_masked,
}


def bind_masked(name: str, params: dict):
    """The masked form of a registered estimator with its parameters fixed: ``(x, keep) -> [B]``."""
    from analysis.measure.estimators import get_estimator

    info = get_estimator(name)
    if name not in MASKED:
        raise SelectionError(f"Estimator {name!r} has no sink-masked form", hint="use --sinks keep or first")
    kw = {k: params.get(k, v) for k, v in info.defaults.items()}
    kw = {k: v for k, v in kw.items() if v is not None}
    fn = MASKED[name]
    return lambda x, keep: fn(x, keep, **kw)


