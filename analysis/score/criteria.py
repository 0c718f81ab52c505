"""Block-redundancy criteria, registered with their semantics (lm-evaluation-harness style).

Each criterion declares which granularities it scores, which direction means *redundant*
(``"low"``: lowest score dropped first; ``"high"``: highest first), whether it selects a contiguous
window, and whether it is stochastic, so the CLI and the app render any criterion without special cases.
Score functions read an :class:`~analysis.score.result.AnalysisResult` and return one score per block (0-based).
A criterion scored in another module names its score function as a lazy ``"module:attr"`` string, so this
registry never imports its implementations (``mi-prun``, ``delta-ppl``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from analysis.errors import SelectionError
from analysis.indices import GRANULARITIES
from analysis.registry import Registry, lazy_callable
from analysis.score.result import AnalysisResult
from analysis.score.selection import best_window, check_k, rank_blocks


@dataclass(frozen=True)
class Criterion:
    name: str
    title: str
    description: str
    score: Callable[..., np.ndarray] | str            # (result, granularity, **params) -> [L]; or lazy "module:attr"
    redundant: str = "low"                            # "low" | "high": which end is dropped first
    granularities: tuple[str, ...] = GRANULARITIES
    per_seq: Callable[..., np.ndarray] | None = None  # (result, granularity, rows) -> [N, L]; mean == score
    needs_window: bool = False                        # selects a contiguous run of k blocks
    stochastic: bool = False
    reference: str = ""
    score_label: str = "score"
    params: dict = field(default_factory=dict)        # tunable parameters and defaults

    def __post_init__(self) -> None:
        # a "module:attr" score (or per_seq) is imported on first call: the registry never imports its implementations
        object.__setattr__(self, "score", lazy_callable(self.score))
        object.__setattr__(self, "per_seq", lazy_callable(self.per_seq))


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(c: Criterion) -> Criterion:
    """Add ``c`` to :data:`CRITERIA` (a name already registered raises)."""
    return CRITERIA.register(c)


def get_criterion(name: str) -> Criterion:
    """The registered criterion ``name``; :class:`SelectionError` listing the choices if there is none."""
    return CRITERIA[name]


def _check_gran(c: Criterion, g: str) -> None:
    if g not in c.granularities:
        raise SelectionError(f"Criterion {c.name!r} does not score {g} blocks",
                             hint=f"it supports: {', '.join(c.granularities)}")


# ---- EntroDrop ----------------------------------------------------------------------------------
def _entrodrop_seq(r: AnalysisResult, g: str, rows=None, estimator: str | None = None) -> np.ndarray:
    return r.seq_delta_h(g, estimator, rows)


register_criterion(Criterion(
    "entrodrop", "EntroDrop ΔH", "Entropy increase of the residual stream across the block, "
    "ΔH = H(Z^l) − H(Z^{l−1}); blocks that add the least entropy are dropped first.",
    score=lambda r, g, estimator=None, **_: _entrodrop_seq(r, g, estimator=estimator).mean(0),
    per_seq=_entrodrop_seq, redundant="low", reference="Yang et al. 2025, arXiv 2504.03794",
    score_label="ΔH (nats)", params={"estimator": None}))


# ---- the other entropy lenses (analysis.measure.lenses): ΔH per block, in either sinks view ----------------
def _lens_seq(est: str, absolute: bool = False):
    def seq(r: AnalysisResult, g: str, rows=None, view: str | None = None, **_) -> np.ndarray:
        if not r.has_view(est, view):
            raise SelectionError(f"This run has no {est!r} entropies" + (f" with sinks {view}" if view else ""),
                                 hint=f"re-run `python -m analysis analyze ... --also {est}`")
        dh = r.seq_delta_h(g, est, rows, view)
        return np.abs(dh) if absolute else dh
    return seq


register_criterion(Criterion(
    "matrix", "Matrix-entropy ΔH (α=1)", "EntroDrop's rule on the matrix-based (von Neumann) prompt entropy of "
    "Skean et al.: ΔH = H_1(output) − H_1(input) per block; blocks that add the least are dropped first. Needs "
    "`--also matrix`.",
    score=lambda r, g, view=None, **_: _lens_seq("matrix")(r, g, view=view).mean(0),
    per_seq=_lens_seq("matrix"), redundant="low", reference="Skean et al. 2025, arXiv 2502.02013",
    score_label="ΔH matrix (nats)", params={"view": None}))

register_criterion(Criterion(
    "logit-lens", "Logit-lens |ΔH|", "How much a block changes the next-token entropy read through the logit lens "
    "(Entropy-Lens): |H(output) − H(input)| per block; blocks that change the model's prediction least are "
    "dropped first. Needs `--also logit-lens`.",
    score=lambda r, g, view=None, **_: _lens_seq("logit-lens", True)(r, g, view=view).mean(0),
    per_seq=_lens_seq("logit-lens", True), redundant="low", reference="Ali et al. 2025, arXiv 2502.16570",
    score_label="|ΔH| logit lens (nats)", params={"view": None}))


# ---- cosine baselines ---------------------------------------------------------------------------
def _cos_seq(r: AnalysisResult, g: str, rows=None, **_) -> np.ndarray:
    c = r.seq_cos(g)
    return c if rows is None else c[rows]


register_criterion(Criterion(
    "cosine", "LLM-Drop cosine", "Mean cosine similarity between a block's input X and output X + f(X); "
    "the most similar (highest) blocks are dropped first.",
    score=lambda r, g, **_: _cos_seq(r, g).mean(0), per_seq=_cos_seq, redundant="high",
    reference="He et al. 2024, arXiv 2406.15786", score_label="cos(X, Y)"))

register_criterion(Criterion(
    "block-influence", "ShortGPT Block Influence", "BI = 1 − E[cos(X, Y)] between block input and "
    "output; the lowest-influence blocks are dropped first.",
    score=lambda r, g, **_: 1 - _cos_seq(r, g).mean(0),
    per_seq=lambda r, g, rows=None, **_: 1 - _cos_seq(r, g, rows), redundant="low",
    reference="Men et al. 2024, arXiv 2403.03853", score_label="BI"))


def _angular(r: AnalysisResult, g: str, window: int = 1, **_) -> np.ndarray:
    if r.angular is None:
        raise SelectionError("This run has no angular statistics (run the analysis with cosine statistics on)")
    d = np.array(r.angular, dtype=float)
    L = r.num_layers
    return np.array([d[s, s + window] if s + window <= L else np.nan for s in range(L)])


register_criterion(Criterion(
    "angular", "Angular distance (Gromov)", "arccos(cos(x_ℓ, x_{ℓ+n}))/π between the last token's "
    "residual states before block ℓ and after block ℓ+n−1; drops the contiguous run of k blocks with "
    "the smallest distance. Per-block scores use window n (default 1).",
    score=_angular, redundant="low", granularities=("layer",), needs_window=True,
    reference="Gromov et al. 2024, arXiv 2403.17887", score_label="angular distance", params={"window": 1}))


def random_key(num_layers: int, seed: int = 0) -> np.ndarray:
    """The ``random`` criterion's seeded key per block (the lowest keys are dropped first): the one draw that
    :func:`select`, the bake-off's random band and its re-check on other text share."""
    return np.random.default_rng(seed).random(num_layers)


def _random(r: AnalysisResult, g: str, seed: int = 0, **_) -> np.ndarray:
    return random_key(r.num_layers, seed)


register_criterion(Criterion(
    "random", "Random", "A seeded random order: the floor any criterion should beat.",
    score=_random, redundant="low", stochastic=True, score_label="random key", params={"seed": 0}))

register_criterion(Criterion(
    "tail", "Tail (last blocks first)", "Drops the deepest unprotected blocks first (reverse order).",
    score=lambda r, g, **_: -np.arange(r.num_layers, dtype=float), redundant="low",
    reference="Lu et al. 2024, Reassessing Layer Pruning", score_label="−index"))


# ---- criteria scored in their own modules (lazy "module:attr": this registry never imports them) ----------
register_criterion(Criterion(
    "delta-ppl", "Drop-one ΔPPL (ground truth)",
    "Calibration perplexity after removing only this block minus the full model's; the blocks whose removal "
    "hurts least are dropped first. Needs forward passes, so it is computed on demand (groundtruth command), "
    "not in the analysis pass.",
    score="analysis.evaluate.groundtruth:delta_ppl_score", redundant="low",
    reference="drop-one ablation (as in SLEB / BlockPruner scoring)", score_label="ΔPPL"))

register_criterion(Criterion(
    "mi-prun", "MI-PRUN −MI(in, out)",
    "Minus the mutual information between a block's input and output residual states (tokens as samples; "
    "matrix-based Rényi MI by default): blocks whose output mostly repeats their input (highest MI, lowest "
    "score) are dropped first. Plain ranking here; `python -m analysis miprun` runs Fast-Block-Select with "
    "the DPI-aware run scores.",
    score="analysis.score.miprun:mi_prun_score", redundant="low",
    reference="Zhang et al. 2026, arXiv 2601.07212", score_label="−MI (nats)"))


# ---- selection ----------------------------------------------------------------------------------
@dataclass
class Selection:
    criterion: str
    granularity: str
    k: int
    blocks: list[int]          # chosen blocks (sorted)
    order: list[int]           # full drop order of unprotected blocks, most droppable first
    scores: list[float]        # per block
    protected: list[int]

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def scores_for(r: AnalysisResult, name: str, granularity: str | None = None, **params) -> np.ndarray:
    c = get_criterion(name)
    g = granularity or r.granularity
    _check_gran(c, g)
    if name in r.extras.get("criteria_scores", {}) and g in r.extras["criteria_scores"][name]:
        return np.asarray(r.extras["criteria_scores"][name][g], dtype=float)
    return np.asarray(c.score(r, g, **params), dtype=float)


def drop_order(r: AnalysisResult, name: str, granularity: str | None = None, protected=None,
               **params) -> list[int]:
    c = get_criterion(name)
    prot = r.protected if protected is None else protected
    return rank_blocks(scores_for(r, name, granularity, **params), c.redundant, prot)


def select(r: AnalysisResult, name: str, k: int, granularity: str | None = None, protected=None,
           **params) -> Selection:
    """Choose k blocks to drop with a criterion, respecting protected blocks."""
    c = get_criterion(name)
    g = granularity or r.granularity
    prot = list(r.protected if protected is None else protected)
    scores = scores_for(r, name, g, **params)
    order = rank_blocks(scores, c.redundant, prot)
    check_k(k, order, r.num_layers, prot)
    if c.needs_window and k > 0:
        start, _ = best_window(np.array(r.angular, dtype=float), k, prot)
        blocks = list(range(start, start + k))
    else:
        blocks = sorted(order[:k])
    return Selection(name, g, k, blocks, order, [float(s) for s in scores], prot)


def bootstrap(r: AnalysisResult, name: str, granularity: str | None = None, n_boot: int = 200, seed: int = 0,
              k: int | None = None, **params) -> dict:
    """Calibration bootstrap: resample sequences with replacement and recompute each block's score.

    Returns mean, 5th/95th percentile per block and, when k is given, how often each block lands in
    the top-k drop set (selection frequency). Needs a criterion with per-sequence scores.
    """
    c = get_criterion(name)
    g = granularity or r.granularity
    if c.per_seq is None:
        raise SelectionError(f"Criterion {name!r} has no per-sequence scores to bootstrap")
    seq = np.asarray(c.per_seq(r, g, None, **params), dtype=float)    # [N, L]
    n = seq.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = seq[idx].mean(axis=1)                                       # [n_boot, L]
    out = {"mean": seq.mean(0), "lo": np.percentile(boots, 5, axis=0), "hi": np.percentile(boots, 95, axis=0),
           "n_boot": n_boot, "n_sequences": n}
    if k:
        freq = np.zeros(r.num_layers)
        for b in boots:
            for i in rank_blocks(b, c.redundant, r.protected)[:k]:
                freq[i] += 1
        out["top_k_frequency"] = freq / n_boot
    return out
