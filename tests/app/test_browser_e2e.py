"""End-to-end: the real app in headless Chromium on the real SmolLM2.

Starts ``streamlit run app.py`` on a free localhost port (the ``server`` fixture, tests/app/conftest.py), then:
sample 8 × 64 tokens of the built-in Wikipedia text, run the analysis, click a bar of the score chart to change
the selection, keep the plan, run the comparison and check that the perplexity row appears. Screenshots go to
``test-output/``.

Skipped only when ``/usr/bin/chromium`` is absent (``make browser`` installs it). Playwright never
downloads a browser here: it drives the system Chromium.
"""
from __future__ import annotations

import re

from browser_helpers import BROWSER_MARKS, MODEL_WAIT_MS, OUT, button, nav, number, open_app, run_analysis, sample, \
    wait_idle

pytestmark = BROWSER_MARKS


def test_e2e_smollm2_analysis_click_select_compare(server, new_page):
    from playwright.sync_api import expect

    page = new_page()
    open_app(page, server.url)
    expect(page.get_by_role("tab", name="Toy: scale a point cloud")).to_be_visible()
    page.screenshot(path=str(OUT / "01-home.png"), full_page=True)

    # --- Model & data: the defaults (SmolLM2, wiki) with a small sample -------------------------
    sample(page, 8, 64)
    page.screenshot(path=str(OUT / "02-model-and-data.png"), full_page=True)

    # --- Entropy: run the analysis ------------------------------------------------------------
    run_analysis(page)
    metric = page.get_by_test_id("stMetric").filter(has_text="Two-stage boundary")
    assert re.search(r"block \d+|none", metric.inner_text())          # none: no compression stage
    page.screenshot(path=str(OUT / "03-entropy.png"), full_page=True)

    # --- Select: click a bar of the score chart ----------------------------------------------
    nav(page, "Select blocks")
    selected = page.get_by_test_id("stMetric").filter(has_text="Selected blocks")
    expect(selected).to_contain_text("4")
    bars = page.locator(".js-plotly-plot").first.locator("g.trace.bars g.point path")
    expect(bars.first).to_be_visible()
    assert bars.count() == 30
    # block 15 is neither protected ({0, 1, 29}) nor (usually) in the top-4: clicking adds it
    bars.nth(15).click(force=True)
    wait_idle(page)
    expect(page.get_by_test_id("stMetric").filter(has_text="Source")).to_contain_text("hand edits")
    n_after = int(re.search(r"Selected blocks\s*(\d+)", selected.inner_text()).group(1))
    assert n_after in (3, 5), selected.inner_text()
    # clicking a protected bar (block 0) is refused with a message
    bars = page.locator(".js-plotly-plot").first.locator("g.trace.bars g.point path")
    bars.nth(0).click(force=True)
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"Block 0 is protected")).first).to_be_visible()   # toast + caption by the chart
    page.screenshot(path=str(OUT / "04-select.png"), full_page=True)
    button(page, "keep_plan").click()
    expect(page.get_by_text(re.compile(r"^Kept plan \S"))).to_be_visible()
    wait_idle(page)

    # --- Prune & compare -------------------------------------------------------------------------
    nav(page, "Prune & compare")
    page.get_by_text("Evaluation settings").click()
    number(page, "Token budget", 1024)
    button(page, "run_compare").click()
    expect(page.get_by_text(re.compile(r"Perplexity · original"))).to_be_visible(timeout=MODEL_WAIT_MS)
    wait_idle(page)
    table = page.get_by_test_id("stDataFrame").first
    expect(table).to_be_visible()
    page.screenshot(path=str(OUT / "05-compare.png"), full_page=True)
    text = page.get_by_test_id("stMetric").filter(has_text="Perplexity · original").inner_text()
    ppl = float(re.search(r"([\d.]+)\s*$", text.strip()).group(1))
    assert 1 < ppl < 1000, text

    nav(page, "Export")
    expect(page.get_by_text("python -m analysis analyze", exact=False).first).to_be_visible()
    page.screenshot(path=str(OUT / "06-export.png"), full_page=True)
