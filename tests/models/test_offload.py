"""Models dispatched across devices with accelerate (CPU + disk offload here): hooks and accumulators work."""
import numpy as np
import pytest

from analysis.models.loading import load_model
from analysis.run import AnalysisConfig, analyze
from analysis.testing import random_tokens, save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-offload"), layers=4)


def test_disk_offloaded_layers_give_identical_analysis(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_CACHE", str(tmp_path))
    ids = random_tokens(4, 24)
    ref = analyze(load_model(str(tiny_dir), device="cpu"), ids, AnalysisConfig(estimator="knn", k=5))
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.layers.3": "cpu",
                  "model.norm": "cpu", "lm_head": "cpu"}
    lm = load_model(str(tiny_dir), device_map=device_map)
    assert getattr(lm.model, "hf_device_map", {}).get("model.layers.1") == "disk"
    got = analyze(lm, ids, AnalysisConfig(estimator="knn", k=5))
    np.testing.assert_allclose(got.delta_h(), ref.delta_h(), rtol=1e-5, atol=1e-4)
    assert got.drop_order == ref.drop_order


def test_parse_max_memory():
    from analysis.errors import DataError
    from analysis.models.device import parse_max_memory

    assert parse_max_memory("0=10GiB, cuda:1=8GB,cpu=2.5GiB") == {0: "10GiB", 1: "8GB", "cpu": "2.5GiB"}
    assert parse_max_memory("cpu=123456") == {"cpu": 123456}
    for bad in ("", "cpu", "cpu=lots", "gpu=1GiB", "cpu=1XB"):
        with pytest.raises(DataError):
            parse_max_memory(bad)


def test_max_memory_forces_disk_offload_and_the_analysis_is_unchanged(tiny_dir, tmp_path, monkeypatch):
    """A CPU budget below the model's size: accelerate ('auto', implied) puts the rest on disk."""
    monkeypatch.setenv("ENTROSCOPE_CACHE", str(tmp_path))
    ids = random_tokens(4, 24)
    ref = analyze(load_model(str(tiny_dir), device="cpu"), ids, AnalysisConfig(estimator="bucket"))
    lm = load_model(str(tiny_dir), max_memory="cpu=300KB", offload_folder=str(tmp_path / "off"))
    dm = lm.model.hf_device_map
    assert "disk" in set(dm.values()), dm
    assert all(".layers" in f".{k}" for k, v in dm.items() if v == "disk")   # only decoder layers on disk
    from analysis.errors import EntroscopeError

    with pytest.raises(EntroscopeError, match="no room"):
        load_model(str(tiny_dir), max_memory="cpu=1KB", offload_folder=str(tmp_path / "off2"))
    got = analyze(lm, ids, AnalysisConfig(estimator="bucket"))
    np.testing.assert_allclose(got.delta_h(), ref.delta_h(), rtol=1e-5, atol=1e-4)
    placed = got.manifest["model"]["device_map"]          # the run records where the modules went
    assert placed["requested"] == "auto" and placed["max_memory"] == {"cpu": 300_000}
    assert placed["modules_per_device"]["disk"] == sum(v == "disk" for v in dm.values())
    assert "device_map" not in ref.manifest["model"]
    from analysis.evaluate import perplexity

    p_ref = perplexity(load_model(str(tiny_dir), device="cpu"), ids)["perplexity"]
    assert perplexity(lm, ids)["perplexity"] == pytest.approx(p_ref, rel=1e-5)
