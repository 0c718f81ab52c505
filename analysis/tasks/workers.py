"""No worker process is ever forked from the caller's process while tasks run (the one place that says so).

Why: the app runs tasks inside the Streamlit server. lm-eval's ``bootstrap_stderr`` (the standard error of
non-mean metrics such as the cloze tasks' target perplexity) used ``multiprocessing.Pool(cpu_count())``,
which on Linux *forks* the server. The forked workers inherit the server's threads' locks and its SIGTERM
handler; when the pool is closed, ``Pool.terminate()`` SIGTERMs them, they run Streamlit's handler
("Stopping...") instead of exiting, and ``terminate()`` waits for them forever: the comparison hung and the
server could not even shut down. Forking a multi-threaded process is unsafe in general (a lock held by
another thread at fork time stays held in the child for good).

What :func:`no_worker_forks` does, before every lm-eval call:

* ``DISABLE_MULTIPROC=1``: lm-eval's own switch; its bootstrap then runs in a single loop (the same
  draws: chunk ``i`` uses ``random.Random(i)`` either way, so the numbers are unchanged);
* ``TOKENIZERS_PARALLELISM=false`` unless the user set it (the Rust tokenizers' thread pool and forks don't mix);
* ``HF_DATASETS_*``: nothing to do — local task data is built with ``Dataset.from_list`` (no ``num_proc``), and no
  ``torch.utils.data.DataLoader`` is involved (lm-eval's HF model batches itself);
* lm-eval's per-call environment report (``torch.utils.collect_env``, which starts ``pip``, ``lscpu``… as
  subprocesses, ~1 s each call) is replaced by a note: Entroscope reads only the results.

Code execution (HumanEval) starts its programs with ``subprocess.Popen`` (fork-exec in C, no Python runs
in the child) into :mod:`analysis.tasks.sandbox`; nothing there forks the caller at Python level either.
"""
from __future__ import annotations

import os

ENV = {"DISABLE_MULTIPROC": "1"}
ENV_DEFAULTS = {"TOKENIZERS_PARALLELISM": "false"}


def _no_env_info(storage: dict) -> None:
    storage["pretty_env_info"] = "not collected by Entroscope (it would start subprocesses on every call)"


def no_worker_forks() -> None:
    """Make the next lm-eval calls single-process (idempotent; process-wide, never undone)."""
    os.environ.update(ENV)
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import lm_eval.evaluator

    lm_eval.evaluator.add_env_info = _no_env_info
