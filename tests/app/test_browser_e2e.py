"""End-to-end: the real app in headless Chromium on the real SmolLM2.

Starts ``streamlit run app.py`` on a free localhost port, then: sample 8 × 64 tokens of the built-in
Wikipedia text, run the analysis, click a bar of the score chart to change the selection, keep the plan,
run the comparison and check that the perplexity row appears. Screenshots go to ``test-output/``.

Skipped only when ``/usr/bin/chromium`` is absent (``make browser`` installs it). Playwright never
downloads a browser here: it drives the system Chromium.
"""
from __future__ import annotations

import os
import re
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

# Explicit, generous waits: the machine may be busy with other jobs. Playwright's `expect` defaults to 5 s,
# which a loaded machine misses on the first page; every wait below is one of these (no timing asserts).
UI_WAIT_MS = 120_000          # a page render or a widget rerun
MODEL_WAIT_MS = 900_000       # a model-bound step: loading SmolLM2, the analysis pass, the comparison
START_WAIT_S = 300            # the streamlit server coming up

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (run `make browser`)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    env.pop("ENTROSCOPE_ALLOW_TINY", None)          # the real path: embedded SmolLM2
    OUT.mkdir(exist_ok=True)
    log = open(OUT / "streamlit.log", "w")
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
        pytest.fail(f"streamlit did not start within {START_WAIT_S} s (see test-output/streamlit.log)")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _wait_idle(page, timeout: float = MODEL_WAIT_MS) -> None:
    """Wait until Streamlit has finished the current script run (no 'running' indicator, twice)."""
    js = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]') || "
          "!document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.match(/Running|Stop/)")
    for _ in range(2):
        page.wait_for_timeout(700)
        page.wait_for_function(js, timeout=timeout)


def _nav(page, label: str) -> None:
    """Switch pages through the sidebar navigation (keeps the session, unlike page.goto)."""
    page.get_by_test_id("stSidebarNav").get_by_text(label, exact=True).click()
    _wait_idle(page)


def _number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _wait_idle(page)


def test_e2e_smollm2_analysis_click_select_compare(server):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_WAIT_MS)
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(UI_WAIT_MS)
        try:
            page.goto(server)
            expect(page.get_by_text("Entroscope looks inside a causal language model")).to_be_visible(
                timeout=MODEL_WAIT_MS)                               # the first run imports torch & co.
            expect(page.get_by_role("tab", name="Toy: scale a point cloud")).to_be_visible()
            _wait_idle(page)
            page.screenshot(path=str(OUT / "01-home.png"), full_page=True)

            # --- Model & data: the defaults (SmolLM2, wiki) with a small sample -------------------------
            _nav(page, "Model & data")
            _number(page, "Samples N", 8)
            _number(page, "Tokens per sample T", 64)
            page.locator(".st-key-sample_data button:visible").click()
            expect(page.get_by_text(re.compile(r"Sampled 8 windows × 64 tokens"))).to_be_visible(timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            page.screenshot(path=str(OUT / "02-model-and-data.png"), full_page=True)

            # --- Entropy: run the analysis ------------------------------------------------------------
            _nav(page, "Entropy dynamics")
            page.locator(".st-key-run_analysis button:visible").click()
            expect(page.get_by_text("Two-stage boundary", exact=True)).to_be_visible(timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            metric = page.get_by_test_id("stMetric").filter(has_text="Two-stage boundary")
            assert re.search(r"block \d+|none", metric.inner_text())          # none: no compression stage
            page.screenshot(path=str(OUT / "03-entropy.png"), full_page=True)

            # --- Select: click a bar of the score chart ----------------------------------------------
            _nav(page, "Select blocks")
            selected = page.get_by_test_id("stMetric").filter(has_text="Selected blocks")
            expect(selected).to_contain_text("4")
            bars = page.locator(".js-plotly-plot").first.locator("g.trace.bars g.point path")
            expect(bars.first).to_be_visible()
            assert bars.count() == 30
            # block 15 is neither protected ({0, 1, 29}) nor (usually) in the top-4: clicking adds it
            bars.nth(15).click(force=True)
            _wait_idle(page)
            expect(page.get_by_test_id("stMetric").filter(has_text="Source")).to_contain_text("hand edits")
            n_after = int(re.search(r"Selected blocks\s*(\d+)", selected.inner_text()).group(1))
            assert n_after in (3, 5), selected.inner_text()
            # clicking a protected bar (block 0) is refused with a message
            bars = page.locator(".js-plotly-plot").first.locator("g.trace.bars g.point path")
            bars.nth(0).click(force=True)
            _wait_idle(page)
            expect(page.get_by_text(re.compile(r"Block 0 is protected")).first).to_be_visible()   # toast + caption by the chart
            page.screenshot(path=str(OUT / "04-select.png"), full_page=True)
            page.locator(".st-key-keep_plan button:visible").click()
            expect(page.get_by_text(re.compile(r"^Kept plan \S"))).to_be_visible()
            _wait_idle(page)

            # --- Prune & compare -------------------------------------------------------------------------
            _nav(page, "Prune & compare")
            page.get_by_text("Evaluation settings").click()
            _number(page, "Token budget", 1024)
            page.locator(".st-key-run_compare button:visible").click()
            expect(page.get_by_text(re.compile(r"Perplexity · original"))).to_be_visible(timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            table = page.get_by_test_id("stDataFrame").first
            expect(table).to_be_visible()
            page.screenshot(path=str(OUT / "05-compare.png"), full_page=True)
            text = page.get_by_test_id("stMetric").filter(has_text="Perplexity · original").inner_text()
            ppl = float(re.search(r"([\d.]+)\s*$", text.strip()).group(1))
            assert 1 < ppl < 1000, text

            _nav(page, "Export")
            expect(page.get_by_text("python -m analysis analyze", exact=False).first).to_be_visible()
            page.screenshot(path=str(OUT / "06-export.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(OUT / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
