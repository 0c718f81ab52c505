"""Iterative channel pruning with hybrid multi-domain calibration.

``config`` (ChannelConfig, option tables)  <  ``calibrate`` (hybrid calibration set)  <  ``prune`` (slicing,
allocation)  <  ``stats`` (hook statistics, channel scores)  <  ``io`` (save / load)  <  ``evaluation``
(perplexity per domain, FLOPs, latency)  <  ``pipeline`` (iterative loop, run, ablation).

The face below is lazy: importing one module of the package does not import the others.
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "as_tokens": "calibrate", "build_hybrid_calibration": "calibrate", "ALLOCATIONS": "config",
    "ChannelConfig": "config", "DOMAIN_AGGS": "config", "GLOBAL_NORMS": "config", "METHODS": "config",
    "Progress": "config", "ShouldStop": "config", "resolve_config": "config", "channel_latency": "evaluation",
    "evaluate_domains": "evaluation", "flops_per_token": "evaluation", "speedups": "evaluation",
    "CHANNELS_FILE": "io", "FORMAT": "io", "REPORT_FILE": "io", "channel_layout": "io", "load_channel_pruned": "io",
    "save_channel_pruned": "io", "ChannelPruneResult": "pipeline", "ChannelRun": "pipeline",
    "iterative_channel_prune": "pipeline", "param_counts": "pipeline", "run_ablation": "pipeline",
    "run_channels": "pipeline", "global_targets": "prune", "kv_groups": "prune", "mlp_widths": "prune",
    "prune_channels": "prune", "prune_kv_groups": "prune", "round_width": "prune", "sync_config": "prune",
    "top_positions": "prune", "uniform_targets": "prune", "channel_scores": "stats", "collect_stats": "stats",
    "scores_from_stats": "stats",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
