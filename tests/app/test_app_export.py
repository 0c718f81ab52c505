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
