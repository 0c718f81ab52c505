"""Bad-input catalogue through the CLI: each gives one clear, specific line on stderr, a non-zero exit,
and never a traceback. (docs/reliability.md lists the catalogue; the app's side is in test_reliability_app.py.)"""
import json

import numpy as np
import pytest
import torch

from analysis.cli.main import main
from analysis.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-rel"), layers=4))


@pytest.fixture(scope="module")
def run_json(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run.json"
    ids = tmp_path_factory.mktemp("ids") / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    assert main(["analyze", "--model", tiny_dir, "--tokens", str(ids), "--out", str(out), "--quiet"]) == 0
    return str(out)


def run_cli(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code if isinstance(e.code, int) else 2
        err = capsys.readouterr().err + (e.code if isinstance(e.code, str) else "")
        return code, err
    return code, capsys.readouterr().err


def expect(capsys, argv, pattern):
    code, err = run_cli(capsys, argv)
    assert code != 0, err
    assert "Traceback" not in err
    assert pattern.lower() in err.lower(), err
    return err


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return str(p)


def test_unknown_model_id(capsys, tmp_path):
    expect(capsys, ["analyze", "--model", "nobody/no-such-model", "--offline", "--corpus", "wiki", "--out",
                    str(tmp_path / "r.json")], "not an embedded name")


def test_non_causal_model(capsys, tmp_path):
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=260).save_pretrained(tmp_path)
    expect(capsys, ["analyze", "--model", str(tmp_path), "--corpus", "wiki", "--out", str(tmp_path / "r.json")],
           "not a causal")


def test_unsupported_architecture(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260)).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    expect(capsys, ["analyze", "--model", str(tmp_path / "m"), "--corpus", "wiki", "--out", str(tmp_path / "r.json")],
           "Unsupported architecture GPT2LMHeadModel")


def test_remote_code_model(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "custom_x", "auto_map": {
        "AutoConfig": "c.C", "AutoModelForCausalLM": "m.M"}}))
    expect(capsys, ["analyze", "--model", str(tmp_path), "--corpus", "wiki", "--out", str(tmp_path / "r.json")],
           "trust_remote_code")


@pytest.mark.parametrize("name,data,pattern", [
    ("empty.txt", b"", "empty"),
    ("bin.txt", b"\x00\x01\x02\xff" * 100, "binary"),
    ("latin.txt", "caf\xe9 ".encode("latin-1") * 200, "UTF-8"),
    ("one.txt", b"hello", "too little text"),
    ("rows.jsonl", b'{"id": 1}\n{"id": 2}\n', "text"),
])
def test_bad_text_files(capsys, tmp_path, tiny_dir, name, data, pattern):
    expect(capsys, ["analyze", "--model", tiny_dir, "--text", write(tmp_path, name, data), "--out",
                    str(tmp_path / "r.json")], pattern)


@pytest.mark.parametrize("arr,pattern", [
    (np.arange(10), "[N, T]"),
    (np.ones((2, 8), dtype=np.float32), "integer"),
    (np.full((2, 8), 10_000), "vocab"),
    (np.zeros((0, 8), dtype=np.int64), "empty"),
])
def test_bad_token_files(capsys, tmp_path, tiny_dir, arr, pattern):
    p = tmp_path / "ids.npy"
    np.save(p, arr)
    expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(p), "--out", str(tmp_path / "r.json")], pattern)


def test_seq_len_beyond_context(capsys, tmp_path, tiny_dir):
    p = tmp_path / "ids.npy"
    np.save(p, np.zeros((2, 600), dtype=np.int64))  # tiny model context is 512
    expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(p), "--out", str(tmp_path / "r.json")],
           "beyond the model's context")


def test_knn_k_not_below_seq_len(capsys, tmp_path, tiny_dir):
    expect(capsys, ["analyze", "--model", tiny_dir, "--corpus", "wiki", "--seq-len", "20", "--estimator", "knn",
                    "--out", str(tmp_path / "r.json")], "needs sequences longer than 25")


def test_unknown_domain_and_bad_weights(capsys, tmp_path, tiny_dir):
    expect(capsys, ["analyze", "--model", tiny_dir, "--corpus", "klingon", "--out", str(tmp_path / "r.json")],
           "klingon")
    expect(capsys, ["analyze", "--model", tiny_dir, "--corpus", "wiki:abc,code:1", "--out", str(tmp_path / "r.json")],
           "wiki:abc")


def test_hub_dataset_offline(capsys, tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expect(capsys, ["analyze", "--model", tiny_dir, "--corpus", "hub:wikitext/wikitext-2-raw-v1", "--out",
                    str(tmp_path / "r.json")], "offline")


def test_bad_argument_values(capsys, tmp_path, tiny_dir):
    expect(capsys, ["analyze", "--model", tiny_dir, "--corpus", "wiki", "--samples", "0", "--out", "x"],
           "window count in 1..")
    expect(capsys, ["analyze", "--model", tiny_dir, "--corpus", "wiki", "--estimator", "magic", "--out", "x"],
           "invalid choice")
    expect(capsys, ["analyze", "--model", tiny_dir, "--corpus", "wiki", "--dtype", "fp8", "--out", "x"],
           "invalid choice")


def test_select_impossible_k_and_all_protected(capsys, run_json):
    expect(capsys, ["select", "--run", run_json, "--k", "3"], "larger than the 1 unprotected")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--protect", "0-3"], "All 4 blocks are protected")
    expect(capsys, ["select", "--run", run_json, "--k", "-1"], "k must be >= 0")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "vibes"], "Unknown criterion")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--protect", "x,y"], "0-based indices")


def test_bad_run_files(capsys, tmp_path):
    expect(capsys, ["select", "--run", str(tmp_path / "missing.json"), "--k", "1"], "not found")
    expect(capsys, ["select", "--run", write(tmp_path, "bad.json", "{not json"), "--k", "1"], "not an Entroscope run")


def test_nonfinite_activations_named_warning(capsys, tmp_path):
    m = tiny_model("llama", layers=3)
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")  # like an fp16 overflow: inf in the stream
    m.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 256, size=(2, 32)))
    code = main(["analyze", "--model", str(tmp_path / "m"), "--tokens", str(ids), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 0 and "warning: NonFiniteActivations" in err and "Traceback" not in err


def test_out_of_memory_is_explained(capsys, tmp_path, tiny_dir, monkeypatch):
    import analysis.run as run_mod

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    import analysis.measure.runcache as runcache

    monkeypatch.setattr(run_mod, "capture", boom)
    monkeypatch.setattr(runcache, "capture", boom)  # the CLI's default path (results cache on)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, 32), dtype=np.int64))
    err = expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(ids), "--out", str(tmp_path / "r.json")],
                 "Out of memory during the analysis pass")
    assert "smaller batch" in err and "bf16" in err


def test_unexpected_error_is_one_line(capsys, tmp_path, tiny_dir, monkeypatch):
    import analysis.run as run_mod

    import analysis.measure.runcache as runcache

    monkeypatch.setattr(run_mod, "capture", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(runcache, "capture", lambda *a, **k: 1 / 0)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, 32), dtype=np.int64))
    err = expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(ids), "--out", str(tmp_path / "r.json")],
                 "internal error in Entroscope (ZeroDivisionError")
    assert [l for l in err.splitlines() if l.startswith("error")] == [err.strip().splitlines()[-1]]


# ---- plans and saving --------------------------------------------------------------------------------
def test_plan_naming_missing_block(capsys, tmp_path, tiny_dir):
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "7", "--out", str(tmp_path / "o")], "0..3")
    plan = write(tmp_path, "plan.json", json.dumps({"drop_attn": [99], "drop_mlp": [], "drop_layers": []}))
    expect(capsys, ["eval", "--model", tiny_dir, "--plan", plan, "--text", write(tmp_path, "t.txt", "word " * 400),
                    "--out", str(tmp_path / "e.json")], "99")


def test_save_dir_exists_not_writable_or_escaping_root(capsys, tmp_path, tiny_dir):
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "notes.txt").write_text("mine")
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--out", str(tmp_path / "exists")],
           "already exists")
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--out", str(tmp_path / "exists"),
                    "--overwrite"], "Entroscope did not write")
    blocker = write(tmp_path, "a-file", "x")
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--out", blocker + "/sub/out"], "Cannot create")
    root = tmp_path / "root"
    root.mkdir()
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--root", str(root), "--out",
                    str(root / ".." / "escaped")], "outside the allowed folder")
    assert not (tmp_path / "escaped").exists() and (tmp_path / "exists" / "notes.txt").read_text() == "mine"


def test_no_network_attempted_offline(monkeypatch, tmp_path):
    """With offline mode set, loading a hub id or a hub dataset fails fast without opening a socket."""
    import socket

    from analysis.data import load_hub_dataset
    from analysis.errors import DataError, ModelLoadError
    from analysis.models.loading import load_model

    attempts = []

    def no_connect(self, *a, **k):
        attempts.append(a)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):
        load_model("some-org/some-model")
    with pytest.raises(DataError, match="offline"):
        load_hub_dataset("wikitext", "wikitext-2-raw-v1")
    assert attempts == []


def test_four_concurrent_sessions_prune_different_plans(tiny_dir):
    """Four threads (four app sessions) evaluate different plans on one shared model at the same time:
    each gets exactly its sequential result, and the shared model's weights are unchanged."""
    import threading

    from analysis.evaluate import EvalConfig, agreement, perplexity
    from analysis.models.loading import load_model, weights_hash
    from analysis.models.plan import Plan

    lm = load_model(tiny_dir, device="cpu")
    before = weights_hash(lm.model)
    stream = torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(0))
    cfg = EvalConfig(window=64)
    plans = [Plan(drop_layers=[2]), Plan(drop_attn=[1, 3]), Plan(drop_mlp=[0]), Plan(drop_attn=[2], drop_mlp=[1])]
    expected = [(perplexity(lm, stream, p, cfg)["nll_sum"], agreement(lm, p, stream, cfg)["kl"]) for p in plans]
    got, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def session(i):
        try:
            barrier.wait()
            for _ in range(3):
                got[i] = (perplexity(lm, stream, plans[i], cfg)["nll_sum"], agreement(lm, plans[i], stream, cfg)["kl"])
                assert got[i] == expected[i]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == expected
    assert weights_hash(lm.model) == before
