"""`--heal` on the prune / eval / sweep commands (tiny model saved to disk)."""
import json

import pytest
from transformers import AutoModelForCausalLM

from analysis.cli.main import main
from analysis.testing import random_tokens, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "\n\n".join(f"Paragraph {i}: entropy measures how uncertain a distribution is; pruning removes layers "
                   f"and healing repairs what was lost, measured on held-out text." for i in range(80))
HEAL = ["--heal-corpus", "wiki", "--heal-samples", "8", "--heal-seq-len", "64"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-heal")
    tiny_model("llama", layers=6).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    (d / "doc.txt").write_text(TEXT)
    return d


def test_prune_heal_linear_roundtrip_same_perplexity(ckpt, tmp_path, capsys):
    out, model = tmp_path / "healed", str(ckpt / "model")
    assert main(["prune", "--model", model, "--drop-layers", "2,3", "--out", str(out), "--quiet",
                 "--heal", "linear", "--heal-skip-first-token", *HEAL]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["healing"]["method"] == "linear" and "command" not in summary["llama_cpp"]
    manifest = json.loads((out / "entroscope-manifest.json").read_text())
    assert manifest["results"]["healing"]["settings"]["ridge"] == 1e-4
    assert manifest["results"]["healing"]["settings"]["skip_first_token"] is True
    assert manifest["results"]["healing"]["report"]["gaps"][0]["folded_into"] == "layers.1.mlp.down_proj"
    AutoModelForCausalLM.from_pretrained(out)                     # plain transformers
    data = ["--text", str(ckpt / "doc.txt"), "--window", "64", "--max-tokens", "300", "--device", "cpu"]
    assert main(["eval", "--model", str(out), *data, "--out", str(tmp_path / "saved.json"), "--quiet"]) == 0
    assert main(["eval", "--model", model, "--drop-layers", "2,3", *data, "--heal", "linear", *HEAL,
                 "--heal-skip-first-token",
                 "--out", str(tmp_path / "whatif.json"), "--quiet"]) == 0
    saved, whatif = (json.loads((tmp_path / f).read_text()) for f in ("saved.json", "whatif.json"))
    assert saved["perplexity"] == pytest.approx(whatif["healed"]["perplexity"], rel=1e-5)
    assert whatif["healed"]["perplexity"] != whatif["perplexity"]          # healing changed the model
    assert whatif["healed"]["recovered_fraction"] is not None


def test_prune_heal_refusals(ckpt, tmp_path, capsys):
    model = str(ckpt / "model")
    code = main(["prune", "--model", model, "--drop-layers", "0,1", "--out", str(tmp_path / "x"), "--heal", "linear",
                 *HEAL])
    err = capsys.readouterr().err
    assert code != 0 and "layer 0" in err and "Traceback" not in err
    code = main(["prune", "--model", model, "--drop-layers", "2", "--out", str(tmp_path / "y"), "--heal", "linear",
                 "--mergekit", str(tmp_path / "m.yaml"), "--quiet", *HEAL])     # optional export: skipped, said why
    assert code == 0 and "mergekit: not written" in capsys.readouterr().err and not (tmp_path / "m.yaml").exists()


def test_sweep_heal_rows_side_by_side(ckpt, tmp_path):
    from analysis.models.loading import load_model
    from analysis.run import AnalysisConfig, analyze

    lm = load_model(str(ckpt / "model"), device="cpu")
    analyze(lm, random_tokens(4, 24), AnalysisConfig(estimator="bucket", granularity="layer")).save(tmp_path / "r.json")
    out = tmp_path / "sweep.json"
    assert main(["sweep", "--run", str(tmp_path / "r.json"), "--criteria", "tail", "--k", "0-2", "--text",
                 str(ckpt / "doc.txt"), "--window", "64", "--max-tokens", "200", "--out", str(out), "--quiet",
                 "--heal", "distill", "--heal-steps", "3", *HEAL]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["k"], r["heal"]) for r in rows] == [(0, "none"), (1, "none"), (2, "none"), (1, "distill"),
                                                   (2, "distill")]
    assert rows[3]["plan"] == rows[1]["plan"] and rows[3]["perplexity"] != rows[1]["perplexity"]
    assert rows[3]["heal_seconds"] > 0 and "recovered_fraction" in rows[3]
