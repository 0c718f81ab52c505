"""The Select page opens on the evidence, in headless Chromium on the real SmolLM2: before the bake-off the
default criterion is the repository's evidence (labelled as such); a tiny bake-off run from the page (8 × 64
calibration tokens, 512 held-out tokens, k = 2, 5 random seeds) pre-selects its recommended criterion and k.
Waits are generous: other jobs may load the machine."""
from __future__ import annotations

import re

import pytest

from test_browser_e2e import ARGS, CHROMIUM, MODEL_WAIT_MS, OUT, UI_WAIT_MS, _nav, _number, _wait_idle, server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                 reason=f"{CHROMIUM} not installed (run `make browser`)")]


def test_select_page_default_from_evidence_then_bakeoff_preselects(server):  # noqa: F811 - the imported fixture
    from playwright.sync_api import expect, sync_playwright

    from analysis.recommend.evidence import default_criterion
    from analysis.score.criteria import CRITERIA

    expect.set_options(timeout=UI_WAIT_MS)
    OUT.mkdir(exist_ok=True)
    crit0, why0 = default_criterion("smollm2")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(UI_WAIT_MS)
        try:
            page.goto(server)
            expect(page.get_by_text("Entroscope looks inside a causal language model")).to_be_visible(
                timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            _nav(page, "Model & data")
            _number(page, "Samples N", 8)
            _number(page, "Tokens per sample T", 64)
            page.locator(".st-key-sample_data button:visible").click()
            expect(page.get_by_text(re.compile(r"Sampled 8 windows × 64 tokens"))).to_be_visible(timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            _nav(page, "Entropy dynamics")
            page.locator(".st-key-run_analysis button:visible").click()
            expect(page.get_by_text("Two-stage boundary", exact=True)).to_be_visible(timeout=MODEL_WAIT_MS)
            _wait_idle(page)

            # --- before the bake-off: the repository's evidence, labelled ---------------------------------
            _nav(page, "Select blocks")
            crit_box = page.get_by_role("combobox", name="Criterion")
            expect(crit_box).to_have_value(CRITERIA[crit0].title)
            expect(page.locator("[data-testid=stCaptionContainer]:visible", has_text=why0).first).to_be_visible()
            expect(page.get_by_label("k", exact=True)).to_have_value("4")

            # --- a tiny bake-off from the page -------------------------------------------------------------
            page.get_by_text("Which criterion, k and healing for this model?").click()
            _wait_idle(page)
            box = page.get_by_role("textbox", name="k (comma list, or auto)")
            box.fill("2")
            box.press("Enter")
            _wait_idle(page)
            _number(page, "Held-out tokens", 512)
            page.locator(".st-key-run_bakeoff button:visible").click()
            done = page.get_by_text(re.compile(r"^Recommended: "))
            expect(done).to_be_visible(timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            page.screenshot(path=str(OUT / "bakeoff-select.png"), full_page=True)
            m = re.search(r"Recommended: (\S+) at k = (\d+)", done.inner_text())
            label, k = m.group(1), m.group(2)
            assert k == "2"
            expect(page.get_by_label("k", exact=True)).to_have_value(k)                # pre-selected k
            expect(crit_box).to_have_value(CRITERIA[label.split("[")[0]].title)         # pre-selected criterion
            expect(page.get_by_text(re.compile(r"random band")).first).to_be_visible()
        except Exception:
            page.screenshot(path=str(OUT / "bakeoff-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
