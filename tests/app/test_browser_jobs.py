"""Jobs survive a reload, in the real app (headless Chromium, the real SmolLM2).

F5 during the analysis and during the comparison re-attaches to the running job (the session database's
``jobs`` table shows each started once: no duplicate work); the heal choice picked in the page (linear) and the
finished comparison table, with its healed row, are there after F5, and a second F5 brings them back without
starting anything again. (Stop on the ground truth and the comparison: test_browser_stop.py.)

Waits are generous and nothing is timed: a step that ends before the reload lands is re-attached as a
finished job, which the assertions accept too (the point is: once, and nothing lost).
"""
from __future__ import annotations

import re

from browser_helpers import BROWSER_MARKS, MODEL_WAIT_MS, OUT, button, choose, nav, number, open_app, sample, \
    wait_any_text, wait_idle

pytestmark = BROWSER_MARKS


def test_reload_reattaches_jobs_and_stop_keeps_what_finished(server, new_page):
    from playwright.sync_api import expect

    page = new_page()
    open_app(page, server.url)
    sample(page, 16, 128)

    # --- F5 during the analysis ---------------------------------------------------------------
    nav(page, "Entropy dynamics")
    button(page, "run_analysis").click()
    boundary = page.get_by_text("Two-stage boundary", exact=True)
    wait_any_text(page, "Analysing", "Two-stage boundary")
    assert "sid=" in page.url
    page.reload()
    expect(boundary).to_be_visible(timeout=MODEL_WAIT_MS)       # re-attached; the run arrives
    wait_idle(page)
    runs = server.jobs("analysis")
    assert len(runs) == 1 and runs[0]["starts"] == 1 and runs[0]["status"] == "done", runs
    page.screenshot(path=str(OUT / "jobs-01-entropy-after-f5.png"), full_page=True)

    # --- keep a plan, F5 during the comparison -------------------------------------
    nav(page, "Select blocks")
    button(page, "keep_plan").click()
    kept = page.get_by_text(re.compile(r"^Kept plan \S"))
    expect(kept).to_be_visible()
    plan = re.match(r"Kept plan (\S+):", kept.inner_text()).group(1)
    wait_idle(page)
    nav(page, "Prune & compare")
    page.get_by_text("Evaluation settings").click()
    number(page, "Token budget", 2048)
    heal_box = f"Heal · {plan}"
    page.get_by_text("Heal the pruned models").click()
    choose(page, heal_box, "linear")                            # stored at once (an F5 right after finds it)
    button(page, "run_compare").click()
    table = page.get_by_text(re.compile(r"Perplexity · original"))
    healed = page.get_by_test_id("stMetric").filter(has_text=f"Perplexity · {plan} + linear")
    wait_any_text(page, "Comparing", "Perplexity · original")
    page.reload()
    expect(table).to_be_visible(timeout=MODEL_WAIT_MS)          # re-attached; the table arrives
    expect(healed).to_be_visible(timeout=MODEL_WAIT_MS)         # with the healed row of the chosen method
    wait_idle(page)
    cmp_jobs = server.jobs("comparison")
    assert len(cmp_jobs) == 1 and cmp_jobs[0]["starts"] == 1, cmp_jobs
    page.get_by_text("Heal the pruned models").click()
    expect(page.get_by_role("combobox", name=heal_box, exact=True)).to_have_value("linear")

    page.reload()                                               # finished results come back, nothing recomputed
    expect(table).to_be_visible(timeout=MODEL_WAIT_MS)
    expect(healed).to_be_visible()
    wait_idle(page)
    expect(page.locator(".st-key-cmp_stop")).to_have_count(0)     # no progress, no Stop: nothing runs
    page.get_by_text("Heal the pruned models").click()
    expect(page.get_by_role("combobox", name=heal_box, exact=True)).to_have_value("linear")
    cmp_jobs = server.jobs("comparison")
    assert len(cmp_jobs) == 1 and cmp_jobs[0]["starts"] == 1 and cmp_jobs[0]["status"] == "done", cmp_jobs
    page.screenshot(path=str(OUT / "jobs-02-compare-after-f5.png"), full_page=True)
