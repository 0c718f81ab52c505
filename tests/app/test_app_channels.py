"""AppTest of pages/7_Channels.py on a tiny random model (ENTROSCOPE_ALLOW_TINY test hook)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "pages" / "7_Channels.py")
TINY = {"spec": "tiny-llama", "device": "cpu", "dtype": "fp32", "trust_remote_code": False}


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_ALLOW_TINY", "1")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["es.model"] = dict(TINY)
    return at


def _set(at, kind, key, value):
    getattr(at, kind)(key=f"w:{key}").set_value(value)


def test_page_without_model_points_to_model_page(monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_ALLOW_TINY", "1")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("Load a model first" in i.value for i in at.info)


def test_run_show_results_and_save(app, tmp_path, monkeypatch):
    from analysis.models.loading import weights_hash
    from app_support.models import get_model

    at = app.run()
    assert not at.exception and not at.error
    _set(at, "multiselect", "ch.domains", ["wiki", "code"])
    at.run()
    _set(at, "number_input", "ch.samples", 4)
    _set(at, "number_input", "ch.seq_len", 32)
    _set(at, "slider", "ch.ratio", 0.5)
    _set(at, "number_input", "ch.steps", 2)
    _set(at, "selectbox", "ch.multiple", 8)
    _set(at, "selectbox", "ch.agg", "mean")
    _set(at, "checkbox", "ch.bias", True)
    _set(at, "number_input", "ch.eval_tokens", 128)
    _set(at, "number_input", "ch.eval_window", 64)
    at.run()
    at.button(key="ch_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    res = at.session_state["es.channels"]
    rep = res["report"]
    assert rep["final"]["widths"] == [64] * 8 and rep["manifest"]["samples_per_domain"] == {"wiki": 2, "code": 2}
    assert [m.label for m in at.metric][:1] == ["MLP channels removed"]
    # the page's reproduce command is the CLI for the very config it ran
    import shlex

    import analysis.channels as CH
    from analysis.cli.main import build_parser
    from analysis.settings import from_args

    argv = shlex.split(res["command"])[3:]                        # after "python -m analysis"
    assert argv[0] == "channels" and any(c.value == res["command"] for c in at.code)
    assert from_args(CH.ChannelConfig, build_parser().parse_args(argv)).validated() == \
        CH.ChannelConfig(**{**rep["config"], "domains": {"wiki": 1.0, "code": 1.0}}).validated()
    frames = [df.value for df in at.dataframe]
    ppl = next(f for f in frames if "domain" in f.columns)
    assert list(ppl["domain"]) == ["wiki", "code"] and (ppl["after"] > 1).all()
    assert "channels_kept" in at.session_state["es.figures"]
    json.dumps(rep, allow_nan=False)
    # the cached (shared) model is untouched
    from analysis.testing import tiny_loaded

    lm = get_model(TINY)
    assert res["pruned"].model is not lm.model
    assert weights_hash(lm.model) == weights_hash(tiny_loaded("llama", layers=8, hidden=64).model)
    assert [lm.model.model.layers[i].mlp.gate_proj.out_features for i in range(8)] == [128] * 8

    monkeypatch.setenv("ENTROSCOPE_EXPORT_ROOT", str(tmp_path))     # server-side: a private folder per session
    assert not [t for t in at.text_input if t.key == "w:ch.root"]
    at.text_input(key="ch_save_name").set_value("tiny-ch")
    at.run()
    at.button(key="ch_save").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (next(tmp_path.glob("session-*")) / "tiny-ch" / "entroscope-channels.json").is_file()
    assert any("Saved to `tiny-ch`" in s.value for s in at.success)
    assert any(b.proto.label == "tiny-ch.zip" for b in at.get("download_button"))


def test_bad_settings_show_one_line_error(app):
    at = app.run()
    _set(at, "multiselect", "ch.domains", [])
    at.run()
    at.button(key="ch_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "weight" in at.error[0].value.lower()
