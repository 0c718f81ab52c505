"""One pass, both sinks views: the primary view is unchanged, the other view equals a run in that mode,
and both travel through the run JSON (old files without views still load)."""
import json

import numpy as np
import pytest
import torch

from analysis.errors import DataError, SelectionError
from analysis.measure.capture import CaptureConfig, capture
from analysis.measure.sinks import detect_sinks
from analysis.run import AnalysisConfig, analyze
from analysis.score.result import AnalysisResult
from analysis.testing import random_tokens, tiny_loaded

SEQ, POS, FROM = 0, 5, 1     # injected massive activation: sequence 0, token 5, output of block 1 on


def _injected(arch="llama"):
    lm = tiny_loaded(arch, layers=4)

    def hook(m, a, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[SEQ, POS] *= 1000.0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    for i in range(FROM, 4):
        lm.adapter.layers[i].register_forward_hook(hook)
    return lm


EST = {"bucket": {}, "knn": {"k": 5}, "renyi": {}}


@pytest.mark.parametrize("mode", ["exclude", "keep", "first"])
def test_primary_view_is_bit_identical_with_and_without_the_other_view(mode):
    lm = _injected()
    ids = random_tokens(3, 24)
    one = capture(lm, ids, CaptureConfig(estimators=EST, batch_size=2, sinks=mode))
    both = capture(lm, ids, CaptureConfig(estimators=EST, batch_size=2, sinks=mode, alt_view=True))
    assert one.entropy_alt is None and both.alt_mode == {"exclude": "keep", "keep": "exclude", "first": "keep"}[mode]
    for e in EST:
        for k in ("boundary", "mid"):
            assert torch.equal(one.entropy[e][k], both.entropy[e][k])
    for f in ("cos_attn", "cos_mlp", "norm_boundary", "norm_mid"):
        assert torch.equal(getattr(one, f), getattr(both, f))


@pytest.mark.parametrize("mode", ["exclude", "keep"])
def test_other_view_equals_a_run_in_that_mode(mode):
    lm = _injected()
    ids = random_tokens(3, 24)
    both = capture(lm, ids, CaptureConfig(estimators=EST, batch_size=2, sinks=mode, alt_view=True))
    other = capture(lm, ids, CaptureConfig(estimators=EST, batch_size=2, sinks=both.alt_mode))
    for e in EST:
        for k in ("boundary", "mid"):
            assert torch.equal(both.entropy_alt[e][k], other.entropy[e][k])
    # and the views really differ where the sink is (the test can fail)
    assert (both.entropy["bucket"]["boundary"][SEQ, -1] - both.entropy_alt["bucket"]["boundary"][SEQ, -1]).abs() > 1


def test_massive_ratio_and_first_sequence_flags():
    lm = _injected()
    ids = random_tokens(3, 24)
    st = capture(lm, ids, CaptureConfig(estimators={"bucket": {}}, batch_size=2, state_tokens=ids.numel()))
    states = st.states["boundary"].view(3, 24, 5, -1)
    norms = states.norm(dim=-1)                                               # [N, T, L+1]
    want = norms.amax(1) / norms.median(1).values
    torch.testing.assert_close(st.massive["boundary"], want, rtol=1e-4, atol=1e-4)
    assert st.massive["boundary"][SEQ, -1] > 100 and st.massive["boundary"][1, -1] < 8
    flags = st.first_flags                                                    # [L+1, T]
    assert flags.shape == (5, 24)
    assert flags[:, POS].tolist() == [False, False, True, True, True] and int(flags.sum()) == 3
    torch.testing.assert_close(flags, detect_sinks(norms[0].T))


def test_views_round_trip_and_select_by_view(tmp_path):
    lm = _injected()
    ids = random_tokens(2, 40)
    r = analyze(lm, ids, AnalysisConfig(extra_estimators=("knn",), k=5, both_views=True))
    assert r.sink_mode == "exclude" and r.sink_views == ["exclude", "keep"]
    keep = analyze(lm, ids, AnalysisConfig(extra_estimators=("knn",), k=5, sinks="keep"))
    assert keep.views == {}
    for e in ("bucket", "knn"):
        np.testing.assert_array_equal(r.entropy(e, view="keep")["boundary"], keep.entropy(e)["boundary"])
        np.testing.assert_array_equal(r.delta_h("mlp", e, view="keep"), keep.delta_h("mlp", e))
        np.testing.assert_array_equal(r.entropy(e, view="exclude")["boundary"], r.entropy(e)["boundary"])
    p = tmp_path / "run.json"
    r.save(p)
    back = AnalysisResult.load(p)
    np.testing.assert_allclose(back.entropy("knn", view="keep")["boundary"], keep.entropy("knn")["boundary"])
    assert back.sinks["first_sequence"]["flags"][-1][POS] is True
    assert back.sinks["first_sequence"]["token_ids"] == ids[0].tolist()
    assert json.loads(p.read_text())["sinks_mode"] == "exclude"
    with pytest.raises(SelectionError, match="sinks first"):
        r.entropy("knn", view="first")


def test_old_run_without_views_loads_and_bad_views_are_refused(tmp_path):
    lm = tiny_loaded("llama", layers=3)
    r = analyze(lm, random_tokens(2, 24), AnalysisConfig())
    d = json.loads(json.dumps(r.to_dict()))
    for k in ("views", "massive", "sinks_mode"):
        d.pop(k)
    p = tmp_path / "old.json"
    p.write_text(json.dumps(d))
    old = AnalysisResult.load(p)
    assert old.views == {} and old.massive is None and old.sink_views == ["exclude"]
    d["views"] = {"keep": {"bucket": {"boundary": [[0.0] * 4], "mid": [[0.0] * 3]}}}     # 1 sequence, not 2
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match="views.keep.bucket"):
        AnalysisResult.load(p)
