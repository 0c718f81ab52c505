"""Stop on the drop-one ground truth and on the comparison, in the real app (headless Chromium, tiny model).

The app runs the tiny random ``tiny-llama`` through its real code path (the ``ENTROSCOPE_ALLOW_TINY`` hook), so
the work is small on a loaded 2-core machine; the test-only hook ``ENTROSCOPE_TEST_JOB_HOLD`` (app_support/jobs.py)
makes each progress report of these two jobs wait until Stop (ground truth) or a while (comparison), so Stop is
pressed while the job runs however fast the machine is. After Stop: the job ends as *stopped* in the session
database, what finished is kept and shown (the ground truth on the windows done, used as a criterion; the
comparison rows already evaluated), no Stop button is left behind, and the page goes on working (and survives F5).
"""
from __future__ import annotations

import re

import pytest

from browser_helpers import BROWSER_MARKS, keep_plan, MODEL_WAIT_MS, OUT, button, choose, nav, number, open_app, run_analysis, \
    sample, wait_any_text, wait_idle, wait_text

pytestmark = BROWSER_MARKS

#: ground truth: every report waits for Stop (long); comparison: each report of every model waits 20 s, so the
#: second of three models is evaluated for a while (Stop lands there) and the third never starts
HOLD = "ground-truth:300,comparison:20"
TINY = "tiny-llama — Tiny random llama (8 layers, test hook)"


@pytest.fixture(scope="module")
def server(launch_app):
    return launch_app(log_name="streamlit-stop.log", drop=(),
                      env={"ENTROSCOPE_ALLOW_TINY": "1", "ENTROSCOPE_TEST_JOB_HOLD": HOLD})


def test_stop_keeps_what_finished_on_ground_truth_and_comparison(server, new_page):
    from playwright.sync_api import expect

    page = new_page()
    open_app(page, server.url)
    nav(page, "Model & data")
    choose(page, "Embedded model", TINY)
    sample(page, 16, 64)
    run_analysis(page)

    # --- Stop the drop-one ground truth after its first window batch (of two) ---------------------------
    nav(page, "Select blocks")
    number(page, "Calibration windows for the ground truth", 16)
    button(page, "gt_go").click()
    wait_any_text(page, "Ground truth …")
    button(page, "gt_stop").click()
    wait_text(page, re.compile(r"Ground truth stopped: every block is scored on the 8 windows done before Stop"),
              MODEL_WAIT_MS)
    wait_idle(page)
    gt = server.jobs("ground-truth")
    assert len(gt) == 1 and gt[0]["starts"] == 1 and gt[0]["status"] == "stopped", gt
    expect(page.locator(".st-key-gt_stop")).to_have_count(0)                 # no orphan Stop button
    expect(page.locator(".st-key-gt_chart")).to_be_visible()                 # the scores of the windows done
    page.screenshot(path=str(OUT / "stop-01-ground-truth.png"), full_page=True)
    choose(page, "Criterion", "Drop-one ΔPPL (ground truth)")                # usable: ranks blocks by what finished
    expect(page.get_by_test_id("stMetric").filter(has_text="Source")).to_contain_text("delta-ppl")
    expect(button(page, "keep_plan")).to_be_enabled()

    # --- two plans, Stop the comparison while the second of three models is evaluated ---------------------
    first = keep_plan(page)
    number(page, "k", 1)
    second = keep_plan(page)
    assert first != second
    nav(page, "Prune & compare")
    page.get_by_text("Evaluation settings").click()
    number(page, "Window (tokens)", 64)
    number(page, "Token budget", 512)
    number(page, "Decode steps", 2)
    number(page, "Repeats", 1)
    button(page, "run_compare").click()
    wait_any_text(page, "model 2/3")
    button(page, "cmp_stop").click()
    stopped = wait_text(page, re.compile(r"^Stopped — a partial comparison: .*The table shows what finished"), MODEL_WAIT_MS)
    wait_idle(page)
    assert second in stopped.inner_text() or first in stopped.inner_text(), stopped.inner_text()
    cmp = server.jobs("comparison")
    assert len(cmp) == 1 and cmp[0]["starts"] == 1 and cmp[0]["status"] == "stopped", cmp
    original = page.get_by_test_id("stMetric").filter(has_text="Perplexity · original")
    expect(original).to_be_visible()                                         # what finished is in the table
    expect(page.locator(".st-key-cmp_stop")).to_have_count(0)
    expect(button(page, "run_compare")).to_be_enabled()
    page.screenshot(path=str(OUT / "stop-02-comparison.png"), full_page=True)

    # --- the page goes on: another page and back, then F5: the stopped table is kept, nothing restarts ------
    nav(page, "Select blocks")
    nav(page, "Prune & compare")
    expect(original).to_be_visible()
    page.reload()
    expect(original).to_be_visible(timeout=MODEL_WAIT_MS)
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"^Stopped — a partial comparison: "))).to_be_visible()
    assert server.jobs("comparison")[0]["starts"] == 1
