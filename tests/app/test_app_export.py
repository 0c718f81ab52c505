"""Export page: the saved checkpoint's model card is shown and parses; llama.cpp routes print placeholders only."""
from __future__ import annotations

from huggingface_hub import ModelCard

from test_app_pages import _env, _with_plan, goto, ok, texts  # noqa: F401 - _env: autouse fixture


def test_export_checkpoint_has_model_card_and_llama_cpp_routes(tmp_path, monkeypatch):
    at = goto(_with_plan(), "6_Export")
    ok(at)
    llama = [c.value for c in at.code if "convert_hf_to_gguf.py" in c.value]
    assert llama and "<your-llama.cpp>" in llama[0] and "<pruned-checkpoint>" in llama[0]
    assert str(tmp_path) not in llama[0] and "/root" not in llama[0] and "/home" not in llama[0]
    monkeypatch.setenv("ENTROSCOPE_EXPORT_ROOT", str(tmp_path))
    at.button(key="ck_save").click().run()
    ok(at)
    saved = next(p for p in next(tmp_path.glob("session-*")).iterdir() if not p.name.startswith("."))
    card = ModelCard.load(saved / "README.md")
    assert card.data.library_name == "transformers" and "pruned" in card.data.tags
    assert any(e.label.startswith("Model card") for e in at.expander)
    assert any("library_name: transformers" in c.value for c in at.code)


def test_checkpoint_card_carries_the_comparison_of_that_plan(tmp_path, monkeypatch):
    """As ``prune --eval``: the Prune & compare perplexity (with its protocol) goes into the saved card."""
    small = {"cmp.window": 32, "cmp.max_tokens": 256, "cmp.new_tokens": 2, "cmp.repeats": 1}
    at = goto(_with_plan(**small), "5_Prune_and_compare")
    at.button(key="run_compare").click().run()
    ok(at)
    cmp_ = at.session_state["es.last_comparison"]
    name = next(n for n in cmp_["names"] if n != "original")
    ppl = cmp_["results"][name]["perplexity"]
    goto(at, "6_Export")
    monkeypatch.setenv("ENTROSCOPE_EXPORT_ROOT", str(tmp_path))
    at.button(key="ck_save").click().run()
    ok(at)
    saved = next(p for p in next(tmp_path.glob("session-*")).iterdir() if not p.name.startswith("."))
    card = ModelCard.load(saved / "README.md")
    res = {r.metric_type: r for r in card.data.eval_results}
    assert res["perplexity"].metric_value == round(ppl, 6)
    assert "window 32" in res["perplexity"].dataset_config                    # the protocol travels with it
    assert "Not evaluated when saved" not in card.text


def test_card_evaluation_only_for_the_plan_measured_to_the_end():
    from analysis.models.plan import Plan
    from app_support.evaluation import plan_key
    from app_support.exporting import card_evaluation

    plan = Plan(drop_layers=[2])
    cmp_ = {"names": ["original", "p", "p + linear"], "plans": {"p": plan_key(plan)},
            "heal": {"p": {"method": "linear", "options": {}}},
            "results": {"original": {"perplexity": 10.0}, "p": {"perplexity": 12.0, "perplexity_original": 10.0,
                                                               "protocol": {"window": 32}}},
            "tasks": {"p": {"tasks": {"cloze-wiki": {"primary": "acc", "metrics": {"acc": {"value": 0.5,
                                                                                         "stderr": 0.1}}}}}},
            "interrupted": {"name": "p + linear", "at": "windows 4/8"}}
    ev = card_evaluation(cmp_, "p", plan, {"method": "none"})
    assert ev["perplexity"] == 12.0 and ev["protocol"] == {"window": 32} and "cloze-wiki" in ev["tasks"]["tasks"]
    assert card_evaluation(cmp_, "p", Plan(drop_layers=[3]), {"method": "none"}) is None   # other blocks, same name
    assert card_evaluation(cmp_, "p", plan, {"method": "linear", "options": {}}) is None    # healed row stopped
    assert card_evaluation(cmp_, "q", plan, None) is None
    assert card_evaluation({**cmp_, "plans": None}, "p", plan, None) is None               # an older comparison
