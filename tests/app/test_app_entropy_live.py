"""The Entropy page while an analysis runs: its progress (with Stop) and the growing curve are the first thing
under the page title, above the page's intro, the settings and the run control — on the page that started the
run and after a reload (F5) that re-attaches to it.

``follow`` is replaced by one frame of what it draws (the bar, Stop, one ``on_tick``) and then ``st.stop()``:
an AppTest run only returns once the script ends, and the real ``follow`` polls until the job is done."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_app_pages import APP, TIMEOUT, _env, goto, new_app, ok  # noqa: E402,F401 - the module env fixture


def _flat(node, out=None) -> list:
    """Every element under ``node`` in page order (blocks opened), as ``(type, value-or-label)``."""
    out = [] if out is None else out
    for child in getattr(node, "children", {}).values():
        t = getattr(child, "type", type(child).__name__)
        if getattr(child, "children", None) and t in ("vertical", "horizontal", "column", "flex_container", "container",
                                                      "block"):
            _flat(child, out)
        else:
            text = getattr(child, "label", None) if t == "button" else getattr(child, "value", None)
            out.append((t, str(text)[:60]))
    return out


def _index(elems, pred) -> int:
    return next(i for i, e in enumerate(elems) if pred(e))


@pytest.fixture
def held_analysis(monkeypatch):
    """An analysis that stops after its first batch's preview until the test releases it; ``follow`` draws
    one frame once the preview exists."""
    import streamlit as st

    import app_support.jobs as jobs

    previewed, gate, followed = threading.Event(), threading.Event(), []
    real_preview = jobs.AnalysisJob._preview

    def held(self, stats):
        real_preview(self, stats)
        previewed.set()
        assert gate.wait(120)

    def one_frame(job, title, stop_key, stop_help="", poll=0.25, on_tick=None):
        followed.append(job)
        assert previewed.wait(120)
        st.progress(min(job.frac, 1.0), text=f"{title} … {job.status_text()}")
        st.button("Stop", key=stop_key, help=stop_help)
        if on_tick is not None:
            on_tick(job)
        st.stop()

    monkeypatch.setattr(jobs.AnalysisJob, "_preview", held)
    monkeypatch.setattr(jobs, "follow", one_frame)
    yield followed
    gate.set()
    for job in followed:
        job.wait(120)


def _assert_live_first(at: AppTest) -> None:
    elems = _flat(at.main)
    title = _index(elems, lambda e: e[0] == "title" or "Entropy dynamics" in e[1])
    bar = _index(elems, lambda e: e[0] == "progress")
    stop = _index(elems, lambda e: e[0] == "button" and e[1] == "Stop")
    curve = _index(elems, lambda e: e[0] == "plotly_chart")
    intro = _index(elems, lambda e: "How the entropy of the residual stream" in e[1])
    run = _index(elems, lambda e: e[0] == "button" and e[1].endswith("analysis"))   # the run control
    assert title < bar < stop < curve < intro < run, elems[:12]
    assert (bar, stop, curve) == (title + 1, title + 2, title + 3), elems[:12]   # nothing in between


def test_the_running_analysis_is_the_first_thing_under_the_title(held_analysis):
    at = goto(new_app(**{"an.batch_size": 3}), "3_Entropy")            # settings no other test runs
    at.button(key="run_analysis").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = held_analysis[0]
    assert job.running and job.kind == "analysis"
    _assert_live_first(at)
    sid = at.query_params["sid"]
    again = AppTest.from_file(APP, default_timeout=TIMEOUT)             # F5: a new session on the same address
    again.query_params["sid"] = sid[0] if isinstance(sid, list) else sid
    again.run()
    goto(again, "3_Entropy")
    assert len(held_analysis) == 2 and held_analysis[1] is job          # re-attached to the same running job
    _assert_live_first(again)
