"""Fast-Block-Select and exhaustive search (analysis.score.blocksearch), MI-PRUN selection (analysis.score.miprun),
ground-truth baselines (analysis.evaluate.groundtruth) and criterion agreement (analysis.score.agreement)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from analysis.evaluate.groundtruth import (blockpruner_select, calibration_loss, delta_ppl_details, ground_truth_delta_ppl,
                                          plan_losses, sleb_select, store_ground_truth)
from analysis.score.agreement import agreement_matrix
from analysis.score.blocksearch import exhaustive_select, fast_block_select, maximal_runs, run_objective, selection_gap
from analysis.score.miprun import miprun_select
from analysis.score.criteria import CRITERIA, scores_for, select
from analysis.errors import SelectionError
from analysis.testing import random_tokens, tiny_loaded


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def test_maximal_runs_and_objective():
    assert maximal_runs([7, 3, 4, 5, 9, 10]) == [(3, 5), (7, 7), (9, 10)]
    assert maximal_runs([]) == []
    rs = lambda j, k: -(k - j + 1) ** 2  # noqa: E731
    assert run_objective([3, 4, 5, 9], rs) == -9 - 1


def _random_table(L, seed):
    """Synthetic s and a DPI-like run score: run(j, k) >= max s_i over the run, not additive."""
    rng = np.random.default_rng(seed)
    s = -rng.uniform(0.5, 1.5, L)
    extra = rng.uniform(0, 0.4, (L, L))

    def run_score(j, k):
        return float(np.max(s[j:k + 1]) + (k - j) * 0.05 + (extra[j, k] if k > j else 0.0))

    return s, run_score


def test_deterministic_and_terminates():
    for seed in range(5):
        s, rs = _random_table(14, seed)
        a = fast_block_select(s, rs, 4, K=3, max_iter=20)
        b = fast_block_select(s.copy(), rs, 4, K=3, max_iter=20)
        assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
        assert a.iterations <= 20 and a.converged
        assert len(a.blocks) == 4 and not {0, 13} & set(a.blocks)
        assert a.objective <= a.initial_objective
        objs = [e["objective_after"] for e in a.log[1:]]
        assert all(x >= y for x, y in zip(objs, objs[1:]))        # J never increases


def test_max_iter_bounds_iterations():
    s, rs = _random_table(16, 3)
    res = fast_block_select(s, rs, 5, K=None, alt_size=10, max_iter=1)
    assert res.iterations == 1


def test_additive_scores_equal_exhaustive():
    """With run_score(j, k) = Σ s_i, J(P) = Σ_{i∈P} s_i: the optimum is the n lowest s, and FBS finds it."""
    for seed in range(6):
        s = np.random.default_rng(seed).normal(size=12)
        rs = lambda j, k, s=s: float(s[j:k + 1].sum())  # noqa: E731
        for n in (1, 3, 5):
            fbs = fast_block_select(s, rs, n)
            exh = exhaustive_select(rs, 12, n, protect=[0, 11])
            assert fbs.blocks == exh["blocks"]
            assert selection_gap(fbs.objective, exh["objective"])["optimal"]


def test_unbounded_K_and_pool_is_exhaustive_within_partition():
    """K = ∞ and A = every other block: FBS's exact conflict-free step finds the optimum over all subsets
    with the initial pool's run lengths (the space it searches)."""
    L = 12
    for seed in range(8):
        s, rs = _random_table(L, seed)
        n = 4
        fbs = fast_block_select(s, rs, n, K=None, alt_size=L - n - 2, refine=False)
        part = [k - j + 1 for j, k in maximal_runs(fbs.initial)]
        same = exhaustive_select(rs, L, n, partition=part)
        assert fbs.objective == pytest.approx(same["objective"])
        assert fbs.iterations <= 2


def test_gap_to_exhaustive_and_repartition():
    L, n = 12, 4
    gaps, gaps_rep = [], []
    for seed in range(6):
        s, rs = _random_table(L, seed)
        exh = exhaustive_select(rs, L, n)
        fbs = fast_block_select(s, rs, n)
        rep = fast_block_select(s, rs, n, repartition=True)
        g, gr = selection_gap(fbs.objective, exh["objective"]), selection_gap(rep.objective, exh["objective"])
        assert g["absolute"] >= -1e-12 and gr["absolute"] >= -1e-12   # nothing beats the optimum
        assert rep.objective <= fbs.objective + 1e-12
        gaps.append(g["absolute"])
        gaps_rep.append(gr["absolute"])
    assert np.mean(gaps_rep) <= np.mean(gaps)


def test_exhaustive_limits_and_errors():
    s, rs = _random_table(30, 0)
    with pytest.raises(SelectionError, match="exceeds"):
        exhaustive_select(rs, 30, 8, max_combinations=1000)
    with pytest.raises(SelectionError, match="larger than"):
        fast_block_select(s[:5], rs, 4)                          # 3 unprotected blocks
    assert fast_block_select(s, rs, 0).blocks == []
    with pytest.raises(SelectionError, match="out of range"):
        fast_block_select(s, rs, 2, protect=[31])
    ex = exhaustive_select(rs, 8, 3, protect=[])
    assert ex["combinations"] == 56 and ex["feasible"] == 56


def test_log_is_json_safe_and_complete():
    s, rs = _random_table(12, 1)
    res = fast_block_select(s, rs, 4, K=2)
    d = json.loads(json.dumps(res.to_dict()))
    it1 = d["log"][1]
    for key in ("pool", "alternatives", "runs", "candidates", "chosen", "swaps", "objective_before",
                "objective_after", "accepted"):
        assert key in it1
    cand = next(iter(it1["candidates"].values()))[0]
    assert {"window", "coarse", "exact", "incumbent"} <= set(cand)


def _mi_run(L: int, seed: int, noise: float, protected: list[int]) -> SimpleNamespace:
    """A run stand-in whose boundary MI matrix decays with distance (DPI-like) plus noise."""
    rng = np.random.default_rng(seed)
    m = np.full((L + 1, L + 1), np.nan)
    for i in range(L + 1):
        for j in range(i + 1, L + 1):
            m[i, j] = m[j, i] = 2.0 / (1 + (j - i)) + noise * rng.random()
    return SimpleNamespace(extras={"mi": {"matrix": m.tolist(), "estimator": "renyi", "params": {}}},
                           protected=protected, manifest={}, num_layers=L)


def test_miprun_select_from_matrix():
    L = 8
    r = _mi_run(L, seed=0, noise=0.1, protected=[0, 1, L - 1])
    plan = miprun_select(r, 3, method="both")
    json.dumps(plan)
    assert len(plan["drop_layers"]) == 3 and not {0, 1, 7} & set(plan["drop_layers"])
    src = plan["source"]
    assert src["method"] == "fast-block-select" and src["gap"]["absolute"] >= -1e-12
    assert -1e-12 <= src["gap_same_partition"]["absolute"] <= src["gap"]["absolute"] + 1e-12
    assert miprun_select(r, 3, method="exhaustive")["drop_layers"] == src["exhaustive"]["blocks"]
    with pytest.raises(SelectionError, match="--mi"):
        miprun_select(SimpleNamespace(extras={}, protected=[]), 2)


# ---- ground truth on a tiny model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded("llama", layers=4, hidden=32)


@pytest.fixture(scope="module")
def calib():
    return random_tokens(4, 24, seed=3)


def test_plan_losses_match_evaluate_perplexity(lm, calib):
    from analysis.evaluate import EvalConfig, perplexity
    from analysis.models.plan import Plan

    plans = [None, Plan(drop_layers=[2]), Plan(drop_attn=[1], drop_mlp=[3]), Plan(drop_layers=[1, 2, 3])]
    losses = plan_losses(lm, calib, plans, batch_size=3)
    for p, lo in zip(plans, losses):
        ref = perplexity(lm, calib, plan=p, cfg=EvalConfig(batch_size=4))["nll"]
        assert lo == pytest.approx(ref, rel=1e-5)
    assert calibration_loss(lm, calib) == pytest.approx(losses[0])


def test_delta_ppl_gives_finite_scores_and_feeds_the_registry(lm, calib):
    from analysis.run import AnalysisConfig, analyze

    assert "delta-ppl" in CRITERIA
    d = delta_ppl_details(lm, calib, "layer")
    assert len(d["scores"]) == 4 and np.isfinite(d["scores"]).all() and d["evaluations"] == 5
    assert np.allclose(ground_truth_delta_ppl(lm, calib, "layer"), d["scores"])
    att = ground_truth_delta_ppl(lm, calib, "attention")
    assert att.shape == (4,) and np.isfinite(att).all()
    r = analyze(lm, calib, AnalysisConfig(granularity="layer", protect="none"))
    with pytest.raises(SelectionError, match="groundtruth"):
        select(r, "delta-ppl", 1)
    store_ground_truth(r, "layer", d["scores"], d)
    assert np.allclose(scores_for(r, "delta-ppl", "layer"), d["scores"])
    assert select(r, "delta-ppl", 1).blocks == [int(np.argmin(d["scores"]))]
    assert r.baselines["delta-ppl"]["scores"] is not None
    ag = agreement_matrix(r, ["delta-ppl", "entrodrop", "cosine", "mi-prun"], "layer", k=2)
    assert ag["criteria"] == ["delta-ppl", "entrodrop", "cosine"] and "mi-prun" in ag["unavailable"]
    assert np.allclose(np.diag(ag["spearman"]), 1) and np.allclose(np.diag(ag["topk_overlap"]), 1)
    sp = np.array(ag["spearman"])
    assert np.allclose(sp, sp.T)


def test_sleb_with_one_step_equals_brute_force(lm, calib):
    d = delta_ppl_details(lm, calib, "layer")
    res = sleb_select(lm, calib, 1)
    assert res["blocks"] == [int(np.nanargmin(d["ppl"]))]
    two = sleb_select(lm, calib, 2, protect=[0])
    assert len(two["blocks"]) == 2 and 0 not in two["blocks"] and two["evaluations"] == 1 + 3 + 2
    with pytest.raises(SelectionError):
        sleb_select(lm, calib, 4)


def test_blockpruner_removes_sub_blocks(lm, calib):
    res = blockpruner_select(lm, calib, 3, protect=[0])
    assert len(res["order"]) == 3 and len(res["drop_attn"]) + len(res["drop_mlp"]) == 3
    assert 0 not in res["drop_attn"] + res["drop_mlp"]
    assert res["steps"][0]["ppl"] <= min(c["ppl"] for c in res["steps"][0]["candidates"]) + 1e-9


# ---- CLI ------------------------------------------------------------------------------------------


def test_miprun_and_groundtruth_commands(lm, calib, tmp_path):
    from analysis.cli.main import main
    from analysis.measure.mi_states import MIConfig
    from analysis.run import AnalysisConfig, analyze

    cfg = AnalysisConfig(state_tokens=64, extensions=("mi",), granularity="layer", protect="none")
    cfg.mi = MIConfig(estimator="cka", n_tokens=64, matrix_tokens=64)
    r = analyze(lm, calib, cfg)
    run, plan = tmp_path / "run.json", tmp_path / "plan.json"
    r.save(run)
    assert main(["miprun", "--run", str(run), "--n", "2", "--method", "both", "--out", str(plan)]) == 0
    p = json.loads(plan.read_text())
    assert len(p["drop_layers"]) == 2 and p["source"]["protected"] == []
    from analysis.models.plan import Plan

    Plan.from_dict(p).validate(4)
    # groundtruth needs a model on disk: save the tiny one
    mdir = tmp_path / "tiny"
    lm.model.save_pretrained(mdir)
    lm.tokenizer.save_pretrained(mdir)
    tok = tmp_path / "tokens.npy"
    np.save(tok, calib.numpy())
    gt = tmp_path / "gt.json"
    assert main(["groundtruth", "--model", str(mdir), "--device", "cpu", "--tokens", str(tok), "--methods",
                 "delta-ppl,sleb", "--n", "1", "--into", str(run), "--out", str(gt), "--quiet"]) == 0
    out = json.loads(gt.read_text())
    assert len(out["delta-ppl"]["scores"]) == 4 and len(out["sleb"]["blocks"]) == 1
    from analysis.score.result import AnalysisResult

    back = AnalysisResult.load(run)
    assert np.allclose(scores_for(back, "delta-ppl", "layer"), out["delta-ppl"]["scores"])
    assert main(["select", "--run", str(run), "--criterion", "delta-ppl", "--k", "1"]) == 0


# ---- exact optimum (dynamic programme) and the refine step ---------------------------------------------


def test_optimal_select_equals_exhaustive_and_fbs_refines_to_it():
    from analysis.score.blocksearch import optimal_select

    for seed in range(10):
        L = 11 + seed % 3
        s, rs = _random_table(L, seed)
        prot = [0, 1, L - 1] if seed % 2 else [0, L - 1]
        for n in (1, 2, 3, 4, 5):
            exh = exhaustive_select(rs, L, n, protect=prot)
            opt = optimal_select(rs, L, n, protect=prot)
            assert opt["objective"] == pytest.approx(exh["objective"], abs=1e-12)
            assert run_objective(opt["blocks"], rs) == pytest.approx(opt["objective"])
            assert len(opt["blocks"]) == n and not set(prot) & set(opt["blocks"])
            assert opt["evaluations"] <= L * n
            fbs = fast_block_select(s, rs, n, protect=prot)
            assert fbs.objective == pytest.approx(exh["objective"], abs=1e-12)
            raw = fast_block_select(s, rs, n, protect=prot, refine=False)
            assert raw.objective >= fbs.objective - 1e-12 and raw.params["refine"] is False
    assert optimal_select(rs, L, 0)["blocks"] == []


def test_refine_closes_a_gap_the_reconstruction_leaves():
    """A table where the single-block ranking picks one run of 3 but three separate blocks are better."""
    L = 10
    s = np.array([0, -3.0, -3.1, -3.2, 0, -1.0, 0, -1.0, 0, -1.0])

    def rs(j, k):
        return float(s[j]) if j == k else -0.5       # any multi-layer run scores badly

    raw = fast_block_select(s, rs, 3, refine=False, K=1, alt_size=0)
    assert raw.blocks == [1, 2, 3]
    fbs = fast_block_select(s, rs, 3, K=1, alt_size=0)
    assert fbs.blocks[:2] == [1, 3] and fbs.objective == pytest.approx(-7.2)   # [1, 3, 5] and [1, 3, 7] tie
    assert fbs.log[-1]["step"] == "refine" and fbs.log[-1]["accepted"]
    assert selection_gap(fbs.objective, exhaustive_select(rs, L, 3)["objective"])["optimal"]


def test_gap_report_never_negative_with_optimal_true():
    g = selection_gap(-5.0, -4.0)
    assert g["absolute"] < 0 and not g["optimal"] and g["below_reference"]
    L = 9
    r = _mi_run(L, seed=5, noise=0.3, protected=[0, L - 1])
    for rep in (False, True):
        for refine in (False, True):
            src = miprun_select(r, 4, method="both", repartition=rep, refine=refine)["source"]
            for key in ("gap", "gap_same_partition"):
                assert src[key]["absolute"] >= -1e-12
                assert src[key]["optimal"] == (abs(src[key]["absolute"]) <= 1e-12 * max(1, abs(src["objective"])))
            if refine:
                assert src["gap"]["optimal"]
