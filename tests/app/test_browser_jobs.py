"""Jobs survive a reload, in the real app (headless Chromium, the real SmolLM2).

F5 during the analysis and during the comparison re-attaches to the running job (the session database's
``jobs`` table shows each started once: no duplicate work); the comparison table is there after F5. (The heal
choice after F5 and Stop keeping what finished are covered by AppTest in tests/app/test_app_session.py and
tests/app/test_app_heal.py, not yet in this browser walk.)

Waits are generous and nothing is timed: a step that ends before the reload lands is re-attached as a
finished job, which the assertions accept too (the point is: once, and nothing lost).
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from test_browser_e2e import (ARGS, CHROMIUM, MODEL_WAIT_MS, OUT, ROOT, START_WAIT_S, UI_WAIT_MS, _free_port, _nav,
                              _number, _wait_idle)
from test_browser_e2e import pytestmark  # noqa: F401 - browser + slow, skipped without Chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    db = tmp_path_factory.mktemp("sessions") / "sessions.sqlite3"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", "ENTROSCOPE_SESSION_DB": str(db)}
    env.pop("ENTROSCOPE_ALLOW_TINY", None)
    OUT.mkdir(exist_ok=True)
    log = open(OUT / "streamlit-jobs.log", "w")
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
        pytest.fail(f"streamlit did not start within {START_WAIT_S} s (see test-output/streamlit-jobs.log)")
    yield url, db
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _jobs(db, kind: str) -> list[dict]:
    with sqlite3.connect(db, timeout=30) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM jobs WHERE kind=?", (kind,))]


def _started_or_done(page, running_text: str, done_text: str) -> None:
    """Wait until the job shows its progress bar, or (on a fast machine) is already finished."""
    page.wait_for_function("([a, b]) => document.body.innerText.includes(a) || document.body.innerText.includes(b)",
                           arg=[running_text, done_text], timeout=MODEL_WAIT_MS)


def test_reload_reattaches_jobs_and_stop_keeps_what_finished(server):
    from playwright.sync_api import expect, sync_playwright

    url, db = server
    expect.set_options(timeout=UI_WAIT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(UI_WAIT_MS)
        try:
            page.goto(url)
            expect(page.get_by_text("Entroscope looks inside a causal language model")).to_be_visible(
                timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            _nav(page, "Model & data")
            _number(page, "Samples N", 16)
            _number(page, "Tokens per sample T", 128)
            page.locator(".st-key-sample_data button:visible").click()
            expect(page.get_by_text(re.compile(r"Sampled 16 windows × 128 tokens"))).to_be_visible(
                timeout=MODEL_WAIT_MS)
            _wait_idle(page)

            # --- F5 during the analysis ---------------------------------------------------------------
            _nav(page, "Entropy dynamics")
            page.locator(".st-key-run_analysis button:visible").click()
            boundary = page.get_by_text("Two-stage boundary", exact=True)
            _started_or_done(page, "Analysing", "Two-stage boundary")
            assert "sid=" in page.url
            page.reload()
            expect(boundary).to_be_visible(timeout=MODEL_WAIT_MS)       # re-attached; the run arrives
            _wait_idle(page)
            runs = _jobs(db, "analysis")
            assert len(runs) == 1 and runs[0]["starts"] == 1 and runs[0]["status"] == "done", runs
            page.screenshot(path=str(OUT / "jobs-01-entropy-after-f5.png"), full_page=True)

            # --- keep a plan, F5 during the comparison -------------------------------------
            _nav(page, "Select blocks")
            page.locator(".st-key-keep_plan button:visible").click()
            expect(page.get_by_text(re.compile(r"^Kept plan \S"))).to_be_visible()
            _wait_idle(page)
            _nav(page, "Prune & compare")
            page.get_by_text("Evaluation settings").click()
            _number(page, "Token budget", 2048)
            page.locator(".st-key-run_compare button:visible").click()
            table = page.get_by_text(re.compile(r"Perplexity · original"))
            _started_or_done(page, "Comparing", "Perplexity · original")
            page.reload()
            expect(table).to_be_visible(timeout=MODEL_WAIT_MS)          # re-attached; the table arrives
            _wait_idle(page)
            cmp_jobs = _jobs(db, "comparison")
            assert len(cmp_jobs) == 1 and cmp_jobs[0]["starts"] == 1, cmp_jobs

            page.reload()                                               # finished results come back
            expect(table).to_be_visible(timeout=MODEL_WAIT_MS)
            _wait_idle(page)
            page.screenshot(path=str(OUT / "jobs-02-compare-after-f5.png"), full_page=True)

        except Exception:
            page.screenshot(path=str(OUT / "jobs-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
