"""Evaluating pruned models.

``windows`` (EvalConfig, prepare_eval)  <  ``quality`` (perplexity, agreement, generations)  <  ``cost``
(parameters, KV cache, latency)  <  ``sweeps`` (every criterion × k plan, prefix reuse). The shared forward
numerics live in :mod:`analysis.models.forward` and :mod:`analysis.models.prefix`.
"""
from analysis.evaluate.cost import kv_cache_report, latency, machine_load, overlapping, param_report
from analysis.evaluate.quality import agreement, eval_protocol, generate_pair, greedy_continuation, perplexity
from analysis.evaluate.sweeps import SweepRow, sweep, sweep_nll
from analysis.evaluate.windows import (DEFAULT_CORPUS, EvalConfig, EvalWindows, Progress, batch_windows, make_windows,
                                       model_context, prepare_eval)

__all__ = [
    "DEFAULT_CORPUS", "EvalConfig", "EvalWindows", "Progress", "SweepRow",
    "agreement", "batch_windows", "eval_protocol", "generate_pair", "greedy_continuation", "kv_cache_report",
    "latency", "machine_load", "make_windows", "model_context", "overlapping", "param_report", "perplexity",
    "prepare_eval", "sweep", "sweep_nll",
]
