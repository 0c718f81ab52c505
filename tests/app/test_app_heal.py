"""Healing on the Prune & compare and Export pages (Streamlit AppTest, tiny model)."""
import json


from test_app_pages import _env, _with_plan, frame_with, goto, ok, texts  # noqa: F401 - _env: autouse fixture


def test_heal_choice_rows_generation_export_and_model_untouched(tmp_path, monkeypatch):
    from analysis.models.loading import weights_hash

    from app_support.models import _cached_model

    lm = _cached_model("tiny-llama", "auto", "fp32", False)
    before = weights_hash(lm.model)
    at = goto(_with_plan(**{"cmp.window": 32, "cmp.max_tokens": 256, "cmp.new_tokens": 2, "cmp.repeats": 1}),
              "5_Prune_and_compare")
    ok(at)
    plan_name = at.multiselect(key="cmp_plans").value[0]
    at.selectbox(key=f"heal_method_{plan_name}").set_value("linear").run()
    at.button(key="run_compare").click().run()
    ok(at)
    df = frame_with(at, "perplexity")
    assert df["plan"].tolist() == ["original", plan_name, f"{plan_name} + linear"]
    assert "healed: linear" in df["drops (0-based)"].iloc[2]
    assert df["perplexity"].iloc[2] != df["perplexity"].iloc[1]
    cost = frame_with(at, "params removed %")
    assert cost["params removed %"].iloc[2] == cost["params removed %"].iloc[1]   # no new parameters
    at.button(key="gen_go").click().run()
    ok(at)
    assert "**Healed (linear)" in texts(at)
    assert weights_hash(lm.model) == before                                  # cached model untouched

    at = goto(at, "6_Export")
    ok(at)
    script = at.code[0].value
    assert "--heal linear" in script and "not accepted" not in script
    monkeypatch.setenv("ENTROSCOPE_EXPORT_ROOT", str(tmp_path))      # the server-side export root
    at.button(key="ck_save").click().run()
    ok(at)
    (session,) = list(tmp_path.iterdir())                              # this session's private folder
    (saved,) = [p for p in session.iterdir() if p.is_dir() and not p.name.startswith(".")]
    heal = json.loads((saved / "entroscope-heal.json").read_text())
    assert heal["method"] == "linear" and heal["settings"]["calibration_corpus"]
    assert weights_hash(lm.model) == before


def test_heal_argv_and_calibration_corpus():
    from app_support.commands import accepts
    from app_support.healing import calib_corpus, heal_argv

    assert heal_argv(None) == [] and heal_argv({"method": "none"}) == []
    argv = heal_argv({"method": "distill", "options": {"steps": 5, "rank": 4, "lr": 1e-3}, "corpus": "wiki:1,code:1"})
    assert argv[:4] == ["--heal", "distill", "--heal-corpus", "wiki:1,code:1"] and "--heal-rank" in argv
    assert accepts(["prune", "--model", "smollm2", "--drop-layers", "3", "--out", "o", *argv])
    assert accepts(["eval", "--model", "smollm2", "--drop-layers", "3", "--out", "e.json", *argv])
    assert calib_corpus({"source": "builtin", "weights": {"wiki": 1, "code": 0}}) == "wiki"
    assert calib_corpus({"source": "builtin", "weights": {"wiki": 1, "code": 2}}) == "wiki:1,code:2"
    assert calib_corpus({"source": "upload"}) == "wiki"
