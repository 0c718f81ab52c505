"""A task column computed inside a real Streamlit server (headless Chromium), with the server's own threads
and signal handlers: AppTest runs scripts without them, and that is where the comparison used to hang
(lm-eval forked the server for its bootstrap pool; see analysis/tasks/workers.py). The page runs the
app's own task code (``app_support.tasks``) on a tiny model and must finish, with no fork of the server.

Skipped only when ``/usr/bin/chromium`` is absent (``make browser`` installs it).
"""
from __future__ import annotations

import textwrap

from browser_helpers import BROWSER_MARKS, OUT, ROOT

pytestmark = BROWSER_MARKS

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


def test_a_task_column_finishes_inside_the_real_server(tmp_path, launch_app, new_page):
    page_file = tmp_path / "task_column.py"
    page_file.write_text(textwrap.dedent(PAGE))
    # the user's environment: none of the switches the test suite sets
    server = launch_app(page_file, "streamlit-tasks.log", env={"PYTHONPATH": str(ROOT)},
                        drop=("DISABLE_MULTIPROC", "TOKENIZERS_PARALLELISM"))
    page = new_page(viewport=(1280, 720))
    page.goto(server.url)
    done = page.get_by_text("task columns done")
    done.wait_for(timeout=WAIT_MS)
    text = done.inner_text()
    page.screenshot(path=str(OUT / "task_column.png"))
    assert "'cloze-news acc'" in text and "'cloze-news ±'" in text
    assert text.endswith("forks of the server: 0")
