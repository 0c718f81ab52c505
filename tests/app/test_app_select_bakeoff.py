"""AppTest of the Select page's evidence: the default criterion read from the repository's evidence table,
then the bake-off run from the page (tiny random model) pre-selecting its recommendation."""
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


def select_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["es.persist"] = {"model.embedded": "tiny-llama", "data.n": 8, "data.T": 64,
                                      "bo.ks": "1,2", "bo.heal": ["none"], "bo.heldout_tokens": 512}
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
