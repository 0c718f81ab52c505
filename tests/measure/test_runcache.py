"""Interrupted analyses resume where they stopped; finished ones are never recomputed."""
import numpy as np
import pytest

from analysis.run import AnalysisConfig, analyze
from analysis.testing import random_tokens, tiny_loaded


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("ENTROSCOPE_RUNS", str(tmp_path / "runs"))
    return tmp_path


def test_stopped_run_resumes_and_equals_uninterrupted(cache_dir):
    lm = tiny_loaded("llama", layers=3)
    ids = random_tokens(8, 24)
    cfg = AnalysisConfig(batch_size=2, state_tokens=32)
    full = analyze(lm, ids, cfg)
    polls = {"n": 0}

    def stop_after_two():
        polls["n"] += 1
        return polls["n"] > 2

    part = analyze(lm, ids, cfg, should_stop=stop_after_two, cache=True)
    assert part.n_sequences == 4 and not part.manifest["completed"]
    assert any("Stopped early" in w for w in part.warnings)
    calls = []
    resumed = analyze(lm, ids, cfg, cache=True, progress=lambda f, m: calls.append(m))
    assert resumed.n_sequences == 8 and resumed.manifest["completed"]
    assert calls[0].startswith("analysed 6/8")  # started after the 4 finished rows
    np.testing.assert_allclose(resumed.delta_h(), full.delta_h(), rtol=1e-5)
    assert resumed.drop_order == full.drop_order


def test_finished_run_is_loaded_not_recomputed(cache_dir):
    lm = tiny_loaded("llama", layers=2)
    ids = random_tokens(4, 16)
    first = analyze(lm, ids, AnalysisConfig(), cache=True)
    msgs = []
    again = analyze(lm, ids, AnalysisConfig(), cache=True, progress=lambda f, m: msgs.append(m))
    assert msgs == ["loaded finished run from the results cache (4 sequences)"]
    np.testing.assert_array_equal(again.delta_h(), first.delta_h())


def test_different_tokens_or_config_get_different_entries(cache_dir):
    lm = tiny_loaded("llama", layers=2)
    analyze(lm, random_tokens(4, 16), AnalysisConfig(), cache=True)
    analyze(lm, random_tokens(4, 16, seed=1), AnalysisConfig(), cache=True)
    analyze(lm, random_tokens(4, 16), AnalysisConfig(estimator="renyi"), cache=True)
    assert len(list((cache_dir / "runs").glob("*.pt"))) == 3
