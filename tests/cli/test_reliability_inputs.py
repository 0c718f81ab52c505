"""Inputs are validated before they are used (docs/reliability.md, classes V1–V12), through the CLI:
numbers, degenerate analyses, --samples for token files, run/plan schemas, provenance, checkpoints,
the model cache, --text file names, what a run lacks, broken pipes and unusable devices."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.cli.main import main
from analysis.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer
from test_reliability_cli import expect, run_cli


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-v"), layers=4))


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ids-v") / "ids.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    return str(p)


@pytest.fixture(scope="module")
def run_json(tiny_dir, ids_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-v") / "run.json"
    assert main(["analyze", "--model", tiny_dir, "--tokens", ids_file, "--out", str(out), "--quiet", "--no-cache"]) == 0
    return str(out)


# ---- V1 numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,pattern", [
    (["--estimator", "renyi", "--alpha", "nan"], "finite number"),
    (["--estimator", "renyi", "--alpha", "inf"], "finite number"),
    (["--estimator", "renyi", "--alpha", "-2"], "outside (0, 1000]"),
    (["--estimator", "renyi", "--alpha", "0"], "outside (0, 1000]"),
    (["--bins", "1"], "bin count in 2..100000"),
    (["--bins", "1000000000"], "bin count in 2..100000"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**40)], "seed"),
    (["--seed", "1e3"], "seed"),
])
def test_numbers_out_of_domain_are_refused(capsys, tmp_path, tiny_dir, ids_file, argv, pattern):
    err = expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--out", str(tmp_path / "r.json"),
                          *argv], pattern)
    assert not (tmp_path / "r.json").exists() and "unexpected" not in err


def test_select_and_channel_numbers(capsys, run_json, tiny_dir, tmp_path):
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "angular", "--granularity", "layer",
                    "--window", "0"], "block window in 1..")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "angular", "--granularity", "layer",
                    "--window", "4"], "spans the whole 4-layer model")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "random", "--seed", "-5"], "seed")
    for bad in ("nan", "inf", "1.5", "-0.1"):
        expect(capsys, ["channels", "--model", tiny_dir, "--ratio", bad, "--out", str(tmp_path / "c")], "[0, 1)")
    expect(capsys, ["channels", "--model", tiny_dir, "--min-keep-frac", "nan", "--out", str(tmp_path / "c")],
           "finite number")
    expect(capsys, ["miprun", "--run", run_json, "--n", "1", "--K", "-3"], "count in 0..")


def test_alpha_validated_in_the_library_too():
    from analysis.errors import EntroscopeError
    from analysis.run import AnalysisConfig

    with pytest.raises(EntroscopeError, match="alpha"):      # refused when the config is made (settings.check_ranges)
        AnalysisConfig(estimator="renyi", alpha=float("nan")).validate()


# ---- V2 degenerate analyses, --samples / --seq-len for token files ------------------------------------------
def test_one_usable_token_is_refused(capsys, tmp_path, tiny_dir):
    for shape, extra in (((4, 1), []), ((4, 2), ["--skip-first-token"])):
        p = tmp_path / f"ids{shape[1]}.npy"
        np.save(p, np.random.default_rng(0).integers(0, 256, size=shape))
        expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(p), "--out", str(tmp_path / "r.json"),
                        "--no-cache", *extra], "needs at least 2")


def test_all_zero_delta_h_is_a_named_warning(capsys, tmp_path, tiny_dir):
    p = tmp_path / "const.npy"
    np.save(p, np.full((4, 32), 7))                      # one repeated token: nothing varies across tokens
    code, err = run_cli(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(p), "--out", str(tmp_path / "r.json"),
                                 "--no-cache", "--dtype", "fp32"])
    assert code == 0 and "warning: DegenerateInput: every sequence repeats a single token" in err, err
    assert any(w.startswith("DegenerateInput") for w in json.loads((tmp_path / "r.json").read_text())["warnings"])


def _result(boundary, mid):
    from analysis.score.result import AnalysisResult

    return AnalysisResult(num_layers=len(mid[0]), estimator="bucket", granularity="attention", protect="none",
                          per_seq={"bucket": {"boundary": boundary, "mid": mid}}, angular=None, norms={}, boundary=0,
                          protected=[])


def test_zero_and_null_scores_are_named():
    from analysis.run import degenerate_warnings

    nan = float("nan")
    assert any(w.startswith("DegenerateScores: every attention ΔH is 0")
               for w in degenerate_warnings(_result([[2.0, 2.0, 2.0]] * 3, [[2.0, 2.0]] * 3)))
    w = degenerate_warnings(_result([[2.0, 3.0, 1.0]] * 3, [[nan, 2.5]] * 3))
    assert any(x.startswith("NullScores: ΔH of blocks [0] is null") for x in w)
    assert degenerate_warnings(_result([[2.0, 3.0, 1.0]] * 3, [[2.5, 2.5]] * 3)) == []


def test_all_null_entropies_are_refused():
    from analysis.errors import DataError
    from analysis.run import degenerate_warnings

    nan = float("nan")
    with pytest.raises(DataError, match="Every bucket entropy is null"):
        degenerate_warnings(_result([[nan] * 3], [[nan] * 2]))


def test_samples_and_seq_len_honoured_for_token_files(capsys, tmp_path, tiny_dir, ids_file):
    out = tmp_path / "r.json"
    assert run_cli(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--samples", "2", "--out", str(out),
                            "--quiet", "--no-cache"])[0] == 0
    d = json.loads(out.read_text())
    assert len(d["per_seq"]["bucket"]["mid"]) == 2 and d["manifest"]["data"]["n"] == 2
    expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--samples", "9", "--out", str(out)],
           "holds 4 windows but --samples 9")
    expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--seq-len", "16", "--out", str(out)],
           "windows of 32 tokens")


# ---- V3 run and plan JSON schemas (pydantic) -----------------------------------------------------------------
def _mutated(run_json, tmp_path, fn, name="bad.json"):
    d = json.loads(open(run_json).read())
    fn(d)
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return str(p)


@pytest.mark.parametrize("fn,pattern", [
    (lambda d: d.update(num_layers="4"), "field num_layers"),
    (lambda d: d.update(num_layers=5), "per_seq.bucket.boundary[0] has 5 values; num_layers=5 needs 6"),
    (lambda d: d.pop("per_seq"), "field per_seq is missing"),
    (lambda d: d["per_seq"]["bucket"]["mid"][1].pop(), "per_seq.bucket.mid[1] has 3 values"),
    (lambda d: d["per_seq"]["bucket"]["mid"][0].__setitem__(0, "abc"), "per_seq.bucket.mid[0][0]"),
    (lambda d: d["per_seq"]["bucket"]["mid"].pop(), "per_seq.bucket.mid has 3 sequences"),
    (lambda d: d.update(protected=[9]), "protected blocks [9] are outside 0..3"),
    (lambda d: d.update(granularity="blocks"), "field granularity"),
    (lambda d: d.update(estimator="knn"), "estimator 'knn' has no per-sequence entropies"),
    (lambda d: d.update(boundary=-1), "boundary -1"),
    (lambda d: d.update(angular=[[0.0]]), "angular must be a 5×5 matrix"),
])
def test_bad_run_json_names_the_field(capsys, tmp_path, run_json, fn, pattern):
    err = expect(capsys, ["select", "--run", _mutated(run_json, tmp_path, fn), "--k", "1"], pattern)
    assert "not a valid Entroscope run JSON" in err and "unexpected" not in err


def test_absurd_nesting_and_old_runs(capsys, tmp_path, run_json):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    expect(capsys, ["select", "--run", str(deep), "--k", "1"], "nested too deeply")
    plan = tmp_path / "deep-plan.json"
    plan.write_text('{"drop_attn": ' + "[" * 100_000 + "]" * 100_000 + "}")
    expect(capsys, ["prune", "--plan", str(plan), "--out", str(tmp_path / "o")], "nested too deeply")
    # an older run: no headline keys, none of the later optional fields → still loads
    old = _mutated(run_json, tmp_path, lambda d: [d.pop(k) for k in ("entropy", "delta_h", "delta_h_all", "index_base",
                                                                    "drop_order", "extras", "baselines", "domains",
                                                                    "warnings", "norms", "angular")], "old.json")
    code, err = run_cli(capsys, ["select", "--run", old, "--k", "1"])
    assert code == 0, err


@pytest.mark.parametrize("content,pattern", [
    ('{"drop_layers": [1, "2"]}', "'drop_layers' must hold integers"),
    ('{"drop_layers": [true]}', "'drop_layers' must hold integers"),
    ('{"drop_layers": {"a": 1}}', "must be a list"),
    ('{"drop_layers": [1], "source": []}', "'source' must be a JSON object"),
    ('{"drop_layers": [1], "dropp_attn": [2]}', "unknown keys ['dropp_attn']"),
    ('{"layers": [1]}', "not a plan"),
])
def test_bad_plan_json_names_the_field(capsys, tmp_path, tiny_dir, content, pattern):
    p = tmp_path / "plan.json"
    p.write_text(content)
    expect(capsys, ["prune", "--model", tiny_dir, "--plan", str(p), "--out", str(tmp_path / "o")], pattern)


# ---- V4 provenance ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-other")
    tiny_model("qwen2", layers=4).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return str(d)


def test_plan_for_another_model_needs_force(capsys, tmp_path, run_json, other_dir):
    plan = tmp_path / "plan.json"
    assert run_cli(capsys, ["select", "--run", run_json, "--k", "1", "--out", str(plan)])[0] == 0
    text = tmp_path / "t.txt"
    text.write_text("some words to score here. " * 200)
    err = expect(capsys, ["eval", "--model", other_dir, "--plan", str(plan), "--text", str(text), "--out",
                          str(tmp_path / "e.json")], "was made for")
    assert "model type llama ≠ qwen2" in err and "fingerprint" in err and "--force" in err
    expect(capsys, ["prune", "--model", other_dir, "--plan", str(plan), "--out", str(tmp_path / "ck")], "was made for")
    assert not (tmp_path / "ck").exists()
    code, err = run_cli(capsys, ["prune", "--model", other_dir, "--plan", str(plan), "--out", str(tmp_path / "ck"),
                                 "--force", "--quiet"])
    assert code == 0 and "warning: ProvenanceMismatch" in err and (tmp_path / "ck").is_dir(), err


def test_run_for_another_model_needs_force(capsys, tmp_path, run_json, other_dir):
    text = tmp_path / "t.txt"
    text.write_text("some words to score here. " * 200)
    argv = ["sweep", "--run", run_json, "--model", other_dir, "--k", "0,1", "--text", str(text), "--window", "64",
            "--out", str(tmp_path / "s.json"), "--quiet"]
    expect(capsys, argv, "was made for")
    code, err = run_cli(capsys, argv + ["--force"])
    assert code == 0 and "ProvenanceMismatch" in err, err
    deeper = _mutated(run_json, tmp_path, lambda d: d["manifest"]["model"].update(num_layers=30), "deep-run.json")
    from analysis.models.loading import load_model
    from analysis.store.provenance import differences, recorded_model
    from analysis.score.result import AnalysisResult

    lm = load_model(other_dir, device="cpu")
    d = json.loads(open(deeper).read())
    assert any("depth (layers) 30 ≠ 4" in x for x in differences(recorded_model(d), lm))
    with pytest.raises(Exception, match="num_layers is 4 but its own manifest.model records 30 layers"):
        AnalysisResult.load(deeper)           # a run that contradicts its own manifest is refused


# ---- V9 asking a run for what it lacks -------------------------------------------------------------------------
def test_run_lacking_what_is_asked(capsys, tmp_path, run_json):
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--estimator", "knn"],
           "This run has no 'knn' entropies (it holds bucket)")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "mi-prun"], "--mi")
    expect(capsys, ["miprun", "--run", run_json, "--n", "1"], "--mi")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "delta-ppl"], "groundtruth --into")
    bare = _mutated(run_json, tmp_path, lambda d: [d["per_seq"].pop(k) for k in ("cos_attn", "cos_mlp", "cos_layer")]
                    + [d.update(angular=None)], "bare.json")
    expect(capsys, ["select", "--run", bare, "--k", "1", "--criterion", "cosine"], "no cosine similarities")
    expect(capsys, ["select", "--run", bare, "--k", "1", "--criterion", "angular", "--granularity", "layer"],
           "no angular statistics")


# ---- V11 broken pipes, V12 unusable devices ------------------------------------------------------------------
def test_broken_pipe_ends_quietly(tmp_path, run_json):
    import subprocess
    import sys

    cmd = f"{sys.executable} -m analysis select --run {run_json} --k 1 | head -c 3"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert p.stdout == "{\n " and p.stderr == "", p.stderr
    assert p.returncode in (0, 141)


@pytest.mark.parametrize("device,pattern", [("meta", "holds no data"), ("xla", "not supported"),
                                            ("cuda:7", "cuda"), ("foo", "Unknown device")])
def test_unusable_devices(capsys, tmp_path, tiny_dir, ids_file, device, pattern):
    err = expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--device", device, "--out",
                          str(tmp_path / "r.json")], pattern)
    assert "unexpected" not in err


# ---- V5 checkpoints whose config and weights disagree ----------------------------------------------------------
@pytest.mark.parametrize("kind,pattern", [
    ("missing", "2 missing (model.layers.2.mlp.up_proj.weight, model.layers.3.self_attn.q_proj.weight)"),
    ("extra", "1 unexpected (model.layers.9.mlp.up_proj.weight)"),
    ("shape", "1 with the wrong shape (model.layers.1.mlp.up_proj.weight (5, 64) vs (128, 64))"),
])
def test_checkpoint_config_and_weights_disagree(capsys, tmp_path, tiny_dir, ids_file, kind, pattern):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    d = tmp_path / f"ck-{kind}"
    shutil.copytree(tiny_dir, d)
    sd = load_file(str(d / "model.safetensors"))
    if kind == "missing":
        sd.pop("model.layers.2.mlp.up_proj.weight")
        sd.pop("model.layers.3.self_attn.q_proj.weight")
    elif kind == "extra":
        sd["model.layers.9.mlp.up_proj.weight"] = torch.zeros(3, 3)
    else:
        sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(5, 64)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    err = expect(capsys, ["analyze", "--model", str(d), "--tokens", ids_file, "--out", str(tmp_path / "r.json")],
                 "config.json and the weight files disagree")
    assert pattern in err, err


# ---- V6 a corrupted model-cache entry is rebuilt, or the message names the folder -------------------------------
def test_corrupted_cache_entry_is_rebuilt(tmp_path, monkeypatch, tiny_dir):
    import shutil

    import analysis.models.embedded as embedded
    import analysis.models.integrity as integrity
    import analysis.models.loading as models
    from analysis.errors import ModelLoadError

    monkeypatch.setenv("ENTROSCOPE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "toy.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    conversions = []

    def fake_convert(path, out_dir, progress=None):             # stands in for the slow dequantisation
        conversions.append(out_dir)
        shutil.copytree(tiny_dir, out_dir)
        (out_dir / "entroscope-source.json").write_text("{}")

    monkeypatch.setattr(embedded, "convert_gguf", fake_convert)
    lm = models.load_model(str(gguf), device="cpu")
    entry = conversions[0]
    assert lm.num_layers == 4 and len(conversions) == 1
    assert models.load_model(str(gguf), device="cpu").from_cache and len(conversions) == 1
    damage = [lambda: (entry / "model.safetensors").write_bytes((entry / "model.safetensors").read_bytes()[:1000]),
              lambda: (entry / "config.json").write_text("{trunc"),
              lambda: (entry / "model.safetensors").unlink(),
              lambda: (entry / "entroscope-source.json").unlink()]
    for i, hurt in enumerate(damage):
        hurt()
        lm = models.load_model(str(gguf), device="cpu")
        assert lm.num_layers == 4 and len(conversions) == i + 2 and not lm.from_cache
    (entry / "config.json").write_text("{trunc")

    def cannot(path, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(integrity.shutil, "rmtree", cannot)
    with pytest.raises(ModelLoadError, match="delete the folder") as e:
        models.load_model(str(gguf), device="cpu")
    assert str(entry) in str(e.value)


# ---- V7 --text names are literal ----------------------------------------------------------------------------
def test_text_paths_are_literal(capsys, tmp_path, tiny_dir):
    weird = tmp_path / "notes[1]*?.txt"
    weird.write_text("plain words in a file with glob characters in its name. " * 60)
    (tmp_path / "notes1x.txt").write_text("another file that a glob would match. " * 60)
    out = tmp_path / "r.json"
    code, err = run_cli(capsys, ["analyze", "--model", tiny_dir, "--text", str(weird), "--seq-len", "16",
                                 "--samples", "2", "--out", str(out), "--quiet", "--no-cache"])
    assert code == 0, err
    assert json.loads(out.read_text())["manifest"]["data"]["corpus"] == weird.name
    expect(capsys, ["analyze", "--model", tiny_dir, "--text", str(tmp_path / "notes*.txt"), "--out", str(out)],
           "file not found")


def test_prune_refuses_an_empty_plan(capsys, tmp_path, tiny_dir):
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "none", "--out", str(tmp_path / "o")],
           "drops nothing")
    p = tmp_path / "empty.json"
    p.write_text('{"drop_attn": [], "drop_mlp": [], "drop_layers": []}')
    expect(capsys, ["prune", "--model", tiny_dir, "--plan", str(p), "--out", str(tmp_path / "o")], "drops nothing")
    assert not (tmp_path / "o").exists()
