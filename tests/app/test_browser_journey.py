"""The live-demo journey in headless Chromium on the real SmolLM2 (issue: a teacher's demo, a researcher's session).

One click on Home runs the demo; the curve appears (partial curves while it runs); the k box is bounded
by the unprotected blocks; a kept plan survives a browser reload (F5); *Start over* clears the session;
the analysis can be stopped during the MI-PRUN stage and keeps the token pass. Step timings are written
to ``test-output/timings.json`` (recorded in docs/benchmarks.md, never asserted) and screenshots to
``test-output/``. Waits are generous: other jobs may load the machine.
"""
from __future__ import annotations

import json
import re
import time

from browser_helpers import BROWSER_MARKS, OUT, button, nav, wait_idle

pytestmark = BROWSER_MARKS

LONG = 600_000        # ms: model-bound steps on a loaded 2-core machine


def _sidebar(page) -> str:
    return page.get_by_test_id("stSidebar").inner_text()


def test_demo_reload_keeps_plans_k_bound_and_stop_during_mi(server, new_page):
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)          # UI steps; model-bound steps pass LONG explicitly
    OUT.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    console_errors: list[str] = []
    failed_requests: list[str] = []
    page = new_page(timeout=LONG)
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: failed_requests.append(r.url))
    try:
        page.goto(server.url)
        expect(page.get_by_text("Entroscope looks inside a causal language model")).to_be_visible()
        wait_idle(page, LONG)

        # --- one click: the demo, first (partial or final) curve -----------------------------------
        t0 = time.perf_counter()
        button(page, "home_demo").click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=LONG)
        timings["click_to_first_curve_s"] = round(time.perf_counter() - t0, 1)
        expect(page.get_by_text("Two-stage boundary", exact=True)).to_be_visible(timeout=LONG)
        timings["click_to_finished_analysis_s"] = round(time.perf_counter() - t0, 1)
        wait_idle(page, LONG)
        page.screenshot(path=str(OUT / "j1-demo.png"), full_page=True)

        # --- Select: k is bounded by the unprotected blocks ----------------------------------------
        nav(page, "Select blocks")
        unprotected = int(re.search(r"Unprotected blocks\s*(\d+)", page.get_by_test_id("stMetric")
                                    .filter(has_text="Unprotected blocks").inner_text()).group(1))
        selected = page.get_by_test_id("stMetric").filter(has_text="Selected blocks")
        before = selected.inner_text()
        k = page.get_by_label("k", exact=True)
        k.fill("99")
        k.press("Enter")
        wait_idle(page, LONG)
        # refused next to k (the box is marked invalid, max = the unprotected count); nothing else goes away
        assert page.get_by_label("k", exact=True).get_attribute("aria-invalid") == "true"
        assert int(page.get_by_label("k", exact=True).get_attribute("max") or 0) == unprotected
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        assert selected.inner_text() == before
        page.screenshot(path=str(OUT / "j1b-k-bound.png"), full_page=False)
        k = page.get_by_label("k", exact=True)
        k.fill("4")
        k.press("Enter")
        wait_idle(page, LONG)
        button(page, "keep_plan").click()
        expect(page.get_by_text(re.compile(r"^Kept plan \S"))).to_be_visible()
        wait_idle(page, LONG)
        assert "Plans kept: 1" in _sidebar(page)

        # --- F5: the plan and the run are still there ----------------------------------------------
        assert "sid=" in page.url
        t0 = time.perf_counter()
        page.reload()
        wait_idle(page, LONG)
        expect(page.get_by_test_id("stSidebar")).to_contain_text("Plans kept: 1", timeout=LONG)
        timings["reload_s"] = round(time.perf_counter() - t0, 1)
        assert "Run: none yet" not in _sidebar(page)
        page.screenshot(path=str(OUT / "j2-after-reload.png"), full_page=True)

        # --- Stop during the MI-PRUN stage keeps the token pass ----------------------------------
        nav(page, "Entropy dynamics")
        page.get_by_text("Analysis settings").first.click()
        page.get_by_text("MI-PRUN", exact=True).first.click()
        wait_idle(page, LONG)
        button(page, "run_analysis").click()
        expect(page.get_by_text(re.compile(r"MI-PRUN: \d+/\d+"))).to_be_visible(timeout=LONG)
        page.screenshot(path=str(OUT / "j3-mi-progress.png"), full_page=True)
        button(page, "stop_analysis").click()
        expect(page.get_by_text(re.compile(r"stopped during MI-PRUN")).first).to_be_visible(timeout=LONG)
        wait_idle(page, LONG)
        page.screenshot(path=str(OUT / "j4-mi-stopped.png"), full_page=True)

        # --- Start over -------------------------------------------------------------------------
        button(page, "start_over").click()
        wait_idle(page, LONG)
        expect(page.get_by_test_id("stSidebar")).to_contain_text("Plans kept: 0", timeout=LONG)
    finally:
        (OUT / "timings.json").write_text(json.dumps(timings, indent=2))
        (OUT / "console-errors.txt").write_text("\n".join(console_errors + failed_requests))
    # offline-safe look: nothing (icon, font, favicon) is fetched from another host
    assert not [u for u in failed_requests if not u.startswith(("http://127.0.0.1", "http://localhost"))], \
        failed_requests
