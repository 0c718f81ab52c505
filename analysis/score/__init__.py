"""Scoring blocks: the analysis result, the criteria registry, selection, MI-PRUN, block search, agreement.

Modules: :mod:`.result` (``AnalysisResult``), :mod:`.criteria` (``CRITERIA``, ``select``, ``bootstrap``),
:mod:`.selection` (ranking, protection, windows), :mod:`.baselines` (every criterion's scores on a run),
:mod:`.miprun` (the MI-PRUN criterion and selection), :mod:`.blocksearch` (Fast-Block-Select, optimal and
exhaustive search), :mod:`.agreement` (rank agreement between criteria). Ground truth, which runs the model,
is :mod:`analysis.evaluate.groundtruth`. Nothing here imports torch.

The names below are re-exported lazily (imported on first access), so ``import analysis.score.criteria``
does not load the whole package; inside ``analysis/`` import from the defining module.
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "AnalysisResult": "result", "GRANULARITIES": "result",
    "CRITERIA": "criteria", "Criterion": "criteria", "Selection": "criteria", "register_criterion": "criteria",
    "get_criterion": "criteria", "scores_for": "criteria", "drop_order": "criteria", "select": "criteria",
    "bootstrap": "criteria",
    "rank_blocks": "selection", "protected_blocks": "selection", "rank_correlation": "selection",
    "compute_baselines": "baselines",
    "miprun_select": "miprun", "mi_prun_score": "miprun",
    "fast_block_select": "blocksearch", "optimal_select": "blocksearch", "exhaustive_select": "blocksearch",
    "selection_gap": "blocksearch", "FBSResult": "blocksearch",
    "agreement_matrix": "agreement",
}

__getattr__ = lazy_exports(__name__, _LAZY)
