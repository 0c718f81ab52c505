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
    from analysis.data import files

    at = _loaded_with_data()
    at.radio(key="w:data.source").set_value("upload").run()
    at.file_uploader(key="data_upload_widget").set_value(("one.txt", b"hi", "text/plain")).run()
    at.button(key="sample_data").click().run()
    assert not at.exception and "too little text" in errors(at), errors(at)
    monkeypatch.setattr(files, "MAX_UPLOAD_BYTES", 1000)
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


# ---- the Export page on a shared server (docs/reliability.md, class A1) --------------------------------------
def _export_page(monkeypatch, root, **env):
    from test_app_pages import _with_plan

    monkeypatch.setenv("ENTROSCOPE_EXPORT_ROOT", str(root))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    at = goto(_with_plan(), "6_Export")
    ok(at)
    return at


def test_export_writes_only_to_a_private_session_folder_and_offers_a_zip(tmp_path, monkeypatch):
    import zipfile

    root = tmp_path / "exports"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    at = _export_page(monkeypatch, root)
    assert not [t for t in at.text_input if t.key == "w:ck.root"]        # no server path from the browser
    name_key = next(t.key for t in at.text_input if t.key and t.key.startswith("ck_name_"))
    for bad in ("../outside", str(outside), "..", "a/b", "a\\\\b", ""):
        at.text_input(key=name_key).set_value(bad).run()
        at.button(key="ck_save").click().run()
        assert at.error and not at.exception, bad
    at.text_input(key=name_key).set_value("mine").run()
    at.button(key="ck_save").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    sessions = list(root.glob("session-*"))
    assert len(sessions) == 1 and (sessions[0] / "mine" / "entroscope-plan.json").is_file()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert str(root) not in " ".join(m.value for m in at.success)        # server paths are not shown
    zbtn = at.get("download_button")
    assert any(b.proto.label == "mine.zip" for b in zbtn)
    from app_support.exporting import zip_bytes

    import io

    names = zipfile.ZipFile(io.BytesIO(zip_bytes(sessions[0] / "mine"))).namelist()
    assert "mine/model.safetensors" in names and "mine/entroscope-plan.json" in names
    # overwriting a folder of this session works; a second browser session gets another private folder
    at.checkbox(key="ck_overwrite").check().run()
    at.button(key="ck_save").click().run()
    assert not at.error
    other = _export_page(monkeypatch, root)
    other.button(key="ck_save").click().run()
    assert not other.error and len(list(root.glob("session-*"))) == 2


def test_server_paths_only_behind_the_server_setting(tmp_path, monkeypatch):
    at = _export_page(monkeypatch, tmp_path / "exports", ENTROSCOPE_EXPORT_SERVER_PATHS="1")
    at.text_input(key="w:ck.root").set_value(str(tmp_path / "mine")).run()
    at.button(key="ck_save").click().run()
    ok(at)
    assert len([p for p in (tmp_path / "mine").iterdir() if not p.name.startswith(".")]) == 1


# ---- inputs in the app (classes V2, V5) -----------------------------------------------------------------------
def test_degenerate_tokens_give_a_named_warning_and_one_token_is_refused():
    at = _loaded_with_data()
    buf = io.BytesIO()
    np.save(buf, np.full((4, 32), 7))                                # one repeated token
    at.radio(key="w:data.source").set_value("tokens").run()
    at.file_uploader(key="data_tokens_widget").set_value(("const.npy", buf.getvalue(), "application/octet-stream")).run()
    at.button(key="sample_data").click().run()
    ok(at)
    at = goto(at, "3_Entropy")
    at.button(key="run_analysis").click().run()
    assert not at.exception and not at.error, errors(at)
    assert any("DegenerateInput: every sequence repeats a single token" in w.value for w in at.warning), \
        [w.value for w in at.warning]


def test_checkpoint_with_mismatched_weights_is_refused_in_the_app(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from analysis.testing import tiny_model, tiny_tokenizer

    d = tmp_path / "broken"
    tiny_model("llama", layers=2).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    sd = load_file(str(d / "model.safetensors"))
    sd.pop("model.layers.1.mlp.down_proj.weight")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    at = _loaded_with_data()
    at.radio(key="w:model.source").set_value("local").run()
    at.text_input(key="w:model.local").set_value(str(d)).run()
    at.button(key="load_model").click().run()
    assert not at.exception and "1 missing (model.layers.1.mlp.down_proj.weight)" in errors(at), errors(at)
    assert at.session_state["es.model"]["spec"] == "tiny-llama"                   # the loaded model is kept
    shutil.rmtree(d)


def test_app_serves_on_localhost_unless_shared_explicitly():
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    make = (root / "Makefile").read_text()
    assert re.search(r"^ADDRESS \?= 127\.0\.0\.1$", make, re.M)
    assert re.search(r"streamlit run app\.py --server\.address \$\(ADDRESS\)", make)


def test_reproduce_script_keeps_an_empty_protected_set():
    """A session that protected nothing must not reproduce with the run's default protected blocks."""
    from types import SimpleNamespace

    from analysis.cli.main import build_parser
    from app_support.commands import select_argv

    rec = SimpleNamespace(criterion="entrodrop", k=2, granularity="attention", params={})
    argv = select_argv(rec, [])
    assert argv[argv.index("--protect") + 1] == "none"
    assert build_parser().parse_args(argv).protect == []
