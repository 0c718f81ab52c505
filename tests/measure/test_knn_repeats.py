"""KNN entropy on repeated token states: exact zeros as ``torch.cdist`` defines them (issue 19).

The reference is EntroDrop's formula on a float64 ``cdist`` computed coordinate by coordinate (no matmul
shortcut), so identical states are exactly 0 apart.
"""
import json
import math

import numpy as np
import pytest
import torch

from analysis.measure.estimators import (ESTIMATORS, EstimatorInfo, _sq_dists, entropy_knn, entropy_renyi,
                                 exact_duplicates, get_estimator, knn_radii, sq_dist_error_bound)


def ref_radii64(x: torch.Tensor, k: int) -> torch.Tensor:
    x = x.double()
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")    # [B, N, N], exact zeros
    return torch.topk(dist, k + 1, dim=-1, largest=False).values[..., -1]


def ref_knn64(x: torch.Tensor, k: int = 25) -> torch.Tensor:
    """EntroDrop's ``estimate_entropy_knn_pytorch`` formula in float64, per sequence: ``[B]``."""
    n, d = x.shape[1:]
    r = ref_radii64(x, k)
    return (d * torch.log(r + 1e-10).mean(1) + d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
            + math.log(n) - math.log(k))


def token_states(b: int, n: int = 96, d: int = 64, vocab: int = 400, offset: float = 0.0, seed: int = 0):
    """Embedding-like states ``[b, n, d]``: each sequence has one token repeated 30 times (> k = 25),
    the first also a second one repeated 27 times; the other tokens are drawn from a large vocabulary."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, d, generator=g) * 0.05 + offset
    ids = torch.randint(0, vocab, (b, n), generator=g)
    for i in range(b):
        pos = torch.randperm(n, generator=g)
        ids[i, pos[:30]] = i                   # token i repeated 30 times at random positions
        if i == 0:
            ids[i, pos[30:57]] = vocab - 1     # and one more repeated 27 times
    return table[ids], ids


@pytest.mark.parametrize("b", [1, 2, 5, 16])
@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_repeated_token_gives_reference_value_at_any_batch_size(b, offset):
    x, ids = token_states(b, offset=offset)
    r = knn_radii(x, 25)
    rep = torch.stack([ids[i] == i for i in range(b)])
    assert torch.equal(r[rep], torch.zeros(int(rep.sum())))           # exact zeros, as cdist gives them
    torch.testing.assert_close(r.double(), ref_radii64(x, 25), rtol=1e-5, atol=0)
    h, ref = entropy_knn(x, k=25), ref_knn64(x, 25)
    # a rounding-noise radius of ~1e-3 instead of 0 would move H by thousands of nats here
    torch.testing.assert_close(h.double(), ref, rtol=1e-6, atol=1e-3)
    # each sequence's value does not depend on which batch it came in
    solo = torch.cat([entropy_knn(x[i:i + 1], k=25) for i in range(b)])
    torch.testing.assert_close(h, solo, rtol=1e-6, atol=1e-3)


def test_duplicate_radii_exact_on_normalised_variant():
    x, ids = token_states(3)
    h = get_estimator("knn-norm").bind(k=25)(x)
    xc = x - x.mean(1, keepdim=True)
    xn = xc / xc.pow(2).sum(-1).mean(-1).sqrt().view(-1, 1, 1)
    torch.testing.assert_close(h.double(), ref_knn64(xn, 25), rtol=1e-6, atol=1e-2)


def test_fused_distances_within_documented_rounding_bound():
    x, _ = token_states(4, d=576, offset=3.0)
    d2 = _sq_dists(x).double()
    xc = (x - x.mean(1, keepdim=True)).double()                        # the points the fused form sees
    exact = torch.cdist(xc, xc, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    sq = xc.pow(2).sum(-1)
    bound = sq_dist_error_bound(576) * (sq.unsqueeze(2) + sq.unsqueeze(1))
    assert ((d2 - exact).abs() <= bound).all()


def test_dedup_is_the_estimate_on_distinct_states():
    x, _ = token_states(4)
    h = entropy_knn(x, k=5, dedup=True)
    for i in range(4):
        uniq = torch.unique(x[i], dim=0)[None]                         # the distinct states of sequence i
        torch.testing.assert_close(h[i:i + 1].double(), ref_knn64(uniq, 5), rtol=1e-5, atol=1e-3)
        assert torch.isfinite(h[i])
    # no exact repeats: identical to the reference mode
    y = torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(1))
    assert not exact_duplicates(y).any()
    torch.testing.assert_close(entropy_knn(y, k=5, dedup=True), entropy_knn(y, k=5))


def test_exact_duplicates_flags_later_copies_only():
    x = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(2))
    x[0, 3] = x[0, 1]
    x[0, 5] = x[0, 1]
    x[0, 4] = x[0, 2] + torch.tensor([0.0, 0.0, 0.0, 1e-6])          # close but not identical
    assert exact_duplicates(x).tolist() == [[False, False, False, True, False, True]]


def test_dedup_with_too_few_distinct_states_is_nan_per_sequence():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 8, generator=g)
    x[1] = x[1, :5].repeat(8, 1)                                       # 5 distinct states, k = 5
    h = entropy_knn(x, k=5, dedup=True)
    assert torch.isfinite(h[0]) and torch.isnan(h[1])
    h = get_estimator("knn-norm").bind(k=5, dedup=True)(x)
    assert torch.isfinite(h[0]) and torch.isnan(h[1])


def test_renyi_on_repeated_tokens_matches_float64_reference():
    x, _ = token_states(3, offset=3.0)
    z = x.double()
    z = (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-10)
    dist = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    sigma = dist.reshape(3, -1).median(1).values.view(3, 1, 1)
    kern = torch.exp(-dist.pow(2) / (2 * sigma ** 2)).clamp_min(1e-10)
    ref = torch.log(kern.pow(3).mean((1, 2))) / (1 - 4)
    torch.testing.assert_close(entropy_renyi(x).double(), ref, rtol=1e-5, atol=1e-6)


def test_cli_knn_dedup_flag_reaches_the_estimator(tmp_path):
    from analysis.cli.main import main
    from analysis.testing import tiny_model, tiny_tokenizer

    tiny_model("llama", layers=2).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    ids = np.random.default_rng(0).integers(3, 200, size=(2, 40))
    ids[:, :20] = 7                                                    # a token repeated 20 times > k = 5
    np.save(tmp_path / "ids.npy", ids)
    out = {}
    for flag in ([], ["--knn-dedup"]):
        p = tmp_path / f"r{len(flag)}.json"
        assert main(["analyze", "--model", str(tmp_path / "m"), "--tokens", str(tmp_path / "ids.npy"),
                     "--estimator", "knn", "--k", "5", "--no-cache", "--out", str(p), "--quiet", *flag]) == 0
        out[bool(flag)] = json.loads(p.read_text())
    assert out[False]["manifest"]["estimator_params"]["knn"] == {"k": 5, "dedup": False}
    assert out[True]["manifest"]["estimator_params"]["knn"] == {"k": 5, "dedup": True}
    # layer 0's input (the embeddings) has 20 identical states: the reference floor makes it far lower
    pre0 = {m: np.mean([s[0] for s in out[m]["per_seq"]["knn"]["boundary"]]) for m in out}
    assert pre0[False] < pre0[True] - 100


# --- the real model -------------------------------------------------------------------------------
def _knn_ref64_estimator(x, k=25):
    return ref_knn64(x, k).float()


@pytest.mark.slow
def test_real_model_knn_delta_h_matches_float64_reference(smollm2, monkeypatch):
    """SmolLM2, wiki windows in which some token repeats more than k = 25 times (layer 0's input then has
    zero radii): KNN attention ΔH per layer agrees with the float64 reference within 1 % on every layer.
    The full 128 × 256 check is ``bench/knn_reference.py`` (figures in docs/benchmarks.md)."""
    from analysis.data import SampleConfig, load_corpus, sample_windows
    from analysis.run import AnalysisConfig, analyze

    monkeypatch.setitem(ESTIMATORS, "knn-ref64", EstimatorInfo("knn-ref64", "float64 cdist", _knn_ref64_estimator,
                                                              {"k": 25}))
    tokens = sample_windows(load_corpus("wiki"), smollm2.tokenizer, SampleConfig(n_samples=128, seq_len=256,
                                                                                 seed=2024))
    most = torch.stack([torch.bincount(r).max() for r in tokens.input_ids])
    rows = torch.argsort(most, descending=True, stable=True)[:6]       # includes windows with > 25 repeats
    assert (most[rows] > 25).all()
    ids = tokens.input_ids[rows]
    r = analyze(smollm2, ids, AnalysisConfig(estimator="knn", extra_estimators=("knn-ref64",), batch_size=3,
                                             sinks="keep"))   # the reference: every token
    ours, ref = r.delta_h("attention", "knn"), r.delta_h("attention", "knn-ref64")
    assert np.isfinite(ours).all() and len(ours) == 30
    rel = np.abs(ours - ref) / np.abs(ref)
    assert (rel < 0.01).all(), rel


def test_masked_knn_of_the_default_sinks_mode_gives_exact_zeros_on_repeats():
    """sinks=exclude (the default) uses the masked estimator: repeated kept tokens are exactly 0 apart, and a
    masked (sink) token is never anyone's neighbour."""
    import math

    from analysis.measure.sinks import entropy_knn_masked, knn_radii_masked

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 60, 16, generator=g) * 40
    x[0, 10:40] = x[0, 10]                                   # one state repeated 30 times (> k = 25)
    keep = torch.ones(1, 60, dtype=torch.bool)
    keep[0, 0] = False
    x[0, 0] = 1e4                                            # a massive-activation token, excluded
    r = knn_radii_masked(x, keep, 25)
    assert torch.all(r[0, 10:40] == 0)
    kept = x[:, 1:].double()
    d = torch.cdist(kept, kept)
    ref_r = d.sort(dim=-1).values[..., 25]                   # self at rank 0, as the reference
    torch.testing.assert_close(r[:, 1:].double(), ref_r, rtol=1e-5, atol=1e-4)
    n, dim = 59, 16
    const = dim / 2 * math.log(math.pi) - math.lgamma(dim / 2 + 1) - math.log(25)
    ref_h = dim * torch.log(ref_r + 1e-10).mean() + const + math.log(n)
    assert float(entropy_knn_masked(x, keep, k=25)[0]) == pytest.approx(float(ref_h), rel=1e-4)
