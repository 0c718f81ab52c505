"""Jobs: the smoothed time left, the registry that joins a second start, Stop that keeps what finished."""
from __future__ import annotations

import random
import threading

import pytest

pytest.importorskip("streamlit")

from app_support.jobs import Job, JobRegistry, Smoother  # noqa: E402


def _etas(times_fracs, smoother=None):
    sm = smoother or Smoother()
    out = []
    for t, f in times_fracs:
        sm.update(t, f)
        out.append(sm.eta(t, f))
    return out


def test_time_left_does_not_swing_on_uneven_batches():
    # 200 batches of 0.5 % each at about 1 %/s, every batch time jittered ±60 %, one batch 5x slower
    rng = random.Random(0)
    t, f, seq = 0.0, 0.0, []
    for i in range(200):
        t += 0.5 * (1 + rng.uniform(-0.6, 0.6)) * (5 if i == 80 else 1)
        f = min(1.0, f + 0.005)
        seq.append((t, f))
    etas = _etas(seq)
    shown = [(tf, e) for tf, e in zip(seq, etas) if e is not None]
    assert len(shown) > 150                                     # an estimate appears early …
    t_end = seq[-1][0]
    truth = [t_end - tt for (tt, _), _ in shown]
    for ((tt, _), e), true_left in zip(shown, truth):
        if true_left > 20:
            assert abs(e - true_left) < 0.35 * true_left + 5    # … is close to the truth …
    for (_, e1), (_, e2) in zip(shown, shown[1:]):
        assert abs(e2 - e1) < 12                                # … and never jumps by minutes between batches


def test_the_raw_rate_would_have_swung_where_the_smoothed_one_does_not():
    # a single slow batch: the last interval's rate alone would double the estimate; the EMA moves it far less
    seq = [(float(i), i / 100) for i in range(1, 31)] + [(35.0, 0.31)]
    sm = Smoother()
    before = _etas(seq[:-1], sm)[-1]
    after = _etas(seq[-1:], sm)[-1]
    naive = (1 - 0.31) / ((0.31 - 0.30) / 5.0)                  # 345 s from the last interval alone
    assert before == pytest.approx(70, rel=0.05)
    assert abs(after - before) < 0.5 * abs(naive - before)
    assert after < 2 * before


def test_a_new_stage_restarts_the_estimate():
    sm = Smoother()
    _etas([(float(i), i / 10) for i in range(1, 6)], sm)
    assert sm.eta(5.0, 0.5) is not None
    sm.reset()
    assert sm.eta(5.0, 0.0) is None


def _counting_job(key, counter, gate=None, steps=5, pause_at=None):
    def work(job):
        counter.append(key)
        done = []
        for i in range(steps):
            if job.should_stop():
                break
            if gate is not None:
                gate.wait(30)
            if pause_at is not None and i == pause_at[0]:
                pause_at[1].set()                 # "reached step i" …
                pause_at[2].wait(30)              # … and wait for the test to press Stop
            done.append(i)
            job.partial["done"] = list(done)
            job.progress((i + 1) / steps, f"step {i + 1}/{steps}")
        return done
    return Job(key, work, kind="test", label="a test job")


def test_starting_the_same_job_twice_joins_the_first(tmp_path):
    from app_support.session_store import SessionDB

    store = SessionDB(tmp_path / "s.sqlite3")
    reg = JobRegistry(store)
    calls: list = []
    gate = threading.Event()
    first, joined1 = reg.submit(_counting_job("k1", calls, gate))
    second, joined2 = reg.submit(_counting_job("k1", calls, gate))
    assert (joined1, joined2) == (False, True) and second is first
    gate.set()
    assert first.wait(30) and first.result == [0, 1, 2, 3, 4]
    third, joined3 = reg.submit(_counting_job("k1", calls))       # finished complete: reused, not recomputed
    assert joined3 and third is first
    assert calls == ["k1"]                                         # the work ran once
    row = store.job("k1")
    assert (row["starts"], row["joins"], row["status"]) == (1, 2, "done")
    other, joined = reg.submit(_counting_job("k2", calls))
    assert not joined and other.wait(30) and calls == ["k1", "k2"]


def test_stop_keeps_what_finished_and_a_stopped_job_can_be_started_again():
    reg = JobRegistry()
    calls: list = []
    reached, release = threading.Event(), threading.Event()
    job, _ = reg.submit(_counting_job("s1", calls, steps=50, pause_at=(3, reached, release)))
    assert reached.wait(30)
    job.stop()
    release.set()
    assert job.wait(30)
    assert job.status == "stopped" and 0 < len(job.result) < 50
    assert job.partial["done"] == job.result                       # what finished is kept
    again, joined = reg.submit(_counting_job("s1", calls, steps=3))
    assert not joined and again.wait(30) and again.result == [0, 1, 2]


def test_errors_are_one_line():
    def boom(job):
        raise ValueError("bad thing\nsecond line")

    job = Job("e1", boom).start()
    job.wait(30)
    assert job.status == "error" and job.error.startswith("internal error in Entroscope (ValueError: bad thing); ")


def test_test_hold_hook_waits_for_stop_and_only_for_named_kinds(monkeypatch):
    """ENTROSCOPE_TEST_JOB_HOLD (the browser tests' hook): a held kind's progress report waits until Stop."""
    from app_support.jobs import job_hold_seconds

    monkeypatch.setenv("ENTROSCOPE_TEST_JOB_HOLD", "held:600, other")
    assert (job_hold_seconds("held"), job_hold_seconds("other"), job_hold_seconds("comparison")) == (600.0, 30.0, 0.0)
    reports = []

    def work(job):
        job.progress(0.5, "half")                 # held here until Stop
        reports.append(job.should_stop())
        return "what finished"

    job = Job("k-held", work, kind="held").start()
    assert not job.wait(3)                        # 600 s hold: still waiting (a broken hook returns at once)
    job.stop()
    assert job.wait(120)
    assert reports == [True] and job.result == "what finished" and job.status == "stopped"
    monkeypatch.delenv("ENTROSCOPE_TEST_JOB_HOLD")
    assert job_hold_seconds("held") == 0.0


def test_follow_leaves_no_stop_button_once_the_job_ended():
    """The progress bar and its Stop button go away together when the followed job ends (no orphan Stop)."""
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from app_support.jobs import Job, follow

        job = Job("k-follow", lambda job: job.progress(1.0, "done") or "ok", kind="probe").start()
        follow(job, "Probing", "probe_stop", poll=0.05)
        st.write(f"result: {job.result}")

    at = AppTest.from_function(script, default_timeout=60).run()
    assert not at.exception, at.exception
    assert [m.value for m in at.markdown] == ["result: ok"]
    assert not [b for b in at.button if b.key == "probe_stop"]
