"""The Select page opens on the evidence, in headless Chromium on the real SmolLM2: before the bake-off the
default criterion is the repository's evidence (labelled as such); a tiny bake-off run from the page (8 × 64
calibration tokens, 512 held-out tokens, k = 2, 5 random seeds) pre-selects its recommended criterion and k.
Waits are generous: other jobs may load the machine."""
from __future__ import annotations

import re

from browser_helpers import BROWSER_MARKS, MODEL_WAIT_MS, OUT, button, nav, number, open_app, run_analysis, sample, \
    wait_idle

pytestmark = BROWSER_MARKS


def test_select_page_default_from_evidence_then_bakeoff_preselects(server, new_page):
    from playwright.sync_api import expect

    from analysis.recommend.evidence import default_criterion
    from analysis.score.criteria import CRITERIA

    crit0, why0 = default_criterion("smollm2")
    page = new_page(viewport=(1500, 1100))
    open_app(page, server.url)
    sample(page, 8, 64)
    run_analysis(page)

    # --- before the bake-off: the repository's evidence, labelled ---------------------------------
    nav(page, "Select blocks")
    crit_box = page.get_by_role("combobox", name="Criterion")
    expect(crit_box).to_have_value(CRITERIA[crit0].title)
    expect(page.locator("[data-testid=stCaptionContainer]:visible", has_text=why0).first).to_be_visible()
    expect(page.get_by_label("k", exact=True)).to_have_value("4")

    # --- a tiny bake-off from the page -------------------------------------------------------------
    page.get_by_text("Which criterion, k and healing for this model?").click()
    wait_idle(page)
    box = page.get_by_role("textbox", name="k (comma list, or auto)")
    box.fill("2")
    box.press("Enter")
    wait_idle(page)
    number(page, "Held-out tokens", 512)
    button(page, "run_bakeoff").click()
    done = page.get_by_text(re.compile(r"^Recommended: "))
    expect(done).to_be_visible(timeout=MODEL_WAIT_MS)
    wait_idle(page)
    page.screenshot(path=str(OUT / "bakeoff-select.png"), full_page=True)
    m = re.search(r"Recommended: (\S+) at k = (\d+)", done.inner_text())
    label, k = m.group(1), m.group(2)
    assert k == "2"
    expect(page.get_by_label("k", exact=True)).to_have_value(k)                # pre-selected k
    expect(crit_box).to_have_value(CRITERIA[label.split("[")[0]].title)         # pre-selected criterion
    expect(page.get_by_text(re.compile(r"standing against the random band")).first).to_be_visible()   # the caption (the grid's cells are hidden DOM)
