"""MI estimators (analysis.measure.mi), state MI and the "mi" analysis extension (analysis.measure.mi_states) and the
"mi-prun" criterion (analysis.score.miprun)."""
import re
import json
import subprocess
import sys

import numpy as np
import pytest

from analysis.score.criteria import CRITERIA, scores_for, select
from analysis.errors import DataError, SelectionError
from analysis.measure.mi import MI_ESTIMATORS, get_mi_estimator, mi_estimate, renyi_entropy
from analysis.measure.mi_states import MIConfig, StateMI, dpi_violations, mi_analysis
from analysis.score.miprun import matrix_block_scores, matrix_run_score
from analysis.score.result import AnalysisResult
from analysis.run import EXTENSIONS, AnalysisConfig, analyze
from analysis.testing import random_tokens, tiny_loaded

ESTIMATORS = ["renyi", "gaussian", "ksg", "cka"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def _gauss(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_registry_names_and_docs():
    assert set(ESTIMATORS) <= set(MI_ESTIMATORS)
    for name in ESTIMATORS:
        e = get_mi_estimator(name)
        assert e.assumptions and e.independence_floor
    assert get_mi_estimator("cka").is_mi is False
    with pytest.raises(SelectionError, match="Unknown MI estimator"):
        get_mi_estimator("nope")
    with pytest.raises(SelectionError, match="Unknown parameter"):
        mi_estimate(_gauss(16, 2, 0), _gauss(16, 2, 1), "renyi", bandwidth=3)


@pytest.mark.parametrize("method", ESTIMATORS)
def test_self_information_beats_noisy_copy(method):
    x = _gauss(256, 4, 0)
    noisy = x + 0.7 * _gauss(256, 4, 1)
    assert mi_estimate(x, x, method) >= mi_estimate(x, noisy, method) > 0


# (dimension, tolerance) under which independent X, Y must give |MI| below the tolerance (N = 512).
# The raw Rényi estimator's floor grows with d under the median bandwidth (documented); debias fixes it.
INDEPENDENT = {"renyi": (1, 0.03), "gaussian": (16, 0.02), "ksg": (2, 0.06), "cka": (4, 0.05)}


@pytest.mark.parametrize("method", ESTIMATORS)
def test_independent_is_near_zero(method):
    d, tol = INDEPENDENT[method]
    x, y = _gauss(512, d, 2), _gauss(512, d, 3)
    assert abs(mi_estimate(x, y, method)) < tol
    assert abs(mi_estimate(x, y, method)) < 0.25 * mi_estimate(x, x, method)


def test_renyi_debias_removes_high_dimensional_floor():
    x, y = _gauss(384, 32, 4), _gauss(384, 32, 5)
    raw = mi_estimate(x, y, "renyi")
    assert raw > 0.2                                             # the documented floor in d = 32
    assert abs(mi_estimate(x, y, "renyi", debias=True)) < 0.02
    assert mi_estimate(x, x + 0.3 * _gauss(384, 32, 6), "renyi", debias=True) > 0.05


@pytest.mark.parametrize("method", ESTIMATORS)
def test_symmetry_and_token_order_invariance(method):
    x = _gauss(200, 3, 7)
    y = np.tanh(x @ _gauss(3, 5, 8)) + 0.3 * _gauss(200, 5, 9)
    a, b = mi_estimate(x, y, method), mi_estimate(y, x, method)
    assert a == pytest.approx(b, rel=1e-9, abs=1e-9)
    p = np.random.default_rng(10).permutation(200)
    assert mi_estimate(x[p], y[p], method) == pytest.approx(a, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("method", ESTIMATORS)
def test_degenerate_inputs(method):
    const = np.ones((64, 6))
    z = _gauss(64, 6, 11)
    assert mi_estimate(const, z, method) == pytest.approx(0.0, abs=1e-9)
    assert mi_estimate(const, const, method) == pytest.approx(0.0, abs=1e-9)
    dup = np.repeat(_gauss(8, 6, 12), 8, axis=0)                 # 8 distinct tokens, each 8 times
    for v in (mi_estimate(dup, dup, method), mi_estimate(dup, dup + 0.1 * z, method), mi_estimate(dup, z, method)):
        assert np.isfinite(v)
    bad = z.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        mi_estimate(bad, z, method)
    with pytest.raises(DataError, match="same number of rows"):
        mi_estimate(z, z[:-1], method)
    with pytest.raises(DataError, match="at least 4"):
        mi_estimate(z[:3], z[:3], method)


def test_renyi_entropy_paths():
    x = _gauss(50, 3, 13)
    from analysis.measure.mi import gram_matrix

    a, sigma = gram_matrix(x)
    assert sigma > 0 and np.trace(a) == pytest.approx(1.0)
    lam = np.clip(np.linalg.eigvalsh(a), 0, None)
    assert renyi_entropy(a, 2) == pytest.approx(-np.log((lam ** 2).sum()), rel=1e-9)
    assert renyi_entropy(a, 1.0) == pytest.approx(-(lam[lam > 0] * np.log(lam[lam > 0])).sum(), rel=1e-9)
    assert renyi_entropy(np.eye(50) / 50, 1.01) == pytest.approx(np.log(50), rel=1e-9)   # max entropy
    assert mi_estimate(x, x, "renyi", alpha=2) > 0


def test_subsample_cap_is_seeded():
    x = _gauss(600, 2, 14)
    y = x + 0.5 * _gauss(600, 2, 15)
    assert mi_estimate(x, y, "cka", n_max=100, seed=1) == mi_estimate(x, y, "cka", n_max=100, seed=1)
    assert mi_estimate(x, y, "cka", n_max=100, seed=1) != mi_estimate(x, y, "cka", n_max=100, seed=2)


# ---- states, block and run scores ----------------------------------------------------------------


def _chain_states(m=160, L=5, d=6, seed=0):
    """Synthetic Gaussian Markov chain b_0 → mid_0 → b_1 → …, each step less correlated than the last."""
    rng = np.random.default_rng(seed)
    b = np.zeros((m, L + 1, d), np.float32)
    mid = np.zeros((m, L, d), np.float32)
    b[:, 0] = rng.standard_normal((m, d))
    for i in range(L):
        a = np.sqrt((0.98, 0.9, 0.75, 0.55, 0.35, 0.2, 0.1)[i % 7])   # corr(b_i, b_{i+1}) = a²
        mid[:, i] = a * b[:, i] + np.sqrt(1 - a * a) * rng.standard_normal((m, d))
        b[:, i + 1] = a * mid[:, i] + np.sqrt(1 - a * a) * rng.standard_normal((m, d))
    return {"boundary": b, "mid": mid}


def test_state_mi_blocks_runs_and_matrix():
    st = _chain_states()
    smi = StateMI(st, "gaussian", n_tokens=128, seed=0, r=6)
    assert smi.n_tokens == 128 and smi.num_layers == 5
    layer = smi.block_mi("layer")
    assert layer.shape == (5,) and np.all(np.diff(layer) < 0)   # noisier blocks share less information
    assert np.allclose(smi.block_scores("attention"), -smi.block_mi("attention"))
    assert smi.run_score(1, 1) == pytest.approx(-layer[1])
    m = smi.boundary_matrix()
    assert np.allclose(m, m.T, equal_nan=True) and np.isnan(np.diag(m)).all()
    assert np.allclose(matrix_block_scores(m), -layer)
    assert matrix_run_score(m)(1, 3) == pytest.approx(smi.run_score(1, 3))
    with pytest.raises(SelectionError):
        smi.run_mi(3, 1)


def test_dpi_violation_rate_on_a_known_matrix():
    m = np.full((4, 4), np.nan)                                   # L = 3 layers
    vals = {(0, 1): 2.0, (1, 2): 1.0, (2, 3): 3.0, (0, 2): 0.5, (1, 3): 1.5, (0, 3): 0.2}
    for (i, j), v in vals.items():
        m[i, j] = m[j, i] = v
    d = dpi_violations(m)
    # runs: [0..1]: 0.5 <= min(2, 1) ok; [1..2]: 1.5 > min(1, 3) violation; [0..2]: 0.2 ok
    assert (d["violations"], d["windows"]) == (1, 3)
    assert d["rate"] == pytest.approx(1 / 3) and d["max_excess"] == pytest.approx(0.5)


def test_mi_analysis_is_json_safe_and_consistent():
    st = _chain_states(m=96)
    out = mi_analysis(st, MIConfig(estimator="renyi", n_tokens=96, matrix_tokens=96, seed=3))
    json.dumps(out)
    assert set(out["criteria_scores"]["mi-prun"]) == {"attention", "mlp", "layer"}
    assert out["n_tokens"] == out["matrix_tokens"] == 96
    assert np.allclose(matrix_block_scores(out["matrix"]), out["scores"]["layer"])
    assert 0.0 <= out["dpi"]["rate"] <= 1.0
    small = mi_analysis(st, MIConfig(estimator="cka", n_tokens=96, matrix_tokens=32, seed=3))
    assert small["matrix_tokens"] == 32 and len(small["matrix"]) == 6
    none = mi_analysis(st, MIConfig(estimator="cka", n_tokens=64, matrix_tokens=0))
    assert none["matrix"] is None and none["dpi"] is None


def test_rms_token_norm_ignores_per_token_scale():
    st = _chain_states(m=96)
    scale = np.random.default_rng(1).uniform(0.1, 50, (96, 1, 1)).astype(np.float32)
    scaled = {k: v * scale for k, v in st.items()}
    a = StateMI(st, "cka", None, token_norm="rms").block_mi("attention")
    b = StateMI(scaled, "cka", None, token_norm="rms").block_mi("attention")
    assert np.allclose(a, b, rtol=1e-4)
    assert not np.allclose(StateMI(scaled, "cka", None).block_mi("attention"), a, rtol=1e-4)
    with pytest.raises(SelectionError, match="token_norm"):
        StateMI(st, "cka", token_norm="l2")


def test_nonfinite_token_rows_are_dropped():
    st = _chain_states(m=64)
    st["mid"][5, 2, 1] = np.inf
    smi = StateMI(st, "cka", n_tokens=None)
    assert smi.dropped_nonfinite == 1 and smi.n_tokens == 63


# ---- end to end: analysis pass, criterion, JSON ---------------------------------------------------


@pytest.fixture(scope="module")
def mi_run():
    lm = tiny_loaded("llama", layers=5, hidden=32)
    cfg = AnalysisConfig(state_tokens=128, extensions=("mi",), granularity="layer", batch_size=4)
    cfg.mi = MIConfig(estimator="renyi", n_tokens=128, matrix_tokens=64)
    return analyze(lm, random_tokens(4, 40), cfg)


def test_extension_registered_and_result_has_scores(mi_run):
    assert "mi" in EXTENSIONS and "mi-prun" in CRITERIA
    cs = mi_run.extras["criteria_scores"]["mi-prun"]
    assert set(cs) == {"attention", "mlp", "layer"}
    for g in cs:
        assert len(cs[g]) == 5 and np.isfinite(cs[g]).all()
    mi = mi_run.extras["mi"]
    assert "criteria_scores" not in mi                       # merged, not duplicated
    assert mi["estimator"] == "renyi" and mi["n_tokens"] == 128 and mi["matrix_tokens"] == 64
    assert len(mi["matrix"]) == 6 and mi["dpi"]["windows"] == 10
    assert mi_run.baselines["mi-prun"]["drop_order"]


@pytest.mark.parametrize("g", ["attention", "mlp", "layer"])
def test_select_and_json_round_trip(mi_run, g, tmp_path):
    sel = select(mi_run, "mi-prun", 2, g)
    assert len(sel.blocks) == 2 and not set(sel.blocks) & set(mi_run.protected)
    s = np.array(mi_run.extras["criteria_scores"]["mi-prun"][g])
    free = [i for i in range(5) if i not in mi_run.protected]
    assert sel.order == sorted(free, key=lambda i: (s[i], i))  # lowest −MI (highest MI) first
    path = tmp_path / "run.json"
    mi_run.save(path)
    back = AnalysisResult.load(path)
    assert np.allclose(scores_for(back, "mi-prun", g), s)
    assert select(back, "mi-prun", 2, g).blocks == sel.blocks


def test_criterion_without_mi_data_says_run_with_mi():
    lm = tiny_loaded("llama", layers=4, hidden=32)
    r = analyze(lm, random_tokens(2, 24), AnalysisConfig(granularity="layer"))
    with pytest.raises(SelectionError) as exc:
        select(r, "mi-prun", 1)
    assert "--mi" in str(exc.value)
    assert r.baselines["mi-prun"]["available"] is False
    with pytest.raises(SelectionError, match="state"):
        analyze(lm, random_tokens(2, 24), AnalysisConfig(extensions=("mi",)))


def test_select_cli_with_mi_prun(mi_run, tmp_path):
    from analysis.cli.main import main

    run, plan = tmp_path / "run.json", tmp_path / "plan.json"
    mi_run.save(run)
    assert main(["select", "--run", str(run), "--criterion", "mi-prun", "--k", "2", "--granularity", "mlp",
                 "--out", str(plan)]) == 0
    assert len(json.loads(plan.read_text())["drop_mlp"]) == 2


def test_import_order_registers_everything():
    """Any score / MI module imported before analysis.score.criteria (run-first is the in-process case): every
    criterion is registered, and no analysis.score module (nor the MI estimators) imports torch."""
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    check = "import analysis.score.criteria as c; assert 'mi-prun' in c.CRITERIA and 'delta-ppl' in c.CRITERIA"
    for mod in ("analysis.score.blocksearch", "analysis.score.miprun", "analysis.score.agreement",
                "analysis.score.baselines", "analysis.measure.mi", "analysis.measure.mi_states"):
        subprocess.run([sys.executable, "-c", f"import {mod}, sys; {check}; assert 'torch' not in sys.modules"],
                       check=True, cwd=root)
    subprocess.run([sys.executable, "-c", f"import analysis.measure.mi_states; {check}; import analysis.run as r; "
                                          "assert 'mi' in r.EXTENSIONS"], check=True, cwd=root)


def test_mi_stage_reports_pairs_and_stop_keeps_the_token_pass():
    lm = tiny_loaded("llama", layers=5, hidden=32)
    cfg = AnalysisConfig(state_tokens=128, extensions=("mi",), granularity="layer", batch_size=4)
    cfg.mi = MIConfig(estimator="renyi", n_tokens=128, matrix_tokens=64)
    reports, mi_pairs = [], {"n": 0}

    def progress(f, msg):
        reports.append((f, msg))

    def stop():                                # stop after three MI pairs (the token pass polls too)
        if any(m.startswith("MI-PRUN") for _, m in reports):
            mi_pairs["n"] += 1
        return mi_pairs["n"] > 3

    r = analyze(lm, random_tokens(4, 40), cfg, progress=progress, should_stop=stop)
    mi_msgs = [m for _, m in reports if m.startswith("MI-PRUN")]
    assert mi_msgs and all(re.match(r"MI-PRUN: \d+/\d+ pairs · about \d+ s left", m) for m in mi_msgs)
    assert "mi" not in r.extras and r.manifest["stopped_during"] == "mi"
    assert r.n_sequences == 4 and r.manifest.get("completed", True)          # the token pass is whole
    assert any("stopped during MI-PRUN after" in w for w in r.warnings)
    full = []
    done = analyze(lm, random_tokens(4, 40), cfg, progress=lambda f, m: full.append(m))
    total = int(re.search(r"/(\d+) pairs", [m for m in full if m.startswith("MI-PRUN")][-1]).group(1))
    # 5 layers × 3 granularities of block pairs + the 6×5/2 matrix pairs (on another token subset)
    assert total == 15 + 15 and "mi" in done.extras


def test_extensions_with_the_old_three_argument_signature_still_run():
    from analysis.run import EXTENSIONS

    seen = {}
    EXTENSIONS["_old_style"] = lambda stats, lm, cfg: (seen.update(n=stats.n_done), {"ok": True})[1]
    try:
        lm = tiny_loaded("llama", layers=2, hidden=32)
        cfg = AnalysisConfig(extensions=("_old_style",), batch_size=2)
        r = analyze(lm, random_tokens(2, 16), cfg)
    finally:
        EXTENSIONS.pop("_old_style", None)
    assert r.extras["_old_style"] == {"ok": True} and seen["n"] == 2
