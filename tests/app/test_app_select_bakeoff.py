"""AppTest of the Select page's evidence: the default criterion read from the repository's evidence table,
then the bake-off run from the page (tiny random model) pre-selecting its recommendation; the bake-off as a job
of the shared runner (F5 re-attaches, a second start joins, the result comes back from the session store) and
its Stop (the rows that finished, labelled partial).

Only one ``AppTest`` runs at a time here: AppTest installs one process-wide mock runtime per run and removes it
when that run ends, so two concurrent runs break each other's reruns. Tabs that would follow a running job
record it and end their run instead (``st.stop``), which is what closing the tab does."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


@pytest.fixture(autouse=True, scope="module")
def _env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ENTROSCOPE_ALLOW_TINY", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("ENTROSCOPE_CACHE", str(tmp_path_factory.mktemp("entroscope-cache")))
    yield
    mp.undo()


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def select_page(**persist) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["es.persist"] = {"model.embedded": "tiny-llama", "data.n": 8, "data.T": 64,
                                      "bo.ks": "1,2", "bo.heal": ["none"], "bo.heldout_tokens": 512, **persist}
    at.run()
    at.switch_page("pages/3_Entropy.py")
    at.run()
    at.button(key="run_analysis").click().run()
    ok(at)
    at.switch_page("pages/4_Select_blocks.py")
    at.run()
    ok(at)
    return at


def test_default_from_evidence_then_bakeoff_preselects_its_recommendation():
    from analysis.recommend.evidence import default_criterion

    at = select_page()
    crit, why = default_criterion("tiny-llama")
    assert at.session_state["w:sel.crit"] == crit == "cosine"
    assert any("default from the repository's evidence" in c.value for c in at.caption)

    at.button(key="run_bakeoff").click().run()
    ok(at)
    rid = at.session_state["es.current_run"]
    from app_support.selecting import bakeoff_cache, recommended_selection

    rec = bakeoff_cache()[at.session_state["es.bakeoff"][rid]]
    pick = recommended_selection(rec)
    assert rec["ks"] == [1, 2] and rec["judging"]["disjoint"]["shared"] == 0
    assert at.session_state["w:sel.crit"] == pick["criterion"]
    assert at.session_state["w:sel.k"] == pick["k"] == rec["choice"]["k"]
    assert any("Recommended:" in s.value for s in at.success)
    shown = [d.value for d in at.dataframe if "vs random" in d.value.columns]
    assert shown and any("random band" in str(v) for v in shown[0]["criterion"])
    assert any(f"k = {pick['k']}" in m.value for m in at.markdown)
    # EntroDrop stays first-class: its measured standing on this model is shown next to the criterion
    assert any("EntroDrop" in c.value and "on this model:" in c.value for c in at.caption)


# ---- the bake-off on the shared job runner: F5 re-attaches, a second start joins, the result is kept --------

def _sid(at: AppTest) -> str:
    sid = at.query_params["sid"]
    return sid[0] if isinstance(sid, list) else sid


def _reload(sid: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["sid"] = sid
    at.run()
    at.switch_page("pages/4_Select_blocks.py")
    at.run()
    return at


def test_bakeoff_reload_reattaches_a_second_start_joins_and_the_result_comes_back(monkeypatch):
    import threading

    import streamlit as st

    import analysis.recommend.bakeoff as bakeoff
    import app_support.jobs as jobs
    from app_support.jobs import registry
    from app_support.selecting import bakeoff_slot, recommended_selection

    real, started, gate, calls, followed = bakeoff.recommend, threading.Event(), threading.Event(), [], []

    def gated(*a, **k):
        calls.append(1)
        started.set()
        assert gate.wait(120)
        return real(*a, **k)

    def leave(job, *a, **k):                     # the page follows this job; the tab is then closed
        followed.append(job)
        st.stop()

    real_follow = jobs.follow
    monkeypatch.setattr(bakeoff, "recommend", gated)
    monkeypatch.setattr(jobs, "follow", leave)
    persist = {"bo.ks": "1", "bo.seeds": 6}                         # settings no other test runs
    at = select_page(**persist)
    sid, rid = _sid(at), at.session_state["es.current_run"]
    at.button(key="run_bakeoff").click().run()
    assert started.wait(120) and len(followed) == 1                 # tab A shows the running bake-off …
    job = followed[0]
    assert job.kind == "bakeoff" and job.running
    b = _reload(sid)                                                # … F5 on the same address re-attaches to it …
    assert len(followed) == 2 and followed[1] is job
    assert b.session_state["es.jobs"][bakeoff_slot(rid)] == job.key
    other = select_page(**persist)                                  # … another visitor: same model, data, settings
    assert other.session_state["es.current_run"] == rid and _sid(other) != sid
    other.button(key="run_bakeoff").click().run()
    assert len(followed) == 3 and followed[2] is job                # joined, not started again
    row = registry().store.job(job.key)
    assert (row["starts"], row["joins"]) == (1, 1)
    gate.set()
    assert job.wait(240) and job.status == "done"
    assert calls == [1]                                             # the work ran once
    monkeypatch.setattr(jobs, "follow", real_follow)

    c = _reload(sid)                                                # it finished while no tab was open
    ok(c)
    rec = c.session_state["es.bakeoff_results"][rid]
    pick = recommended_selection(rec)
    assert any("Recommended:" in x.value for x in c.success)
    assert c.session_state["w:sel.crit"] == pick["criterion"] and c.session_state["w:sel.k"] == pick["k"]
    assert bakeoff_slot(rid) not in c.session_state["es.jobs"]
    again = _reload(_sid(c))                                        # and after one more F5: from the session store
    ok(again)
    assert again.session_state["es.bakeoff_results"][rid]["choice"] == rec["choice"]
    assert any("Recommended:" in x.value for x in again.success)
    assert again.session_state["w:sel.crit"] == pick["criterion"] and again.session_state["w:sel.k"] == pick["k"]


def test_bakeoff_stopped_while_healing_keeps_the_finished_rows_labelled_partial(monkeypatch):
    import threading

    import analysis.heal.registry as heal_registry
    from analysis.recommend.evidence import default_criterion
    from app_support.jobs import registry
    from app_support.selecting import bakeoff_cache

    real, healing, gate = heal_registry.heal, threading.Event(), threading.Event()

    def gated(*a, **k):
        healing.set()
        assert gate.wait(120)
        return real(*a, **k)

    monkeypatch.setattr(heal_registry, "heal", gated)
    at = select_page(**{"bo.ks": "1", "bo.heal": ["linear"], "bo.seeds": 7})
    rid = at.session_state["es.current_run"]
    box: dict = {}

    def click():
        try:
            at.button(key="run_bakeoff").click().run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    ta = threading.Thread(target=click, daemon=True)
    ta.start()
    assert healing.wait(180)                                        # every unhealed plan is judged; healing began
    job = next(j for j in registry().jobs.values() if j.kind == "bakeoff" and j.running)
    job.stop()                                                      # what the Stop button does
    gate.set()
    ta.join(240)
    assert "error" not in box, box.get("error")
    assert not at.exception, [e.value for e in at.exception]
    assert job.status == "stopped"
    rec = at.session_state["es.bakeoff_results"][rid]
    assert rec["stopped"] and rec["rows"] and {r["heal"] for r in rec["rows"]} == {"none"}
    assert any("Partial bake-off" in w.value for w in at.warning)
    assert not any("Recommended:" in x.value for x in at.success)   # never shown as a full result …
    assert at.session_state["w:sel.crit"] == default_criterion("tiny-llama")[0]   # … nor pre-selected
    assert job.key not in bakeoff_cache()
