"""A browser reload (a new Streamlit session) keeps the session's work; Start over forgets it; tabs stay apart.

AppTest starts a fresh session for each ``AppTest`` object, exactly like a reload; the ``sid`` query
parameter is what the reloaded page carries in its address.
"""
from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_app_pages import APP, TIMEOUT, _env, goto, new_app, ok  # noqa: E402,F401 - the module env fixture


def _reload(sid: str, page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["sid"] = sid
    at.run()
    ok(at)
    return goto(at, page) if page else at


def _kept_plan_session() -> AppTest:
    at = goto(new_app(), "3_Entropy")
    at.button(key="run_analysis").click().run()
    ok(at)
    goto(at, "4_Select_blocks")
    at.button(key="keep_plan").click().run()
    ok(at)
    assert len(at.session_state["es.plans"]) == 1
    return at


def test_reload_keeps_plans_runs_and_settings():
    at = _kept_plan_session()
    sid = at.query_params["sid"][0] if isinstance(at.query_params["sid"], list) else at.query_params["sid"]
    assert len(sid) >= 16
    plans = list(at.session_state["es.plans"])
    run_id = at.session_state["es.current_run"]

    again = _reload(sid, "5_Prune_and_compare")                       # F5 on another page
    assert list(again.session_state["es.plans"]) == plans
    assert again.session_state["es.current_run"] == run_id
    assert again.session_state["es.persist"]["model.embedded"] == "tiny-llama"
    assert "No plans kept yet" not in "\n".join(m.value for m in again.markdown)


def test_two_tabs_from_one_address_do_not_write_into_each_other():
    at = _kept_plan_session()
    sid = at.query_params["sid"]
    sid = sid[0] if isinstance(sid, list) else sid
    a, b = _reload(sid), _reload(sid)
    plans_b = b.session_state["es.plans"]
    a_plans = a.session_state["es.plans"]
    a_plans["extra"] = a_plans[next(iter(a_plans))]
    assert "extra" not in plans_b


def test_unknown_or_malformed_sid_starts_a_fresh_session():
    for bad in ("nope", "x" * 30, "../../etc/passwd"):
        at = _reload(bad)
        assert not at.session_state["es.plans"]
        new = at.query_params["sid"]
        new = new[0] if isinstance(new, list) else new
        assert new != bad and len(new) >= 16


def test_start_over_forgets_the_session():
    at = _kept_plan_session()
    old = at.query_params["sid"]
    old = old[0] if isinstance(old, list) else old
    at.button(key="start_over").click().run()
    ok(at)
    assert not at.session_state["es.plans"] and at.session_state["es.current_run"] is None
    new = at.query_params["sid"]
    assert (new[0] if isinstance(new, list) else new) != old
    assert not _reload(old).session_state["es.plans"]                 # the old address no longer restores


def test_browser_tab_icons_need_no_network():
    from app_support.widgets import PAGES, favicon

    for _, _, icon in PAGES.values():
        assert not favicon(icon).startswith(":material/")
