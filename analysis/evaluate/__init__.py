"""Evaluating pruned models.

``windows`` (EvalConfig, prepare_eval)  <  ``quality`` (perplexity, agreement, generations)  <  ``cost``
(parameters, KV cache, latency)  <  ``sweeps`` (every criterion × k plan, prefix reuse). The shared forward
numerics live in :mod:`analysis.models.forward` and :mod:`analysis.models.prefix`.

The face below is lazy: importing one module of the package does not import the others.
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "kv_cache_report": "cost", "latency": "cost", "machine_load": "cost", "overlapping": "cost", "latency_noise": "cost", "speed_verdict": "cost",
    "SPEED_METRICS": "cost",
    "param_report": "cost", "agreement": "quality", "eval_protocol": "quality", "generate_pair": "quality",
    "greedy_continuation": "quality", "perplexity": "quality", "SweepRow": "sweeps", "sweep": "sweeps",
    "sweep_nll": "sweeps", "DEFAULT_CORPUS": "windows", "EvalConfig": "windows", "EvalWindows": "windows",
    "Progress": "windows", "batch_windows": "windows", "make_windows": "windows", "model_context": "windows",
    "prepare_eval": "windows",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
