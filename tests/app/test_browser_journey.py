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

import pytest

from test_browser_e2e import ARGS, CHROMIUM, OUT, _nav, _wait_idle, server  # noqa: F401 - the server fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                 reason=f"{CHROMIUM} not installed (run `make browser`)")]

LONG = 600_000        # ms: model-bound steps on a loaded 2-core machine


def _sidebar(page) -> str:
    return page.get_by_test_id("stSidebar").inner_text()


def test_demo_reload_keeps_plans_k_bound_and_stop_during_mi(server):  # noqa: F811 - the imported fixture
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)          # UI steps; model-bound steps pass LONG explicitly
    OUT.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    console_errors: list[str] = []
    failed_requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(LONG)
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("requestfailed", lambda r: failed_requests.append(r.url))
        try:
            page.goto(server)
            expect(page.get_by_text("Entroscope looks inside a causal language model")).to_be_visible()
            _wait_idle(page, LONG)

            # --- one click: the demo, first (partial or final) curve -----------------------------------
            t0 = time.perf_counter()
            page.locator(".st-key-home_demo button:visible").click()
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=LONG)
            timings["click_to_first_curve_s"] = round(time.perf_counter() - t0, 1)
            expect(page.get_by_text("Two-stage boundary", exact=True)).to_be_visible(timeout=LONG)
            timings["click_to_finished_analysis_s"] = round(time.perf_counter() - t0, 1)
            _wait_idle(page, LONG)
            page.screenshot(path=str(OUT / "j1-demo.png"), full_page=True)

            # --- Select: k is bounded by the unprotected blocks ----------------------------------------
            _nav(page, "Select blocks")
            unprotected = int(re.search(r"Unprotected blocks\s*(\d+)", page.get_by_test_id("stMetric")
                                        .filter(has_text="Unprotected blocks").inner_text()).group(1))
            selected = page.get_by_test_id("stMetric").filter(has_text="Selected blocks")
            before = selected.inner_text()
            k = page.get_by_label("k", exact=True)
            k.fill("99")
            k.press("Enter")
            _wait_idle(page, LONG)
            # refused next to k (the box is marked invalid, max = the unprotected count); nothing else goes away
            assert page.get_by_label("k", exact=True).get_attribute("aria-invalid") == "true"
            assert int(page.get_by_label("k", exact=True).get_attribute("max") or 0) == unprotected
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            assert selected.inner_text() == before
            page.screenshot(path=str(OUT / "j1b-k-bound.png"), full_page=False)
            k = page.get_by_label("k", exact=True)
            k.fill("4")
            k.press("Enter")
            _wait_idle(page, LONG)
            page.locator(".st-key-keep_plan button:visible").click()
            expect(page.get_by_text(re.compile(r"^Kept plan \S"))).to_be_visible()
            _wait_idle(page, LONG)
            assert "Plans kept: 1" in _sidebar(page)

            # --- F5: the plan and the run are still there ----------------------------------------------
            assert "sid=" in page.url
            t0 = time.perf_counter()
            page.reload()
            _wait_idle(page, LONG)
            expect(page.get_by_test_id("stSidebar")).to_contain_text("Plans kept: 1", timeout=LONG)
            timings["reload_s"] = round(time.perf_counter() - t0, 1)
            assert "Run: none yet" not in _sidebar(page)
            page.screenshot(path=str(OUT / "j2-after-reload.png"), full_page=True)

            # --- Stop during the MI-PRUN stage keeps the token pass ----------------------------------
            _nav(page, "Entropy dynamics")
            page.get_by_text("Analysis settings").first.click()
            page.get_by_text("MI-PRUN", exact=True).first.click()
            _wait_idle(page, LONG)
            page.locator(".st-key-run_analysis button:visible").click()
            expect(page.get_by_text(re.compile(r"MI-PRUN: \d+/\d+"))).to_be_visible(timeout=LONG)
            page.screenshot(path=str(OUT / "j3-mi-progress.png"), full_page=True)
            page.locator(".st-key-stop_analysis button:visible").click()
            expect(page.get_by_text(re.compile(r"stopped during MI-PRUN")).first).to_be_visible(timeout=LONG)
            _wait_idle(page, LONG)
            page.screenshot(path=str(OUT / "j4-mi-stopped.png"), full_page=True)

            # --- Start over -------------------------------------------------------------------------
            page.locator(".st-key-start_over button:visible").click()
            _wait_idle(page, LONG)
            expect(page.get_by_test_id("stSidebar")).to_contain_text("Plans kept: 0", timeout=LONG)
        except Exception:
            page.screenshot(path=str(OUT / "journey-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
            (OUT / "timings.json").write_text(json.dumps(timings, indent=2))
            (OUT / "console-errors.txt").write_text("\n".join(console_errors + failed_requests))
    # offline-safe look: nothing (icon, font, favicon) is fetched from another host
    assert not [u for u in failed_requests if not u.startswith(("http://127.0.0.1", "http://localhost"))], \
        failed_requests
