"""Class 5 of issue 25: caches you can trust. The model cache records a digest when an entry is written and
verifies it when read (a corrupted or truncated entry is rebuilt, with the reason); interrupted conversions
and cache writes leave nothing that is never cleaned; a failing optional cache write never loses a finished
result (a full disk is named); a checkpoint whose config.json does not match its weights is refused before
any weight is allocated. The catalogue counts in docs/reliability.md ("Class 5") are the cases here."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import analysis.models.embedded as embedded
import analysis.models.loading as loading
from analysis.errors import ModelLoadError
from analysis.models.integrity import (SAMPLE_BYTES, SOURCE_FILE, digest_problem, entry_digest, sweep_temporaries)
from analysis.testing import random_tokens, save_tiny_checkpoint, tiny_loaded, tiny_model, tiny_tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ENTROSCOPE_RUNS", str(tmp_path / "cache" / "runs"))
    return tmp_path / "cache"


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    """A stand-in GGUF whose "dequantisation" returns the tiny model: the real convert_gguf code path runs."""
    import transformers

    p = tmp_path / "toy.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 64)
    calls = []

    def fake_model(*a, **k):
        calls.append(1)
        return tiny_model("llama", layers=2)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    return SimpleNamespace(path=p, calls=calls)


def _entry(cache):
    (e,) = [d for d in (cache / "models").iterdir() if d.is_dir()]
    return e


def test_conversion_records_a_digest_that_the_next_load_checks(cache, gguf):
    d, fp, from_cache = embedded.gguf_checkpoint(str(gguf.path), embedded=False)
    assert not from_cache and len(gguf.calls) == 1
    rec = json.loads((d / SOURCE_FILE).read_text())["digest"]
    assert {"config.json", "model.safetensors"} <= set(rec["files"])
    assert all("sha256" in v and "sample" in v for v in rec["files"].values())     # full hash at write time
    assert digest_problem(d, rec) is None
    assert embedded.gguf_checkpoint(str(gguf.path), embedded=False)[2] and len(gguf.calls) == 1   # from the cache
    assert not [p for p in (cache / "models").iterdir() if ".tmp" in p.name]


def _flip(f, offset):
    data = bytearray(f.read_bytes())
    data[offset] ^= 0xFF
    f.write_bytes(bytes(data))


DAMAGE = {
    "bit flip inside the weights (same size)": lambda e: _flip(e / "model.safetensors", -100),
    "truncated weights": lambda e: (e / "model.safetensors").write_bytes((e / "model.safetensors").read_bytes()[:-64]),
    "tokenizer edited": lambda e: (e / "tokenizer_config.json").write_text("{}"),
    "config value changed": lambda e: (e / "config.json").write_text(
        (e / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 0.5')),
    "record garbled": lambda e: (e / SOURCE_FILE).write_text('{"digest": '),
    "record has duplicate keys": lambda e: (e / SOURCE_FILE).write_text('{"gguf": "a", "gguf": "b"}'),
    "weights missing": lambda e: (e / "model.safetensors").unlink(),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_corrupted_entry_is_rebuilt_with_the_reason(cache, gguf, how):
    d, _, _ = embedded.gguf_checkpoint(str(gguf.path), embedded=False)
    DAMAGE[how](d)
    said = []
    d2, _, from_cache = embedded.gguf_checkpoint(str(gguf.path), embedded=False, progress=lambda f, m: said.append(m))
    assert d2 == d and not from_cache and len(gguf.calls) == 2, how
    assert any("was unusable" in m and "rebuilding" in m for m in said)
    assert embedded.REBUILT[str(d)]
    assert digest_problem(d, json.loads((d / SOURCE_FILE).read_text())["digest"]) is None   # the new entry is whole


def test_an_entry_written_before_digests_gets_one_and_is_then_checked(cache, gguf):
    d, _, _ = embedded.gguf_checkpoint(str(gguf.path), embedded=False)
    (d / SOURCE_FILE).write_text(json.dumps({"gguf": "old", "sha256": "x"}))          # an older version's entry
    assert embedded.gguf_checkpoint(str(gguf.path), embedded=False)[2]                     # accepted (headers fine) …
    assert "digest" in json.loads((d / SOURCE_FILE).read_text())                      # … and recorded now
    _flip(d / "model.safetensors", -100)
    assert not embedded.gguf_checkpoint(str(gguf.path), embedded=False)[2]                 # then checked


def test_sampled_digest_cost_is_bounded_and_full_mode_catches_the_rest(tmp_path, monkeypatch):
    e = tmp_path / "entry"
    e.mkdir()
    big = e / "model.safetensors"
    size = 96 << 20                                        # 64 sampled MiB leave gaps in 96 MiB
    with open(big, "wb") as f:
        f.truncate(size)
    rec = entry_digest(e, full=True)
    # a flip inside a sampled block (the first MiB) is caught by the sampled check …
    _flip(big, 10)
    assert "corrupted" in digest_problem(e, rec, full=False)
    _flip(big, 10)
    # … one between two sampled blocks only by the full check (ENTROSCOPE_VERIFY_CACHE=full)
    _flip(big, SAMPLE_BYTES + ((size - SAMPLE_BYTES) // 63 - SAMPLE_BYTES) // 2)
    assert digest_problem(e, rec, full=False) is None
    monkeypatch.setenv("ENTROSCOPE_VERIFY_CACHE", "full")
    assert "corrupted" in digest_problem(e, rec)


# ---- interrupted conversions leave nothing that is never cleaned ---------------------------------------------------
@pytest.mark.parametrize("exc,pattern", [
    (KeyboardInterrupt(), None),
    (OSError(errno.ENOSPC, "No space left on device"), "Not enough disk space to cache the converted model"),
    (OSError(errno.EROFS, "Read-only file system"), "is not writable"),
])
def test_an_interrupted_or_failed_conversion_leaves_no_temporary(cache, gguf, monkeypatch, exc, pattern):
    from transformers import PreTrainedModel

    def boom(self, *a, **k):
        os.makedirs(a[0], exist_ok=True)
        (a[0] / "half-written.safetensors").write_bytes(b"x" * 100)
        raise exc

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(type(exc) if pattern is None else ModelLoadError, match=pattern):
        embedded.gguf_checkpoint(str(gguf.path), embedded=False)
    assert not list((cache / "models").iterdir())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_killed_processes_are_swept_and_live_ones_kept(cache, gguf):
    dead = _dead_pid()
    models = cache / "models"
    models.mkdir(parents=True)
    (models / f"abc-tf5.tmp{dead}").mkdir()
    (models / f"abc-tf5.tmp{dead}" / "model.safetensors").write_bytes(b"x" * 1000)
    (cache / "gguf").mkdir()
    (cache / "gguf" / f"qwen.{dead}.tmp").write_bytes(b"x")
    (cache / f"sha256-index.{dead}.tmp").write_text("{")
    live = models / f"other-tf5.tmp{os.getpid()}"
    live.mkdir()
    old = models / f"old-tf5.tmp{os.getpid()}"                  # a reused pid: removed by age
    old.mkdir()
    os.utime(old, (0, 0))
    foreign = models / f"notes.tmp{dead}"                        # not a name Entroscope writes: kept
    foreign.write_text("mine")
    embedded.gguf_checkpoint(str(gguf.path), embedded=False)
    names = {p.name for p in models.iterdir()} | {p.name for p in (cache / "gguf").iterdir()} | \
        {p.name for p in cache.iterdir()}
    assert not {f"abc-tf5.tmp{dead}", f"qwen.{dead}.tmp", f"sha256-index.{dead}.tmp", old.name} & names
    assert live.name in names and foreign.name in names
    assert sweep_temporaries(cache / "does-not-exist") == []


def test_results_cache_temporaries_of_killed_passes_are_swept(cache):
    from analysis.run import AnalysisConfig, analyze

    dead = _dead_pid()
    runs = cache / "runs"
    runs.mkdir(parents=True)
    ours, users = runs / f"{'a' * 32}.{dead}.tmp", runs / f"draft.{dead}.tmp"
    ours.write_bytes(b"half")
    users.write_bytes(b"mine")
    analyze(tiny_loaded("llama", layers=2), random_tokens(2, 8), AnalysisConfig(batch_size=2), cache=True)
    assert not ours.exists() and users.exists()


# ---- optional cache writes never lose a finished result ------------------------------------------------------------
@pytest.mark.parametrize("exc,why", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: No space left on device"),
     "the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied"), "the folder is not writable"),
])
def test_a_failing_results_cache_write_never_loses_the_result(cache, monkeypatch, exc, why):
    import analysis.measure.runcache as runcache
    from analysis.run import AnalysisConfig, analyze

    def full(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise exc

    monkeypatch.setattr(runcache.torch, "save", full)
    lm = tiny_loaded("llama", layers=2)
    r = analyze(lm, random_tokens(4, 16), AnalysisConfig(batch_size=2), cache=True)
    assert r.n_sequences == 4 and r.manifest["completed"]
    (w,) = [w for w in r.warnings if w.startswith("CacheWriteFailed")]
    assert why in w and "the result is complete" in w
    runs = cache / "runs"
    assert not [p for p in runs.iterdir() if p.suffix == ".tmp"] if runs.exists() else True


def test_analyze_writes_the_users_output_even_when_the_cache_cannot_be_written(cache, tmp_path, monkeypatch, capsys):
    import numpy as np

    import analysis.measure.runcache as runcache
    from analysis.cli.main import main

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runcache.torch, "save", full)
    ck = save_tiny_checkpoint(tmp_path / "ck", layers=2)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 256, size=(4, 16)))
    out = tmp_path / "run.json"
    assert main(["analyze", "--model", str(ck), "--tokens", str(ids), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_layers"] == 2
    assert "warning: CacheWriteFailed" in capsys.readouterr().err       # the cache's own failure, said on stderr


def _analyze_argv(tmp_path):
    import numpy as np

    ck = save_tiny_checkpoint(tmp_path / "ck", layers=2)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 256, size=(4, 16)))
    out = tmp_path / "run.json"
    return ["analyze", "--model", str(ck), "--tokens", str(ids), "--out", str(out)], out


def _unwritable(d: str = "/sys/kernel") -> bool:
    try:
        with open(os.path.join(d, "entroscope-probe.1.tmp"), "wb"):
            pass
    except OSError:
        return True
    os.unlink(os.path.join(d, "entroscope-probe.1.tmp"))
    return False


@pytest.mark.skipif(not os.path.isdir("/sys/kernel") or not _unwritable(),
                    reason="needs a folder that not even root can write (/sys/kernel)")
def test_users_output_is_written_before_the_results_cache_and_a_read_only_cache_loses_nothing(
        tmp_path, monkeypatch, capsys):
    """A real read-only cache folder (sysfs refuses root too): --out is written first, then the cache's last write
    fails and is said; the finished result is on disk."""
    import analysis.measure.runcache as runcache
    from analysis.cli.main import main

    argv, out = _analyze_argv(tmp_path)
    monkeypatch.setenv("ENTROSCOPE_RUNS", "/sys/kernel")
    seen = []
    real = runcache.save_stats

    def spy(path, stats):
        seen.append((out.exists(), stats.completed))
        return real(path, stats)

    monkeypatch.setattr(runcache, "save_stats", spy)
    assert main(argv) == 0
    assert seen and seen[-1] == (True, True)             # the final cache write came after --out
    assert json.loads(out.read_text())["num_layers"] == 2
    err = capsys.readouterr().err
    assert "warning: CacheWriteFailed: the results cache could not be saved at /sys/kernel" in err


def test_ctrl_c_during_the_results_cache_write_keeps_the_finished_output(cache, tmp_path, monkeypatch, capsys):
    """A slow cache (network disk) interrupted with Ctrl-C: the run was already written to --out."""
    import analysis.measure.runcache as runcache
    from analysis.cli.main import main

    argv, out = _analyze_argv(tmp_path)

    def interrupted(path, stats):
        if stats.completed:
            raise KeyboardInterrupt

    monkeypatch.setattr(runcache, "save_stats", interrupted)
    assert main(argv) == 130
    r = json.loads(out.read_text())
    assert r["num_layers"] == 2 and r["manifest"]["completed"]


# ---- config.json against the weights: refused before any weight is allocated ------------------------------------------
def _refused_before_allocation(d, edit, pattern: str, monkeypatch) -> None:
    """Edit ``d``'s config.json with ``edit``; loading must be refused, naming ``pattern``, before any weights load."""
    from transformers import AutoModelForCausalLM

    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))

    def allocate(*a, **k):
        raise AssertionError("weights were allocated before the check")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", allocate)
    with pytest.raises(ModelLoadError, match=r"config.json and the weight files disagree") as e:
        loading.load_model(str(d), device="cpu")
    assert pattern in str(e.value) and "refused before loading any weights" in str(e.value)


@pytest.mark.parametrize("edit,pattern", [
    (lambda c: c.update(num_hidden_layers=6), "missing (model.layers.2."),
    (lambda c: c.update(num_hidden_layers=1), "unexpected (model.layers.1."),
    (lambda c: c.update(intermediate_size=96), "with the wrong shape (model.layers.0.mlp.down_proj.weight"),
    (lambda c: c.update(hidden_size=128, head_dim=32), "with the wrong shape"),
    (lambda c: c.update(vocab_size=512), "model.embed_tokens.weight (260, 64) vs (512, 64)"),
])
def test_config_that_contradicts_the_weights_is_refused_before_allocation(tmp_path, monkeypatch, edit, pattern):
    d = save_tiny_checkpoint(tmp_path / "ck", layers=2)
    _refused_before_allocation(d, edit, pattern, monkeypatch)


def test_a_matching_checkpoint_still_loads(tmp_path):
    d = save_tiny_checkpoint(tmp_path / "ck", layers=2)
    lm = loading.load_model(str(d), device="cpu")
    assert lm.num_layers == 2 and torch.isfinite(next(lm.model.parameters())).all()


def _bin_checkpoint(path, layers: int = 2, shards: bool = False):
    """A tiny checkpoint in the hub's PyTorch style: ``pytorch_model.bin`` (or two shards and their index)."""
    from safetensors.torch import load_file

    d = save_tiny_checkpoint(path, layers=layers)
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    if not shards:
        torch.save(sd, d / "pytorch_model.bin")
        return d
    keys = sorted(sd)
    parts = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
             "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, ks in parts.items():
        torch.save({k: sd[k] for k in ks}, d / name)
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}))
    return d


@pytest.mark.parametrize("shards,edit,pattern", [
    (False, lambda c: c.update(num_hidden_layers=6), "missing (model.layers.2."),
    (False, lambda c: c.update(intermediate_size=96), "with the wrong shape (model.layers.0.mlp.down_proj.weight"),
    (True, lambda c: c.update(vocab_size=512), "model.embed_tokens.weight (260, 64) vs (512, 64)"),
])
def test_bin_checkpoint_that_contradicts_its_config_is_refused_before_allocation(tmp_path, monkeypatch, shards, edit,
                                                                                  pattern):
    """Hub-style ``.bin`` weights get the safetensors pre-check too: shapes read from the mapped file."""
    d = _bin_checkpoint(tmp_path / "ck", shards=shards)
    _refused_before_allocation(d, edit, pattern, monkeypatch)


def test_bin_checkpoint_that_is_not_a_torch_archive_is_refused_and_a_matching_one_loads(tmp_path):
    import zipfile

    d = _bin_checkpoint(tmp_path / "ok", shards=True)
    lm = loading.load_model(str(d), device="cpu")
    assert lm.num_layers == 2 and torch.isfinite(next(lm.model.parameters())).all()
    bad = _bin_checkpoint(tmp_path / "bad")
    with zipfile.ZipFile(bad / "pytorch_model.bin", "w") as z:      # a zip, but not a torch archive (truncated save)
        z.writestr("archive/version", "3")
    with pytest.raises(ModelLoadError, match="is not a readable PyTorch weight file"):
        loading.load_model(str(bad), device="cpu")
