"""MI-PRUN: mutual information between the residual states entering and leaving a block (papers.md §2).

MI-PRUN (Zhang et al. 2026, arXiv 2601.07212) scores a block by ``s_i = −MI(H_{i−1}, H_i)``: a block whose
output shares a lot of information with its input transforms little and is redundant (lowest ``s``
dropped first). For a contiguous run of blocks ``j..k`` the score is ``−MI(H_{j−1}, H_k)``; by the data
processing inequality (DPI) along the Markov chain of hidden states this is ``≥ max_i s_i`` over the run.
The paper does not state its estimator (papers.md §2.3), so every estimator here is a documented choice.

**Samples.** Tokens are the samples: every row of ``X [N, d_x]`` is paired with the same row of
``Y [N, d_y]`` (the same token position of the same calibration sequence). The analysis pass keeps a
seeded subsample of token rows for every residual point (``CaptureStats.states``); here it is capped again
at ``n_tokens`` rows (seeded, the same rows for every point, so all estimates are paired). MI of a
deterministic continuous map is infinite in theory; every finite value below is a property of the
estimator, its bandwidth / rank / neighbour count and of N, and only comparable within one estimator
and one configuration (the run JSON records both).

**Estimators** (:data:`MI_ESTIMATORS`, names ``renyi``, ``gaussian``, ``ksg``, ``cka``) — all in nats
except CKA, all computed in float64 on the CPU:

* ``renyi`` (default) — matrix-based Rényi α-entropy MI (Giraldo, Rao & Príncipe 2014, arXiv 1211.2459).
  Gaussian Gram ``K_ij = exp(−‖x_i − x_j‖² / 2σ²)`` with σ set *per side* by the median heuristic (median
  pairwise Euclidean distance; Gemma's √d-scaled states need their own σ), ``A = K / tr K``,
  ``S_α(A) = log Σ λ_i(A)^α / (1 − α)`` (eigenvalues by ``numpy.linalg.eigvalsh`` on the N×N matrix),
  ``MI = S_α(A) + S_α(B) − S_α(A∘B / tr(A∘B))``. α = 1.01 (near Shannon) by default; α = 2 needs no
  eigen-decomposition (``S_2 = −log ‖A‖_F²``) and is ~100× faster. Cost O(N²d + N³) per pair.
  *Bias*: for independent X, Y the estimate is not 0; with the median bandwidth the floor grows with the
  dimension (≈ 0.02 nats at d = 2, ≈ 0.8 at d = 64, ≈ 95 % of MI(X, X) at d = 576 with N = 1024).
  ``debias=True`` subtracts the estimate for a seeded row-shuffle of Y (same marginals, dependence
  destroyed), which brings independent pairs to ≈ 0 at any d at the cost of one more eigen-decomposition
  per pair (and exact token-order invariance: the shuffle is seeded on row positions).
* ``gaussian`` — MI of a Gaussian fitted after PCA: each side is projected on its top ``r`` principal
  components (default 64), each component scaled to unit variance, and the joint ``2r × 2r`` covariance is
  shrunk with Ledoit–Wolf towards the identity; ``MI = ½ (log det Σ_XX + log det Σ_YY − log det Σ)`` from
  the blocks of that one shrunk matrix (so MI ≥ 0 by Fischer's inequality). Exact for jointly Gaussian
  data (up to the rank cut and shrinkage); a lower bound on dependence that is only linear. Independent
  pairs give ≈ 0 because Ledoit–Wolf shrinks pure-noise cross-covariances away.
* ``ksg`` — Kraskov–Stögbauer–Grassberger estimator 1 (Kraskov et al. 2004) with k = 3 neighbours, max-norm,
  on the top ``r`` (default 8) unit-variance principal components of each side (KSG is unusable in
  hundreds of dimensions): ``ψ(k) + ψ(N) − ⟨ψ(n_x + 1) + ψ(n_y + 1)⟩``. scikit-learn KD-trees. Can be
  slightly negative for independent data (reported as is, not clipped). No jitter is added, so it is
  exactly invariant to token order; duplicated tokens (identical rows) are counted as neighbours.
* ``cka`` — linear CKA ``‖XᵀY‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F)`` on centred features: a cheap similarity in [0, 1],
  *not* an MI (no units), used as a proxy with the same orientation (higher = more shared). Its
  independence floor is ≈ √(d_x d_y)/N.

``token_norm="rms"`` (:class:`StateMI`, :class:`MIConfig`) divides each token state by its RMS first (what the
next block's RMSNorm sees), removing the per-token scale of massive-activation tokens; see docs/mi-prun.md
for how much it changes agreement with the measured drop-one damage on SmolLM2.

Degenerate inputs: a constant side carries no information and gives exactly 0 for every estimator;
duplicated token rows are fine; NaN/inf raise :class:`~analysis.errors.DataError` (the analysis extension
drops non-finite token rows first and says so).

**Analysis extension** ``EXTENSIONS["mi"]`` (registered by :mod:`analysis.run`): block MI and scores for
layers (boundary i → i+1), attention sub-blocks (boundary i → mid i) and MLP sub-blocks (mid i →
boundary i+1); the (L+1)×(L+1) matrix of MI between boundary states (so run scores need no states
later); the DPI violation rate; and ``criteria_scores["mi-prun"]`` for the criterion registry.

This module imports only numpy at import time (it is imported by :mod:`analysis.score.criteria`); scipy and
scikit-learn are imported when an estimator runs.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from analysis.score.criteria import Criterion, register_criterion
from analysis.errors import DataError, ExtensionStopped, SelectionError
from analysis.indices import GRANULARITIES
from analysis.settings import setting

TOKEN_NORMS = ("none", "rms")

# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def _as2d(x, name: str = "X") -> np.ndarray:
    """float64 ``[N, d]`` from numpy / torch / lists (torch is never imported here)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{name} must be a [tokens, features] array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{name} contains {int((~np.isfinite(a)).sum())} NaN/inf values; MI is undefined",
                        hint="drop non-finite token rows first (fp16 overflow? try bf16 or fp32)")
    return a


def subsample_rows(n: int, n_max: int | None, seed: int = 0) -> np.ndarray:
    """Sorted, seeded row indices: all ``n`` rows when ``n <= n_max`` (or no cap), else ``n_max`` of them."""
    if n_max is None or n_max <= 0 or n <= n_max:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:n_max])


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def _sq_dists(x: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances of centred rows (float64, clipped at 0, zero diagonal)."""
    xc = _centre(x)
    sq = np.einsum("ij,ij->i", xc, xc)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (xc @ xc.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def _pca(x: np.ndarray, r: int) -> np.ndarray:
    """Top-``r`` principal components, each scaled to unit variance; zero-variance components dropped."""
    xc = _centre(x)
    n = xc.shape[0]
    if n < 2:
        return np.zeros((n, 0))
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    tol = max(s[0] if len(s) else 0.0, 1e-300) * max(xc.shape) * np.finfo(float).eps
    keep = [i for i in range(min(r, len(s))) if s[i] > tol and s[i] > 0]
    if not keep:
        return np.zeros((n, 0))
    z = u[:, keep] * s[keep]
    return z / z.std(axis=0, keepdims=True)


def _nbytes(side: Any) -> int:
    if isinstance(side, np.ndarray):
        return side.nbytes
    if isinstance(side, dict):
        return sum(_nbytes(v) for v in side.values())
    return 64


# ----------------------------------------------------------------------------------------------------
# estimators: prepare(X, **p) -> side (cacheable per residual point); pair(sx, sy, **p) -> float
# ----------------------------------------------------------------------------------------------------


def renyi_entropy(a: np.ndarray, alpha: float = 1.01) -> float:
    """Matrix-based Rényi α-entropy ``log Σ λ^α / (1 − α)`` of a unit-trace PSD matrix (nats).

    α = 1 uses the Shannon limit ``−Σ λ log λ``; α = 2 uses ``−log ‖A‖_F²`` (no eigen-decomposition).
    Eigenvalues below 0 (round-off) are clipped; the spectrum is renormalised to sum 1.
    """
    if alpha <= 0:
        raise SelectionError(f"Rényi α must be > 0, got {alpha}")
    if alpha == 2:
        tr = float(np.trace(a))
        return float(-math.log(float(np.sum(a * a)) / (tr * tr)))
    lam = np.linalg.eigvalsh(a)
    lam = np.clip(lam, 0.0, None)
    lam = lam / lam.sum()
    if abs(alpha - 1.0) < 1e-12:
        nz = lam[lam > 0]
        return float(-(nz * np.log(nz)).sum())
    return float(math.log(float(np.sum(lam ** alpha))) / (1.0 - alpha))


def gram_matrix(x: np.ndarray, sigma: float | str = "median", sigma_scale: float = 1.0,
                standardize: bool = False) -> tuple[np.ndarray, float]:
    """Unit-trace Gaussian Gram matrix ``A = K / tr K`` and the bandwidth σ used.

    ``sigma="median"``: the median of the pairwise Euclidean distances between distinct rows (if over
    half of them are 0, e.g. many duplicated tokens, the mean of the positive distances; if all are 0
    the input is constant and K is all ones). ``standardize`` z-scores each feature first (zero-variance
    features dropped) so outlier dimensions do not dominate the distances.
    """
    if standardize:
        sd = x.std(axis=0)
        x = _centre(x)[:, sd > 0] / sd[sd > 0]
    d2 = _sq_dists(x)
    n = d2.shape[0]
    if isinstance(sigma, str):
        if sigma != "median":
            raise SelectionError(f"Unknown bandwidth rule {sigma!r}", hint="use 'median' or a number")
        iu = np.triu_indices(n, 1)
        dist = np.sqrt(d2[iu])
        s = float(np.median(dist)) if dist.size else 0.0
        if s <= 0:
            pos = dist[dist > 0]
            s = float(pos.mean()) if pos.size else 1.0
    else:
        s = float(sigma)
        if s <= 0:
            raise SelectionError(f"Kernel bandwidth must be positive, got {sigma}")
    s *= sigma_scale
    k = np.exp(-d2 / (2.0 * s * s))
    return k / np.trace(k), s


def _renyi_prepare(x, alpha=1.01, sigma="median", sigma_scale=1.0, standardize=False, **_):
    a, s = gram_matrix(x, sigma, sigma_scale, standardize)
    return {"A": a, "S": renyi_entropy(a, alpha), "sigma": s}


def _joint_entropy(a: np.ndarray, b: np.ndarray, alpha: float) -> float:
    c = a * b
    return renyi_entropy(c / np.trace(c), alpha)


def _renyi_pair(sx, sy, alpha=1.01, debias=False, seed=0, **_):
    a, b = sx["A"], sy["A"]
    mi = sx["S"] + sy["S"] - _joint_entropy(a, b, alpha)
    if debias:
        p = np.random.default_rng(seed + 7919).permutation(b.shape[0])
        mi -= sx["S"] + sy["S"] - _joint_entropy(a, b[np.ix_(p, p)], alpha)
    return float(mi)


def _gaussian_prepare(x, r=64, **_):
    return {"Z": _pca(x, int(r))}


def _gaussian_pair(sx, sy, shrinkage="ledoit-wolf", **_):
    zx, zy = sx["Z"], sy["Z"]
    rx, ry = zx.shape[1], zy.shape[1]
    if rx == 0 or ry == 0:
        return 0.0
    z = np.hstack([zx, zy])
    if shrinkage == "ledoit-wolf":
        from sklearn.covariance import ledoit_wolf

        cov, _ = ledoit_wolf(z, assume_centered=True)
    else:
        rho = float(shrinkage)
        if not 0.0 <= rho <= 1.0:
            raise SelectionError(f"shrinkage must be 'ledoit-wolf' or in [0, 1], got {shrinkage}")
        emp = z.T @ z / z.shape[0]
        mu = np.trace(emp) / emp.shape[0]
        cov = (1 - rho) * emp + rho * mu * np.eye(emp.shape[0])
    ld = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    mi = 0.5 * (ld(cov[:rx, :rx]) + ld(cov[rx:, rx:]) - ld(cov))
    return float(max(mi, 0.0)) if np.isfinite(mi) else float("inf")


def _ksg_prepare(x, r=8, **_):
    from sklearn.neighbors import KDTree

    z = _pca(x, int(r))
    return {"Z": z, "tree": KDTree(z, metric="chebyshev") if z.shape[1] else None}


def _ksg_pair(sx, sy, k=3, **_):
    from scipy.special import digamma
    from sklearn.neighbors import KDTree

    zx, zy = sx["Z"], sy["Z"]
    n = zx.shape[0]
    if zx.shape[1] == 0 or zy.shape[1] == 0:
        return 0.0
    k = int(k)
    if n <= k:
        raise SelectionError(f"KSG with k={k} needs more than {k} tokens, got {n}")
    joint = np.hstack([zx, zy])
    eps = KDTree(joint, metric="chebyshev").query(joint, k=k + 1)[0][:, k]   # self (distance 0) included
    rad = np.nextafter(eps, 0)                                               # strictly inside ε
    nx = sx["tree"].query_radius(zx, rad, count_only=True) - 1
    ny = sy["tree"].query_radius(zy, rad, count_only=True) - 1
    nx, ny = np.maximum(nx, 0), np.maximum(ny, 0)
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))


def _cka_prepare(x, **_):
    xc = _centre(x)
    return {"X": xc, "norm": float(np.linalg.norm(xc.T @ xc))}


def _cka_pair(sx, sy, **_):
    if sx["norm"] <= 0 or sy["norm"] <= 0:
        return 0.0
    cross = np.linalg.norm(sx["X"].T @ sy["X"])
    return float(cross * cross / (sx["norm"] * sy["norm"]))


@dataclass(frozen=True)
class MIEstimator:
    """One MI estimator: ``prepare`` each side once (cacheable per residual point), then ``pair`` them."""

    name: str
    title: str
    prepare: Callable[..., Any]
    pair: Callable[..., float]
    defaults: dict
    assumptions: str
    units: str = "nats"
    is_mi: bool = True
    independence_floor: str = ""
    reference: str = ""

    def params(self, **overrides) -> dict:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise SelectionError(f"Unknown parameter(s) {sorted(unknown)} for MI estimator {self.name!r}",
                                 hint=f"it takes: {', '.join(self.defaults) or 'none'}")
        return {**self.defaults, **overrides}


MI_ESTIMATORS: dict[str, MIEstimator] = {}


def register_mi_estimator(e: MIEstimator) -> MIEstimator:
    MI_ESTIMATORS[e.name] = e
    return e


def get_mi_estimator(name: str) -> MIEstimator:
    if name not in MI_ESTIMATORS:
        raise SelectionError(f"Unknown MI estimator {name!r}", hint=f"choose from {', '.join(MI_ESTIMATORS)}")
    return MI_ESTIMATORS[name]


register_mi_estimator(MIEstimator(
    "renyi", "Matrix-based Rényi α-entropy MI", _renyi_prepare, _renyi_pair,
    {"alpha": 1.01, "sigma": "median", "sigma_scale": 1.0, "standardize": False, "debias": False},
    "Tokens are i.i.d. samples; Gaussian kernel with per-side median-heuristic bandwidth; the functional "
    "is an RKHS analogue of Rényi entropy, not Shannon MI. O(N³) per pair (eigvalsh of N×N).",
    independence_floor="grows with d under the median bandwidth (≈0.02 at d=2, ≈0.8 at d=64, N=1024); "
                       "≈0 at any d with debias=True",
    reference="Giraldo, Rao & Príncipe 2014, arXiv 1211.2459"))
register_mi_estimator(MIEstimator(
    "gaussian", "Gaussian MI after PCA (Ledoit–Wolf)", _gaussian_prepare, _gaussian_pair,
    {"r": 64, "shrinkage": "ledoit-wolf"},
    "Joint Gaussianity of the top-r unit-variance principal components of each side; captures linear "
    "dependence only; Ledoit–Wolf shrinkage of the joint 2r×2r covariance.",
    independence_floor="≈0 (shrinkage removes noise cross-covariance)"))
register_mi_estimator(MIEstimator(
    "ksg", "KSG k-NN MI (estimator 1)", _ksg_prepare, _ksg_pair, {"k": 3, "r": 8},
    "Locally uniform density within each k-NN ball (max-norm); applied to the top-r unit-variance "
    "principal components of each side because k-NN estimates fail in hundreds of dimensions.",
    independence_floor="≈0 ± 0.03 at N=1024 (can be negative)", reference="Kraskov et al. 2004"))
register_mi_estimator(MIEstimator(
    "cka", "Linear CKA (proxy)", _cka_prepare, _cka_pair, {},
    "Not an MI: normalised HSIC with linear kernels; sensitive to linear shared variance only.",
    units="CKA (unitless, [0, 1])", is_mi=False, independence_floor="≈ √(d_x d_y)/N",
    reference="Kornblith et al. 2019"))


def mi_estimate(x, y, method: str = "renyi", n_max: int | None = 1024, seed: int = 0, **params) -> float:
    """MI between paired samples ``x [N, d_x]`` and ``y [N, d_y]`` (rows are tokens), in nats.

    Rows beyond ``n_max`` are subsampled (seeded, the same rows on both sides). ``params`` go to the
    estimator (see :data:`MI_ESTIMATORS`; e.g. ``alpha`` for ``renyi``, ``r`` for ``gaussian``).
    """
    est = get_mi_estimator(method)
    p = est.params(**params)
    xa, ya = _as2d(x, "X"), _as2d(y, "Y")
    if xa.shape[0] != ya.shape[0]:
        raise DataError(f"X and Y must have the same number of rows (paired tokens): {xa.shape[0]} vs {ya.shape[0]}")
    if xa.shape[0] < 4:
        raise DataError(f"MI needs at least 4 paired tokens, got {xa.shape[0]}")
    rows = subsample_rows(xa.shape[0], n_max, seed)
    xa, ya = xa[rows], ya[rows]
    return est.pair(est.prepare(xa, **p), est.prepare(ya, **p), seed=seed, **p)


# ----------------------------------------------------------------------------------------------------
# MI between cached residual states
# ----------------------------------------------------------------------------------------------------


class StateMI:
    """MI between the paired residual states of one analysis pass.

    ``states`` is ``CaptureStats.states``: ``{"boundary": [M, L+1, d], "mid": [M, L, d]}`` (numpy or torch;
    boundary 0 = embeddings, boundary l+1 = resid_post[l], mid l = resid_mid[l]). Points are keys
    ``("b", i)`` and ``("m", i)``. Token rows with a non-finite value at any point are dropped, then
    ``n_tokens`` rows are kept (seeded), the same for every point. Prepared sides are kept in an LRU
    bounded by ``cache_mb``; pair values are memoised.

    ``token_norm="rms"`` divides every token state by its RMS before estimating, i.e. uses what the next
    block's RMSNorm passes on (without the learned gain); ``"none"`` (default) uses the raw residual
    states, whose geometry is dominated by a few massive-activation tokens in many LLMs.
    """

    def __init__(self, states: dict, estimator: str = "renyi", n_tokens: int | None = 1024, seed: int = 2024,
                 cache_mb: float = 512, token_norm: str = "none", **params):
        self.est = get_mi_estimator(estimator)
        self.params = self.est.params(**params)
        if token_norm not in TOKEN_NORMS:
            raise SelectionError(f"Unknown token_norm {token_norm!r}", hint=f"use one of {', '.join(TOKEN_NORMS)}")
        self.token_norm = token_norm
        self.seed = seed
        self._arr = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                     for k, v in states.items() if v is not None}
        if "boundary" not in self._arr:
            raise DataError("MI needs the boundary states (CaptureStats.states['boundary'])")
        b = self._arr["boundary"]
        self.num_layers = b.shape[1] - 1
        m = b.shape[0]
        finite = np.ones(m, dtype=bool)
        for v in self._arr.values():
            finite &= np.isfinite(v.reshape(m, -1)).all(axis=1)
        self.dropped_nonfinite = int(m - finite.sum())
        ok = np.flatnonzero(finite)
        self.rows = ok[subsample_rows(len(ok), n_tokens, seed)]
        if len(self.rows) < 4:
            raise DataError(f"MI needs at least 4 finite token states, got {len(self.rows)}",
                            hint="keep more state tokens (state_tokens) or fix non-finite activations")
        self.n_tokens = int(len(self.rows))
        self.available = int(m)
        self.dims = int(b.shape[2])
        self._cache_bytes = int(cache_mb * 2 ** 20)
        self._sides: OrderedDict = OrderedDict()
        self._mi: dict = {}
        self.on_pair: Callable[[], None] | None = None   # called before each new estimate
        self.evaluations = 0
        self.seconds = 0.0

    def with_tokens(self, n_tokens: int | None) -> "StateMI":
        """The same states and estimator on a (nested) smaller token subsample."""
        other = object.__new__(StateMI)
        other.__dict__.update(self.__dict__)
        if n_tokens and n_tokens < self.n_tokens:
            other.rows = self.rows[np.sort(np.random.default_rng(self.seed + 1).permutation(self.n_tokens)[:n_tokens])]
        other.n_tokens = int(len(other.rows))
        other._sides, other._mi, other.evaluations, other.seconds = OrderedDict(), {}, 0, 0.0
        return other

    def _points(self, kind: str) -> int:
        return self._arr["boundary" if kind == "b" else "mid"].shape[1]

    def side(self, key: tuple[str, int]):
        if key in self._sides:
            self._sides.move_to_end(key)
            return self._sides[key]
        kind, i = key
        name = {"b": "boundary", "m": "mid"}.get(kind)
        if name not in self._arr or not 0 <= i < self._arr[name].shape[1]:
            raise SelectionError(f"No residual state {key}: this run has {self.num_layers} layers"
                                 + ("" if "mid" in self._arr or kind != "m" else " and no mid states"))
        x = np.asarray(self._arr[name][self.rows, i], dtype=np.float64)
        if self.token_norm == "rms":
            x = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-12)
        s = self.est.prepare(x, **self.params)
        self._sides[key] = s
        total = sum(_nbytes(v) for v in self._sides.values())
        while total > self._cache_bytes and len(self._sides) > 2:
            _, old = self._sides.popitem(last=False)
            total -= _nbytes(old)
        return s

    def mi(self, a: tuple[str, int], b: tuple[str, int]) -> float:
        key = (a, b) if a <= b else (b, a)
        if key not in self._mi:
            if self.on_pair is not None:
                self.on_pair()                   # progress and Stop, once per new estimate
            t0 = time.perf_counter()
            sa, sb = self.side(key[0]), self.side(key[1])
            self._mi[key] = self.est.pair(sa, sb, seed=self.seed, **self.params)
            self.evaluations += 1
            self.seconds += time.perf_counter() - t0
        return self._mi[key]

    # ---- blocks and runs ------------------------------------------------------------------------
    def block_points(self, granularity: str, i: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """(input, output) residual points of block ``i``."""
        if granularity == "layer":
            return ("b", i), ("b", i + 1)
        if granularity == "attention":
            return ("b", i), ("m", i)
        if granularity == "mlp":
            return ("m", i), ("b", i + 1)
        raise SelectionError(f"Unknown granularity {granularity!r}", hint=f"use one of {', '.join(GRANULARITIES)}")

    def block_mi(self, granularity: str = "layer") -> np.ndarray:
        """``MI(in_i, out_i)`` for every block, ``[L]``."""
        return np.array([self.mi(*self.block_points(granularity, i)) for i in range(self.num_layers)])

    def block_scores(self, granularity: str = "layer") -> np.ndarray:
        """MI-PRUN block scores ``s_i = −MI(in_i, out_i)`` (lowest = most redundant)."""
        return -self.block_mi(granularity)

    def run_mi(self, j: int, k: int) -> float:
        """``MI(H_j, H_{k+1})``: input of block ``j`` and output of block ``k`` (0-based, inclusive)."""
        if not 0 <= j <= k < self.num_layers:
            raise SelectionError(f"Bad run {j}..{k} for {self.num_layers} layers")
        return self.mi(("b", j), ("b", k + 1))

    def run_score(self, j: int, k: int) -> float:
        """MI-PRUN run score ``−MI(H_j, H_{k+1})`` of the contiguous layers ``j..k`` (0-based, inclusive)."""
        return -self.run_mi(j, k)

    def boundary_matrix(self, progress: Callable[[float, str], None] | None = None) -> np.ndarray:
        """``[L+1, L+1]`` symmetric matrix of MI between boundary states; the diagonal is NaN."""
        n = self.num_layers + 1
        m = np.full((n, n), np.nan)
        total, done = n * (n - 1) // 2, 0
        for i in range(n):
            for j in range(i + 1, n):
                m[i, j] = m[j, i] = self.mi(("b", i), ("b", j))
                done += 1
            if progress is not None:
                progress(done / total, f"MI matrix {done}/{total}")
        return m


def matrix_block_scores(matrix) -> np.ndarray:
    """Layer scores ``−MI(H_i, H_{i+1})`` from a boundary MI matrix (None → NaN)."""
    m = _matrix(matrix)
    return -np.array([m[i, i + 1] for i in range(m.shape[0] - 1)])


def matrix_run_score(matrix) -> Callable[[int, int], float]:
    """``run_score(j, k) = −MI(H_j, H_{k+1})`` read from a boundary MI matrix (layers j..k, 0-based)."""
    m = _matrix(matrix)

    def run_score(j: int, k: int) -> float:
        return -float(m[j, k + 1])

    return run_score


def _matrix(matrix) -> np.ndarray:
    if isinstance(matrix, np.ndarray):
        return matrix.astype(float)
    return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)


def dpi_violations(matrix, rel_tol: float = 1e-9) -> dict:
    """How often the DPI bound fails for the estimates, over every contiguous run of ≥ 2 layers.

    DPI: ``MI(H_{j}, H_{k+1}) ≤ min_{i∈j..k} MI(H_i, H_{i+1})``, i.e. run score ≥ max single-block score.
    A violation is ``MI(run) > min MI(blocks) + rel_tol·scale``. Estimators are not guaranteed to respect
    the DPI, so this measures how far the estimates are from a consistent information chain. Returns
    ``rate``, ``violations``, ``windows``, ``max_excess`` (nats) and the per-run-length rates.
    """
    m = _matrix(matrix)
    L = m.shape[0] - 1
    single = np.array([m[i, i + 1] for i in range(L)])
    scale = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    tol = rel_tol * max(scale, 1e-300)
    viol = windows = 0
    excess = 0.0
    by_len: dict[int, list[int]] = {}
    for j in range(L):
        for k in range(j + 1, L):
            run, lo = m[j, k + 1], np.min(single[j:k + 1])
            if not (np.isfinite(run) and np.isfinite(lo)):
                continue
            windows += 1
            bad = run > lo + tol
            viol += int(bad)
            excess = max(excess, float(run - lo)) if bad else excess
            v = by_len.setdefault(k - j + 1, [0, 0])
            v[0] += int(bad)
            v[1] += 1
    return {"rate": viol / windows if windows else None, "violations": viol, "windows": windows,
            "max_excess": excess, "by_length": {str(n): v[0] / v[1] for n, v in sorted(by_len.items())},
            "definition": "run score −MI(H_j, H_{k+1}) < max single-block score in the run "
                          "(MI(run) > min MI(blocks)); runs of 2..L layers"}


# ----------------------------------------------------------------------------------------------------
# analysis extension
# ----------------------------------------------------------------------------------------------------


@dataclass
class MIConfig:
    """How the ``mi`` analysis extension estimates MI.

    ``n_tokens``: token rows for block scores (default 256); ``matrix_tokens``: rows for the boundary
    MI matrix (default 256: it needs (L+1)L/2 estimates; a nested subset of the block-score rows; 0 turns
    the matrix off, which also disables DPI statistics and ``miprun`` on the run). With equal sizes (the
    default) block scores and matrix share one subsample, so the layer scores are matrix entries and every
    side is prepared once: MI-PRUN costs ≈ 2 analysis passes end to end (was 1024/512, ≈ 9.6; block scores
    Spearman 0.955–0.977 with the old ones on SmolLM2, docs/benchmarks.md "Performance, second step").
    ``params`` go to the estimator. Set ``AnalysisConfig.mi = MIConfig(...)`` (attribute) or pass a dict to override.
    """

    estimator: str = setting("renyi", choices=MI_ESTIMATORS,
        help="MI estimator (default: matrix-based Rényi; see docs/mi-prun.md for how they compare)")
    n_tokens: int = setting(256, flag="tokens", min=1, help="sampled token states kept per residual point; block MI and "
                            "the boundary matrix share them (default 256, see docs/mi-prun.md)")
    matrix_tokens: int = field(default=256, metadata={"derive": lambda m: m.n_tokens})  # settings: = n_tokens
    params: dict = field(default_factory=dict)
    token_norm: str = setting("none", choices=TOKEN_NORMS, app=False,  # "rms": see StateMI
        help="divide each token state by its RMS before estimating MI")
    sub_blocks: bool = True
    seed: int | None = None          # None: AnalysisConfig.seed


class _PairProgress:
    """Counts MI estimates (pairs of residual points) against the total, reports ``"MI-PRUN: 12/151 pairs ·
    about 40 s left"`` and raises :class:`~analysis.errors.ExtensionStopped` when ``should_stop()`` is true."""

    def __init__(self, total: int, progress=None, should_stop=None):
        self.total, self.done, self.progress, self.should_stop = max(total, 1), 0, progress, should_stop
        self.t0 = time.perf_counter()

    def tick(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise ExtensionStopped(f"MI-PRUN after {self.done}/{self.total} pairs")
        self.done += 1
        if self.progress is not None:
            dt = time.perf_counter() - self.t0
            left = dt * (self.total - self.done) / self.done if self.done else 0.0
            self.progress(min(self.done / self.total, 1.0),
                          f"MI-PRUN: {self.done}/{self.total} pairs · about {left:.0f} s left")


def mi_analysis(states: dict, mcfg: MIConfig | None = None, layer_types: list | None = None,
                progress: Callable[[float, str], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> dict:
    """Everything the ``mi`` extension stores, from cached states (no forward passes). JSON-safe.

    ``progress(frac, text)`` is told the pairs done and the time left; ``should_stop()`` is polled before
    every pair and raises :class:`~analysis.errors.ExtensionStopped` (nothing partial is returned)."""
    mcfg = mcfg or MIConfig()
    seed = 2024 if mcfg.seed is None else mcfg.seed
    t0 = time.perf_counter()
    smi = StateMI(states, mcfg.estimator, mcfg.n_tokens, seed, token_norm=mcfg.token_norm, **mcfg.params)
    grans = GRANULARITIES if (mcfg.sub_blocks and "mid" in smi._arr) else ("layer",)
    with_matrix = bool(mcfg.matrix_tokens and mcfg.matrix_tokens > 0)
    shared = with_matrix and mcfg.matrix_tokens >= smi.n_tokens          # the matrix reuses the block pairs
    total = smi.num_layers * len(grans) + ((smi.num_layers + 1) * smi.num_layers // 2
                                            - (smi.num_layers if shared else 0) if with_matrix else 0)
    pp = _PairProgress(total, progress, should_stop)
    smi.on_pair = pp.tick
    mi = {g: smi.block_mi(g) for g in grans}
    t_blocks = time.perf_counter() - t0
    warnings = []
    if smi.dropped_nonfinite:
        warnings.append(f"dropped {smi.dropped_nonfinite} token rows with NaN/inf states before estimating MI")
    if smi.available < mcfg.n_tokens:
        warnings.append(f"only {smi.available} sampled token states available (asked for {mcfg.n_tokens})")
    out: dict = {
        "estimator": mcfg.estimator, "title": smi.est.title, "units": smi.est.units, "is_mi": smi.est.is_mi,
        "params": dict(smi.params), "token_norm": smi.token_norm, "seed": seed, "n_tokens": smi.n_tokens,
        "states_available": smi.available,
        "hidden_size": smi.dims, "num_layers": smi.num_layers,
        "mi": {g: v.tolist() for g, v in mi.items()},
        "scores": {g: (-v).tolist() for g, v in mi.items()},
        "index_base": 0,
        "definition": {"layer": "MI(boundary i, boundary i+1)", "attention": "MI(boundary i, mid i)",
                       "mlp": "MI(mid i, boundary i+1)", "score": "s_i = −MI(in_i, out_i); lowest = most redundant",
                       "matrix": "MI(boundary i, boundary j); boundary 0 = embeddings, boundary l+1 = resid_post[l]",
                       "run_score": "run j..k (0-based, inclusive) = −matrix[j][k+1]"},
        "assumptions": smi.est.assumptions,
        "warnings": warnings,
    }
    if layer_types:
        out["layer_types"] = list(layer_types)
    timings = {"block_scores_s": t_blocks}
    if mcfg.matrix_tokens and mcfg.matrix_tokens > 0:
        t1 = time.perf_counter()
        msmi = smi if mcfg.matrix_tokens >= smi.n_tokens else smi.with_tokens(mcfg.matrix_tokens)
        msmi.on_pair = pp.tick
        mat = msmi.boundary_matrix()
        out["matrix"] = [[None if not np.isfinite(v) else float(v) for v in row] for row in mat]
        out["matrix_tokens"] = msmi.n_tokens
        out["dpi"] = dpi_violations(mat)
        timings["matrix_s"] = time.perf_counter() - t1
    else:
        out["matrix"] = None
        out["matrix_tokens"] = 0
        out["dpi"] = None
    timings["total_s"] = time.perf_counter() - t0
    out["timings"] = timings
    out["criteria_scores"] = {"mi-prun": {g: v for g, v in out["scores"].items()}}
    return out


def _config_from(cfg) -> MIConfig:
    m = getattr(cfg, "mi", None)
    if isinstance(m, MIConfig):
        mc = MIConfig(**asdict(m))
    elif isinstance(m, dict):
        mc = MIConfig(**m)
    else:
        mc = MIConfig()
    if mc.seed is None:
        mc.seed = int(getattr(cfg, "seed", 2024))
    return mc


def mi_extension(stats, lm, cfg, progress=None, should_stop=None) -> dict:
    """``EXTENSIONS["mi"]``: MI-PRUN scores from the states kept by the analysis pass (with pair progress and
    Stop, see :func:`mi_analysis`)."""
    if stats.states is None:
        raise SelectionError("MI-PRUN needs sampled token states, but this pass kept none",
                             hint="set AnalysisConfig.state_tokens > 0 (CLI: analyze --mi)")
    layer_types = None
    try:
        layer_types = lm.adapter.layer_types()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return mi_analysis(stats.states, _config_from(cfg), layer_types, progress=progress, should_stop=should_stop)


def register_extension(extensions: dict) -> None:
    """Add ``"mi"`` to :data:`analysis.run.EXTENSIONS` (called by :mod:`analysis.run` at import)."""
    extensions.setdefault("mi", mi_extension)


# ----------------------------------------------------------------------------------------------------
# criterion
# ----------------------------------------------------------------------------------------------------


def run_mi_data(r) -> dict:
    """The run's ``extras["mi"]`` or a clear error."""
    d = (getattr(r, "extras", None) or {}).get("mi")
    if not d:
        raise SelectionError("This run has no MI data", hint="run the analysis with --mi")
    return d


def _mi_score(r, g: str, **_) -> np.ndarray:
    d = run_mi_data(r)
    sc = (d.get("scores") or {}).get(g)
    if sc is None:
        raise SelectionError(f"This run has no MI-PRUN scores for {g} blocks", hint="run the analysis with --mi")
    return np.array([np.nan if v is None else v for v in sc], dtype=float)


register_criterion(Criterion(
    "mi-prun", "MI-PRUN −MI(in, out)",
    "Minus the mutual information between a block's input and output residual states (tokens as samples; "
    "matrix-based Rényi MI by default): blocks whose output mostly repeats their input (highest MI, lowest "
    "score) are dropped first. Plain ranking here; `python -m analysis miprun` runs Fast-Block-Select with "
    "the DPI-aware run scores.",
    score=_mi_score, redundant="low", granularities=GRANULARITIES,
    reference="Zhang et al. 2026, arXiv 2601.07212", score_label="−MI (nats)"))
