"""The guided tour in a real browser: Home → "Why does the curve fall?" → five steps, one sentence and one chart
each, from the precomputed SmolLM2 run (no model is loaded). Screenshots go to ``test-output/``.

Skipped only when ``/usr/bin/chromium`` is absent (``make browser`` installs it)."""
from __future__ import annotations

import pytest

from browser_helpers import BROWSER_MARKS, OUT

pytestmark = BROWSER_MARKS
UI_WAIT_MS = 180_000          # generous: the machine may be busy (no timing asserts)


@pytest.fixture(scope="module")
def server(launch_app, tmp_path_factory):
    """The app with an empty model cache: the tour must not need a model."""
    return launch_app(log_name="streamlit-tour.log", env={"ENTROSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))},
                      drop=())


def test_tour_walks_five_steps_in_a_browser(server, new_page):
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_WAIT_MS)
    titles = ["1 · The curve, every token kept", "2 · The cliff", "3 · The massive token that causes it",
              "4 · The same curve, sinks excluded", "5 · The other lenses"]
    page = new_page(viewport=(1400, 1000), timeout=UI_WAIT_MS)
    page.goto(server.url)
    expect(page.get_by_text("Why does the curve fall?")).to_be_visible()
    page.get_by_text("A five-step tour on SmolLM2").click()
    for i, title in enumerate(titles):
        expect(page.get_by_text(title)).to_be_visible()
        expect(page.get_by_text(f"({i + 1} of 5)")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.screenshot(path=str(OUT / f"tour-{i + 1}.png"), full_page=True)
        if i < 4:
            page.locator(".st-key-tour_next button").click()
    expect(page.get_by_text("cliff at block 11").first).to_be_attached()
    expect(page.locator(".st-key-tour_next button")).to_be_disabled()
