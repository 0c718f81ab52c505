"""Entropy estimators for the residual stream, with EntroDrop's reference semantics (papers.md §1.3).

Every estimator maps a batch of sequences ``x: [batch, pos, d_model]`` to one entropy per sequence
(``[batch]``, nats). Each sequence's ``pos`` token states are the samples; sequences are never pooled,
and callers average per-sequence values over the calibration set, as EntroDrop's ``process_layers`` does.
All arithmetic is float32, batched, and stays on the input's device (no host synchronisation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from analysis.errors import SelectionError
from analysis.measure import kernels, onepass
from analysis.registry import Registry, resolve

# Estimator parameter defaults, the one place each is written (estimator functions, registry, AnalysisConfig)
KNN_K = 25          # KNN neighbours: EntroDrop's Llama path
BUCKET_BINS = 80    # Bucket bins: EntroDrop's Mistral path
RENYI_ALPHA = 4.0   # Rényi order α
ROBUST_CLIP = 0.02  # bucket-robust: quantile clipped on each side
LENS_POSITIONS = 16  # logit lens: token positions per sequence decoded at every residual point


def as_float32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


def entropy_bucket(x: Tensor, bins: int = BUCKET_BINS) -> Tensor:
    """Sum over dimensions of per-dimension histogram entropy ("marginal binning").

    For each sequence and dimension j: ``bins`` equal-width bins on ``[min_j, max_j]`` over the tokens,
    the maximum falling in the last bin; ``p = count / N`` clamped to >= 1e-10; ``H = -Σ_j Σ_b p log p``.
    Invariant to per-dimension positive affine rescaling; a constant dimension contributes 0.
    """
    x = as_float32(x)                                                    # [B, N, d]
    b, n, d = x.shape
    cells = kernels.bucket_plogp(x, bins, counts_plogp, reuse=True)      # [B, d, bins] p log p on the CPU, else None
    if cells is None and (fused := kernels.bucket_counts(x, bins)) is not None:
        cells = counts_plogp(fused.view(-1), n)
    if cells is not None:
        return cells.view(b, d * bins).sum(dim=1).neg_()
    lo = x.amin(dim=1, keepdim=True)                               # [B, 1, d]
    scale = bins / (x.amax(dim=1, keepdim=True) - lo).clamp_min_(torch.finfo(torch.float32).tiny)
    # int32 bin index (the max lands on `bins` and is clamped into the last bin; NaN → clamped, and
    # counted as non-finite by the capture); offsets make one flat histogram of B·d·bins cells
    idx = (x - lo).mul_(scale).to(torch.int32).clamp_(0, bins - 1)  # [B, N, d]
    idx += cell_offsets(b, d, bins, x.device)
    return cell_plogp(idx, b * d * bins, n).view(b, d * bins).sum(dim=1).neg_()


def entropy_bucket_point(x: Tensor, pre: Tensor | None, mid: Tensor | None, h: Tensor, norms: Tensor,
                         dots: Tensor | None, mid_out: tuple[Tensor, Tensor] | None = None,
                         bins: int = BUCKET_BINS) -> bool:
    """:func:`entropy_bucket` of every token with the capture's other per-point work from the same read of ``x``,
    written into ``h [B]``, the token norms ``norms [B, T]``, with ``pre``/``mid`` the dots pre·mid, mid·x, pre·x
    ``dots [3, B, T]`` and with ``mid_out`` ``(h, norms)`` of ``mid`` itself, each bit for bit its PyTorch form
    (:func:`analysis.measure.onepass.bucket_point`); False, writing nothing, where the compiled kernel does not run."""
    return onepass.bucket_point(x, bins, counts_plogp, h, norms, pre, mid, dots, mid_out)


def cell_offsets(b: int, d: int, stride: int, device: torch.device) -> Tensor:
    """``[B, 1, d]`` int32 offsets ``(b·d + j)·stride`` that give every (sequence, dimension) its own cells."""
    return torch.arange(b * d, device=device, dtype=torch.int32).view(b, 1, d) * stride


def cell_counts(idx: Tensor, cells: int) -> Tensor:
    """Histogram of the flat cell indices ``idx`` (any shape, int32, all in ``[0, cells)``): ``[cells]``."""
    flat = idx.flatten()
    counts = torch.zeros(cells, device=idx.device, dtype=torch.int32)
    if idx.device.type == "cpu":  # index_add_ of a broadcast 1: no min/max pass and no int64 copy (bincount has both)
        return counts.index_add_(0, flat, torch.ones(1, dtype=torch.int32).expand(flat.numel()))
    # scatter_add into a known size: no host synchronisation (bincount reads the max back)
    return counts.scatter_add_(0, flat.long(), torch.ones_like(flat))


def cell_plogp(idx: Tensor, cells: int, n) -> Tensor:
    """``p log p`` of every histogram cell, ``p = count / n`` clamped to >= 1e-10: ``[cells]`` (sum and negate)."""
    return counts_plogp(cell_counts(idx, cells), n)


def counts_plogp(counts: Tensor, n) -> Tensor:
    """``p log p`` of integer cell counts, ``p = count / n`` clamped to >= 1e-10 (same shape as ``counts``)."""
    p = (counts.to(torch.float32) / n).clamp_min_(1e-10)
    return p.log().mul_(p)


def _centered(x: Tensor) -> Tensor:
    # distances are translation invariant; centring keeps the matmul-based cdist accurate for large norms
    return x - x.mean(dim=1, keepdim=True)


#: Unit roundoff of float32 (half its machine epsilon): every float32 operation is exact up to a factor 1 ± u.
_U32 = torch.finfo(torch.float32).eps / 2


def sq_dist_error_bound(d: int) -> float:
    """Relative rounding bound ``c(d)`` of :func:`_sq_dists`: ``|fused − exact| ≤ c(d)·(|a|² + |b|²)``.

    For centred points ``a, b`` in float32 the fused form ``fl(fl(|a|² + |b|²) − 2·fl(a·b))`` errs by at most
    ``γ_d(|a|² + |b|²)`` in the two squared norms, ``2γ_d|a||b| ≤ γ_d(|a|² + |b|²)`` in the doubled dot product
    (``γ_d = d·u / (1 − d·u)``, the standard bound for a length-d sum) and ``u`` per final add/subtract, so
    ``c(d) = 2γ_d + 2u`` (worst case, 6.9e-5 for d = 576; typical errors are ~√d·u·(|a|² + |b|²)). Distances
    below ``√(c(d)·(|a|² + |b|²))`` are rounding noise in the fused matrix: two identical token states
    come out ~1e-3 apart instead of 0 at SmolLM2's embedding scale, which is why :func:`knn_radii` only
    *ranks* on the fused matrix and recomputes the chosen neighbour's distance from the difference.
    """
    g = d * _U32 / (1 - d * _U32)
    return 2 * g + 2 * _U32


def _sq_dists(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``[B, N, N]`` in one fused batched matmul (``|a|² + |b|² − 2ab``),
    on centred points so large common offsets don't cancel catastrophically. Entries carry rounding noise
    up to :func:`sq_dist_error_bound` ``·(|a|² + |b|²)`` (identical points are not exactly 0)."""
    xc = _centered(as_float32(x))
    sq = xc.pow(2).sum(-1)                                                      # [B, N]
    return (sq.unsqueeze(2) + sq.unsqueeze(1)).baddbmm_(xc, xc.transpose(1, 2), alpha=-2.0)


def exact_duplicates(x: Tensor) -> Tensor:
    """``[B, N]`` bool: token t is an exact copy of an earlier token of its sequence (all d coordinates equal).

    Candidates are tokens with an equal float64 random projection (identical rows give identical hashes:
    the same products summed the same way); each is confirmed against its first candidate coordinate by
    coordinate, so a hash collision can never merge distinct states. ``O(B·N·d + B·N²)``, no host sync.
    """
    x = as_float32(x)
    b, n, d = x.shape
    g = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(x.device)
    h = (x.double() * g).sum(-1)                                                # [B, N]
    earlier = torch.ones(n, n, dtype=torch.bool, device=x.device).tril_(-1)    # [N, N] j < t
    cand = (h.unsqueeze(2) == h.unsqueeze(1)) & earlier                        # [B, N, N]
    first = cand.to(torch.uint8).argmax(-1)                                     # [B, N] first candidate j
    other = torch.gather(x, 1, first.unsqueeze(-1).expand(b, n, d))             # [B, N, d]
    return cand.any(-1) & (x == other).all(-1)


def knn_radii(x: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """Distance from each token to its k-th nearest other token: ``[B, N]``.

    Neighbours are ranked on the fused matmul (:func:`_sq_dists`, self forced first); the k-th one's
    distance is then recomputed from the coordinate difference ``|x_t − x_j|``, as ``torch.cdist``
    defines it. Identical states are therefore exactly 0 apart on any device and at any batch size, and
    every radius is accurate to float32 precision; the fused noise can only change *which* of several
    neighbours whose squared distances differ by less than :func:`sq_dist_error_bound` is the k-th.
    ``exclude`` (``[B, N]`` bool) removes tokens from everyone's neighbour set (their own rows are
    computed but meaningless); a token with at most k non-excluded others gets NaN.
    """
    x = as_float32(x)
    b, n, d = x.shape
    if n <= k:
        raise SelectionError(f"KNN entropy needs more than k={k} tokens per sequence, got {n}",
                             hint="use a longer seq-len or a smaller --k")
    d2 = _sq_dists(x)                                                           # [B, N, N]
    if exclude is not None:
        d2.masked_fill_(exclude.unsqueeze(1), float("inf"))
    d2.diagonal(dim1=1, dim2=2).fill_(float("-inf"))                            # self is rank 0, as in cdist
    # which of several exactly tied fused distances is the k-th is topk's (stable across versions of this code); on
    # the CPU a compiled selection gives topk's answer on every row without a tie at rank k, and topk the others
    sel = kernels.kth_smallest(d2, k)                                           # ([B, N], [B, N]) or None
    if sel is None:
        top = torch.topk(d2, k + 1, dim=-1, largest=False)
        sel = top.values[..., k], top.indices[..., k]
    kth, j = sel
    r = neighbour_distance(x, j)                                                # [B, N] from the k-th neighbour
    return r.masked_fill_(kth.isinf(), float("nan")) if exclude is not None else r


def neighbour_distance(x: Tensor, j: Tensor) -> Tensor:
    """``|x_t − x_{j_t}|`` per sequence from the coordinate difference: ``x [B, N, d]``, ``j [B, N]`` → ``[B, N]``."""
    b, n, d = x.shape
    rows = (j + torch.arange(0, b * n, n, device=x.device).view(b, 1)).view(-1)
    nb = x.reshape(b * n, d).index_select(0, rows).view(b, n, d)               # row copies, not an expanded gather
    return nb.sub_(x).pow_(2).sum(-1).sqrt_()     # in place: (nb − x)² is (x − nb)² bit for bit (exact negation)


def entropy_knn(x: Tensor, k: int = KNN_K, normalize: bool = False, dedup: bool = False) -> Tensor:
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
    x = as_float32(x)
    b, n, d = x.shape
    if normalize:  # max-abs first so squaring neither underflows (1e-30) nor overflows (1e30) in float32
        x = _centered(x)
        x = x / x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        x = x / x.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-30).view(b, 1, 1)
    const = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1) - math.log(k)
    if not dedup:
        r = knn_radii(x, k)
        return d * torch.log(r + 1e-10).mean(dim=1) + const + math.log(n)
    dup = exact_duplicates(x)                                                   # [B, N]
    keep = (~dup).to(torch.float32)
    m = keep.sum(1)                                                             # [B] distinct states
    r = knn_radii(x, k, exclude=dup)
    logr = torch.log(r + 1e-10).masked_fill(dup, 0.0)
    h = d * logr.sum(1) / m + const + m.log()
    return h.masked_fill(m <= k, float("nan"))


def entropy_renyi(x: Tensor, alpha: float = RENYI_ALPHA) -> Tensor:
    """EntroDrop's kernel ("information potential") Rényi entropy, α = 4 by default.

    Standardise each dimension over the tokens, ``σ = median`` of all pairwise distances (zero diagonal
    included), ``K = exp(−D²/2σ²)`` clamped to >= 1e-10, then ``H_α = log mean(K^{α−1}) / (1 − α)``;
    for α = 1 the mean Shannon entropy of the row-normalised kernel.
    """
    x = as_float32(x)
    b, n = x.shape[:2]
    if n < 2:
        raise SelectionError(f"Rényi entropy needs at least 2 tokens per sequence, got {n}")
    z = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-10)
    d2 = _sq_dists(z).clamp_min_(0)                                             # [B, N, N] squared distances
    # median of the distances = sqrt of the median squared distance (monotone; same element)
    sigma2 = d2.reshape(b, -1).median(dim=1).values.clamp_min(1e-24).view(b, 1, 1)
    kern = torch.exp(-d2 / (2 * sigma2)).clamp_min(1e-10)
    if abs(alpha - 1.0) < 1e-9:
        p = kern / kern.sum(dim=-1, keepdim=True)
        return -(p * p.log()).sum(dim=-1).mean(dim=-1)
    return torch.log(kern.pow(alpha - 1).mean(dim=(1, 2))) / (1 - alpha)


@dataclass(frozen=True)
class EstimatorInfo:
    """A registered estimator with its semantics, for the CLI, the app and the explainer."""

    name: str
    title: str
    fn: Callable[..., Tensor] | str      # the function, or a lazy "module:attr" entry resolved on first use
    defaults: dict = field(default_factory=dict)
    scale_invariant: bool = False
    formula: str = ""
    notes: str = ""
    masked: Callable[..., Tensor] | str | None = None   # sink-masked form fn(x, keep, **params) (else sinks.MASKED)
    needs_head: bool = False    # fn(x, head=...) decodes states through the model's final norm + unembedding
    bounds: str = ""            # known range, e.g. "0 ≤ H ≤ log N" (explainer)
    pooled: Callable[..., Tensor] | str | None = None   # dataset-level form over per-sequence mean states [N, P, d] -> [P]
    views: Callable[..., tuple] | str | None = None     # both sinks views in one call, sharing work: fn(x, keep,
    #                                                     **params) -> (H of every token [B], H of the kept tokens [B]), bit for bit
    point: Callable[..., bool] | str | None = None   # every token, with the capture's per-point work in the same read:
    #   fn(x, pre, mid, h, norms, dots, mid_out, **params) writes H [B], the token norms [B, T], (with pre, mid) the
    #   block's dots [3, B, T] and (mid_out) mid's own (H, norms) into the given tensors, bit for bit, and returns True;
    #   False (nothing written) where it cannot

    def bind(self, **params) -> Callable[[Tensor], Tensor]:
        """The estimator with parameters fixed: ``x [B, N, d] -> H [B]``."""
        kw = {k: params.get(k, v) for k, v in self.defaults.items()}
        kw = {k: v for k, v in kw.items() if v is not None}
        fn = self.function
        return lambda x: fn(x, **kw)

    @property
    def function(self) -> Callable[..., Tensor]:
        """``fn``, importing a lazy ``"module:attr"`` entry (the registry never imports its implementations,
        so an estimator defined beside its sink-masked form in :mod:`analysis.measure.sinks` creates no import cycle)."""
        return resolve(self.fn) if isinstance(self.fn, str) else self.fn

    def params(self, **params) -> dict:
        return {k: params.get(k, v) if params.get(k) is not None else v for k, v in self.defaults.items()}


ESTIMATORS: Registry[EstimatorInfo] = Registry("estimator")


def register_estimator(info: EstimatorInfo) -> EstimatorInfo:
    """Add ``info`` to :data:`ESTIMATORS` (a name already registered raises)."""
    return ESTIMATORS.register(info)


register_estimator(EstimatorInfo(
    "bucket", "Bucket (marginal histogram)", entropy_bucket, {"bins": BUCKET_BINS}, scale_invariant=True,
    views="analysis.measure.sinks:entropy_bucket_views", point="analysis.measure.estimators:entropy_bucket_point",
    formula=r"H=-\sum_{j=1}^{d}\sum_{b=1}^{B} p_{jb}\log p_{jb},\; p_{jb}=\frac{\#\{t: x_{tj}\in\text{bin}_b\}}{N}",
    notes="Per-dimension min–max bins; sum of marginal entropies (an upper bound on the joint entropy). "
          "EntroDrop's Mistral path, 80 bins."))
register_estimator(EstimatorInfo(
    "knn", "KNN (Kozachenko–Leonenko)", entropy_knn, {"k": KNN_K, "dedup": False}, scale_invariant=False,
    formula=r"H=d\,\overline{\log r_k}+\tfrac d2\log\pi-\log\Gamma(\tfrac d2+1)+\log N-\log k",
    notes="EntroDrop's Llama path (k=25). Moves by d·log c when states are scaled by c, so part of a rise "
          "can be norm growth; compare with knn-norm. A state repeated more than k times (a repeated token at "
          "layer 0) has radius exactly 0 and adds d·log(1e-10), as in the reference; dedup=True (--knn-dedup) "
          "estimates on distinct states instead."))
register_estimator(EstimatorInfo(
    "knn-norm", "KNN, scale-normalised", lambda x, k=KNN_K, dedup=False: entropy_knn(x, k=k, normalize=True, dedup=dedup),
    {"k": KNN_K, "dedup": False},
    scale_invariant=True,
    formula=r"H_{\text{norm}}(x)=H_{\text{KNN}}\!\left(x/\sqrt{\overline{\|x_t-\bar x\|^2}}\right)",
    notes="KNN after dividing each sequence by its RMS token norm: ignores pure norm growth."))
register_estimator(EstimatorInfo(
    "renyi", "Rényi (kernel, α=4)", entropy_renyi, {"alpha": RENYI_ALPHA}, scale_invariant=True,
    formula=r"H_\alpha=\frac{1}{1-\alpha}\log\frac{1}{N^2}\sum_{s,t}K_{st}^{\alpha-1},\;K=e^{-D^2/2\sigma^2}",
    notes="EntroDrop's information-potential estimator after z-scoring; reported weaker than Bucket/KNN."))


register_estimator(EstimatorInfo(
    "bucket-robust", "Bucket, robust ranges (2–98 % quantiles)", "analysis.measure.sinks:entropy_bucket_robust",
    {"bins": BUCKET_BINS, "clip": ROBUST_CLIP}, scale_invariant=True,
    formula=r"H=-\sum_j\sum_b p_{jb}\log p_{jb},\;\text{bins on }[q_{0.02,j},\,q_{0.98,j}]",
    notes="Bucket whose per-dimension bins span the 2–98 % quantiles of the tokens instead of min–max; "
          "values outside fall into the edge bins, so one massive-activation token cannot stretch the "
          "range. Not in EntroDrop; the reference form is `bucket`."))


register_estimator(EstimatorInfo(
    "matrix", "Matrix entropy (von Neumann, α=1)", "analysis.measure.lenses:entropy_matrix", {},
    scale_invariant=True, masked="analysis.measure.lenses:entropy_matrix_masked", bounds="0 ≤ H ≤ log N",
    pooled="analysis.measure.lenses:dataset_entropy",
    formula=r"H_1=-\sum_i \frac{\lambda_i(K)}{\operatorname{tr}K}\log\frac{\lambda_i(K)}{\operatorname{tr}K},\;"
            r"K=ZZ^\top,\;z_t=\frac{x_t-\bar x}{\|x_t-\bar x\|}",
    notes="Matrix-based prompt entropy of Skean et al. 2025 (Rényi order α = 1): centre the sequence's token "
          "states, unit-normalise each row, Gram matrix, trace-normalise, Shannon entropy of the eigenvalues. "
          "0 for identical states, at most log N. A massive-norm token shifts the mean, so every other centred "
          "row points away from it: the Gram matrix becomes nearly rank one and H drops — compare sinks kept "
          "and excluded."))
register_estimator(EstimatorInfo(
    "logit-lens", "Logit lens (next-token entropy)", "analysis.measure.lenses:entropy_logit_lens",
    {"lens_positions": LENS_POSITIONS, "seed": 0}, scale_invariant=False, needs_head=True,
    masked="analysis.measure.lenses:entropy_logit_lens_masked", bounds="0 ≤ H ≤ log V",
    formula=r"H=-\sum_{v=1}^{V} p_v\log p_v,\;p=\operatorname{softmax}\big(W_U\,\mathrm{norm}(x_t)\big)",
    notes="Entropy-Lens (Ali et al. 2025): each residual state decoded through the model's final norm and "
          "unembedding (Gemma's soft-cap included), entropy of the next-token distribution, mean over a seeded "
          "sample of token positions per sequence (--lens-positions, default 16; the same positions at every "
          "point). Works in token space, so the massive norm of a sink token matters only at its own position."))


def get_estimator(name: str) -> EstimatorInfo:
    """The registered estimator ``name``; :class:`SelectionError` listing the choices if there is none."""
    return ESTIMATORS[name]


def mean_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Per-sequence mean over tokens of cos(x_t, y_t): ``[B, N, d] x2 -> [B]``."""
    return torch.nn.functional.cosine_similarity(as_float32(x), as_float32(y), dim=-1, eps=1e-8).mean(dim=1)


def rms_norm(x: Tensor) -> Tensor:
    """Per-sequence root-mean-square token norm ``sqrt(mean_t ||x_t||²)``: ``[B]``."""
    return as_float32(x).pow(2).sum(-1).mean(-1).sqrt()


