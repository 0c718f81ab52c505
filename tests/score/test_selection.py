"""Boundary detection, protection, ranking and the criterion registry."""
import json

import numpy as np
import pytest

from analysis.score.criteria import CRITERIA, bootstrap, get_criterion, select
from analysis.errors import SelectionError
from analysis.run import AnalysisConfig, analyze
from analysis.score.result import AnalysisResult
from analysis.score.selection import (best_window, decode_rank_string, detect_boundary, protected_blocks, rank_blocks,
                                rank_string, topk_overlap)
from analysis.testing import random_tokens, tiny_loaded


def test_boundary_is_argmin_of_first_half():
    curve = [10, 8, 7, 7.5, 9, 12, 14, 6]  # L = 7; the late dip (6) is not in the first half
    assert detect_boundary(curve) == 2


def test_boundary_zero_when_entropy_rises_from_start():
    assert detect_boundary([1, 2, 3, 4, 5]) == 0


def test_protection_modes():
    assert protected_blocks(30, "fixed") == [0, 1, 29]
    assert protected_blocks(30, "auto", boundary=3) == [0, 1, 2, 29]
    assert protected_blocks(30, "none") == []
    assert protected_blocks(30, "none", extra=[5]) == [5]
    with pytest.raises(SelectionError, match="out of range"):
        protected_blocks(30, "none", extra=[30])


def test_rank_ascending_ties_to_lower_index_and_protected_excluded():
    scores = [0.5, 0.1, 0.1, -0.2, 0.3, 0.0]
    assert rank_blocks(scores, "low", protected=[0, 1, 5]) == [3, 2, 4]
    assert rank_blocks(scores, "high") == [0, 4, 1, 2, 5, 3]


def test_negative_delta_dropped_first():
    assert rank_blocks([0.2, -1.0, 0.1], "low")[0] == 1


def test_rank_string_round_trip_matches_reference_semantics():
    order = [19, 20, 25, 29, 22, 23, 26, 28, 18, 24, 27, 30]
    s = rank_string(order, 32)
    ranks = s.split("_")
    assert ranks[19] == "0" and ranks[20] == "1"
    assert decode_rank_string(s, 4) == [19, 20, 25, 29]
    assert decode_rank_string(s, 8) == [19, 20, 22, 23, 25, 26, 28, 29]


def test_best_window_skips_protected():
    d = np.full((6, 6), 1.0)
    d[0, 2] = 0.01  # best, but contains protected block 0
    d[2, 4] = 0.2
    assert best_window(d, 2, protected=[0]) == (2, 0.2)


def test_topk_overlap():
    assert topk_overlap([1, 2, 3], [3, 2, 9], 2) == 0.5


@pytest.fixture(scope="module")
def run():
    lm = tiny_loaded("llama", layers=8)
    return analyze(lm, random_tokens(6, 40), AnalysisConfig(estimator="knn", k=5, extra_estimators=("bucket", "matrix", "logit-lens")))


def test_entrodrop_drop_order_is_ascending_delta_h(run):
    dh = run.delta_h()
    order = run.drop_order
    assert set(order).isdisjoint(run.protected) and len(order) == 8 - len(run.protected)
    assert all(dh[a] <= dh[b] for a, b in zip(order, order[1:]))


def test_select_k_and_errors(run):
    sel = select(run, "entrodrop", 3)
    assert sel.blocks == sorted(run.drop_order[:3])
    with pytest.raises(SelectionError, match="larger than the 5 unprotected"):
        select(run, "entrodrop", 6)
    with pytest.raises(SelectionError, match="All 8 blocks are protected"):
        select(run, "entrodrop", 1, protected=list(range(8)))
    with pytest.raises(SelectionError, match="Unknown criterion"):
        select(run, "nope", 1)
    with pytest.raises(SelectionError, match="does not score attention"):
        select(run, "angular", 2, granularity="attention")


def test_every_criterion_selects(run):
    for name, c in CRITERIA.items():
        if name in ("mi-prun", "delta-ppl"):
            continue  # need extra data (tested with MI-PRUN)
        g = c.granularities[0]
        sel = select(run, name, 2, granularity=g)
        assert len(sel.blocks) == 2 and not set(sel.blocks) & set(run.protected)
        if c.needs_window:
            assert sel.blocks[1] == sel.blocks[0] + 1


def test_cosine_drops_most_similar_first(run):
    scores = run.seq_cos("attention").mean(0)
    order = select(run, "cosine", 1).order
    assert scores[order[0]] == max(scores[i] for i in order)


def test_json_round_trip_preserves_scores(run, tmp_path):
    p = tmp_path / "run.json"
    run.save(p)
    d = json.loads(p.read_text())
    for key in ("num_layers", "entropy", "delta_h", "boundary", "protected", "drop_order", "baselines", "manifest"):
        assert key in d
    assert len(d["delta_h"]) == 8 and d["index_base"] == 0
    back = AnalysisResult.load(p)
    np.testing.assert_allclose(back.delta_h(), run.delta_h(), rtol=1e-6)
    assert back.drop_order == run.drop_order
    assert select(back, "cosine", 2).blocks == select(run, "cosine", 2).blocks


def test_bootstrap_bands_bracket_the_mean(run):
    b = bootstrap(run, "entrodrop", n_boot=50, k=2)
    assert np.all(b["lo"] <= b["mean"] + 1e-9) and np.all(b["mean"] <= b["hi"] + 1e-9)
    assert abs(b["top_k_frequency"].sum() - 2) < 1e-9


def test_registry_semantics_declared():
    assert get_criterion("entrodrop").redundant == "low"
    assert get_criterion("cosine").redundant == "high"
    assert get_criterion("angular").needs_window
    assert get_criterion("random").stochastic


def test_auto_protection_uses_detected_boundary():
    lm = tiny_loaded("llama", layers=6)
    r = analyze(lm, random_tokens(4, 32), AnalysisConfig(protect="auto"))
    assert r.protected == sorted(set(range(r.boundary)) | {5})
