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


# ---- the default-ranking sentence is built from the evidence table, never hard-coded ------------------------

def _fake_rec(model: str, knn: float, bucket: float, cos: float, k: int = 8) -> dict:
    """A ``recommend`` result as far as :func:`analysis.recommend.evidence.evidence_entry` reads it."""
    def row(label, d, standing="worse than random"):
        return {"label": label, "k": k, "heal": "none", "dppl": d, "lo": d - 10.0, "hi": d + 10.0, "standing": standing}

    return {"model": model, "granularity": "attention",
            "recommendations": {k: {"label": "cosine", "heal": "none", "dppl": cos}},
            "rows": [row("entrodrop[knn]", knn), row("entrodrop[bucket]", bucket),
                     row("cosine", cos, "better than random")],
            "sentence": f"cosine, k = {k}: {cos:+.0f} %", "judging": {"domains": ["news"], "tokens": 4096, "windows": 16},
            "calibration": {"windows": [32, 256]}}


def test_ranking_sentence_follows_the_evidence_table(tmp_path):
    from analysis.recommend.evidence import load_evidence, write_evidence
    from app_support.story import ranking_estimator, ranking_why

    path = tmp_path / "evidence.json"
    write_evidence([_fake_rec("smollm2", 123.4, 456.7, 21.0), _fake_rec("gemma3-270m", 300.0, 250.0, 33.0)],
                   "a fake table", path)
    ev = load_evidence(path)
    text = ranking_why(ev)
    assert "+123 % [113, 133]" in text and "+21 % [11, 31]" in text       # numbers from the table …
    assert "entrodrop[bucket] +250 %" in text and "gemma3-270m, k = 8" in text
    assert "417" not in text and "1458" not in text                       # … none of the old hard-coded ones
    assert "`cosine` most often" in text
    assert ranking_estimator(ev) == "knn"                                 # one win each: a tie goes to KNN
    write_evidence([_fake_rec("smollm2", 500.0, 90.0, 21.0)], "regenerated", path)   # regenerated tonight …
    ev2 = load_evidence(path)
    assert ranking_estimator(ev2) == "bucket"                             # … the default and the sentence follow
    assert "EntroDrop ranks blocks with the BUCKET estimator" in ranking_why(ev2)
    assert "+90 % [80, 100]" in ranking_why(ev2)


def test_ranking_sentence_without_per_model_evidence_says_so():
    from app_support.story import ranking_estimator, ranking_why

    ev = {"default": {"criterion": "cosine", "model": "smollm2", "why": "lowest ΔPPL in docs/models.md"}, "models": {}}
    assert ranking_estimator(ev) == "knn"
    text = ranking_why(ev)
    assert "no per-model bake-off yet" in text and "`cosine` (lowest ΔPPL in docs/models.md)" in text
    assert "%" not in text                                                # no number the table does not hold
