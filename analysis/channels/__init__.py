"""Iterative channel pruning with hybrid multi-domain calibration.

``config`` (ChannelConfig, option tables)  <  ``calibrate`` (hybrid calibration set)  <  ``prune`` (slicing,
allocation)  <  ``stats`` (hook statistics, channel scores)  <  ``io`` (save / load)  <  ``evaluation``
(perplexity per domain, FLOPs, latency)  <  ``pipeline`` (iterative loop, run, ablation).
"""
from analysis.channels.calibrate import as_tokens, build_hybrid_calibration
from analysis.channels.config import (ALLOCATIONS, DOMAIN_AGGS, GLOBAL_NORMS, METHODS, ChannelConfig, Progress,
                                      ShouldStop, resolve_config)
from analysis.channels.evaluation import channel_latency, evaluate_domains, flops_per_token, speedups
from analysis.channels.io import (CHANNELS_FILE, FORMAT, REPORT_FILE, channel_layout, load_channel_pruned,
                                  save_channel_pruned, to_jsonable)
from analysis.channels.pipeline import (ChannelPruneResult, ChannelRun, iterative_channel_prune, param_counts,
                                        run_ablation, run_channels)
from analysis.channels.prune import (global_targets, kv_groups, mlp_widths, prune_channels, prune_kv_groups,
                                     round_width, sync_config, top_positions, uniform_targets)
from analysis.channels.stats import channel_scores, collect_stats, scores_from_stats

__all__ = [
    "ALLOCATIONS", "CHANNELS_FILE", "DOMAIN_AGGS", "FORMAT", "GLOBAL_NORMS", "METHODS", "REPORT_FILE",
    "ChannelConfig", "ChannelPruneResult", "ChannelRun", "Progress", "ShouldStop",
    "as_tokens", "build_hybrid_calibration", "channel_latency", "channel_layout", "channel_scores", "collect_stats",
    "evaluate_domains", "flops_per_token", "global_targets", "iterative_channel_prune", "kv_groups",
    "load_channel_pruned", "mlp_widths", "param_counts", "prune_channels", "prune_kv_groups", "resolve_config",
    "round_width", "run_ablation", "run_channels", "save_channel_pruned", "scores_from_stats", "speedups",
    "sync_config", "to_jsonable", "top_positions", "uniform_targets",
]
