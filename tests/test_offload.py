"""Models dispatched across devices with accelerate (CPU + disk offload here): hooks and accumulators work."""
import numpy as np
import pytest

from analysis.models import load_model
from analysis.run import AnalysisConfig, analyze
from analysis.testing import random_tokens, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-offload")
    tiny_model("llama", layers=4).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


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
