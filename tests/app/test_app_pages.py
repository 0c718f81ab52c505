"""AppTest of every page on a tiny random model (the app's real code path, through the test hook).

``ENTROSCOPE_ALLOW_TINY=1`` lets the embedded-model list offer ``tiny-llama`` (8 blocks, hidden 64,
byte-level tokenizer), loaded through the same ``st.cache_resource`` as SmolLM2. Each test starts a
fresh session with ``tiny-llama`` and 8 × 64 tokens of the built-in Wikipedia text as its persisted
settings, exactly as if the user had picked them on the Model & data page.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
TIMEOUT = 90
TINY = {"spec": "tiny-llama", "device": "auto", "dtype": "fp32", "trust_remote_code": False}


@pytest.fixture(autouse=True, scope="module")
def _env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ENTROSCOPE_ALLOW_TINY", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("ENTROSCOPE_CACHE", str(tmp_path_factory.mktemp("entroscope-cache")))
    yield
    mp.undo()


# ---- helpers -------------------------------------------------------------------------------------------

def new_app(**persist) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["es.persist"] = {"model.embedded": "tiny-llama", "data.n": 8, "data.T": 64, **persist}
    at.run()
    ok(at)
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    return at


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.success]
    parts += [w.value for w in at.warning] + [i.value for i in at.info] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def analysed(**persist) -> AppTest:
    """A session where the Entropy page's single button loaded the model, sampled and ran the analysis."""
    at = goto(new_app(**persist), "3_Entropy")
    assert at.button(key="run_analysis").label == "Load model & run analysis"
    at.button(key="run_analysis").click().run()
    ok(at)
    return at


def current(at: AppTest):
    runs = at.session_state["es.runs"]
    return runs[at.session_state["es.current_run"]]


def frame_with(at: AppTest, column: str):
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with column {column!r}: {[list(d.value.columns) for d in at.dataframe]}")


# ---- Home ------------------------------------------------------------------------------------------------

def test_home_pipeline_explainer_and_scaling_toy():
    from analysis.score.criteria import CRITERIA
    from analysis.measure.estimators import ESTIMATORS

    at = new_app()
    assert "Entroscope looks inside a causal language model" in texts(at)
    assert len(at.latex) >= len([e for e in ESTIMATORS.values() if e.formula])
    assert all(f"`{n}`" in texts(at) for n in CRITERIA)          # every registered criterion explained
    at.slider(key="w:toy.c").set_value(2.0)
    at.select_slider(key="w:toy.d").set_value(8)
    at.run()
    ok(at)
    m = {x.label: x for x in at.metric}
    knn_shift = float(m["KNN entropy H(c·x)"].delta.split()[0])
    bucket_shift = float(m["Bucket entropy H(c·x)"].delta.split()[0])
    assert knn_shift == pytest.approx(8 * np.log(2), abs=1e-3)      # d·log c
    assert abs(bucket_shift) < 1e-3                                  # scale-invariant
    assert "d·log c = 8·log 2 = **+5.545**" in texts(at)


def test_home_one_click_demo_lands_on_a_curve():
    at = new_app()
    at.button(key="home_demo").click().run()
    ok(at)
    m = metrics(at)
    r = current(at).result
    assert m["Two-stage boundary"] == (f"block {r.boundary}" if r.boundary > 0 else "none")
    assert m["Blocks"] == "8" and m["Sequences"] == "8"


# ---- Model & data ------------------------------------------------------------------------------------------

def test_model_size_and_memory_shown_before_loading():
    at = goto(new_app(**{"model.embedded": "smollm2"}), "2_Model_and_data")
    ok(at)
    m = metrics(at)
    assert m["Parameters"] == "134.5 M" and m["Blocks (layers)"] == "30" and m["Memory (fp32)"] == "0.65 GB"
    assert at.session_state["es.model"] is None                  # nothing was loaded
    at.selectbox(key="w:model.dtype").set_value("bf16").run()
    assert metrics(at)["Memory (bf16)"] == "0.32 GB"


def test_bad_hub_id_shows_error_and_keeps_loaded_model():
    at = goto(new_app(), "2_Model_and_data")
    at.button(key="load_model").click().run()
    ok(at)
    assert at.session_state["es.model"]["spec"] == "tiny-llama"
    at.radio(key="w:model.source").set_value("hub").run()
    at.text_input(key="w:model.hub").set_value("no-such-user/definitely-not-a-model-123").run()
    at.button(key="load_model").click().run()
    assert not at.exception
    err = " ".join(e.value for e in at.error)
    assert "Could not load the model" in err and "no-such-user/definitely-not-a-model-123" in err
    assert "Traceback" not in err
    assert at.session_state["es.model"]["spec"] == "tiny-llama"  # what was loaded stays


def test_sample_preview_then_bad_uploads_keep_previous_data():
    at = goto(new_app(), "2_Model_and_data")
    at.button(key="sample_data").click().run()
    ok(at)
    assert "Sampled 8 windows × 64 tokens" in texts(at)
    m = metrics(at)
    assert m["Windows N"] == "8" and m["Tokens per window T"] == "64" and m["Domains"] == "1"
    assert "row 0" in texts(at) and "domain `wiki`" in texts(at)

    at.radio(key="w:data.source").set_value("upload").run()
    for name, data, msg in [("empty.txt", b"", "empty.txt is empty"),
                            ("blob.txt", bytes(range(256)) * 40, "looks like a binary file"),
                            ("utf16.txt", "hello world ".encode("utf-16") * 40, "not UTF-8")]:
        at.file_uploader(key="data_upload_widget").set_value((name, data, "text/plain")).run()
        at.button(key="sample_data").click().run()
        assert not at.exception
        assert any(msg in e.value for e in at.error), [e.value for e in at.error]
        assert metrics(at)["Windows N"] == "8"                      # the wiki windows are kept
        assert at.session_state["es.data"]["source"] == "builtin"


def test_good_upload_and_token_file_and_hybrid_mix():
    at = goto(new_app(), "2_Model_and_data")
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 8 for i in range(30))
    at.radio(key="w:data.source").set_value("upload").run()
    at.file_uploader(key="data_upload_widget").set_value(("notes.txt", text.encode(), "text/plain")).run()
    at.button(key="sample_data").click().run()
    ok(at)
    assert "upload notes.txt" in texts(at) and metrics(at)["Windows N"] == "8"

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    at.radio(key="w:data.source").set_value("tokens").run()
    at.file_uploader(key="data_tokens_widget").set_value(("ids.npy", buf.getvalue(), "application/octet-stream")).run()
    at.button(key="sample_data").click().run()
    ok(at)
    assert metrics(at)["Windows N"] == "4" and metrics(at)["Tokens per window T"] == "32"

    at.radio(key="w:data.source").set_value("builtin").run()
    at.multiselect(key="w:data.domains").set_value(["wiki", "code"]).run()
    at.button(key="sample_data").click().run()
    ok(at)
    assert metrics(at)["Domains"] == "2"


# ---- Entropy ---------------------------------------------------------------------------------------------------

def test_entropy_single_button_run_curves_and_adjustable_boundary():
    at = analysed()
    rec = current(at)
    r, rid = rec.result, rec.run_id
    m = metrics(at)
    assert m["Two-stage boundary"] == (f"block {r.boundary}" if r.boundary > 0 else "none")
    assert m["Protected blocks"] == str(len(r.protected)) and m["Blocks"] == "8"
    assert len(at.get("plotly_chart")) >= 4          # curves, ΔH, bootstrap, norms
    assert "0-based" in texts(at)
    # move the boundary in auto mode → the compression stage 0..2 plus the last block are protected
    at.radio(key=f"w:protect.{rid}").set_value("auto").run()
    at.slider(key=f"w:boundary.{rid}").set_value(3).run()
    ok(at)
    m = metrics(at)
    assert m["Two-stage boundary"] == "block 3" and m["Protected blocks"] == "4"
    assert "[0, 1, 2, 7]" in texts(at)
    # the Select page honours it: the protected blocks are locked there
    goto(at, "4_Select_blocks")
    ok(at)
    assert metrics(at)["Protected (locked)"] == "4" and metrics(at)["Unprotected blocks"] == "4"


def test_entropy_sinks_toggle_story_and_reference_mode():
    from app_support.story import SINKS_SENTENCE

    at = analysed()
    r = current(at).result
    assert r.sinks["mode"] == "exclude" and len(r.sinks["counts"]["boundary"]) == 9
    t = texts(at)
    assert SINKS_SENTENCE in t                                  # the toggle explained in one sentence
    assert "compression" in t and "0…-1" not in t              # the story; never an empty stage
    assert at.selectbox(key="w:an.sinks").value == "exclude"
    at.selectbox(key="w:an.sinks").set_value("keep").run()
    at.button(key="run_analysis").click().run()
    ok(at)
    keep = current(at).result
    assert keep.sinks["mode"] == "keep" and keep.manifest["config"]["sinks"] == "keep"
    assert current(at).run_id != [k for k in at.session_state["es.runs"]][0]   # a separate run


def test_entropy_second_run_is_instant_and_nothing_vanishes_between_pages():
    at = analysed()
    rid = at.session_state["es.current_run"]
    for page in ("4_Select_blocks", "2_Model_and_data", "6_Export", "3_Entropy"):
        goto(at, page)
        ok(at)
    assert at.session_state["es.current_run"] == rid
    assert metrics(at)["Two-stage boundary"].startswith("block") or metrics(at)["Two-stage boundary"] == "none"
    goto(at, "2_Model_and_data")
    assert at.number_input(key="w:data.n").value == 8                # settings persisted across pages
    goto(at, "3_Entropy")
    at.button(key="run_analysis").click().run()                      # same settings → from the cache
    ok(at)
    assert "Identical run found in the cache" in texts(at)


def test_entropy_stop_keeps_the_partial_result():
    from analysis.run import AnalysisConfig
    from analysis.testing import random_tokens

    from app_support.jobs import AnalysisJob
    from app_support.models import _cached_model

    at = goto(new_app(), "3_Entropy")
    lm = _cached_model("tiny-llama", "auto", "fp32", False)
    job = AnalysisJob("stoptest01", lm, random_tokens(16, 32, seed=5), AnalysisConfig(batch_size=4),
                      {"model": dict(TINY), "data": {"source": "tokens", "filename": "ids.npy"},
                       "config": {"estimator": "bucket"}})
    first = job._progress

    def stop_after_first_batch(frac, msg):       # the Stop button sets this event between batches
        first(frac, msg)
        job.stop()

    job._progress = stop_after_first_batch
    job.start().wait(60)
    at.session_state["es.job"] = job
    at.run()
    ok(at)
    assert "Analysis stopped: run `stoptest01` covers 4 sequences" in texts(at)
    assert metrics(at)["Sequences"] == "4 (stopped)"
    assert any("Stopped early" in w.value for w in at.warning)


def test_out_of_memory_is_a_clear_message_and_keeps_the_previous_run():
    from analysis.run import AnalysisConfig
    from analysis.testing import random_tokens, tiny_loaded

    from app_support.jobs import AnalysisJob

    at = analysed()
    before = at.session_state["es.current_run"]
    lm = tiny_loaded("llama", layers=8, hidden=64)

    def boom(module, args, kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    lm.adapter.layers[0].register_forward_pre_hook(boom, with_kwargs=True)
    job = AnalysisJob("oomtest001", lm, random_tokens(4, 32), AnalysisConfig(), {"model": dict(TINY), "data": {},
                                                                                 "config": {}})
    job.start().wait(60)
    at.session_state["es.job"] = job
    at.run()
    assert not at.exception
    err = " ".join(e.value for e in at.error)
    assert "Out of memory during the analysis pass" in err and "Traceback" not in err
    assert at.session_state["es.current_run"] == before               # what was computed stays
    assert metrics(at)["Two-stage boundary"].startswith("block") or metrics(at)["Two-stage boundary"] == "none"


def test_unexpected_errors_are_one_line_plus_details():
    def script():
        from app_support.widgets import guarded

        with guarded("Demo"):
            raise ValueError("something odd\nsecond line")

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.error[0].value.startswith("Demo: internal error in Entroscope (ValueError: something odd); please report")
    assert at.expander[0].label == "Details (for a bug report)"


def test_knn_under_sampling_warning_and_too_short_error():
    at = analysed(**{"an.estimator": "knn", "data.T": 32})
    r = current(at).result
    assert any("N < d" in w for w in r.warnings)
    assert any("N=32" in w.value and "d=64" in w.value for w in at.warning)

    at = goto(new_app(**{"an.estimator": "knn", "data.T": 16}), "3_Entropy")
    at.button(key="run_analysis").click().run()
    assert not at.exception
    err = " ".join(e.value for e in at.error)
    assert "KNN with k=25 needs sequences longer than 25 tokens" in err
    assert not at.session_state["es.runs"]


def test_hybrid_run_domain_heatmap_and_estimator_comparison():
    at = analysed(**{"data.domains": ["wiki", "code"], "data.w.wiki": 1.0, "data.w.code": 1.0,
                     "an.extra_estimators": ["knn-norm"], "data.T": 40})
    ok(at)
    df = frame_with(at, "detected boundary (block, 0-based)")
    assert sorted(df["domain"]) == ["code", "wiki"] and list(df["windows"]) == [4, 4]
    est = frame_with(at, "estimator")
    assert list(est["estimator"]) == ["bucket", "knn-norm"]


# ---- Select ------------------------------------------------------------------------------------------------------

def test_select_ranking_k_error_manual_edit_and_plans():
    at = goto(analysed(), "4_Select_blocks")
    ok(at)
    rec = current(at)
    rid = rec.run_id
    m = metrics(at)
    assert m["Selected blocks"] == "4" and m["Protected (locked)"] == "3" and m["Source"] == "cosine"   # the evidence default
    ranking = frame_with(at, "rank")
    locked = ranking[ranking["protected"] == "🔒"]["block (0-based)"].tolist()
    assert sorted(locked) == [0, 1, 7]
    top = ranking.dropna(subset=["rank"]).sort_values("rank")["block (0-based)"].tolist()[:4]
    assert sorted(top) == sorted(at.session_state["es.selection"][rid]["blocks"])

    assert at.number_input(key="w:sel.k").max == 5                    # bounded by the 5 unprotected blocks
    goto(at, "3_Entropy")                     # k = 6 remembered from before the protection grew
    persist = dict(at.session_state["es.persist"])
    persist["sel.k"] = 6
    at.session_state["es.persist"] = persist
    goto(at, "4_Select_blocks")
    ok(at)
    assert at.session_state["w:sel.k"] == 5
    assert any("k = 6 is more than the 5 unprotected blocks" in w.value for w in at.warning)
    assert metrics(at)["Selected blocks"] == "5"                        # chart and editor stay on screen
    assert at.multiselect(key=f"w:sel.blocks.{rid}") is not None
    at.number_input(key="w:sel.k").set_value(2).run()
    ok(at)

    at.multiselect(key=f"w:sel.blocks.{rid}").set_value([3]).run()   # edit by hand
    ok(at)
    assert metrics(at)["Selected blocks"] == "1" and metrics(at)["Source"] == "cosine + hand edits"
    at.button(key="keep_plan").click().run()
    ok(at)
    assert "Kept plan" in texts(at)
    plans = frame_with(at, "plan")
    assert plans["drops"].tolist() == ["attention [3]"]

    # every registered criterion renders (unavailable ones explain why, without a traceback)
    from analysis.score.criteria import CRITERIA

    for name in CRITERIA:
        at.selectbox(key="w:sel.crit").set_value(name).run()
        assert not at.exception, name
        assert all("Traceback" not in e.value for e in at.error)
        if name == "mi-prun":                      # no MI data: an on-page button, not a CLI hint
            assert any("no mutual-information data" in i.value for i in at.info)
            assert at.button(key="sel_rerun_mi").label == "Re-run the analysis with MI-PRUN"
        if name == "delta-ppl":
            assert any("Compute drop-one ΔPPL" in i.value for i in at.info)
    at.selectbox(key="w:sel.crit").set_value("cosine").run()
    ok(at)
    assert "cos(X, Y)" in frame_with(at, "rank").columns


def test_select_agreement_and_ground_truth():
    at = goto(analysed(), "4_Select_blocks")
    assert len(at.get("plotly_chart")) >= 3                            # scores + two agreement matrices
    at.button(key="gt_go").click().run()
    ok(at)
    assert "Ground truth computed" in texts(at)
    gt = frame_with(at, "Spearman ρ vs ground truth")
    assert "entrodrop" in gt["criterion"].tolist()


def test_mi_prun_tab_fast_block_select_and_plan():
    at = analysed(**{"an.mi": True, "an.mi.estimator": "gaussian"})
    keys = [c.key for c in at.get("plotly_chart")]
    assert "mi_bar" in keys and "mi_matrix" in keys
    assert "Data-processing-inequality violations" in metrics(at)
    goto(at, "4_Select_blocks")
    ok(at)
    at.selectbox(key="w:sel.crit").set_value("mi-prun").run()
    ok(at)
    assert metrics(at)["Source"] == "mi-prun"
    assert "Whole layers chosen (0-based)" in metrics(at)
    log = frame_with(at, "layers in the pool")                       # the Fast-Block-Select log, readable
    assert "iteration" in log.columns and log["accepted"].iloc[0] == "start"
    assert not any(str(v).startswith(("{", "[")) for v in log.to_numpy().ravel())   # no raw dicts or lists
    at.button(key="keep_fbs").click().run()
    ok(at)
    assert any(p.startswith("mi-prun-fbs-k") for p in at.session_state["es.plans"])


def test_protected_click_is_refused():
    from app_support.selecting import toggle

    at = goto(analysed(), "4_Select_blocks")
    rid = at.session_state["es.current_run"]
    blocks = at.session_state["es.selection"][rid]["blocks"]
    new, refused = toggle(blocks, [0, 7], current(at).result.protected)
    assert refused == [0, 7] and new == blocks


# ---- Prune & compare ------------------------------------------------------------------------------------------------

def _with_plan(**persist) -> AppTest:
    at = goto(analysed(**persist), "4_Select_blocks")
    at.button(key="keep_plan").click().run()
    ok(at)
    return at


def test_compare_perplexity_latency_generation_sweep_and_model_untouched():
    from analysis.models.loading import weights_hash

    from app_support.models import _cached_model

    lm = _cached_model("tiny-llama", "auto", "fp32", False)
    before = weights_hash(lm.model)
    at = goto(_with_plan(**{"cmp.window": 32, "cmp.max_tokens": 512, "cmp.new_tokens": 4, "cmp.repeats": 1}),
              "5_Prune_and_compare")
    ok(at)
    at.button(key="run_compare").click().run()
    ok(at)
    m = metrics(at)
    assert float(m["Perplexity · original"]) > 1
    df = frame_with(at, "perplexity")
    assert df["plan"].tolist()[0] == "original" and len(df) == 2
    cost = frame_with(at, "params removed %")                        # speed and size: a table of its own
    assert cost["params removed %"].iloc[1] > 0 and cost["KV bytes/token"].iloc[1] < cost["KV bytes/token"].iloc[0]
    assert cost["speed vs original"].iloc[0] == "—"
    verdict = cost["speed vs original"].iloc[1]
    assert verdict.startswith(("faster (", "slower (", "within noise (", "no verdict (")), verdict
    assert "tok/s" in verdict or verdict.startswith("no verdict")      # a verdict names the metric it reads
    assert "p10–p90" in texts(at)                                       # the spread is stated
    assert "disjoint windows of 32 tokens" in texts(at)               # the protocol is stated
    _check_session_zip(at)
    at.button(key="gen_go").click().run()
    ok(at)
    assert "**Original**" in texts(at) and "Greedy decoding" in texts(at)
    at.number_input(key="sw_kmax").set_value(2).run()
    at.button(key="run_sweep").click().run()
    ok(at)
    sw = frame_with(at, "params_removed_fraction")
    assert sorted(set(sw["k"])) == [0, 1, 2]
    assert weights_hash(lm.model) == before                             # the cached model was never modified


def _check_session_zip(at: AppTest) -> None:
    """The Export page offers the whole session in one zip: runs with their own figures, plans, the comparison
    (raw, table, static perplexity and Pareto charts), interactive charts and the reproduce script."""
    import io
    import zipfile

    from app_support.exporting import session_zip

    at = goto(at, "6_Export")
    ok(at)
    assert any(b.label.startswith("Whole session (zip)") for b in at.get("download_button"))
    ss = at.session_state
    data = session_zip(ss["es.runs"], ss["es.plans"], at.code[0].value, ss["es.last_comparison"],
                       ss["es.tables"], ss["es.figures"])
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    rid = next(iter(ss["es.runs"]))
    assert "reproduce.sh" in names and f"runs/{rid}.json" in names and "CONTENTS.txt" in names
    assert f"figures/{rid}/entropy_curves.png" in names
    assert any(n.startswith("plans/") for n in names) and "evaluations/comparison.json" in names
    assert {"figures/comparison/comparison_perplexity.png", "figures/comparison/comparison_pareto.png"} <= set(names)
    assert any(n.startswith("charts/") and n.endswith(".html") for n in names)
    goto(at, "5_Prune_and_compare")


def test_compare_without_plans_points_to_select():
    at = goto(analysed(), "5_Prune_and_compare")
    ok(at)
    assert "No plans kept yet" in texts(at)


def test_pages_without_a_run_guide_the_user():
    at = new_app()
    for page, msg in (("4_Select_blocks", "Run the analysis first"), ("5_Prune_and_compare", "Run the analysis"),
                      ("6_Export", "Nothing to export yet"), ("3_Entropy", "No analysis yet")):
        goto(at, page)
        ok(at)
        assert msg in texts(at), page


# ---- Export ------------------------------------------------------------------------------------------------------

def test_export_cli_downloads_and_checkpoint(tmp_path, monkeypatch):
    at = goto(_with_plan(), "6_Export")
    ok(at)
    script = at.code[0].value
    assert "python -m analysis analyze --model tiny-llama" in script
    assert "python -m analysis select --run run.json --criterion cosine" in script   # the evidence default
    assert "not accepted" not in script
    labels = [b.label for b in at.get("download_button")]
    assert {"reproduce.sh", "manifest.json", "plan.json", "blocks.csv"} <= set(labels)
    assert "kaleido" in texts(at)                                     # plotly PNG export explained
    assert "CSV" in labels and "HTML" in labels
    assert {"Figures · PNG (zip)", "Figures · SVG (zip)", "Figures · PDF (zip)"} <= set(labels)  # static figures

    monkeypatch.setenv("ENTROSCOPE_EXPORT_ROOT", str(tmp_path))      # the server-side setting
    at.button(key="ck_save").click().run()
    ok(at)
    saved = [p for p in next(tmp_path.glob("session-*")).iterdir() if not p.name.startswith(".")]
    assert len(saved) == 1 and (saved[0] / "entroscope-plan.json").is_file()
    assert "Saved" in texts(at)
    at.button(key="ck_save").click().run()                            # exists, no overwrite → clear error
    assert any("already exists" in e.value for e in at.error)
    name_key = next(t.key for t in at.text_input if t.key and t.key.startswith("ck_name_"))
    at.text_input(key=name_key).set_value("../escape").run()
    at.button(key="ck_save").click().run()
    assert any("Invalid checkpoint folder name" in e.value for e in at.error)
    assert not at.exception
    assert re.search(r"manifest", " ".join(labels))


def test_knn_is_opt_in_and_entrodrop_offers_the_rerun_with_it():
    """The default analysis computes no KNN (issue 28: its distance matrices cost about a fifth of a forward per sinks
    view). EntroDrop on the Select page then says which estimator it ranks with and offers the re-run with the
    evidence's one; after it, EntroDrop ranks with KNN and the offer is gone."""
    from app_support.story import ranking_estimator

    want = ranking_estimator()
    at = analysed()
    res = current(at).result
    assert want not in res.estimators and res.estimators == [res.estimator]
    goto(at, "4_Select_blocks")
    at.selectbox(key="w:sel.crit").set_value("entrodrop").run()
    ok(at)
    assert any(f"This run has no {want.upper()} entropies" in c.value for c in at.caption)
    btn = at.button(key="sel_rerun_est")
    assert btn.label == f"Re-run the analysis with {want.upper()}"
    btn.click().run()
    assert not at.exception
    assert list(at.session_state["es.persist"]["an.extra_estimators"]) == [want]
    goto(at, "3_Entropy")                                              # the queued re-run starts on the Entropy page
    ok(at)
    assert want in current(at).result.estimators
    goto(at, "4_Select_blocks")
    at.selectbox(key="w:sel.crit").set_value("entrodrop").run()
    ok(at)
    assert at.selectbox(key="w:sel.param.entrodrop.estimator").value == want
    assert not any(b.key == "sel_rerun_est" for b in at.button)
