"""The guided tour in a real browser: Home → "Why does the curve fall?" → five steps, one sentence and one chart
each, from the precomputed SmolLM2 run (no model is loaded). Screenshots go to ``test-output/``.

Skipped only when ``/usr/bin/chromium`` is absent (``make browser`` installs it)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
OUT = ROOT / "test-output"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
UI_WAIT_MS = 180_000          # generous: the machine may be busy (no timing asserts)
START_WAIT_S = 300

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (run `make browser`)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
           "ENTROSCOPE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    OUT.mkdir(exist_ok=True)
    log = open(OUT / "streamlit-tour.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_WAIT_S
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail(f"streamlit did not start within {START_WAIT_S} s (see test-output/streamlit-tour.log)")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_tour_walks_five_steps_in_a_browser(server):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_WAIT_MS)
    titles = ["1 · The curve, every token kept", "2 · The cliff", "3 · The massive token that causes it",
              "4 · The same curve, sinks excluded", "5 · The other lenses"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(UI_WAIT_MS)
        try:
            page.goto(server)
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
        finally:
            browser.close()
