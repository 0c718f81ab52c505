"""Task accuracy through lm-evaluation-harness, with offline tasks built from the installed corpora.

* :mod:`.runner` — :func:`evaluate_tasks` (a what-if view of an in-memory model, through lm-eval's
  ``HFLM`` and ``simple_evaluate``), :func:`evaluate_checkpoint_hf` (lm-eval's own ``hf`` model on a saved
  checkpoint), name checks (offline hub tasks, code execution opt-in).
* :mod:`.data` — the local task data (cloze per domain, CHAMP math, HumanEval), written under the cache.
* :mod:`.scoring` — per-example scoring of the generative tasks (exact match; sandboxed pass@1).
* :mod:`.sandbox` — the containment every code-executing task uses (:mod:`.jail`: its inside half).
* :mod:`.workers` — lm-eval never forks the caller (the Streamlit server): one switch, set before each call.
* ``configs/`` — the lm-eval task YAML files (``TaskManager(include_path=...)``).
"""
from analysis.lazy import lazy_exports

_LAZY = {name: "runner" for name in (
    "CODE_TASKS", "CODE_WARNING", "CONFIG_DIR", "LOCAL_TASKS", "TaskConfig", "check_tasks", "evaluate_checkpoint_hf",
    "evaluate_tasks", "flat_columns", "hub_offline_reason", "parse_tasks", "task_manager")}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
