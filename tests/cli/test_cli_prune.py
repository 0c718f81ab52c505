"""CLI round trips: prune / eval / sweep / load on a tiny model saved to disk, and their error paths."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from analysis.cli.main import main
from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.models.surgery import pruned_view
from analysis.testing import random_tokens, tiny_model, tiny_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


TEXT = "\n\n".join(f"Paragraph {i}: entropy measures how uncertain a distribution is. Layers that add little "
                   f"entropy may be redundant; pruning removes them and we check perplexity on held-out text."
                   for i in range(80))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    model = tiny_model("llama", layers=6)
    model.save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    (d / "doc.txt").write_text(TEXT)
    return d


def _ids():
    return random_tokens(1, 20, seed=11)


def _logits(model):
    with torch.inference_mode():
        return model(_ids()).logits


def test_prune_layers_gives_standard_checkpoint(ckpt, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(ckpt / "model"), "--drop-layers", "2,3", "--out", str(out), "--quiet",
                 "--dtype", "fp32", "--mergekit", str(tmp_path / "m.yaml")]) == 0   # exact: fp32 on any CPU
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layers"] == 4 and summary["size"]["params_entroscope_loader"] == summary["params"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    base = load_model(str(ckpt / "model"), device="cpu")
    assert torch.equal(_logits(reloaded), _logits(pruned_view(base.model, Plan(drop_layers=[2, 3]))))
    assert Plan.load(out / "entroscope-plan.json").drop_layers == [2, 3]
    assert "layer_range: [4, 6]" in (tmp_path / "m.yaml").read_text()


def test_prune_subblocks_then_load_and_eval(ckpt, tmp_path, capsys):
    out = tmp_path / "sub"
    plan = tmp_path / "plan.json"
    Plan(drop_attn=[1, 4], drop_mlp=[2]).save(plan)
    assert main(["prune", "--model", str(ckpt / "model"), "--plan", str(plan), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["load", str(out), "--device", "cpu", "--prompt", "Entropy", "--max-new-tokens", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["attention_dropped"] == [1, 4] and info["mlp_dropped"] == [2] and "generation" in info
    ev = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--device", "cpu", "--text", str(ckpt / "doc.txt"),
                 "--window", "64", "--max-tokens", "300", "--out", str(ev), "--quiet"]) == 0
    base_ev = tmp_path / "base.json"
    assert main(["eval", "--model", str(ckpt / "model"), "--device", "cpu", "--plan", str(plan),
                 "--text", str(ckpt / "doc.txt"), "--window", "64", "--max-tokens", "300",
                 "--out", str(base_ev), "--csv", str(tmp_path / "eval.csv"), "--quiet"]) == 0
    saved, viewed = json.loads(ev.read_text()), json.loads(base_ev.read_text())
    assert saved["perplexity"] == pytest.approx(viewed["perplexity"], rel=1e-6)
    assert viewed["kl"] > 0 and 0 <= viewed["top1"] <= 1 and viewed["perplexity_original"] > 0
    p = viewed["protocol"]
    assert p["window"] == 64 and p["tokens_scored"] == viewed["tokens"] and p["split"] == "eval"
    assert viewed["params"]["removed"] > 0 and viewed["manifest"]["plan"]["drop_attn"] == [1, 4]
    assert (tmp_path / "eval.csv").read_text().startswith("perplexity,")


def test_eval_latency_and_sweep(ckpt, tmp_path, capsys):
    from analysis.run import AnalysisConfig, analyze

    ev = tmp_path / "lat.json"
    assert main(["eval", "--model", str(ckpt / "model"), "--device", "cpu", "--drop-layers", "5",
                 "--text", str(ckpt / "doc.txt"), "--window", "64", "--max-tokens", "128", "--latency",
                 "--prompt-len", "8", "--new-tokens", "2", "--repeats", "1", "--out", str(ev), "--quiet"]) == 0
    lat = json.loads(ev.read_text())["latency"]
    assert lat["rows"][0]["decode_tokens_per_s"]["median"] > 0 and lat["kv_layers"] == 5
    lm = load_model(str(ckpt / "model"), device="cpu")
    run = analyze(lm, random_tokens(4, 24), AnalysisConfig(estimator="bucket", granularity="layer"))
    run.save(tmp_path / "run.json")
    out = tmp_path / "sweep.json"
    assert main(["sweep", "--run", str(tmp_path / "run.json"), "--criteria", "entrodrop,random", "--k", "0-2",
                 "--text", str(ckpt / "doc.txt"), "--window", "64", "--max-tokens", "200", "--out", str(out),
                 "--csv", str(tmp_path / "sweep.csv"), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert [(r["criterion"], r["k"]) for r in res["rows"]] == [("entrodrop", 0), ("entrodrop", 1), ("entrodrop", 2),
                                                              ("random", 0), ("random", 1), ("random", 2)]
    assert res["rows"][0]["perplexity"] == res["rows"][3]["perplexity"]
    assert len((tmp_path / "sweep.csv").read_text().splitlines()) == 7


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("argv, match", [
    (["prune", "--model", "{m}", "--drop-attn", "9", "--out", "{tmp}/o"], "attention sub-block 9.*0..5"),
    (["prune", "--model", "{m}", "--out", "{tmp}/o"], "No plan given"),
    (["prune", "--model", "{m}", "--drop-layers", "1", "--out", "{tmp}/exists"], "already exists"),
    (["prune", "--model", "{m}", "--plan", "{tmp}/missing.json", "--out", "{tmp}/o"], "Plan file not found"),
    (["prune", "--model", "{m}", "--plan", "{tmp}/p.json", "--drop-layers", "1", "--out", "{tmp}/o"],
     "either a plan file"),
    (["eval", "--model", "{m}", "--drop-layers", "0-5", "--out", "{tmp}/e.json"], "drops all 6 layers"),
    (["eval", "--model", "{m}", "--text", "{tmp}/missing.txt", "--out", "{tmp}/e.json"], "file not found"),
    (["eval", "--model", "{m}", "--window", "64", "--stride", "100", "--text", "{doc}", "--out", "{tmp}/e.json"],
     "stride 100 is larger"),
    (["load", "{tmp}/nowhere"], "not found"),
    (["sweep", "--run", "{tmp}/missing.json", "--out", "{tmp}/s.json"], "Run file not found"),
])
def test_cli_errors_are_one_line(ckpt, tmp_path, capsys, argv, match):
    (tmp_path / "exists").mkdir()
    Plan(drop_attn=[1]).save(tmp_path / "p.json")
    argv = [a.format(m=ckpt / "model", tmp=tmp_path, doc=ckpt / "doc.txt") for a in argv]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert __import__("re").search(match, line), line
    assert not (tmp_path / "o").exists()


def test_bad_index_list_is_an_argparse_error(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", str(ckpt / "model"), "--drop-attn", "a,b", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2                                  # usage errors exit 2, as documented
    assert "expected 0-based indices" in capsys.readouterr().err
