"""Fixtures of the browser tests (``tests/app/test_browser_*.py``): app servers and Chromium pages.

* ``server`` — the app (``app.py``) on its real path (embedded SmolLM2, no tiny-model hook) with a fresh
  temporary session database; one per test module. A module that needs other settings (another script, extra
  environment variables) overrides ``server`` with ``launch_app``.
* ``launch_app(script=…, log_name=…, env=…, drop=…)`` — start a further server for this module (each with its
  own temporary session database); every server is ended with the module.
* ``new_page(viewport=…, timeout=…)`` — a fresh Chromium page (own browser context, downloads accepted) with
  generous default waits; a failing test leaves a full-page screenshot of each of its pages in
  ``test-output/<test name>-failure*.png``.

Helpers (navigation, number inputs, selectboxes, waiting for text) are plain functions in
``browser_helpers.py``.
"""
from __future__ import annotations

import contextlib

import pytest

from browser_helpers import ARGS, CHROMIUM, OUT, UI_WAIT_MS, streamlit_server


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)       # new_page reads rep_call to screenshot a failure


@pytest.fixture(scope="module")
def launch_app(tmp_path_factory):
    """Factory: start a Streamlit server for this module (see :func:`browser_helpers.streamlit_server`)."""
    with contextlib.ExitStack() as stack:
        def launch(script="app.py", log_name="streamlit.log", env=None, drop=("ENTROSCOPE_ALLOW_TINY",)):
            db = tmp_path_factory.mktemp("sessions") / "sessions.sqlite3"
            return stack.enter_context(streamlit_server(script, log_name, db, env, drop))
        yield launch


@pytest.fixture(scope="module")
def server(launch_app, request):
    """The real app (embedded SmolLM2) with a fresh session database, shared by the module's tests."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_browser_")
    return launch_app(log_name=f"streamlit-{name}.log")


@pytest.fixture
def new_page(request):
    """Factory of Chromium pages (one browser per test); screenshots every page of a failed test."""
    from playwright.sync_api import Error, expect, sync_playwright

    expect.set_options(timeout=UI_WAIT_MS)
    OUT.mkdir(exist_ok=True)
    pages = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)

        def make(viewport=(1500, 1000), timeout=UI_WAIT_MS):
            ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
            page = ctx.new_page()
            page.set_default_timeout(timeout)
            pages.append(page)
            return page

        try:
            yield make
        finally:
            rep = getattr(request.node, "rep_call", None)
            if rep is not None and rep.failed:
                for i, page in enumerate(pages):
                    with contextlib.suppress(Error):      # a crashed page must not hide the test's error
                        page.screenshot(path=str(OUT / f"{request.node.name}-failure{i or ''}.png"), full_page=True)
            browser.close()
