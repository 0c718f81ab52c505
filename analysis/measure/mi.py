"""Mutual-information estimators between paired token states (papers.md §2.3).

MI-PRUN (:mod:`analysis.score.miprun`) scores a block by the MI between the residual states entering and
leaving it. The paper does not state its estimator (papers.md §2.3), so every estimator here is a
documented choice; :mod:`analysis.measure.mi_states` applies them to the states kept by an analysis pass.

**Samples.** Tokens are the samples: every row of ``X [N, d_x]`` is paired with the same row of
``Y [N, d_y]`` (the same token position of the same calibration sequence). The analysis pass keeps a
seeded subsample of token rows for every residual point (``CaptureStats.states``); :class:`~analysis.measure.mi_states.StateMI`
caps it again at ``n_tokens`` rows (seeded, the same rows for every point, so all estimates are paired). MI of a
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

Degenerate inputs: a constant side carries no information and gives exactly 0 for every estimator;
duplicated token rows are fine; NaN/inf raise :class:`~analysis.errors.DataError` (the analysis extension
drops non-finite token rows first and says so).

This module imports only numpy at import time; scipy and scikit-learn are imported when an estimator runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from analysis.errors import DataError, SelectionError
from analysis.registry import Registry


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


MI_ESTIMATORS: Registry[MIEstimator] = Registry("MI estimator")


def register_mi_estimator(e: MIEstimator) -> MIEstimator:
    """Add ``e`` to :data:`MI_ESTIMATORS` (a name already registered raises)."""
    return MI_ESTIMATORS.register(e)


def get_mi_estimator(name: str) -> MIEstimator:
    """The registered MI estimator ``name``; :class:`SelectionError` listing the choices if there is none."""
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
