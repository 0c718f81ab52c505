"""A hub id whose files are already in the hub cache gets the local folders' check of config.json against the weights'
headers, before any weight is loaded: transformers itself would fill the layers the weights lack with random values
and go on. Each load runs in a fresh process, so that the hub library reads this test's cache folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from analysis.models.integrity import hub_snapshot, weights_complete

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(root, layers_in_config: int | None = None):
    """A hub cache under ``root`` holding ``acme/tiny`` (3 layers), its config edited to ``layers_in_config``."""
    from analysis.testing import tiny_loaded

    repo = root / "models--acme--tiny"
    snap = repo / "snapshots" / COMMIT
    lm = tiny_loaded("llama", layers=3, hidden=32)
    lm.model.save_pretrained(snap)
    lm.tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    if layers_in_config is not None:
        cfg = json.loads((snap / "config.json").read_text())
        cfg["num_hidden_layers"] = layers_in_config
        (snap / "config.json").write_text(json.dumps(cfg))
    return snap


def _load(root, first_uncached: bool = False) -> subprocess.CompletedProcess:
    """``load_model('acme/tiny')`` offline from the cache at ``root``; ``first_uncached``: the first look in the
    cache finds nothing (as before a download), the second finds the files (as after it)."""
    code = ("from analysis.models.loading import load_model\n"
            "from analysis.errors import ModelLoadError\n"
            "import analysis.models.loading as L\n"
            + ("real, calls = L.hub_snapshot, []\n"
               "L.hub_snapshot = lambda spec: calls.append(spec) or (real(spec) if len(calls) > 1 else None)\n"
               if first_uncached else "")
            + "try:\n"
            "    print('layers', load_model('acme/tiny', device='cpu', dtype='fp32').num_layers)\n"
            "except ModelLoadError as exc:\n"
            "    print('refused:', exc.message)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_a_cached_hub_checkpoint_whose_config_disagrees_is_refused_before_loading(tmp_path):
    _cache(tmp_path, layers_in_config=5)
    out = _load(tmp_path)
    assert "refused: acme/tiny: config.json and the weight files disagree" in out.stdout, out.stdout + out.stderr
    assert "config.json says 5 layers" in out.stdout


def test_a_hub_checkpoint_downloaded_just_now_is_checked_after_the_download(tmp_path):
    _cache(tmp_path, layers_in_config=5)
    out = _load(tmp_path, first_uncached=True)
    assert "refused: acme/tiny: config.json and the weight files disagree" in out.stdout, out.stdout + out.stderr


def test_a_consistent_cached_hub_checkpoint_loads(tmp_path):
    _cache(tmp_path)
    out = _load(tmp_path)
    assert "layers 3" in out.stdout, out.stdout + out.stderr


def test_a_partly_cached_snapshot_is_not_checked_from(tmp_path, monkeypatch):
    """Weight files missing from the cache (a download cut short): nothing to check from, so no false refusal."""
    snap = _cache(tmp_path)
    assert weights_complete(snap)
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (snap / "model.safetensors.index.json").write_text(json.dumps(index))
    assert not weights_complete(snap)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, local_files_only: str(snap))
    assert hub_snapshot("acme/tiny") is None
    (snap / "model.safetensors.index.json").unlink()
    assert hub_snapshot("acme/tiny") == snap


def test_an_uncached_hub_id_has_no_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    def not_cached(repo_id, local_files_only):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    assert hub_snapshot("acme/tiny") is None


