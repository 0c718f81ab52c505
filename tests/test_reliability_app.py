"""Bad-input catalogue through the app (AppTest): a clear message, no traceback, and everything computed
earlier is still there afterwards. (The CLI side is in test_reliability_cli.py; more app error paths are
in test_app_pages.py.)"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("streamlit")

from test_app_pages import _env, analysed, current, goto, new_app, ok  # noqa: E402,F401 - shared harness


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def _loaded_with_data():
    at = goto(new_app(), "2_Model_and_data")
    at.button(key="load_model").click().run()
    at.button(key="sample_data").click().run()
    ok(at)
    return at


def _model_dir(tmp_path, kind: str) -> str:
    from analysis.testing import tiny_tokenizer

    d = tmp_path / kind
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260)).save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
    elif kind == "remote":
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "custom_x", "auto_map": {
            "AutoConfig": "c.C", "AutoModelForCausalLM": "m.M"}}))
    elif kind == "t5":
        from transformers import T5Config

        T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=260).save_pretrained(d)
    return str(d)


@pytest.mark.parametrize("kind,message", [("gpt2", "Unsupported architecture GPT2LMHeadModel"),
                                          ("remote", "trust_remote_code"),
                                          ("t5", "not a causal")])
def test_bad_local_models_keep_the_loaded_one(tmp_path, kind, message):
    at = _loaded_with_data()
    at.radio(key="w:model.source").set_value("local").run()
    at.text_input(key="w:model.local").set_value(_model_dir(tmp_path, kind)).run()
    at.button(key="load_model").click().run()
    assert not at.exception and message in errors(at), errors(at)
    assert "Traceback" not in errors(at)
    assert at.session_state["es.model"]["spec"] == "tiny-llama"
    assert at.session_state["es.data"]["source"] == "builtin"


def test_one_token_and_oversized_uploads(monkeypatch):
    import analysis.corpora as corpora

    at = _loaded_with_data()
    at.radio(key="w:data.source").set_value("upload").run()
    at.file_uploader(key="data_upload_widget").set_value(("one.txt", b"hi", "text/plain")).run()
    at.button(key="sample_data").click().run()
    assert not at.exception and "too little text" in errors(at), errors(at)
    monkeypatch.setattr(corpora, "MAX_UPLOAD_BYTES", 1000)
    at.file_uploader(key="data_upload_widget").set_value(("big.txt", b"word " * 1000, "text/plain")).run()
    at.button(key="sample_data").click().run()
    assert not at.exception and "the upload limit is" in errors(at), errors(at)
    assert at.session_state["es.data"]["source"] == "builtin"       # the earlier windows are kept


@pytest.mark.parametrize("arr,message", [(np.arange(12), "[N, T]"),
                                         (np.ones((2, 16), dtype=np.float32), "integer"),
                                         (np.full((2, 16), 99_999), "vocab")])
def test_bad_token_files(arr, message):
    at = _loaded_with_data()
    buf = io.BytesIO()
    np.save(buf, arr)
    at.radio(key="w:data.source").set_value("tokens").run()
    at.file_uploader(key="data_tokens_widget").set_value(("ids.npy", buf.getvalue(), "application/octet-stream")).run()
    at.button(key="sample_data").click().run()
    assert not at.exception and message in errors(at), errors(at)
    assert at.session_state["es.data"]["source"] == "builtin"


def test_all_blocks_protected_is_explained_and_run_kept():
    at = analysed()
    rec = current(at)
    at.multiselect(key=f"w:extra.{rec.run_id}").set_value(list(range(8))).run()
    at = goto(at, "4_Select_blocks")
    assert not at.exception
    assert "All 8 blocks are protected" in errors(at), errors(at)
    assert current(at).run_id == rec.run_id                          # the analysis is still there
