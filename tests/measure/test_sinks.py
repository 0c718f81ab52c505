"""Sinks: detection rule, masked estimators, capture modes on a tiny model with an injected massive activation,
the boundary rule and its bootstrap interval, and old run files."""
import json

import numpy as np
import pytest
import torch

from analysis.measure.boundary import boundary_interval, describe, robust_boundary
from analysis.measure.capture import CaptureConfig, capture
from analysis.errors import SelectionError
from analysis.measure.estimators import entropy_bucket, entropy_knn, entropy_renyi, knn_radii, mean_cosine, rms_norm
from analysis.score.result import AnalysisResult
from analysis.run import AnalysisConfig, analyze
from analysis.measure.sinks import (detect_sinks, entropy_bucket_masked, entropy_bucket_robust, entropy_knn_masked,
                            entropy_renyi_masked, knn_radii_masked)
from analysis.testing import random_tokens, tiny_loaded

SINK_SEQ, SINK_POS, FROM_LAYER = 0, 5, 1   # the injected massive activation: sequence 0, token 5, from block 1 on


def test_rule_flags_outliers_anywhere_not_just_position_0():
    norms = torch.ones(3, 40) + 0.1 * torch.rand(3, 40)
    norms[0, 7] = 30.0            # a sink in the middle of the sequence
    norms[1, 0] = 5.0             # a large-ish first token below the ratio: not a sink
    norms[2, :10] = 50.0          # too many "outliers": only the 5 % largest (2 of 40) may be flagged
    f = detect_sinks(norms, ratio=8.0, max_frac=0.05)
    assert f[0].nonzero().flatten().tolist() == [7]
    assert not f[1].any()
    assert int(f[2].sum()) == 2 and f[2, :10].sum() == 2


def _masked_case():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 16, generator=g)
    keep = torch.ones(3, 40, dtype=torch.bool)
    x[0, 3] *= 1000.0
    x[1, 0] += 400.0
    x[1, 9] -= 300.0
    keep[0, 3] = keep[1, 0] = keep[1, 9] = False
    return x, keep


@pytest.mark.parametrize("masked, plain", [
    (entropy_bucket_masked, entropy_bucket),
    (lambda x, k: entropy_knn_masked(x, k, k=5), lambda x: entropy_knn(x, k=5)),
    (lambda x, k: entropy_knn_masked(x, k, k=5, normalize=True), lambda x: entropy_knn(x, k=5, normalize=True)),
    (entropy_renyi_masked, entropy_renyi),
])
def test_masked_estimators_equal_the_estimator_on_the_kept_tokens(masked, plain):
    x, keep = _masked_case()
    got = masked(x, keep)
    want = torch.stack([plain(x[i:i + 1, keep[i]])[0] for i in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # and a massive token really changed the unmasked value (so the test can fail)
    assert (plain(x) - want).abs().max() > 1e-3


def test_masked_token_is_never_a_neighbour():
    x, keep = _masked_case()
    x[0, 3] = x[0, 4] + 1e-6           # a masked duplicate right next to token 4
    r = knn_radii_masked(x, keep, k=1)
    ref = knn_radii(x[0:1, keep[0]], k=1)[0]
    torch.testing.assert_close(r[0, keep[0]], ref, rtol=1e-5, atol=1e-5)


def test_robust_bucket_ignores_one_outlier_but_reference_bucket_does_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200, 8, generator=g)
    y = x.clone()
    y[0, 0] *= 500.0
    assert abs(entropy_bucket(y) - entropy_bucket(x)).item() > 5.0         # min–max ranges blown up
    assert abs(entropy_bucket_robust(y) - entropy_bucket_robust(x)).item() < 0.5


def _injected_model(arch="llama"):
    lm = tiny_loaded(arch, layers=4)

    def hook(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[SINK_SEQ, SINK_POS] *= 1000.0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    for i in range(FROM_LAYER, 4):
        lm.adapter.layers[i].register_forward_hook(hook)
    return lm


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_exclude_drops_the_injected_token_from_every_statistic(arch):
    lm = _injected_model(arch)
    ids = random_tokens(2, 24)
    keep_run = capture(lm, ids, CaptureConfig(estimators={"bucket": {}, "knn": {"k": 5}}, batch_size=2,
                                              state_tokens=ids.numel(), sinks="keep"))
    ex = capture(lm, ids, CaptureConfig(estimators={"bucket": {}, "knn": {"k": 5}}, batch_size=2,
                                        state_tokens=ids.numel(), sinks="exclude"))
    states = {k: v.view(2, 24, v.shape[1], -1) for k, v in keep_run.states.items()}     # [N, T, P, d]
    # the rule finds exactly the injected token, at every boundary after block FROM_LAYER
    c = ex.sinks["boundary"].tolist()
    assert c[:FROM_LAYER + 1] == [0] * (FROM_LAYER + 1) and c[FROM_LAYER + 1:] == [1] * (4 - FROM_LAYER)
    assert ex.sinks["boundary_pos0"].sum() == 0
    assert keep_run.sinks["boundary"].tolist() == c                 # counted in keep mode too
    kept = [torch.ones(24, dtype=torch.bool), torch.ones(24, dtype=torch.bool)]
    for col in range(5):
        sink_here = col > FROM_LAYER
        kept[SINK_SEQ] = torch.ones(24, dtype=torch.bool)
        if sink_here:
            kept[SINK_SEQ][SINK_POS] = False
        for i in range(2):
            xs = states["boundary"][i, :, col][kept[i]].unsqueeze(0)
            torch.testing.assert_close(ex.entropy["bucket"]["boundary"][i, col], entropy_bucket(xs)[0])
            torch.testing.assert_close(ex.entropy["knn"]["boundary"][i, col], entropy_knn(xs, k=5)[0],
                                       rtol=1e-5, atol=1e-3)
            torch.testing.assert_close(ex.norm_boundary[i, col], rms_norm(xs)[0])
            # keep = the reference: every token
            full = states["boundary"][i, :, col].unsqueeze(0)
            assert torch.equal(keep_run.entropy["bucket"]["boundary"][i, col], entropy_bucket(full)[0])
    # cosines: the pair mask (a token is left out if it is a sink at either point)
    l = FROM_LAYER + 1
    pre, mid = states["boundary"][SINK_SEQ, :, l], states["mid"][SINK_SEQ, :, l]
    m = torch.ones(24, dtype=torch.bool)
    m[SINK_POS] = False
    torch.testing.assert_close(ex.cos_attn[SINK_SEQ, l], mean_cosine(pre[m][None], mid[m][None])[0])
    # MI states: the sampled sink token is gone
    assert ex.states["boundary"].shape[0] == ids.numel() - 1
    # and the statistic really moved (the test can fail)
    assert (ex.entropy["bucket"]["boundary"][SINK_SEQ, -1] - keep_run.entropy["bucket"]["boundary"][SINK_SEQ, -1]).abs() > 1


def test_first_mode_is_the_old_skip_first_token():
    lm = tiny_loaded("qwen3", layers=2)
    ids = random_tokens(2, 16)
    a = capture(lm, ids, CaptureConfig(sinks="first", batch_size=2))
    b = capture(lm, ids, CaptureConfig(skip_first_token=True, batch_size=2))
    assert torch.equal(a.entropy["bucket"]["boundary"], b.entropy["bucket"]["boundary"])
    assert AnalysisConfig(skip_first_token=True).sinks == "first"


def test_analysis_records_sinks_and_round_trips(tmp_path):
    lm = _injected_model()
    r = analyze(lm, random_tokens(2, 40), AnalysisConfig(extra_estimators=("knn",), k=5))
    assert r.sinks["mode"] == "exclude"
    assert r.sinks["excluded"]["boundary"] == r.sinks["counts"]["boundary"] == [0, 0, 1, 1, 1]
    assert r.sink_onset(share=0.5) == 2
    p = tmp_path / "run.json"
    r.save(p)
    back = AnalysisResult.load(p)
    assert back.sinks["counts"]["boundary"] == [0, 0, 1, 1, 1] and back.boundary_info["n_boot"] == 200
    keep = analyze(lm, random_tokens(2, 40), AnalysisConfig(sinks="keep"))
    assert keep.sinks["excluded"]["boundary"] == [0] * 5 and keep.sinks["counts"]["boundary"] == [0, 0, 1, 1, 1]


def test_old_run_json_without_sinks_loads(tmp_path):
    lm = tiny_loaded("llama", layers=3)
    r = analyze(lm, random_tokens(2, 24), AnalysisConfig())
    d = json.loads(json.dumps(r.to_dict()))
    for k in ("sinks", "boundary_info"):
        d.pop(k)
    d["manifest"]["config"].pop("sinks")
    d["manifest"]["config"]["skip_first_token"] = True
    p = tmp_path / "old.json"
    p.write_text(json.dumps(d))
    old = AnalysisResult.load(p)
    assert old.sinks == {} and old.sink_onset() is None
    assert "0…-1" not in old.stage_text()


def test_bad_sinks_mode_is_a_clear_error():
    with pytest.raises(SelectionError, match="sinks mode"):
        AnalysisConfig(sinks="drop").validate()


# ---- boundary ---------------------------------------------------------------------------------------

def test_boundary_rule_finds_a_clear_valley():
    curve = [10, 8, 6, 5, 6, 7, 8, 9, 10, 11, 12]
    assert robust_boundary(curve) == (3, True)


def test_single_block_dip_does_not_fool_the_rule():
    rising = [5, 6, 7, 8, 9, 2, 10, 11, 12, 13, 14, 15]        # one boundary dips, the curve only rises
    from analysis.score.selection import detect_boundary

    assert detect_boundary(rising) == 5                          # the plain argmin is fooled
    assert robust_boundary(rising) == (0, False)


def test_fall_without_rise_is_no_compression_stage():
    assert robust_boundary([10, 9, 8, 7, 6, 6, 6, 6, 6]) == (0, False)
    assert robust_boundary([1, 2, 3, 4, 5]) == (0, False)
    assert describe({"boundary": 0, "detected": False}, 30).startswith("no compression stage detected")


def test_bootstrap_interval_covers_the_boundary_and_widens_with_noise():
    rng = np.random.default_rng(0)
    base = np.array([10, 8, 6, 5, 6, 7, 8, 9, 10, 11, 12], float)
    tight = base + 0.05 * rng.standard_normal((40, 11))
    noisy = base + 6.0 * rng.standard_normal((40, 11))
    a = boundary_interval(tight, n_boot=100)
    b = boundary_interval(noisy, n_boot=100)
    assert a["boundary"] == 3 and a["lo"] == a["hi"] == 3 and a["p_detected"] == 1.0
    assert b["hi"] - b["lo"] > a["hi"] - a["lo"]
    assert "interval" in describe(b, 10) or not b["detected"]


def test_cli_sinks_flag_reaches_the_run_json(tmp_path, monkeypatch):
    import numpy as np

    from analysis.cli.main import main
    from analysis.testing import tiny_model, tiny_tokenizer

    monkeypatch.setenv("ENTROSCOPE_RUNS", str(tmp_path / "runs"))
    d = tmp_path / "m"
    tiny_model("llama", layers=3).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    ids = tmp_path / "ids.npy"
    np.save(ids, random_tokens(2, 40).numpy())
    for mode in ("keep", "first"):
        out = tmp_path / f"{mode}.json"
        assert main(["analyze", "--model", str(d), "--tokens", str(ids), "--sinks", mode, "--out", str(out),
                     "--quiet"]) == 0
        back = AnalysisResult.load(out)
        assert back.sinks["mode"] == mode and len(back.sinks["counts"]["boundary"]) == 4
    with pytest.raises(SystemExit):
        main(["analyze", "--model", str(d), "--tokens", str(ids), "--sinks", "all", "--out", str(out)])
