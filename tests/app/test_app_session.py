"""A browser reload (a new Streamlit session) keeps the session's work; Start over forgets it; tabs stay apart.

AppTest starts a fresh session for each ``AppTest`` object, exactly like a reload; the ``sid`` query
parameter is what the reloaded page carries in its address.
"""
from __future__ import annotations

import time

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


# ---- the SQLite store itself ----------------------------------------------------------------------------

def _db(tmp_path):
    from app_support.session_store import SessionDB

    return SessionDB(tmp_path / "sessions.sqlite3")


def test_a_burst_of_new_visitors_never_evicts_a_recent_session(tmp_path, monkeypatch):
    import pickle

    import app_support.session_store as ss

    monkeypatch.setattr(ss, "MAX_BYTES", 20_000)                      # a tiny cap: cleanup runs on every insert
    db = _db(tmp_path)
    mine = pickle.dumps({"es.plans": {"d": {"p1": pickle.dumps([1, 2, 3])}}})
    assert db.put("mine-recent-session-id", mine, None) == 1
    db.put("old-idle-session-id-1", b"x" * 5000, None)
    db.set_touched("old-idle-session-id-1", time.time() - 2 * ss.RECENT_S)
    for i in range(1000):                                             # 1,000 new visitors, ~1 KB each
        db.put(f"visitor-{i:06d}-xxxxxxxxxx", b"v" * 1000, None)
    assert db.get("mine-recent-session-id") == (1, mine)              # still there, untouched
    assert db.get("old-idle-session-id-1") is None                    # the idle one went first
    assert len(db.sids()) == 1002 - 1                                 # recent ones are kept even above the cap


def test_cleanup_removes_oldest_idle_first_and_everything_past_the_maximum_age(tmp_path, monkeypatch):
    import app_support.session_store as ss

    monkeypatch.setattr(ss, "MAX_BYTES", 2500)
    db = _db(tmp_path)
    now = time.time()
    for i, age_days in enumerate((40, 5, 3, 2, 0)):
        db.put(f"session-{i}-xxxxxxxxxxxxx", b"z" * 1000, None)
        db.set_touched(f"session-{i}-xxxxxxxxxxxxx", now - age_days * 24 * 3600)
    db.cleanup(now=now)
    # 40 days: past MAX_AGE_S; then 5 days and 3 days (oldest idle first) until 2,500 bytes fit
    assert db.sids() == ["session-3-xxxxxxxxxxxxx", "session-4-xxxxxxxxxxxxx"]


def test_compare_and_swap_refuses_a_stale_version(tmp_path):
    db = _db(tmp_path)
    assert db.put("cas-session-xxxxxxxx", b"a", None) == 1
    assert db.put("cas-session-xxxxxxxx", b"b", None) is None         # the id exists: not new
    assert db.put("cas-session-xxxxxxxx", b"b", 1) == 2
    assert db.put("cas-session-xxxxxxxx", b"c", 1) is None            # another writer got there first
    assert db.get("cas-session-xxxxxxxx") == (2, b"b")


def test_merge_takes_each_tabs_own_changes_and_names_real_conflicts():
    from app_support.session_store import digests, encode, merge

    base = encode({"es.plans": {"a": 1}, "es.current_run": "r1", "es.figures": {"f": 1}})
    mine = encode({"es.plans": {"a": 1, "mine": 2}, "es.current_run": "r1", "es.figures": {"f": 2}})
    theirs = encode({"es.plans": {"a": 1, "theirs": 3}, "es.current_run": "r2", "es.figures": {"f": 3}})
    merged, conflicts = merge(digests(base), digests(base), mine, theirs)
    assert conflicts == []
    assert set(merged["es.plans"]["d"]) == {"a", "mine", "theirs"}    # both new plans kept
    assert merged["es.current_run"] == theirs["es.current_run"]       # only they changed it
    # both changed one plan differently: a conflict (the caller forks), never a silent overwrite
    mine2 = encode({"es.plans": {"a": 10}, "es.current_run": "r1"})
    theirs2 = encode({"es.plans": {"a": 20}, "es.current_run": "r1"})
    assert merge(digests(base), digests(base), mine2, theirs2)[1] == ["es.plans[a]"]


def _sid(at) -> str:
    sid = at.query_params["sid"]
    return sid[0] if isinstance(sid, list) else sid


def test_two_tabs_writing_one_session_fork_and_lose_nothing():
    at = _kept_plan_session()
    sid = _sid(at)
    a, b = _reload(sid, "4_Select_blocks"), _reload(sid, "4_Select_blocks")
    first = next(iter(a.session_state["es.plans"]))
    # both tabs change the same kept plan, each its own way (A also keeps a second plan)
    a_plans = a.session_state["es.plans"]
    a_plans["from-a"] = a_plans[first]
    a_plans[first] = a_plans[first].__class__(**{**vars(a_plans[first]), "name": "changed-by-a"})
    a.run()
    ok(a)
    assert _sid(a) == sid
    b_plans = b.session_state["es.plans"]
    b_plans[first] = b_plans[first].__class__(**{**vars(b_plans[first]), "name": "changed-by-b"})
    b.run()
    ok(b)
    assert _sid(b) != sid                                             # B forked to a new address …
    assert any("Another tab changed this session" in w.value for w in b.warning)
    from_a = _reload(sid).session_state["es.plans"]
    assert "from-a" in from_a and from_a[first].name == "changed-by-a"  # … A's address keeps A's work
    forked = _reload(_sid(b)).session_state["es.plans"]
    assert forked[first].name == "changed-by-b"                      # and B's work lives on under B's


def test_two_tabs_with_separate_changes_merge():
    at = _kept_plan_session()
    sid = _sid(at)
    a, b = _reload(sid), _reload(sid)
    first = next(iter(a.session_state["es.plans"]))
    a.session_state["es.plans"]["only-a"] = a.session_state["es.plans"][first]
    a.run()
    b.session_state["es.plans"]["only-b"] = b.session_state["es.plans"][first]
    b.run()
    ok(b)
    assert _sid(b) == sid                                             # no conflict: no fork
    assert {"only-a", "only-b"} <= set(_reload(sid).session_state["es.plans"])
    assert "only-a" in b.session_state["es.plans"]                    # B sees A's plan too


def test_a_reload_that_changes_nothing_writes_nothing():
    from app_support.session_store import db

    at = _kept_plan_session()
    sid = _sid(at)
    before = db().get(sid, touch=False)[0]
    for page in (None, "3_Entropy", "4_Select_blocks"):
        _reload(sid, page)
    after = db().get(sid, touch=False)[0]
    assert after - before <= 2                     # at most the derived charts of the pages first drawn here
    again = db().get(sid, touch=False)[0]
    _reload(sid, "3_Entropy")
    assert db().get(sid, touch=False)[0] == again  # drawn before: the same bytes, no write


# ---- jobs survive a reload (F5) --------------------------------------------------------------------------

SMALL = {"cmp.window": 32, "cmp.max_tokens": 256, "cmp.new_tokens": 2, "cmp.repeats": 1}


def _in_thread(fn):
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


def _gate(monkeypatch):
    """Each evaluate_plan call waits for one permit of the ``gate`` semaphore; ``followed`` is set whenever
    a page starts following a job."""
    import threading

    import app_support.evaluation as evaluation
    import app_support.jobs as jobs

    gate, followed, calls = threading.Semaphore(0), threading.Event(), []
    real_eval, real_follow = evaluation.evaluate_plan, jobs.follow

    def gated(lm, plan, *a, **k):
        calls.append(None if plan is None else plan.describe())
        assert gate.acquire(timeout=120)
        return real_eval(lm, plan, *a, **k)

    def spy(job, *a, **k):
        followed.set()
        return real_follow(job, *a, **k)

    monkeypatch.setattr(evaluation, "evaluate_plan", gated)
    monkeypatch.setattr(jobs, "follow", spy)
    return gate, followed, calls


def test_reload_during_a_comparison_reattaches_without_duplicate_work(monkeypatch):
    from test_app_pages import _with_plan, frame_with

    from app_support.jobs import registry

    at = goto(_with_plan(**SMALL), "5_Prune_and_compare")
    sid = _sid(at)
    gate, followed, calls = _gate(monkeypatch)
    ta, box_a = _in_thread(lambda: at.button(key="run_compare").click().run())
    assert followed.wait(120)                       # tab A shows the running comparison …
    followed.clear()
    tb, box_b = _in_thread(lambda: _reload(sid, "5_Prune_and_compare"))   # … and F5 opens the same address
    assert followed.wait(120)                       # the reloaded page follows the job too
    gate.release(2)
    for th in (ta, tb):
        th.join(240)
    assert "error" not in box_a and "error" not in box_b, (box_a.get("error"), box_b.get("error"))
    b = box_b["value"]
    ok(b)
    df = frame_with(b, "perplexity")
    assert df["plan"].tolist()[0] == "original" and len(df) == 2      # the table arrived after F5
    assert len(calls) == 2                                              # each model evaluated once
    rows = [registry().store.job(k) for k in list(registry().jobs) if registry().jobs[k].kind == "comparison"]
    assert [r["starts"] for r in rows if r] == [1]
    again = _reload(_sid(b), "5_Prune_and_compare")                     # and once more: from the session store
    assert frame_with(again, "perplexity")["plan"].tolist() == df["plan"].tolist()


def test_stop_during_a_comparison_keeps_the_models_done(monkeypatch):
    from test_app_pages import _with_plan, frame_with

    from app_support.jobs import registry

    at = goto(_with_plan(**{**SMALL, "cmp.max_tokens": 320}), "5_Prune_and_compare")   # not the job above
    plan_name = at.multiselect(key="cmp_plans").value[0]
    at.selectbox(key=f"heal_method_{plan_name}").set_value("linear").run()   # three steps: original, plan, healed
    gate, followed, calls = _gate(monkeypatch)
    ta, box = _in_thread(lambda: at.button(key="run_compare").click().run())
    assert followed.wait(120)
    job = None
    while job is None:
        job = next((j for j in registry().jobs.values() if j.kind == "comparison" and j.running), None)
    gate.release(1)                                 # the original model may finish …
    while len(calls) < 2:                           # … and the plan's evaluation has begun
        job.wait(0.05)
    job.stop()                                      # Stop (what the button does) during the plan's step
    gate.release(1)
    ta.join(240)
    assert "error" not in box, box.get("error")
    ok(at)
    df = frame_with(at, "perplexity")
    assert df["plan"].tolist() == ["original"]      # the step finished stays; the plan's was cut at a window batch
    warn = [w.value for w in at.warning if "partial comparison" in w.value]
    assert warn and f"{plan_name} stopped part way (at windows " in warn[0]   # named, never shown as a result
    assert f"{plan_name} + linear not evaluated" in warn[0]                   # healing never started


def test_reload_during_an_analysis_reattaches_to_the_running_job(monkeypatch):
    import threading

    import analysis.run

    from app_support.jobs import registry

    real, started, gate, calls = analysis.run.analyze, threading.Event(), threading.Event(), []

    def gated(*a, **k):
        calls.append(1)
        started.set()
        assert gate.wait(120)
        return real(*a, **k)

    monkeypatch.setattr(analysis.run, "analyze", gated)
    at = goto(new_app(**{"an.batch_size": 2}), "3_Entropy")          # settings no other test ran
    sid = _sid(at)
    ta, box = _in_thread(lambda: at.button(key="run_analysis").click().run())
    assert started.wait(120)
    b = _reload(sid)                                                  # F5 while the pass runs
    job = b.session_state["es.job"]
    assert job is not None and job.running and job.kind == "analysis"  # re-attached, progress shown
    assert any("Analysis running" in i.value for i in b.sidebar.info)
    gate.set()
    assert job.wait(120)
    b.run()
    ok(b)
    assert b.session_state["es.current_run"] == job.run_id and job.run_id in b.session_state["es.runs"]
    ta.join(120)
    assert "error" not in box, box.get("error")
    assert calls == [1] and registry().store.job(job.key)["starts"] == 1   # the work ran once


def test_heal_choice_comes_back_after_a_reload():
    """A plan's Heal choice is the session's: F5 (a new session on the same sid) shows it again."""
    from test_app_pages import _with_plan

    at = goto(_with_plan(**SMALL), "5_Prune_and_compare")
    plan_name = at.multiselect(key="cmp_plans").value[0]
    at.selectbox(key=f"heal_method_{plan_name}").set_value("linear").run()
    ok(at)
    again = _reload(_sid(at), "5_Prune_and_compare")
    assert again.selectbox(key=f"heal_method_{plan_name}").value == "linear"
