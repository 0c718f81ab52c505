"""The optimised estimator and sink kernels give bit-identical results to the kernels as they were before
issue 28 (a frozen private copy below, prefixed ``ref_``), on random inputs with repeated tokens, masks,
massive activations and bfloat16 states, and the capture's statistics equal the frozen kernels applied to
the hooked residual states of a tiny model."""
from __future__ import annotations


import math

import torch
from torch import Tensor

from analysis.errors import SelectionError
from analysis.measure.sinks import max_sinks

BUCKET_BINS, KNN_K, RENYI_ALPHA, ROBUST_CLIP = 80, 25, 4.0, 0.02
DEFAULT_RATIO, DEFAULT_MAX_FRAC = 8.0, 0.05


def ref_as_float32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


def ref_entropy_bucket(x: Tensor, bins: int = BUCKET_BINS) -> Tensor:
    """Sum over dimensions of per-dimension histogram entropy ("marginal binning").

    For each sequence and dimension j: ``bins`` equal-width bins on ``[min_j, max_j]`` over the tokens,
    the maximum falling in the last bin; ``p = count / N`` clamped to >= 1e-10; ``H = -Σ_j Σ_b p log p``.
    Invariant to per-dimension positive affine rescaling; a constant dimension contributes 0.
    """
    x = ref_as_float32(x)                                                    # [B, N, d]
    b, n, d = x.shape
    lo = x.amin(dim=1, keepdim=True)                               # [B, 1, d]
    scale = bins / (x.amax(dim=1, keepdim=True) - lo).clamp_min_(torch.finfo(torch.float32).tiny)
    # int32 bin index (the max lands on `bins` and is clamped into the last bin; NaN → clamped, and
    # counted as non-finite by the capture); offsets make one flat histogram of B·d·bins cells
    idx = ((x - lo) * scale).to(torch.int32).clamp_(0, bins - 1)  # [B, N, d]
    idx += torch.arange(b * d, device=x.device, dtype=torch.int32).view(b, 1, d) * bins
    if x.device.type == "cpu":
        counts = torch.bincount(idx.flatten(), minlength=b * d * bins)
    else:  # scatter_add into a known size: no host synchronisation (bincount reads the max back)
        counts = torch.zeros(b * d * bins, device=x.device, dtype=torch.int32)
        counts.scatter_add_(0, idx.flatten().long(), torch.ones_like(idx.flatten()))
    p = (counts.view(b, d * bins).to(torch.float32) / n).clamp_min_(1e-10)
    return -(p * p.log()).sum(dim=1)


def ref__centered(x: Tensor) -> Tensor:
    # distances are translation invariant; centring keeps the matmul-based cdist accurate for large norms
    return x - x.mean(dim=1, keepdim=True)


def ref__sq_dists(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``[B, N, N]`` in one fused batched matmul (``|a|² + |b|² − 2ab``),
    on centred points so large common offsets don't cancel catastrophically. Entries carry rounding noise
    up to :func:`sq_dist_error_bound` ``·(|a|² + |b|²)`` (identical points are not exactly 0)."""
    xc = ref__centered(ref_as_float32(x))
    sq = xc.pow(2).sum(-1)                                                      # [B, N]
    return torch.baddbmm(sq.unsqueeze(2) + sq.unsqueeze(1), xc, xc.transpose(1, 2), alpha=-2.0)


def ref_exact_duplicates(x: Tensor) -> Tensor:
    """``[B, N]`` bool: token t is an exact copy of an earlier token of its sequence (all d coordinates equal).

    Candidates are tokens with an equal float64 random projection (identical rows give identical hashes:
    the same products summed the same way); each is confirmed against its first candidate coordinate by
    coordinate, so a hash collision can never merge distinct states. ``O(B·N·d + B·N²)``, no host sync.
    """
    x = ref_as_float32(x)
    b, n, d = x.shape
    g = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(x.device)
    h = (x.double() * g).sum(-1)                                                # [B, N]
    earlier = torch.ones(n, n, dtype=torch.bool, device=x.device).tril_(-1)    # [N, N] j < t
    cand = (h.unsqueeze(2) == h.unsqueeze(1)) & earlier                        # [B, N, N]
    first = cand.to(torch.uint8).argmax(-1)                                     # [B, N] first candidate j
    other = torch.gather(x, 1, first.unsqueeze(-1).expand(b, n, d))             # [B, N, d]
    return cand.any(-1) & (x == other).all(-1)


def ref_knn_radii(x: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """Distance from each token to its k-th nearest other token: ``[B, N]``.

    Neighbours are ranked on the fused matmul (:func:`_sq_dists`, self forced first); the k-th one's
    distance is then recomputed from the coordinate difference ``|x_t − x_j|``, as ``torch.cdist``
    defines it. Identical states are therefore exactly 0 apart on any device and at any batch size, and
    every radius is accurate to float32 precision; the fused noise can only change *which* of several
    neighbours whose squared distances differ by less than :func:`sq_dist_error_bound` is the k-th.
    ``exclude`` (``[B, N]`` bool) removes tokens from everyone's neighbour set (their own rows are
    computed but meaningless); a token with at most k non-excluded others gets NaN.
    """
    x = ref_as_float32(x)
    b, n, d = x.shape
    if n <= k:
        raise SelectionError(f"KNN entropy needs more than k={k} tokens per sequence, got {n}",
                             hint="use a longer seq-len or a smaller --k")
    d2 = ref__sq_dists(x)                                                           # [B, N, N]
    if exclude is not None:
        d2.masked_fill_(exclude.unsqueeze(1), float("inf"))
    d2.diagonal(dim1=1, dim2=2).fill_(float("-inf"))                            # self is rank 0, as in cdist
    top = torch.topk(d2, k + 1, dim=-1, largest=False)
    j = top.indices[..., k]                                                     # [B, N] the k-th neighbour
    nb = torch.gather(x, 1, j.unsqueeze(-1).expand(b, n, d))                    # [B, N, d]
    r = (x - nb).pow(2).sum(-1).sqrt()
    if exclude is not None:
        r = r.masked_fill(top.values[..., k].isinf(), float("nan"))
    return r


def ref_entropy_knn(x: Tensor, k: int = KNN_K, normalize: bool = False, dedup: bool = False) -> Tensor:
    """Kozachenko–Leonenko entropy as in EntroDrop's ``estimate_entropy_knn_pytorch``.

    ``H = d·mean_i log(r_i + 1e-10) + (d/2)·log π − lgamma(d/2 + 1) + log N − log k`` with ``r_i`` the
    Euclidean distance to the k-th neighbour. Scale-sensitive: ``H(c·x) = H(x) + d·log c``. With
    ``normalize=True`` each sequence is first divided by its RMS token norm, which removes that shift.

    Repeated points. The estimator assumes a continuous density; a token state that occurs more than k
    times in a sequence (layer 0's input is the token embedding, so any token repeated > k times in a
    window) has ``r_i = 0`` exactly, as ``torch.cdist`` computes it, and contributes ``d·log(1e-10) ≈
    −23·d`` (−13,300 nats for d = 576) to the mean over i. A few such rows dominate that sequence's value
    and the average over sequences, and the value depends on the 1e-10 floor, not on the data. This
    default (``dedup=False``) is the reference and matches it exactly. ``dedup=True`` instead estimates
    on the *distinct* states of each sequence: exact copies of an earlier token state are dropped (as
    samples and as neighbours; :func:`exact_duplicates`) and ``N`` is the number of distinct states, so
    the result is finite, floor-free and equal to the default on sequences without exact repeats. A
    sequence with at most k distinct states gives NaN.
    """
    x = ref_as_float32(x)
    b, n, d = x.shape
    if normalize:  # max-abs first so squaring neither underflows (1e-30) nor overflows (1e30) in float32
        x = ref__centered(x)
        x = x / x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        x = x / x.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-30).view(b, 1, 1)
    const = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1) - math.log(k)
    if not dedup:
        r = ref_knn_radii(x, k)
        return d * torch.log(r + 1e-10).mean(dim=1) + const + math.log(n)
    dup = ref_exact_duplicates(x)                                                   # [B, N]
    keep = (~dup).to(torch.float32)
    m = keep.sum(1)                                                             # [B] distinct states
    r = ref_knn_radii(x, k, exclude=dup)
    logr = torch.log(r + 1e-10).masked_fill(dup, 0.0)
    h = d * logr.sum(1) / m + const + m.log()
    return h.masked_fill(m <= k, float("nan"))


def ref_entropy_renyi(x: Tensor, alpha: float = RENYI_ALPHA) -> Tensor:
    """EntroDrop's kernel ("information potential") Rényi entropy, α = 4 by default.

    Standardise each dimension over the tokens, ``σ = median`` of all pairwise distances (zero diagonal
    included), ``K = exp(−D²/2σ²)`` clamped to >= 1e-10, then ``H_α = log mean(K^{α−1}) / (1 − α)``;
    for α = 1 the mean Shannon entropy of the row-normalised kernel.
    """
    x = ref_as_float32(x)
    b, n = x.shape[:2]
    if n < 2:
        raise SelectionError(f"Rényi entropy needs at least 2 tokens per sequence, got {n}")
    z = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-10)
    d2 = ref__sq_dists(z).clamp_min_(0)                                             # [B, N, N] squared distances
    # median of the distances = sqrt of the median squared distance (monotone; same element)
    sigma2 = d2.reshape(b, -1).median(dim=1).values.clamp_min(1e-24).view(b, 1, 1)
    kern = torch.exp(-d2 / (2 * sigma2)).clamp_min(1e-10)
    if abs(alpha - 1.0) < 1e-9:
        p = kern / kern.sum(dim=-1, keepdim=True)
        return -(p * p.log()).sum(dim=-1).mean(dim=-1)
    return torch.log(kern.pow(alpha - 1).mean(dim=(1, 2))) / (1 - alpha)


def ref_mean_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Per-sequence mean over tokens of cos(x_t, y_t): ``[B, N, d] x2 -> [B]``."""
    return torch.nn.functional.cosine_similarity(ref_as_float32(x), ref_as_float32(y), dim=-1, eps=1e-8).mean(dim=1)


def ref_rms_norm(x: Tensor) -> Tensor:
    """Per-sequence root-mean-square token norm ``sqrt(mean_t ||x_t||²)``: ``[B]``."""
    return ref_as_float32(x).pow(2).sum(-1).mean(-1).sqrt()


def ref_detect_sinks(norms: Tensor, ratio: float = DEFAULT_RATIO, max_frac: float = DEFAULT_MAX_FRAC) -> Tensor:
    """``norms [B, T]`` token L2 norms → ``[B, T]`` bool, True where the token is a sink (see module doc)."""
    b, t = norms.shape
    med = norms.median(dim=1, keepdim=True).values                                      # [B, 1]
    flag = norms > ratio * med
    cap = max_sinks(t, max_frac)
    if cap < t:
        top = torch.topk(norms, cap, dim=1).indices                                     # [B, cap] largest norms
        flag &= torch.zeros_like(flag).scatter_(1, top, True)
    return flag


# ---- masked estimators: (x [B, N, d], keep [B, N] bool, **params) -> [B] ------------------------------


def ref__count(keep: Tensor) -> Tensor:
    return keep.sum(dim=1).to(torch.float32)                                            # [B]


def ref_masked_mean_tokens(v: Tensor, keep: Tensor) -> Tensor:
    """Per-sequence mean over kept tokens of ``v [B, N]``: ``[B]``."""
    return (v * keep).sum(dim=1) / ref__count(keep).clamp_min(1)


def ref__bucket_idx(x: Tensor, lo: Tensor, hi: Tensor, keep: Tensor, bins: int) -> Tensor:
    """Flat histogram cell of every (sequence, token, dimension); masked tokens go to a spare cell."""
    b, n, d = x.shape
    scale = bins / (hi - lo).clamp_min_(torch.finfo(torch.float32).tiny)
    idx = ((x - lo) * scale).nan_to_num_(0.0).clamp_(0, bins - 1).to(torch.int32)       # [B, N, d]
    idx = torch.where(keep.unsqueeze(-1), idx, torch.full_like(idx, bins))
    return idx + torch.arange(b * d, device=x.device, dtype=torch.int32).view(b, 1, d) * (bins + 1)


def ref__bucket_from_idx(idx: Tensor, keep: Tensor, b: int, d: int, bins: int) -> Tensor:
    cells = b * d * (bins + 1)
    if idx.device.type == "cpu":
        counts = torch.bincount(idx.flatten(), minlength=cells)
    else:
        counts = torch.zeros(cells, device=idx.device, dtype=torch.int32)
        counts.scatter_add_(0, idx.flatten().long(), torch.ones_like(idx.flatten()))
    counts = counts.view(b, d, bins + 1)[..., :bins].to(torch.float32)
    p = (counts / ref__count(keep).clamp_min(1).view(b, 1, 1)).clamp_min_(1e-10)
    return -(p * p.log()).sum(dim=(1, 2))


def ref_entropy_bucket_masked(x: Tensor, keep: Tensor, bins: int = BUCKET_BINS) -> Tensor:
    """:func:`~analysis.measure.estimators.entropy_bucket` over the kept tokens only (ranges from kept tokens)."""
    x = ref_as_float32(x)
    b, n, d = x.shape
    km = keep.unsqueeze(-1)
    lo = torch.where(km, x, torch.inf).amin(dim=1, keepdim=True)                        # [B, 1, d]
    hi = torch.where(km, x, -torch.inf).amax(dim=1, keepdim=True)
    lo, hi = lo.nan_to_num(0.0, 0.0, 0.0), hi.nan_to_num(0.0, 0.0, 0.0)
    return ref__bucket_from_idx(ref__bucket_idx(x, lo, hi, keep, bins), keep, b, d, bins)


def ref__quantile_range(x: Tensor, keep: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Per sequence and dimension, the ``clip`` and ``1 − clip`` quantiles (nearest rank) of the kept tokens."""
    b, n, d = x.shape
    srt = torch.where(keep.unsqueeze(-1), x, torch.inf).sort(dim=1).values              # kept first, ascending
    cnt = keep.sum(dim=1)                                                               # [B]
    last = (cnt - 1).clamp_min(0).to(torch.float32)
    i_lo = torch.floor(clip * last).long().view(b, 1, 1).expand(b, 1, d)
    i_hi = torch.ceil((1 - clip) * last).long().view(b, 1, 1).expand(b, 1, d)
    return torch.gather(srt, 1, i_lo), torch.gather(srt, 1, i_hi)


def ref_entropy_bucket_robust_masked(x: Tensor, keep: Tensor, bins: int = BUCKET_BINS, clip: float = ROBUST_CLIP) -> Tensor:
    """Bucket with robust ranges: per dimension the bins span the ``clip`` … ``1 − clip`` quantiles of the
    tokens (values beyond fall into the edge bins), so one outlier token cannot stretch the range."""
    x = ref_as_float32(x)
    b, n, d = x.shape
    lo, hi = ref__quantile_range(x, keep, clip)
    lo, hi = lo.nan_to_num(0.0, 0.0, 0.0), hi.nan_to_num(0.0, 0.0, 0.0)
    return ref__bucket_from_idx(ref__bucket_idx(x, lo, hi, keep, bins), keep, b, d, bins)


def ref_entropy_bucket_robust(x: Tensor, bins: int = BUCKET_BINS, clip: float = ROBUST_CLIP) -> Tensor:
    return ref_entropy_bucket_robust_masked(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device), bins, clip)


def ref__masked_centered(x: Tensor, keep: Tensor) -> Tensor:
    """Centre on the kept tokens' mean and zero the masked rows (they never enter any sum)."""
    km = keep.unsqueeze(-1).to(x.dtype)
    mu = (x * km).sum(dim=1, keepdim=True) / ref__count(keep).clamp_min(1).view(-1, 1, 1)
    return torch.where(keep.unsqueeze(-1), x - mu, torch.zeros((), dtype=x.dtype, device=x.device))


def ref__masked_sq_dists(xc: Tensor) -> Tensor:
    sq = xc.pow(2).sum(-1)
    return torch.baddbmm(sq.unsqueeze(2) + sq.unsqueeze(1), xc, xc.transpose(1, 2), alpha=-2.0)


def ref_knn_radii_masked(x: Tensor, keep: Tensor, k: int) -> Tensor:
    """Distance from each token to its k-th nearest *kept* other token: ``[B, N]`` (rows of masked tokens
    are meaningless and must be masked by the caller). The same code as the reference path
    (:func:`~analysis.measure.estimators.knn_radii`): ranked on the fused matmul, the k-th distance recomputed from
    the coordinate difference, so identical kept states are exactly 0 apart; a kept token with at most k
    kept others gets NaN."""
    # centre on the kept tokens first: a massive excluded token would otherwise shift the common offset and
    # drown the fused ranking in cancellation error (identical kept states stay identical after centring)
    return ref_knn_radii(ref__masked_centered(ref_as_float32(x), keep), k, exclude=~keep)


def ref_entropy_knn_masked(x: Tensor, keep: Tensor, k: int = KNN_K, normalize: bool = False,
                       dedup: bool = False) -> Tensor:
    """Kozachenko–Leonenko entropy over the kept tokens (``N`` = kept count of each sequence).
    ``dedup``: as :func:`~analysis.measure.estimators.entropy_knn`, each exactly repeated state counts once."""
    x = ref_as_float32(x)
    if dedup:
        keep = keep & ~ref_exact_duplicates(x)
    b, n, d = x.shape
    if normalize:
        x = ref__masked_centered(x, keep)
        x = x / x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        ms = ref_masked_mean_tokens(x.pow(2).sum(-1), keep)
        x = x / ms.sqrt().clamp_min(1e-30).view(b, 1, 1)
    r = ref_knn_radii_masked(x, keep, k)
    cnt = ref__count(keep).clamp_min(1)
    logr = torch.where(keep, torch.log(r + 1e-10), torch.zeros((), device=x.device))
    const = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1) - math.log(k)
    return d * logr.sum(dim=1) / cnt + const + torch.log(cnt)


def ref_entropy_renyi_masked(x: Tensor, keep: Tensor, alpha: float = RENYI_ALPHA) -> Tensor:
    """:func:`~analysis.measure.estimators.entropy_renyi` over the kept tokens (z-scores, σ and means from them)."""
    x = ref_as_float32(x)
    b, n = x.shape[:2]
    if n < 2:
        raise SelectionError(f"Rényi entropy needs at least 2 tokens per sequence, got {n}")
    km = keep.unsqueeze(-1)
    cnt = ref__count(keep).clamp_min(2).view(b, 1, 1)
    xc = ref__masked_centered(x, keep)
    std = (xc.pow(2).sum(dim=1, keepdim=True) / (cnt - 1)).sqrt()
    z = torch.where(km, xc / (std + 1e-10), torch.zeros((), device=x.device))
    d2 = ref__masked_sq_dists(z).clamp_min_(0)
    pair = keep.unsqueeze(2) & keep.unsqueeze(1)                                        # [B, N, N]
    sigma2 = torch.where(pair, d2, torch.nan).reshape(b, -1).nanmedian(dim=1).values
    sigma2 = sigma2.clamp_min(1e-24).view(b, 1, 1)
    kern = torch.exp(-d2 / (2 * sigma2)).clamp_min(1e-10)
    if abs(alpha - 1.0) < 1e-9:
        kern = kern * pair
        p = kern / kern.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        h = -(p * p.clamp_min(1e-30).log()).sum(dim=-1)
        return ref_masked_mean_tokens(h, keep)
    return torch.log((kern.pow(alpha - 1) * pair).sum(dim=(1, 2)) / cnt.view(b).pow(2)) / (1 - alpha)


# ---- the tests -------------------------------------------------------------------------------------------

import pytest  # noqa: E402

from analysis.measure import estimators as E, sinks as S  # noqa: E402
from analysis.measure.capture import CaptureConfig, capture  # noqa: E402
from analysis.testing import random_tokens, tiny_loaded  # noqa: E402


def _same(got: Tensor, want: Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def _cases():
    """(name, x [B, N, d], keep [B, N]) covering repeats, massive tokens, offsets, odd sizes, bf16, masks."""
    g = torch.Generator().manual_seed(7)
    out = []
    for b, n, d in ((3, 40, 16), (2, 64, 48), (2, 33, 7)):
        x = torch.randn(b, n, d, generator=g) * torch.rand(1, 1, d, generator=g) * 3
        rep = x.clone()
        rep[:, 5:5 + n // 2] = rep[:, 2:3]                       # one state repeated more than k times
        rep[0, -3:] = rep[0, 1]
        mas = x.clone() + 50.0                                    # a large common offset
        mas[0, 0] *= 400.0                                        # massive activations, as at attention sinks
        mas[-1, n // 3] -= 900.0
        const = x.clone()
        const[:, :, 0] = 1.5                                      # a constant dimension
        for name, v in (("plain", x), ("repeats", rep), ("massive", mas), ("constant-dim", const)):
            for dtype in (torch.float32, torch.bfloat16):
                xv = v.to(dtype)
                sinks = ref_detect_sinks(torch.linalg.vector_norm(xv, dim=-1, dtype=torch.float32))
                keeps = {"detected": ~sinks, "all": torch.ones(b, n, dtype=torch.bool)}
                rnd = torch.rand(b, n, generator=g) > 0.1
                rnd[0, 0] = False
                keeps["random"] = rnd
                for kname, keep in keeps.items():
                    out.append((f"{name}-{dtype}-{b}x{n}x{d}-{kname}", xv, keep))
    return out


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, x, keep", CASES, ids=IDS)
def test_masked_kernels_are_bit_identical(name, x, keep):
    """Every sink-masked kernel equals the frozen copy bit for bit (``_same`` asserts)."""
    _same(S.entropy_bucket_masked(x, keep), ref_entropy_bucket_masked(x, keep))
    _same(S.entropy_bucket_masked(x, keep, bins=7), ref_entropy_bucket_masked(x, keep, bins=7))
    _same(S.entropy_bucket_robust_masked(x, keep), ref_entropy_bucket_robust_masked(x, keep))
    for k in (1, 5):
        _same(S.knn_radii_masked(x, keep, k), ref_knn_radii_masked(x, keep, k))
        for normalize in (False, True):
            for dedup in (False, True):
                _same(S.entropy_knn_masked(x, keep, k=k, normalize=normalize, dedup=dedup),
                      ref_entropy_knn_masked(x, keep, k=k, normalize=normalize, dedup=dedup))
    _same(S.entropy_renyi_masked(x, keep), ref_entropy_renyi_masked(x, keep))
    _same(S.masked_mean_tokens(x[..., 0].float(), keep), ref_masked_mean_tokens(x[..., 0].float(), keep))


@pytest.mark.parametrize("name, x, keep", [c for c in CASES if c[0].endswith("-all")],
                         ids=[i for i in IDS if i.endswith("-all")])
def test_plain_kernels_are_bit_identical(name, x, keep):
    """Every plain kernel equals the frozen copy bit for bit (``_same`` asserts)."""
    _same(E.entropy_bucket(x), ref_entropy_bucket(x))
    _same(E.entropy_bucket(x, bins=3), ref_entropy_bucket(x, bins=3))
    _same(S.entropy_bucket_robust(x), ref_entropy_bucket_robust(x))
    for k in (1, 5):
        _same(E.knn_radii(x, k), ref_knn_radii(x, k))
        for normalize in (False, True):
            for dedup in (False, True):
                _same(E.entropy_knn(x, k=k, normalize=normalize, dedup=dedup),
                      ref_entropy_knn(x, k=k, normalize=normalize, dedup=dedup))
    _same(E.entropy_renyi(x), ref_entropy_renyi(x))
    _same(E.entropy_renyi(x, alpha=1.0), ref_entropy_renyi(x, alpha=1.0))
    _same(E.exact_duplicates(x), ref_exact_duplicates(x))
    _same(E._sq_dists(x), ref__sq_dists(x))
    _same(E.mean_cosine(x, x.flip(1)), ref_mean_cosine(x, x.flip(1)))
    _same(E.rms_norm(x), ref_rms_norm(x))
    norms = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)
    _same(S.detect_sinks(norms), ref_detect_sinks(norms))


def test_the_cases_exercise_repeats_and_masks():
    """The fixtures really contain what the identity tests claim (so those tests can fail)."""
    names = {c[0].split("-")[0] for c in CASES}
    assert {"repeats", "massive"} <= names
    rep = next(x for n, x, _ in CASES if n.startswith("repeats-torch.float32"))
    assert bool(ref_exact_duplicates(rep).any())
    assert bool((ref_knn_radii(rep, 5) == 0).any())            # radius exactly 0 for repeated states
    det = [keep for n, _, keep in CASES if n.startswith("massive") and n.endswith("-detected")]
    assert all(not bool(k.all()) for k in det)                  # the massive tokens are flagged


def _reference_capture(lm, ids: Tensor, mode: str, estimators: dict) -> dict:
    """Per-point statistics of the capture recomputed with the frozen kernels (and the capture's old cosine and
    norm formulas) on the hooked residual states."""
    ad = lm.adapter
    pre, mid, post = {}, {}, {}
    hs = []
    for i in range(ad.num_layers):
        hs.append(ad.layers[i].register_forward_pre_hook(
            lambda m, a, kw, i=i: pre.__setitem__(i, (a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True))
        hs.append(ad.mid_norm(i).register_forward_pre_hook(
            lambda m, a, kw, i=i: mid.__setitem__(i, (a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True))
        hs.append(ad.layers[i].register_forward_hook(
            lambda m, a, kw, o, i=i: post.__setitem__(i, (o[0] if isinstance(o, tuple) else o).clone()),
            with_kwargs=True))
    try:
        with torch.inference_mode():
            ad.base(input_ids=ids, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    fns = {"bucket": (ref_entropy_bucket, ref_entropy_bucket_masked),
           "knn": (lambda x, k: ref_entropy_knn(x, k=k), lambda x, keep, k: ref_entropy_knn_masked(x, keep, k=k))}
    view = (lambda x: x[:, 1:]) if mode == "first" else (lambda x: x)
    L = ad.num_layers
    points = {"boundary": [pre[0]] + [post[i] for i in range(L)], "mid": [mid[i] for i in range(L)]}

    def norms_keep(x):
        full = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)
        if mode == "exclude":
            return full, ~ref_detect_sinks(full)
        return (full[:, 1:] if mode == "first" else full), None

    out = {}
    for kind, xs in points.items():
        for name, params in estimators.items():
            plain, masked = fns[name]
            out[(name, kind)] = torch.stack([masked(x, norms_keep(x)[1], **params) if mode == "exclude"
                                             else plain(view(x), **params) for x in xs], dim=1)
        cols = []
        for x in xs:
            norms, keep = norms_keep(x)
            cols.append(((norms.pow(2) * keep).sum(-1) / keep.sum(-1).clamp_min(1) if keep is not None
                         else norms.pow(2).mean(-1)).sqrt())
        out[("norm", kind)] = torch.stack(cols, dim=1)

    def cos(a, b):
        (na, ka), (nb, kb) = norms_keep(a), norms_keep(b)
        c = (ref_as_float32(view(a)) * ref_as_float32(view(b))).sum(-1) / (na * nb).clamp_min(1e-8)
        if ka is None:
            return c.mean(-1)
        k = ka & kb
        return (c * k).sum(-1) / k.sum(-1).clamp_min(1)

    out[("cos", "attn")] = torch.stack([cos(pre[i], mid[i]) for i in range(L)], dim=1)
    out[("cos", "mlp")] = torch.stack([cos(mid[i], post[i]) for i in range(L)], dim=1)
    out[("cos", "layer")] = torch.stack([cos(pre[i], post[i]) for i in range(L)], dim=1)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode, alt_view", [("keep", True), ("keep", False), ("exclude", True), ("first", True)])
def test_capture_equals_the_frozen_kernels_on_the_hooked_states(mode, alt_view, dtype):
    """Entropies (both sinks views, or one: the reference path's one read per point), RMS norms and cosines of the
    capture, bit for bit."""
    lm = tiny_loaded(layers=3, hidden=32)
    lm.model.to(dtype)

    def massive(mod, args, out):                 # a massive activation at token 4 from block 1 on
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, 4] *= 500.0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    for i in (1, 2):
        lm.adapter.layers[i].register_forward_hook(massive)
    ids = random_tokens(4, 40, seed=3)
    ids[1, 10:30] = ids[1, 5]                                            # repeated tokens
    est = {"bucket": {"bins": 80}, "knn": {"k": 5}}
    stats = capture(lm, ids, CaptureConfig(estimators=est, batch_size=2, sinks=mode, alt_view=alt_view))
    assert int(stats.sinks["boundary"].sum()) >= 4          # the injected tokens are flagged
    want = _reference_capture(lm, ids, mode, est)
    alt = _reference_capture(lm, ids, stats.alt_mode, est) if alt_view else None
    for name in est:
        for kind in ("boundary", "mid"):
            _same(stats.entropy[name][kind], want[(name, kind)])
            if alt_view:
                _same(stats.entropy_alt[name][kind], alt[(name, kind)])
    _same(stats.norm_boundary, want[("norm", "boundary")])
    _same(stats.norm_mid, want[("norm", "mid")])
    _same(stats.cos_attn, want[("cos", "attn")])
    _same(stats.cos_mlp, want[("cos", "mlp")])
    _same(stats.cos_layer, want[("cos", "layer")])
