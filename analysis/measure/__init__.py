"""Measuring: activation capture, results cache, entropy and MI estimators, sinks, the two-stage boundary.

Modules: :mod:`.capture` (forward hooks on ``resid_pre``/``resid_mid``/``resid_post``, streaming statistics),
:mod:`.runcache` (resumable results cache), :mod:`.estimators` (``ESTIMATORS``: Bucket, KNN, Rényi, ...),
:mod:`.sinks` (massive-activation tokens and the masked estimators), :mod:`.kernels` (compiled CPU kernels, bit-identical
to their PyTorch forms: the Bucket counts), :mod:`.boundary` (compression →
expansion boundary with a bootstrap interval), :mod:`.mi` (``MI_ESTIMATORS``), :mod:`.mi_states` (state MI,
DPI, the ``mi`` analysis extension), :mod:`.distributed` (data-parallel capture under torchrun).
The face is lazy (see :mod:`analysis.lazy`); inside ``analysis/`` import from the defining module.
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "CaptureConfig": "capture", "CaptureStats": "capture", "StopRequested": "capture", "capture": "capture",
    "merge_stats": "capture", "cached_capture": "runcache", "run_key": "runcache",
    "ESTIMATORS": "estimators", "EstimatorInfo": "estimators", "register_estimator": "estimators",
    "get_estimator": "estimators", "KNN_K": "estimators", "BUCKET_BINS": "estimators", "RENYI_ALPHA": "estimators",
    "SINK_MODES": "sinks", "detect_sinks": "sinks", "robust_boundary": "boundary", "boundary_interval": "boundary",
    "MI_ESTIMATORS": "mi", "register_mi_estimator": "mi", "mi_estimate": "mi",
    "MIConfig": "mi_states", "StateMI": "mi_states", "mi_analysis": "mi_states", "dpi_violations": "mi_states",
    "distributed_capture": "distributed", "is_distributed": "distributed",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
