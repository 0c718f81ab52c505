"""What every browser test shares: the Streamlit server launcher, Chromium settings, waits and page helpers.

The fixtures built on these live in ``tests/app/conftest.py`` (``server``, ``launch_app``, ``new_page``); test
modules import the helpers from here (``from browser_helpers import nav, number, …``). Playwright drives the
system Chromium (``make browser``); it never downloads a browser. Every wait is explicit and generous: the
machine may be busy with other jobs, and nothing here is timed.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
OUT = ROOT / "test-output"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

# Playwright's `expect` defaults to 5 s, which a loaded machine misses on the first page; every wait is one of these.
UI_WAIT_MS = 120_000          # a page render or a widget rerun
MODEL_WAIT_MS = 900_000       # a model-bound step: loading SmolLM2, the analysis pass, the comparison
START_WAIT_S = 300            # the streamlit server coming up

#: how every browser test module is marked: browser + slow, skipped only without Chromium
BROWSER_MARKS = [pytest.mark.browser, pytest.mark.slow,
                 pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (run `make browser`)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    """A running ``streamlit run`` server: its URL, its session database and its log."""

    url: str
    db: Path | None
    log: Path
    proc: subprocess.Popen

    def jobs(self, kind: str) -> list[dict]:
        """Rows of the session database's ``jobs`` table of one kind (starts, joins, status, message)."""
        with sqlite3.connect(self.db, timeout=30) as c:
            c.row_factory = sqlite3.Row
            return [dict(r) for r in c.execute("SELECT * FROM jobs WHERE kind=?", (kind,))]


@contextlib.contextmanager
def streamlit_server(script: str | Path = "app.py", log_name: str = "streamlit.log", db: Path | None = None,
                     env: dict | None = None, drop: tuple[str, ...] = ("ENTROSCOPE_ALLOW_TINY",)):
    """Start ``streamlit run script`` headless on a free localhost port and wait for its health check.

    ``db``: the session database (``ENTROSCOPE_SESSION_DB``; tests pass a temporary one, never the user's).
    ``env``: extra variables; ``drop``: variables removed from the inherited environment (by default the
    tiny-model hook, so the app takes its real path unless a test asks). The server runs in its own process
    group, which is ended as a whole (the server and anything it started).
    """
    port = free_port()
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    if db is not None:
        full["ENTROSCOPE_SESSION_DB"] = str(db)
    for k in drop:
        full.pop(k, None)
    full.update(env or {})
    OUT.mkdir(exist_ok=True)
    log_path = OUT / log_name
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_WAIT_S
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode} (see test-output/{log_name})")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start within {START_WAIT_S} s (see test-output/{log_name})")
        yield AppServer(url, db, log_path, proc)
    finally:
        _end_group(proc)


def _end_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---- page helpers ----------------------------------------------------------------------------------------

def wait_idle(page, timeout: float = MODEL_WAIT_MS) -> None:
    """Wait until Streamlit has finished the current script run (no 'running' indicator, twice)."""
    js = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]') || "
          "!document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.match(/Running|Stop/)")
    for _ in range(2):
        page.wait_for_timeout(700)
        page.wait_for_function(js, timeout=timeout)


def nav(page, label: str) -> None:
    """Switch pages through the sidebar navigation (keeps the session, unlike page.goto)."""
    page.get_by_test_id("stSidebarNav").get_by_text(label, exact=True).click()
    wait_idle(page)


def number(page, label: str, value: int) -> None:
    """Type a value into a number input (by its label) and commit it."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def fill_text(page, label: str, value: str) -> None:
    """Type into a text input (by its label) and commit it."""
    box = page.get_by_role("textbox", name=label, exact=True)
    box.fill(value)
    box.press("Enter")
    wait_idle(page)


def choose(page, label: str, option: str, attempts: int = 3) -> None:
    """Pick ``option`` (its shown text) in the selectbox labelled ``label``.

    Streamlit's selectbox is a baseweb select: its visible input has role combobox (named by the label) and
    its options are ``[role=option]`` items of a listbox rendered in a popover at the end of the document, only
    while the box is open (and virtualised: only the visible rows exist). Typing into the input filters the
    list, so the wanted option is rendered whatever the list's length. The box is first scrolled to the middle
    of the window: a box near the bottom opens its list below the fold, and the scroll that a click there
    needs closes the list ("option not found"). Should the list close anyway (a rerun landing meanwhile), the
    pick is tried again; it ends with the box showing ``option``.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect

    box = page.get_by_role("combobox", name=label, exact=True)
    for _ in range(attempts):
        wait_idle(page)
        if box.input_value() == option:
            break
        box.evaluate("el => el.scrollIntoView({block: 'center'})")
        box.click()
        box.fill(option)
        try:
            page.get_by_role("option", name=option, exact=True).first.click(timeout=20_000)
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    wait_idle(page)
    expect(box).to_have_value(option)


def wait_text(page, pattern: str | re.Pattern, timeout: float = UI_WAIT_MS):
    """Wait until a text (exact string or regex) is visible; returns its first locator."""
    from playwright.sync_api import expect

    loc = page.get_by_text(pattern, exact=True) if isinstance(pattern, str) else page.get_by_text(pattern)
    expect(loc.first).to_be_visible(timeout=timeout)
    return loc.first


def wait_any_text(page, *texts: str, timeout: float = MODEL_WAIT_MS) -> None:
    """Wait until the page shows any of ``texts`` (e.g. a job's progress bar, or its result on a fast machine)."""
    page.wait_for_function("(ts) => ts.some(t => document.body.innerText.includes(t))", arg=list(texts),
                           timeout=timeout)


def button(page, key: str):
    """The visible button of the widget with Streamlit key ``key``."""
    return page.locator(f".st-key-{key} button:visible")


def open_app(page, url: str) -> None:
    """Open the app's Home page and wait for its first full render (the first run imports torch & co.)."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.get_by_text("Entroscope looks inside a causal language model")).to_be_visible(timeout=MODEL_WAIT_MS)
    wait_idle(page)


def sample(page, n: int, t: int) -> None:
    """Model & data: sample ``n`` windows × ``t`` tokens of the current calibration source."""
    nav(page, "Model & data")
    number(page, "Samples N", n)
    number(page, "Tokens per sample T", t)
    button(page, "sample_data").click()
    wait_text(page, re.compile(rf"Sampled {n} windows × {t} tokens"), MODEL_WAIT_MS)
    wait_idle(page)


def keep_plan(page) -> str:
    """Press Keep plan on the Select page and return the kept plan's name."""
    button(page, "keep_plan").click()
    kept = wait_text(page, re.compile(r"^Kept plan \S"))
    name = re.match(r"Kept plan (\S+):", kept.inner_text()).group(1)
    wait_idle(page)
    return name


def run_analysis(page) -> None:
    """Entropy dynamics: run the analysis and wait for its result."""
    nav(page, "Entropy dynamics")
    button(page, "run_analysis").click()
    wait_text(page, "Two-stage boundary", MODEL_WAIT_MS)
    wait_idle(page)
