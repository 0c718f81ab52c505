"""Entropy page: both sinks views without a re-run, the lens curves, and the massive-activation view (AppTest on
a tiny random model through the test hook)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "app.py")


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


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def test_views_toggle_without_a_rerun_lenses_and_massive_activations():
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["es.persist"] = {"model.embedded": "tiny-llama", "data.n": 8, "data.T": 64}
    at.run()
    at.switch_page("pages/3_Entropy.py")
    at.run()
    at.button(key="run_analysis").click().run()
    ok(at)
    runs = dict(at.session_state["es.runs"])
    r = next(iter(runs.values())).result
    assert r.sink_views == ["exclude", "keep"]
    radio = at.radio(key="entropy_view")
    assert list(radio.options) == ["sinks excluded — primary", "sinks kept (reference)", "both (overlay)"]
    assert "sinks excluded:" in texts(at)                                 # the story names its view
    for v in ("keep", "both"):
        radio.set_value(v).run()
        ok(at)
        assert len(at.session_state["es.runs"]) == 1                      # no re-run
    assert "sinks kept (reference)" in texts(at)
    assert "Pearson r" in [c for df in at.dataframe for c in df.value.columns]
    # the lenses: one button adds both to the same pass
    at.button(key="rerun_lenses").click().run()
    ok(at)
    rec = at.session_state["es.runs"][at.session_state["es.current_run"]]
    assert {"matrix", "logit-lens"} <= set(rec.result.estimators)
    assert "lens_curves_chart" in [c.key for c in at.get("plotly_chart") if hasattr(c, "key")] or \
        "seeded token positions" in texts(at)
