"""Matrix-based (von Neumann) and logit-lens entropy: known answers, bounds, masked forms, the model's head,
and the two lenses as ranking criteria."""
import math

import numpy as np
import pytest
import torch

from analysis.errors import SelectionError
from analysis.measure.capture import CaptureConfig, capture
from analysis.measure.lenses import (dataset_entropy, entropy_logit_lens, entropy_logit_lens_masked, entropy_matrix,
                                     entropy_matrix_masked, lens_head, sample_positions)
from analysis.run import AnalysisConfig, analyze
from analysis.score.criteria import scores_for, select
from analysis.testing import random_tokens, tiny_loaded


def test_identical_states_have_matrix_entropy_zero():
    v = torch.randn(1, 1, 32) * 1e3                 # large norm: the centring must still give exact zeros
    assert entropy_matrix(v.expand(2, 40, 32).contiguous()).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n, d", [(8, 8), (8, 64), (40, 16)])
def test_simplex_reaches_log_n_minus_1_and_bounds_hold(n, d):
    eye = torch.zeros(1, n, max(n, d))
    eye[0, :, :n] = torch.eye(n) * 7.0             # n equidistant points: centred rows span n−1 equal directions
    torch.testing.assert_close(entropy_matrix(eye), torch.tensor([math.log(n - 1)]), rtol=1e-5, atol=1e-5)
    x = torch.randn(5, n, d)
    h = entropy_matrix(x)
    assert (h >= 0).all() and (h <= math.log(n) + 1e-6).all() and (h <= math.log(min(n - 1, d)) + 1e-5).all()
    # scale invariant, translation invariant
    torch.testing.assert_close(entropy_matrix(3.0 * x + 5.0), h, rtol=1e-5, atol=1e-5)


def test_masked_matrix_entropy_is_the_entropy_of_the_kept_tokens_and_a_sink_lowers_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 24, generator=g)
    keep = torch.ones(2, 30, dtype=torch.bool)
    x[0, 0] *= 1000.0                               # a massive token: the centred rows all point away from it
    keep[0, 0] = False
    got = entropy_matrix_masked(x, keep)
    want = torch.stack([entropy_matrix(x[i:i + 1, keep[i]])[0] for i in range(2)])
    torch.testing.assert_close(got, want)
    assert entropy_matrix(x)[0] < got[0] - 0.5      # kept, the massive token collapses the spectrum


def test_dataset_entropy_over_sequence_means():
    means = torch.randn(12, 3, 16)                  # [N, P, d]
    h = dataset_entropy(means)
    assert h.shape == (3,) and (h >= 0).all() and (h <= math.log(12)).all()
    torch.testing.assert_close(h[1], entropy_matrix(means[:, 1][None])[0])


def _lm_zero_head(arch):
    lm = tiny_loaded(arch, layers=2, tie_word_embeddings=False)
    torch.nn.init.zeros_(lm.model.get_output_embeddings().weight)
    return lm


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_uniform_logits_give_log_v(arch):
    lm = _lm_zero_head(arch)
    V = lm.model.get_output_embeddings().weight.shape[0]
    r = analyze(lm, random_tokens(3, 20), AnalysisConfig(estimator="logit-lens", extra_estimators=("matrix",), both_views=True))
    for view in r.sink_views:
        np.testing.assert_allclose(r.entropy("logit-lens", view=view)["boundary"], math.log(V), rtol=1e-6)
        m = r.entropy("matrix", view=view)["boundary"]
        assert np.isfinite(m).all() and (m >= 0).all() and (m <= math.log(20)).all()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logit_lens_at_the_last_boundary_is_the_models_own_next_token_entropy(arch):
    lm = tiny_loaded(arch, layers=2)
    if arch == "gemma3":
        lm.model.config.final_logit_softcapping = 2.0     # the soft-cap must be applied by the lens too
    ids = random_tokens(2, 20)
    st = capture(lm, ids, CaptureConfig(estimators={"logit-lens": {"lens_positions": 5, "seed": 3}}, batch_size=2,
                                        state_tokens=ids.numel()))
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(ids).logits.float(), -1)        # [N, T, V]
    h = -(logp.exp() * logp).sum(-1)
    pos = sample_positions(2, 20, 5, 3)
    want = torch.gather(h, 1, pos).mean(1)
    torch.testing.assert_close(st.entropy["logit-lens"]["boundary"][:, -1], want, rtol=1e-4, atol=1e-4)
    V = logp.shape[-1]
    e = st.entropy["logit-lens"]["boundary"]
    assert (e >= 0).all() and (e <= math.log(V) + 1e-5).all()


def test_logit_lens_positions_are_seeded_and_masked_positions_leave_the_mean():
    lm = tiny_loaded("llama", layers=1)
    head = lens_head(lm)
    x = torch.randn(2, 30, lm.adapter.hidden_size)
    a = entropy_logit_lens(x, head, lens_positions=6, seed=1)
    assert torch.equal(a, entropy_logit_lens(x, head, lens_positions=6, seed=1))
    pos = sample_positions(2, 30, 6, 1)
    keep = torch.ones(2, 30, dtype=torch.bool)
    keep[0, pos[0, 0]] = False
    got = entropy_logit_lens_masked(x, keep, head, lens_positions=6, seed=1)
    with torch.no_grad():
        logp = torch.log_softmax(head(x[0, pos[0, 1:]]).float(), -1)
    torch.testing.assert_close(got[0], (-(logp.exp() * logp).sum(-1)).mean())
    assert got[1] == a[1]
    with pytest.raises(SelectionError, match="head"):
        entropy_logit_lens(x)


def test_lenses_rank_blocks_as_criteria():
    lm = tiny_loaded("llama", layers=4)
    r = analyze(lm, random_tokens(3, 24), AnalysisConfig(extra_estimators=("matrix", "logit-lens"), both_views=True))
    m = scores_for(r, "matrix", "attention")
    np.testing.assert_allclose(m, r.delta_h("attention", "matrix"))
    ll = scores_for(r, "logit-lens", "layer", view="keep")
    np.testing.assert_allclose(ll, np.abs(r.seq_delta_h("layer", "logit-lens", view="keep")).mean(0))
    assert len(select(r, "logit-lens", 1).blocks) == 1
    assert r.baselines["matrix"]["drop_order"] and r.baselines["logit-lens"]["drop_order"]
    plain = analyze(lm, random_tokens(3, 24), AnalysisConfig())
    assert plain.baselines["matrix"]["available"] is False
    with pytest.raises(SelectionError, match="--also matrix"):
        scores_for(plain, "matrix")


def test_dataset_entropy_of_a_run_is_over_the_sequence_means_in_each_view():
    lm = tiny_loaded("llama", layers=2)
    ids = random_tokens(5, 16)
    st = capture(lm, ids, CaptureConfig(estimators={"matrix": {}}, batch_size=2, state_tokens=ids.numel(),
                                        sinks="keep", alt_view=True))
    means = st.states["boundary"].view(5, 16, 3, -1).mean(1)                  # [N, L+1, d]
    torch.testing.assert_close(st.seq_means["keep"]["boundary"], means, rtol=1e-5, atol=1e-5)
    assert set(st.seq_means) == {"keep", "exclude"}
    r = analyze(lm, ids, AnalysisConfig(estimator="matrix", sinks="keep"))
    h = np.asarray(r.extras["dataset_entropy"]["matrix"]["keep"]["boundary"])
    np.testing.assert_allclose(h, dataset_entropy(means).numpy(), rtol=1e-4, atol=1e-5)
    assert (h >= 0).all() and (h <= math.log(5)).all()


@pytest.mark.parametrize("mode", ["exclude", "keep"])
def test_lens_views_in_one_pass_equal_separate_runs(mode):
    lm = tiny_loaded("llama", layers=3)

    def hook(m, a, out):                                   # a massive token 3 in every sequence from block 1 on
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, 3] *= 500.0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    lm.adapter.layers[1].register_forward_hook(hook)
    ids = random_tokens(2, 24)
    est = {"matrix": {}, "logit-lens": {"lens_positions": 24, "seed": 0}}   # every position: the sink is decoded
    both = capture(lm, ids, CaptureConfig(estimators=est, batch_size=2, sinks=mode, alt_view=True))
    other = capture(lm, ids, CaptureConfig(estimators=est, batch_size=2, sinks=both.alt_mode))
    alone = capture(lm, ids, CaptureConfig(estimators=est, batch_size=2, sinks=mode))
    for e in est:
        for k in ("boundary", "mid"):
            assert torch.equal(both.entropy_alt[e][k], other.entropy[e][k])
            assert torch.equal(both.entropy[e][k], alone.entropy[e][k])
    kept = both.entropy if mode == "keep" else both.entropy_alt
    excl = both.entropy_alt if mode == "keep" else both.entropy
    assert (kept["matrix"]["boundary"][:, -1] < excl["matrix"]["boundary"][:, -1] - 0.3).all()
    assert not torch.equal(kept["logit-lens"]["boundary"][:, -1], excl["logit-lens"]["boundary"][:, -1])


def test_cli_also_matrix_logit_lens_gives_finite_in_range_curves(tmp_path, monkeypatch):
    from analysis.cli.main import main
    from analysis.score.result import AnalysisResult
    from analysis.testing import save_tiny_checkpoint

    monkeypatch.setenv("ENTROSCOPE_RUNS", str(tmp_path / "runs"))
    d = tmp_path / "m"
    save_tiny_checkpoint(d, "llama", layers=3)
    ids = tmp_path / "ids.npy"
    np.save(ids, random_tokens(3, 32).numpy())
    out = tmp_path / "run.json"
    assert main(["analyze", "--model", str(d), "--tokens", str(ids), "--also", "matrix,logit-lens",
                 "--lens-positions", "8", "--both-views", "--out", str(out), "--quiet"]) == 0
    r = AnalysisResult.load(out)
    from analysis.testing import tiny_config

    V = tiny_config("llama").vocab_size
    for view in ("exclude", "keep"):
        m = np.concatenate([x.ravel() for x in r.seq_entropy("matrix", view=view)])
        ll = np.concatenate([x.ravel() for x in r.seq_entropy("logit-lens", view=view)])
        assert np.isfinite(m).all() and (m >= 0).all() and (m <= math.log(32)).all()
        assert np.isfinite(ll).all() and (ll >= 0).all() and (ll <= math.log(V) + 1e-6).all()
    assert r.manifest["estimator_params"]["logit-lens"]["lens_positions"] == 8


@pytest.mark.slow
def test_smollm2_cliff_is_the_massive_token_and_lenses_are_in_range(smollm2):
    """The finding the Home tour teaches, on the real model: with sinks kept, Bucket and matrix entropy fall at
    block 11 in one step, where the first token's norm jumps; the change of log norm ratio and of entropy
    correlate strongly negatively with it kept and not with it excluded."""
    from analysis.data import SampleConfig, load_corpus, sample_windows
    from analysis.score.massive import norm_entropy_correlation
    from app_support.story import cliff

    tokens = sample_windows(load_corpus("wiki"), smollm2.tokenizer, SampleConfig(n_samples=8, seq_len=128, seed=2024))
    r = analyze(smollm2, tokens, AnalysisConfig(estimator="bucket", extra_estimators=("matrix", "logit-lens"), both_views=True))
    V = smollm2.model.get_output_embeddings().weight.shape[0]
    for est, top in (("matrix", math.log(128)), ("logit-lens", math.log(V))):
        for view in ("exclude", "keep"):
            b, m = r.seq_entropy(est, view=view)
            assert np.isfinite(b).all() and np.isfinite(m).all() and b.min() >= 0 and max(b.max(), m.max()) <= top
    for est in ("bucket", "matrix"):
        c = cliff(r.entropy(est, view="keep")["boundary"])
        assert c is not None and c["block"] == 11 and c["down"]
        kept = norm_entropy_correlation(r, est, "keep", form="changes", n_boot=200)
        excl = norm_entropy_correlation(r, est, "exclude", form="changes", n_boot=200)
        assert kept["hi"] < -0.7 and excl["r"] > kept["r"] + 0.5
