"""Every saved checkpoint carries a Hugging Face model card that huggingface_hub's parser reads, with the plan,
the source model and, when given, the evaluation (perplexity with its protocol, task accuracy ± stderr)."""
import json

import pytest
from huggingface_hub import ModelCard

from analysis.cli.main import main
from analysis.models.card import model_card, upstream
from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.models.surgery import save_pruned
from analysis.testing import save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "\n\n".join(f"Paragraph {i}: entropy measures how uncertain a distribution is, layer after layer."
                   for i in range(60))


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("card")
    save_tiny_checkpoint(d / "model", "llama", layers=6)
    (d / "doc.txt").write_text(TEXT)
    return d


def test_prune_without_eval_writes_a_parsable_card(src, tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["prune", "--model", str(src / "model"), "--drop-layers", "2", "--drop-attn", "4", "--out", str(out),
                 "--quiet"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "pruned" in card.data.tags and card.data.license == "other"
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "layers [2]; attention [4]" in card.text and "6 → 5" in card.text and "Not evaluated" in card.text
    assert str(src) not in card.content                                   # no local paths in what gets uploaded


def test_prune_with_eval_puts_metrics_in_model_index(src, tmp_path, capsys):
    ev = tmp_path / "eval.json"
    assert main(["eval", "--model", str(src / "model"), "--drop-layers", "2", "--text", str(src / "doc.txt"),
                 "--window", "64", "--max-tokens", "300", "--device", "cpu", "--out", str(ev), "--quiet"]) == 0
    data = json.loads(ev.read_text())
    data["tasks"] = {"tasks": {"cloze-wiki": {"primary": "acc", "n": 50,
                                              "metrics": {"acc": {"value": 0.62, "stderr": 0.0686}}}}}
    ev.write_text(json.dumps(data))
    out = tmp_path / "ck"
    assert main(["prune", "--model", str(src / "model"), "--drop-layers", "2", "--eval", str(ev), "--out", str(out),
                 "--quiet"]) == 0
    card = ModelCard.load(out / "README.md")
    res = {r.task_name: r for r in card.data.eval_results}
    assert res["perplexity"].metric_value == pytest.approx(data["perplexity"], rel=1e-5)
    assert "window 64" in res["perplexity"].dataset_config and res["perplexity"].metric_type == "perplexity"
    assert res["cloze-wiki"].metric_value == 0.62 and res["cloze-wiki"].metric_args["stderr"] == 0.0686
    assert "model-index" in card.content and "± 0.0686" in card.text
    capsys.readouterr()
    assert main(["prune", "--model", str(src / "model"), "--drop-layers", "3", "--eval", str(ev),
                 "--out", str(tmp_path / "other"), "--quiet"]) == 2            # measured for another plan
    assert "another plan" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_save_pruned_always_writes_a_card(src, tmp_path):
    lm = load_model(str(src / "model"), device="cpu")
    out = save_pruned(lm, Plan(drop_mlp=[1], source={"criterion": "entrodrop", "k": 1}), tmp_path / "app")
    card = ModelCard.load(out / "README.md")
    assert "criterion: `entrodrop`" in card.text and "zeroed output projections" in card.text


def test_embedded_models_name_their_upstream_and_licence():
    assert upstream("gemma3-270m", "embedded") == ("google/gemma-3-270m", "gemma")
    text = model_card(model_name="smollm2", source_kind="embedded", plan=Plan(drop_layers=[20]), original_layers=30,
                      kept_layers=[i for i in range(30) if i != 20])
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
