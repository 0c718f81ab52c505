"""The bake-off (analysis.recommend): paired bootstrap with known answers, disjoint judging text, the plan in
rec.json loading in `eval --plan`, resuming from the cache, and the CLI's exit codes."""
import json

import numpy as np
import pytest

from analysis.cli.main import main
from analysis.data import SampleConfig, load_corpus, sample_windows
from analysis.errors import DataError, SelectionError
from analysis.evaluate.quality import perplexity
from analysis.evaluate.windows import EvalConfig, EvalWindows, batch_windows
from analysis.models.plan import Plan
from analysis.recommend.bakeoff import recommend
from analysis.recommend.config import RecommendConfig, auto_ks, parse_ks
from analysis.recommend.judge import NLLCache, Stopped, check_disjoint, judging_domains, plans_nll
from analysis.recommend.stats import paired_table
from analysis.testing import save_tiny_checkpoint, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(heldout_tokens=512, window=64, n_boot=200, delta_ppl_windows=2, ks="1,2", heal=("none",))


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded(layers=8)


@pytest.fixture(scope="module")
def calib(lm):
    return sample_windows(load_corpus("wiki"), lm.tokenizer, SampleConfig(n_samples=4, seq_len=64))


@pytest.fixture(scope="module")
def rec(lm, calib):
    return recommend(lm, calib, RecommendConfig(**SMALL))


# ---- paired bootstrap: known answers ---------------------------------------------------------------------

def test_identical_rows_are_indistinguishable_and_dense_is_zero():
    rng = np.random.default_rng(0)
    n = np.full(12, 63.0)
    d = rng.uniform(150, 250, 12)
    p = d + rng.uniform(5, 40, 12)
    rnd = {f"r{s}": d + rng.uniform(0, 80, 12) for s in range(5)}
    t = paired_table(d, {"a": p, "b": p.copy(), "dense": d.copy()}, n, rnd, n_boot=500, level=0.9, seed=1)
    assert t["rows"]["dense"]["dppl"] == 0 and t["rows"]["dense"]["lo"] == 0 == t["rows"]["dense"]["hi"]
    pr = t["pairs"]["a"]["b"]
    assert pr["lo"] == 0 == pr["hi"] and not pr["distinguishable"]
    assert t["pairs"]["a"]["dense"]["distinguishable"]          # every window worse: the interval excludes 0
    assert t["rows"]["a"]["lo"] <= t["rows"]["a"]["dppl"] <= t["rows"]["a"]["hi"]
    assert t["random"]["n_seeds"] == 5 and t["random"]["seeds_min"] <= t["random"]["dppl"] <= t["random"]["seeds_max"]


def test_constant_per_token_shift_gives_its_exact_dppl():
    n = np.array([50.0, 70.0, 64.0, 30.0])
    d = np.array([100.0, 180.0, 150.0, 60.0])
    t = paired_table(d, {"x": d + 0.1 * n}, n, None, n_boot=300)
    want = 100 * np.expm1(0.1)
    for key in ("dppl", "lo", "hi"):
        assert t["rows"]["x"][key] == pytest.approx(want, rel=1e-9)


def test_ks_auto_and_limit():
    assert auto_ks(27) == [7, 13]
    assert parse_ks("auto", 5) is None
    assert parse_ks("3,1", 5) == [1, 3]
    with pytest.raises(SelectionError, match="more than half"):
        parse_ks("6", 5)
    with pytest.raises(SelectionError):
        parse_ks("0", 5)


# ---- judging text ----------------------------------------------------------------------------------------

def test_judging_domains_leave_out_calibration():
    got = judging_domains("", ["wiki"])
    assert "wiki" not in got and "news" in got
    assert judging_domains("news, code", ["wiki"]) == ["news", "code"]


def test_calibration_windows_are_never_judged(calib):
    ids = calib.input_ids
    reused = EvalWindows(batch_windows([(ids[1], 1), (ids[2], 1)], 2))
    with pytest.raises(DataError, match="share 16 consecutive tokens"):
        check_disjoint(ids, reused)


def test_rec_judges_other_domains_disjointly(rec):
    assert rec["calibration"]["domains"] == ["wiki"]
    assert "wiki" not in rec["judging"]["domains"] and rec["judging"]["disjoint"]["shared"] == 0
    assert rec["judging"]["windows"] >= 4


# ---- per-window NLL ---------------------------------------------------------------------------------------

def test_plan_nll_matches_perplexity_and_empty_plan_is_dense(lm, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_RUNS", str(tmp_path))
    w = EvalWindows(batch_windows([(r, 1) for r in calib.input_ids], 2))
    plan = Plan(drop_attn=[3, 5])
    dense, dense2, pruned = plans_nll(lm, [Plan(), Plan(), plan], w, NLLCache("t", enabled=False))
    assert np.array_equal(dense, dense2)
    ref = perplexity(lm, calib.input_ids, plan, EvalConfig(batch_size=2))
    assert pruned.sum() == pytest.approx(ref["nll_sum"], rel=1e-6)
    assert dense.sum() == pytest.approx(perplexity(lm, calib.input_ids, None, EvalConfig(batch_size=2))["nll_sum"],
                                        rel=1e-6)


# ---- the bake-off ------------------------------------------------------------------------------------------

def test_rows_carry_intervals_band_and_a_recommendation(rec):
    assert rec["ks"] == [1, 2]
    labels = {r["label"] for r in rec["rows"]}
    assert {"cosine", "block-influence", "tail", "delta-ppl", "entrodrop[bucket]", "entrodrop[knn]"} <= labels
    assert not any(lab.startswith("random") for lab in labels)               # random is the band
    for r in rec["rows"]:
        assert r["lo"] <= r["dppl"] + 1e-9 and r["dppl"] <= r["hi"] + 1e-9
        assert r["standing"] in ("better than random", "worse than random", "not distinguishable from random")
    for k in (1, 2):
        band = rec["random"][k]
        assert band["n_seeds"] == 5 and band["lo"] <= band["hi"]
        best = min((r for r in rec["rows"] if r["k"] == k), key=lambda r: r["dppl"])
        assert rec["recommendations"][k]["label"] == best["label"]
        assert f"k = {k}" in rec["recommendations"][k]["sentence"] and "random" in rec["recommendations"][k]["sentence"]
    assert rec["plan"] and rec["choice"]["k"] in (1, 2)
    assert {s["criterion"] for s in rec["skipped"]} >= {"angular", "mi-prun"}


def test_linear_healing_rows(lm, calib):
    r = recommend(lm, calib, RecommendConfig(**{**SMALL, "ks": "1", "heal": ("none", "linear"), "heal_top": 1}))
    healed = [row for row in r["rows"] if row["heal"] == "linear"]
    assert len(healed) == 1 and healed[0]["lo"] <= healed[0]["hi"]


def test_stop_then_resume_from_cache(lm, calib, tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_RUNS", str(tmp_path))
    cfg = RecommendConfig(**{**SMALL, "ks": "1", "delta_ppl_windows": 0})
    seen = {"judging": False}

    def progress(frac, msg):
        seen["judging"] |= msg.startswith("judging") and frac < 0.8   # after the first judged batch

    with pytest.raises(Stopped):
        recommend(lm, calib, cfg, progress=progress, should_stop=lambda: seen["judging"])
    files = list((tmp_path / "recommend").glob("*.json"))
    assert files, "what was judged is cached"
    again = recommend(lm, calib, cfg)
    fresh = recommend(lm, calib, cfg, cache=False)
    assert [r["dppl"] for r in again["rows"]] == pytest.approx([r["dppl"] for r in fresh["rows"]])


# ---- rec.json: a plan file for eval / prune, and the CLI ---------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model", layers=8)


ARGS = ["--corpus", "wiki", "--samples", "4", "--seq-len", "64", "--heldout", "news,code", "--heldout-tokens", "512",
        "--window", "64", "--heal", "none", "--n-boot", "200", "--delta-ppl-windows", "2", "--quiet"]


def test_cli_writes_rec_json_that_eval_accepts(ckpt, tmp_path):
    out = tmp_path / "rec.json"
    assert main(["recommend", "--model", str(ckpt), "--k", "1,2", "--out", str(out), *ARGS]) == 0
    rec = json.loads(out.read_text())
    assert rec["kind"] == "entroscope-recommendation" and rec["plan"]["drop_attn"]
    plan = Plan.load(out)
    assert plan.drop_attn == rec["plan"]["drop_attn"]
    ev = tmp_path / "eval.json"
    assert main(["eval", "--model", str(ckpt), "--plan", str(out), "--corpus", "news", "--max-tokens", "256",
                 "--window", "64", "--out", str(ev), "--quiet"]) == 0
    assert json.loads(ev.read_text())["plan"]["drop_attn"] == rec["plan"]["drop_attn"]
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(ckpt), "--plan", str(out), "--out", str(pruned), "--quiet"]) == 0
    assert (pruned / "config.json").exists()


@pytest.mark.parametrize("bad", [["--k", "0"], ["--k", "9"], ["--seeds", "3"], ["--heal", "none,bogus"],
                                 ["--level", "1.5"], ["--heldout", "nosuchdomain"]])
def test_cli_refuses_with_exit_2(ckpt, tmp_path, bad, capsys):
    args = ["recommend", "--model", str(ckpt), "--out", str(tmp_path / "r.json"), *ARGS, *bad]
    try:
        code = main(args)
    except SystemExit as exc:                 # argparse's own refusals: "error: ..." (exit status 2 by convention)
        code = exc.code if isinstance(exc.code, int) else 2
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_settings_round_trip_through_the_cli():
    """Every RecommendConfig setting is a CLI flag, and a config written as flags parses back to itself."""
    import dataclasses

    from analysis.cli.main import build_parser
    from analysis.settings import from_args, specs, to_argv

    assert {f.name for f in dataclasses.fields(RecommendConfig)} == {s.name for s in specs(RecommendConfig, cli=True)}
    cfg = RecommendConfig(granularity="layer", ks="2,3", estimators=("knn",), sinks="keep", protect="auto", mi=True,
                          delta_ppl_windows=3, seeds=7, heal=("none", "distill"), heal_top=2, heldout="news",
                          heldout_tokens=999, window=64, n_boot=300, level=0.8, max_dppl=20.0, seed=5, batch_size=2)
    argv = ["recommend", "--out", "r.json", *to_argv(cfg)]
    assert from_args(RecommendConfig, build_parser().parse_args(argv)) == cfg
    assert from_args(RecommendConfig, build_parser().parse_args(["recommend", "--out", "r.json"])) == RecommendConfig()


def test_layer_granularity_with_mi_has_mi_prun_fast_block_select_and_angular(lm, calib):
    cfg = RecommendConfig(**{**SMALL, "granularity": "layer", "mi": True, "ks": "1,2", "delta_ppl_windows": 0})
    r = recommend(lm, calib, cfg)
    labels = {row["label"] for row in r["rows"]}
    assert {"mi-prun", "mi-prun[fbs]", "angular", "cosine"} <= labels, labels
    fbs = [row for row in r["rows"] if row["label"] == "mi-prun[fbs]"]
    assert sorted(len(row["blocks"]) for row in fbs) == [1, 2]


def test_gemma3_bos_windows_and_a_healing_that_does_not_apply_is_skipped():
    g = tiny_loaded("gemma3", layers=8)
    calib = sample_windows(load_corpus("wiki"), g.tokenizer, SampleConfig(n_samples=4, seq_len=64))
    r = recommend(g, calib, RecommendConfig(**{**SMALL, "ks": "1", "heal": ("none", "linear"), "heal_top": 1,
                                               "delta_ppl_windows": 0}))
    assert r["judging"]["disjoint"]["shared"] == 0 and r["rows"]
    bad = [s for s in r["skipped"] if s.get("heal") == "linear"]
    assert bad and "sandwich norm" in bad[0]["reason"]               # linear cannot fold past Gemma-3's norms
    assert all(row["heal"] == "none" for row in r["rows"])


def test_the_check_on_other_text_redraws_the_bake_offs_random_band(rec):
    """bench/recommend_check.py re-draws the random band from rec.json alone; it must be the bake-off's own draw."""
    from bench.recommend_check import _random_blocks

    stored = {"settings": rec["settings"], "num_layers": rec["num_layers"], "protected": rec["protected"]}  # no band
    drawn = {k: _random_blocks(stored, k) for k in rec["ks"]}
    for k in rec["ks"]:
        assert len(drawn[k]) == rec["settings"]["seeds"] == 5
        assert all(len(b) == k and not set(b) & set(rec["protected"]) for b in drawn[k])
        assert drawn[k] == rec["random"][k]["blocks"]
