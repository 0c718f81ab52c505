"""lm-eval never forks the caller: the app runs tasks inside the Streamlit server, where a forked
multiprocessing worker inherits the server's locks and signal handlers and the comparison hung forever
(lm-eval's bootstrap pool, closed with SIGTERM, waited on workers running Streamlit's handler)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analysis.models.plan import Plan
from analysis.tasks import TaskConfig, evaluate_tasks
from analysis.testing import tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]

_FORKS: list[int] = []
_COUNTING: list[bool] = [False]
os.register_at_fork(before=lambda: _COUNTING[0] and _FORKS.append(1))  # os.fork and multiprocessing's fork


def test_task_evaluation_forks_no_worker():
    lm = tiny_loaded("llama", layers=4, hidden=32, seed=3)
    _FORKS.clear()
    _COUNTING[0] = True
    try:
        # cloze reports target perplexity, whose standard error lm-eval bootstraps (with a process pool before)
        res = evaluate_tasks(lm, "cloze-news", Plan(drop_layers=[1]), TaskConfig(limit=3))
    finally:
        _COUNTING[0] = False
    assert _FORKS == []
    m = res["tasks"]["cloze-news"]["metrics"]["perplexity"]
    assert m["value"] > 1 and m["stderr"] is not None and m["stderr"] > 0  # the bootstrap still ran
    assert os.environ["DISABLE_MULTIPROC"] == "1" and os.environ["TOKENIZERS_PARALLELISM"]


_SERVER_LIKE = """
import signal, sys, threading
sys.path.insert(0, {root!r})
# like the Streamlit server: a SIGTERM handler that does not return in a forked copy (it waits on the
# server's loop, which only exists in the parent), and another thread holding a lock at any moment; a
# forked child that needs that lock (here: at once) waits forever, as the server's forked workers did
signal.signal(signal.SIGTERM, lambda *a: threading.Event().wait())
LOCK, held = threading.Lock(), threading.Event()
def server_thread():
    with LOCK:
        held.set()
        threading.Event().wait()
threading.Thread(target=server_thread, daemon=True).start()
held.wait()
import os
os.register_at_fork(after_in_child=LOCK.acquire)
from analysis.models.plan import Plan
from analysis.tasks import TaskConfig, evaluate_tasks
from analysis.testing import tiny_loaded
lm = tiny_loaded("llama", layers=4, hidden=32, seed=3)
res = evaluate_tasks(lm, "cloze-news", Plan(drop_layers=[1]), TaskConfig(limit=3))
print("finished", res["tasks"]["cloze-news"]["n"])
"""


def test_tasks_finish_in_a_server_like_process():
    env = {k: v for k, v in os.environ.items() if k not in ("DISABLE_MULTIPROC", "TOKENIZERS_PARALLELISM")}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SERVER_LIKE.format(root=str(ROOT)))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)  # generous: a busy machine; a hang never ends
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("task evaluation hung in a server-like process (forked workers)")
    assert proc.returncode == 0, err[-2000:]
    assert "finished 3" in out
