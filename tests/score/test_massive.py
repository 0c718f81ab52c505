"""Massive activations vs entropy: Pearson r across depth with a bootstrap interval, and the token-level flags."""
import numpy as np
import pytest

from analysis.errors import SelectionError
from analysis.run import AnalysisConfig, analyze
from analysis.score.massive import correlation_table, first_sequence_flags, norm_entropy_correlation
from analysis.score.result import AnalysisResult
from analysis.testing import random_tokens, tiny_loaded


def _synthetic(noise: float = 0.0, seed: int = 0) -> AnalysisResult:
    rng = np.random.default_rng(seed)
    L, n = 6, 20
    ratio = np.ones((n, L + 1)) * 2.0
    ratio[:, 3:] = 200.0 * (1 + rng.random((n, 1)))                          # a sink appears at Z^3
    h = 10.0 - np.log(ratio) + noise * rng.standard_normal((n, L + 1))
    return AnalysisResult(num_layers=L, estimator="bucket", granularity="attention", protect="fixed",
                          per_seq={"bucket": {"boundary": h, "mid": h[:, 1:]}}, angular=None, norms={},
                          boundary=0, protected=[], sinks={"mode": "keep"},
                          massive={"boundary": ratio, "mid": ratio[:, 1:]})


def test_entropy_that_mirrors_the_log_norm_ratio_has_r_minus_one():
    c = norm_entropy_correlation(_synthetic(), n_boot=200)
    assert c["r"] == pytest.approx(-1.0) and c["lo"] == pytest.approx(-1.0) and c["hi"] == pytest.approx(-1.0)
    noisy = norm_entropy_correlation(_synthetic(noise=2.0), n_boot=200)
    assert -1 < noisy["lo"] <= noisy["r"] <= noisy["hi"] < 1 and noisy["hi"] > noisy["lo"]
    ch = norm_entropy_correlation(_synthetic(), form="changes", n_boot=50)
    assert ch["r"] == pytest.approx(-1.0)
    with pytest.raises(SelectionError, match="form"):
        norm_entropy_correlation(_synthetic(), form="slope")


def test_old_runs_without_norms_say_so():
    r = _synthetic()
    r.massive = None
    with pytest.raises(SelectionError, match="massive-activation norms"):
        norm_entropy_correlation(r)
    assert first_sequence_flags(r) is None


def test_injected_sink_lowers_matrix_entropy_with_sinks_kept():
    lm = tiny_loaded("llama", layers=4)

    def hook(m, a, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, 0] *= 300.0                                                        # every sequence: a massive token 0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    lm.adapter.layers[1].register_forward_hook(hook)
    r = analyze(lm, random_tokens(4, 32), AnalysisConfig(estimator="matrix", sinks="keep"))
    table = {(c["estimator"], c["view"]): c for c in correlation_table(r, n_boot=100)}
    kept = table[("matrix", "keep")]
    assert kept["r"] < -0.8 and kept["hi"] < 0
    flags, ids = first_sequence_flags(r)
    assert flags.shape == (5, 32) and flags[2:, 0].all() and not flags[:2].any() and len(ids) == 32
