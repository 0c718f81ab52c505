"""The guided tour: five steps from the precomputed SmolLM2 run, each a sentence computed from the data and a chart;
and the Home page walks through them (AppTest)."""
from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go
import pytest

from app_support.tour import TOUR_RUN, load_tour_run, tour_steps

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_tour_steps_say_what_the_precomputed_run_shows():
    assert TOUR_RUN.exists()
    r = load_tour_run()
    assert r.sink_views == ["exclude", "keep"] and {"matrix", "logit-lens"} <= set(r.estimators)
    steps = tour_steps(r)
    assert [t.split(" · ")[0] for t, _, _ in steps] == ["1", "2", "3", "4", "5"]
    assert all(isinstance(f, go.Figure) and s.endswith(".") for _, s, f in steps)
    text = " ".join(s for _, s, _ in steps)
    assert "block 11" in steps[1][1] and "cliff" in steps[1][1]             # SmolLM2: the cliff at block 11
    r3 = float(re.search(r"r = (-?[\d.]+)", steps[2][1]).group(1))
    assert r3 < -0.8                                                        # the massive token drives it
    assert "the cliff at block 11 is gone" in steps[3][1] and "sinks excluded" in steps[3][1]
    assert "matrix entropy" in steps[4][1] and "logit lens" in steps[4][1]
    assert "falls through blocks" not in text


def test_home_tour_walks_five_steps():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    assert "1 · The curve, every token kept" in "\n".join(m.value for m in at.markdown)
    for i in range(4):
        at.button(key="tour_next").click().run()
        assert not at.exception
    md = "\n".join(m.value for m in at.markdown)
    assert "5 · The other lenses" in md and "(5 of 5)" in md
    assert at.button(key="tour_next").disabled
    at.button(key="tour_back").click().run()
    assert "4 · The same curve, sinks excluded" in "\n".join(m.value for m in at.markdown)
