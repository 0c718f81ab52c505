"""The story sentences describe what the curve does: a cliff as a cliff, a two-stage curve as two stages."""
import numpy as np

from analysis.score.result import AnalysisResult
from app_support.story import cliff, shape_sentence, sink_facts, story


def _run(curve, massive=None, detected=None, mode="keep"):
    c = np.asarray(curve, dtype=float)
    L = len(c) - 1
    h = np.tile(c, (4, 1))
    b = {"boundary": 0, "detected": False, "p_detected": 0.1} if detected is None else \
        {"boundary": detected, "detected": True, "lo": detected, "hi": detected}
    return AnalysisResult(num_layers=L, estimator="bucket", granularity="attention", protect="fixed",
                          per_seq={"bucket": {"boundary": h, "mid": h[:, 1:]}}, angular=None, norms={},
                          boundary=b["boundary"], protected=[], boundary_info=b,
                          sinks={"mode": mode, "n_sequences": 4,
                                 "counts": {"boundary": [0] * 4 + [4] * (L - 3), "mid": [0] * L},
                                 "counts_pos0": {"boundary": [0] * 4 + [4] * (L - 3), "mid": [0] * L}},
                          massive=None if massive is None else {"boundary": np.tile(massive, (4, 1)),
                                                                "mid": np.tile(massive[1:], (4, 1))},
                          manifest={"model": {"name": "tiny"}})


def test_a_flat_curve_with_one_cliff_is_called_a_cliff_at_the_sink():
    curve = [10, 10.1, 10.2, 10.1, 5.0, 5.2, 5.4, 5.6, 5.9]      # cliff Z^3 → Z^4 = block 3
    ratio = np.array([1.5, 1.5, 1.6, 1.6, 150, 140, 120, 100, 90.0])
    r = _run(curve, ratio, detected=4)
    text = shape_sentence(r)
    assert "one cliff, not two stages" in text and "block 3" in text and "falls by 5.1 nats" in text
    assert "massive-activation token appears" in text and "150×" in text
    assert "stays nearly flat over blocks 0…2" in text and "falls through blocks" not in text
    assert cliff(curve)["block"] == 3
    f = sink_facts(r)
    assert f["pos0_onset"] == 4 and f["peak_at"] == 4
    assert "from $Z^{4}$ (the output of block 3)" in story(r)


def test_a_gradual_two_stage_curve_is_two_stages_and_a_rising_curve_has_no_stage():
    two = _run([10, 9, 8, 7, 6, 7, 8, 9, 10], detected=4)
    assert cliff([10, 9, 8, 7, 6, 7, 8, 9, 10]) is None
    assert "falls through blocks 0…3 (compression) and rises from block 4 to 7" in shape_sentence(two)
    up = _run([1, 2, 3, 4, 5, 6, 7, 8, 9.5])
    t = shape_sentence(up)
    assert "no compression stage detected" in t and "the curve rises" in t
    assert "sinks kept (reference)" in story(up)
