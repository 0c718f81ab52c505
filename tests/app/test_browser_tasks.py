"""A task column computed inside a real Streamlit server (headless Chromium), with the server's own threads
and signal handlers: AppTest runs scripts without them, and that is where the comparison used to hang
(lm-eval forked the server for its bootstrap pool; see analysis/tasks/workers.py). The page runs the
app's own task code (``app_support.tasks``) on a tiny model and must finish, with no fork of the server.

Skipped only when ``/usr/bin/chromium`` is absent (``make browser`` installs it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from test_browser_e2e import ARGS, CHROMIUM, OUT, ROOT, START_WAIT_S, _free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                 reason=f"{CHROMIUM} not installed (run `make browser`)")]

WAIT_MS = 600_000  # generous: a loaded 2-core machine; a hang never ends

PAGE = """
import os
import streamlit as st

from analysis.models.plan import Plan
from analysis.testing import tiny_loaded
from app_support.tasks import evaluate_plan_tasks, task_columns


@st.cache_resource
def forks():
    n = []
    os.register_at_fork(before=lambda: n.append(1))
    return n


@st.cache_resource
def model():
    return tiny_loaded("llama", layers=4, hidden=32, seed=3)


n = forks()
settings = {"tasks": ["cloze-news"], "limit": 3, "allow_code_execution": False}
cols = {}
for name, plan in (("original", None), ("drop 1", Plan(drop_layers=[1]))):
    cols[name] = task_columns(evaluate_plan_tasks(model(), plan, settings))
st.dataframe(cols)
st.write(f"task columns done: {sorted(cols['drop 1'])}; forks of the server: {len(n)}")
"""


def test_a_task_column_finishes_inside_the_real_server(tmp_path):
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "task_column.py"
    page_file.write_text(textwrap.dedent(PAGE))
    port = _free_port()
    # the user's environment: none of the switches the test suite sets
    env = {k: v for k, v in os.environ.items() if k not in ("DISABLE_MULTIPROC", "TOKENIZERS_PARALLELISM")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    OUT.mkdir(exist_ok=True)
    with open(OUT / "streamlit-tasks.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(page_file), "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_WAIT_S
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start within {START_WAIT_S} s (see test-output/streamlit-tasks.log)")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page()
            page.goto(url)
            done = page.get_by_text("task columns done")
            done.wait_for(timeout=WAIT_MS)
            text = done.inner_text()
            page.screenshot(path=str(OUT / "task_column.png"))
            browser.close()
        assert "'cloze-news acc'" in text and "'cloze-news ±'" in text
        assert text.endswith("forks of the server: 0")
    finally:
        os.killpg(proc.pid, 9)  # the server and anything it started
        proc.wait()
