"""MI between the residual states kept by one analysis pass, and the ``mi`` analysis extension.

:class:`StateMI` estimates MI (:mod:`analysis.measure.mi`) between the paired token states of any two residual
points (boundary i = input of layer i, mid i = after attention i); :func:`dpi_violations` measures how far
the estimates of a boundary MI matrix are from a consistent information chain (the data processing
inequality); :func:`mi_analysis` is everything the extension stores.

``token_norm="rms"`` (:class:`StateMI`, :class:`MIConfig`) divides each token state by its RMS first (what the
next block's RMSNorm sees), removing the per-token scale of massive-activation tokens; see docs/mi-prun.md
for how much it changes agreement with the measured drop-one damage on SmolLM2.

**Analysis extension** ``EXTENSIONS["mi"]`` (registered by :mod:`analysis.run`): block MI and scores for
layers (boundary i → i+1), attention sub-blocks (boundary i → mid i) and MLP sub-blocks (mid i →
boundary i+1); the (L+1)×(L+1) matrix of MI between boundary states (so run scores need no states
later); the DPI violation rate; and ``criteria_scores["mi-prun"]`` for the criterion registry.

Only numpy is imported at import time.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from analysis.errors import DataError, ExtensionStopped, SelectionError
from analysis.indices import GRANULARITIES
from analysis.measure.mi import MI_ESTIMATORS, get_mi_estimator, subsample_rows
from analysis.settings import check_ranges, setting

TOKEN_NORMS = ("none", "rms")


def _nbytes(side: Any) -> int:
    if isinstance(side, np.ndarray):
        return side.nbytes
    if isinstance(side, dict):
        return sum(_nbytes(v) for v in side.values())
    return 64


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


def mi_matrix(matrix) -> np.ndarray:
    """A boundary MI matrix as a float array (JSON ``None`` → NaN)."""
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
    m = mi_matrix(matrix)
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
    n_tokens: int = setting(256, flag="tokens", min=1, max=1_000_000, what="a token count", help="sampled token states kept per residual point; block MI and "
                            "the boundary matrix share them (default 256, see docs/mi-prun.md)")
    matrix_tokens: int = field(default=256, metadata={"derive": lambda m: m.n_tokens})  # settings: = n_tokens
    params: dict = field(default_factory=dict)
    token_norm: str = setting("none", choices=TOKEN_NORMS, app=False,  # "rms": see StateMI
        help="divide each token state by its RMS before estimating MI")
    sub_blocks: bool = True
    seed: int | None = None          # None: AnalysisConfig.seed

    def __post_init__(self) -> None:
        check_ranges(self)               # every numeric setting finite and in its stated range (settings.py)


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
