"""Perplexity protocol arithmetic, agreement, latency, generations, sweeps (reuse is exact) and exports."""
import json
import math

import pytest
import torch

from analysis.errors import DataError, SelectionError
from analysis.evaluate import (EvalConfig, agreement, generate_pair, kv_cache_report, latency, make_windows,
                               param_report, perplexity, prepare_eval, sweep)
from analysis.export import (kept_ranges, llama_cpp_prune_layers, mergekit_yaml, reproduction_manifest,
                             rows_to_csv)
from analysis.models.plan import Plan
from analysis.testing import random_tokens, tiny_loaded


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


STREAM = random_tokens(1, 300, seed=7)[0]


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded("llama", layers=6)


def _manual_nll(model, windows, labels_from=None):
    """Sum of -log p(target) with log_softmax over full logits, and the number of scored targets."""
    total, n = 0.0, 0
    with torch.inference_mode():
        for ids, first in windows:
            lp = torch.log_softmax(model(ids[None]).logits[0].float(), -1)        # [n, vocab]
            tgt = ids[1:]
            picked = lp[:-1].gather(-1, tgt[:, None])[:, 0]
            total -= float(picked[first - 1:].sum())
            n += len(tgt) - (first - 1)
    return total, n


def test_perplexity_by_hand_disjoint_windows_remainder_dropped(lm):
    r = perplexity(lm, STREAM, cfg=EvalConfig(window=64))
    windows = [(STREAM[i * 64:(i + 1) * 64], 1) for i in range(300 // 64)]          # 4 windows; 44 dropped
    nll, n = _manual_nll(lm.model, windows)
    assert r["tokens"] == n == 4 * 63
    assert r["nll"] == pytest.approx(nll / n, rel=1e-6)
    assert r["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-6)
    p = r["protocol"]
    assert p["window"] == 64 and p["stride"] is None and p["remainder"] == "dropped" and p["bos"] is False
    assert p["tokens_scored"] == 252 and p["tokens_used"] == 256 and p["dtype"] == "fp32" and p["model"] == "tiny-llama"


def test_bos_prepended_to_every_window_for_gemma():
    g = tiny_loaded("gemma3", layers=3)
    bos = g.model.config.bos_token_id
    r = perplexity(g, STREAM, cfg=EvalConfig(window=64))
    windows = [(torch.cat([torch.tensor([bos]), STREAM[i * 63:(i + 1) * 63]]), 1) for i in range(300 // 63)]
    nll, n = _manual_nll(g.model, windows)
    assert r["protocol"]["bos"] is True and r["tokens"] == n == 4 * 63
    assert r["nll"] == pytest.approx(nll / n, rel=1e-6)


def test_stride_protocol_matches_hf_sliding_window(lm):
    stream = STREAM[:200]
    r = perplexity(lm, stream, cfg=EvalConfig(window=64, stride=24))
    total, n, prev_end = 0.0, 0, 0                     # the Hugging Face guide's loop, labels -100
    with torch.inference_mode():
        for begin in range(0, len(stream), 24):
            end = min(begin + 64, len(stream))
            ids = stream[begin:end][None]
            labels = ids.clone()
            labels[:, :-(end - prev_end)] = -100
            lg = lm.model(ids).logits[0, :-1].float()
            tgt = labels[0, 1:]
            keep = tgt != -100
            total += float(torch.nn.functional.cross_entropy(lg[keep], tgt[keep], reduction="sum"))
            n += int(keep.sum())
            prev_end = end
            if end == len(stream):
                break
    assert r["tokens"] == n == len(stream) - 1                      # every token but the first, once
    assert r["nll"] == pytest.approx(total / n, rel=1e-6)
    assert r["protocol"]["stride"] == 24 and r["protocol"]["remainder"].startswith("none")


def test_windows_and_errors(lm):
    assert [(tuple(ids.shape), f) for ids, f in make_windows(STREAM[:10], 64)] == [((1, 10), 1)]  # short: one window
    b = make_windows(STREAM, 64, batch_size=3)
    assert [tuple(ids.shape) for ids, _ in b] == [(3, 64), (1, 64)]
    with pytest.raises(DataError, match="stride 80 is larger"):
        perplexity(lm, STREAM, cfg=EvalConfig(window=64, stride=80))
    with pytest.raises(DataError, match="beyond the model's context"):
        perplexity(lm, STREAM, cfg=EvalConfig(window=4096))
    with pytest.raises(DataError, match="not enough tokens"):
        perplexity(lm, STREAM[:1], cfg=EvalConfig(window=64))
    with pytest.raises(DataError, match="vocabulary"):
        perplexity(lm, torch.full((100,), 999), cfg=EvalConfig(window=64))


def test_logit_chunks_and_batches_do_not_change_the_result(lm):
    a = perplexity(lm, STREAM, cfg=EvalConfig(window=64))
    b = perplexity(lm, STREAM, cfg=EvalConfig(window=64, logits_chunk=7, batch_size=2))
    assert b["nll"] == pytest.approx(a["nll"], rel=1e-6)


def test_text_input_and_max_tokens(lm):
    docs = ["The quick brown fox jumps over the lazy dog. " * 20, "Pack my box with five dozen liquor jugs. " * 20]
    w = prepare_eval(lm, docs, EvalConfig(window=64, max_tokens=200))
    assert w.meta["tokens_in_stream"] == 200 and w.n_windows == 3 and w.meta["corpus"] == "text"


def test_plan_uses_a_view_and_agreement(lm):
    from analysis.models.loading import weights_hash

    h0 = weights_hash(lm.model)
    cfg = EvalConfig(window=64)
    base = perplexity(lm, STREAM, cfg=cfg)
    plan = Plan(drop_attn=[2, 3])
    pruned = perplexity(lm, STREAM, plan, cfg=cfg)
    assert pruned["nll"] != base["nll"] and pruned["plan"]["drop_attn"] == [2, 3]
    assert weights_hash(lm.model) == h0
    same = agreement(lm, Plan(), STREAM, cfg)
    assert same["kl"] == pytest.approx(0, abs=1e-7) and same["top1"] == 1.0
    a = agreement(lm, plan, STREAM, cfg)
    assert a["kl"] > 0 and 0 <= a["top1"] < 1 and a["tokens"] == base["tokens"]
    assert a["perplexity_original"] == base["perplexity"] and a["perplexity_pruned"] == pruned["perplexity"]


def test_sweep_reuse_equals_plain_evaluation_exactly(lm):
    cfg = EvalConfig(window=48, batch_size=2)
    stream = STREAM[:150]                                                   # 3 windows: batches of 2 and 1
    orders = {"front": [1, 2, 3, 4, 5, 0], "tail": [5, 4, 3, 2, 1]}          # tail k=4 drops layers 2..5
    for g in ("layer", "attention", "mlp"):
        fast = sweep(lm, orders, ["front", "tail"], range(5), stream, g, cfg)
        slow = sweep(lm, orders, ["front", "tail"], range(5), stream, g, cfg, reuse=False)
        assert [r["nll"] for r in fast["rows"]] == [r["nll"] for r in slow["rows"]]
        for row in fast["rows"][::2] + fast["rows"][-1:]:
            plain = perplexity(lm, stream, Plan.from_dict(row["plan"]), cfg)
            assert row["nll"] == plain["nll"] and row["perplexity"] == plain["perplexity"]
        assert len(fast["rows"]) == 10 and fast["unique_plans"] == 9        # k = 0 evaluated once
    assert fast["rows"][0]["params_removed_fraction"] == 0 and fast["rows"][4]["params_removed_fraction"] > 0


def test_sweep_from_analysis_run(lm):
    from analysis.run import AnalysisConfig, analyze

    run = analyze(lm, random_tokens(4, 24), AnalysisConfig(estimator="bucket", granularity="layer"))
    res = sweep(lm, run, ["entrodrop", "random"], [0, 1, 2, 9], STREAM, cfg=EvalConfig(window=64))
    assert [(r["criterion"], r["k"]) for r in res["rows"]] == [("entrodrop", k) for k in (0, 1, 2)] + \
        [("random", k) for k in (0, 1, 2)]
    assert {s["k"] for s in res["skipped"]} == {9}
    assert res["rows"][2]["plan"]["source"]["criterion"] == "entrodrop" and len(res["rows"][2]["blocks"]) == 2


def test_param_and_kv_reports(lm):
    r = param_report(lm, Plan(drop_attn=[1]))
    layer = lm.model.model.layers[1]
    attn = sum(p.numel() for p in layer.self_attn.parameters()) + layer.input_layernorm.weight.numel()
    assert r["removed"] == attn and r["attention_layers"] == 5 and r["layers"] == 6
    cfg = lm.model.config
    per_layer = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    kv = kv_cache_report(lm.model)
    assert kv["kv_bytes_per_token"] == 6 * per_layer and kv["sliding_layers"] == 0
    g = tiny_loaded("gemma3", layers=3)
    assert kv_cache_report(g.model)["sliding_layers"] == 2


def test_latency_and_generation_smoke(lm):
    res = latency(lm, Plan(drop_attn=[0], drop_layers=[5]), batch_sizes=(1, 2), prompt_len=8, new_tokens=2,
                  repeats=2, warmup=1)
    assert [r["batch_size"] for r in res["rows"]] == [1, 2]
    row = res["rows"][0]
    assert row["prefill_tokens_per_s"]["median"] > 0 and row["decode_tokens_per_s"]["p95"] > 0
    assert res["kv_layers"] == 4 and res["params"]["total"] < param_report(lm)["total"]
    same = generate_pair(lm, Plan(), "hello", max_new_tokens=5)
    assert same["original"] == same["pruned"] and same["first_divergence"] is None
    diff = generate_pair(lm, Plan(drop_layers=[0, 1, 2]), "hello", max_new_tokens=5)
    assert len(diff["pruned_ids"]) == 5


def test_latency_reports_its_spread_and_adds_repeats_until_tight_or_capped(lm, monkeypatch):
    import analysis.evaluate.cost as ev

    res = latency(lm, None, prompt_len=8, new_tokens=2, repeats=3, warmup=0)     # fixed repeats
    row = res["rows"][0]
    for q in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        s_ = row[q]
        assert s_["min"] <= s_["p10"] <= s_["median"] <= s_["p90"] <= s_["max"] and s_["n"] == 3
        assert s_["spread"] == pytest.approx((s_["p90"] - s_["p10"]) / s_["median"])
    assert row["repeats_done"] == 3 and "busy" in res["machine"]
    # a machine whose timings never settle: repeats grow to max_repeats, and the row says it is not tight
    times = iter([(0.01, 0.01), (0.02, 0.02)] * 100)                 # every other repeat twice as slow
    monkeypatch.setattr(ev, "_one_run", lambda model, ids, n: next(times))
    noisy = latency(lm, None, prompt_len=8, new_tokens=2, repeats=3, warmup=0, max_repeats=7, time_cap_s=1e9)
    assert noisy["rows"][0]["repeats_done"] == 7 and noisy["rows"][0]["converged"] is False
    # steady timings: stops at the minimum number of repeats, converged
    monkeypatch.setattr(ev, "_one_run", lambda model, ids, n: (0.01, 0.02))
    steady = latency(lm, None, prompt_len=8, new_tokens=2, repeats=3, warmup=0, max_repeats=50)
    assert steady["rows"][0]["repeats_done"] == 3 and steady["rows"][0]["converged"] is True
    with pytest.raises(DataError):
        latency(lm, None, repeats=3, max_repeats=2)
    with pytest.raises(DataError):
        latency(lm, None, target_spread=float("nan"))


def test_overlapping_spreads_are_within_noise():
    from analysis.evaluate import overlapping

    a = {"p10": 90.0, "p90": 110.0}
    assert overlapping(a, {"p10": 105.0, "p90": 130.0}) and not overlapping(a, {"p10": 111.0, "p90": 120.0})
    assert not overlapping(a, None) and not overlapping({"median": 1.0}, a)


def test_exports(tmp_path, lm):
    plan = Plan(drop_layers=[20, 21, 25])
    y = mergekit_yaml(plan, "HuggingFaceTB/SmolLM2-135M-Instruct", 30)
    assert "layer_range: [0, 20]" in y and "layer_range: [22, 25]" in y and "layer_range: [26, 30]" in y
    assert "merge_method: passthrough" in y
    assert kept_ranges(5, [0, 4]) == [(1, 4)]
    assert llama_cpp_prune_layers(plan) == "20,21,25"
    with pytest.raises(SelectionError, match="whole layers"):
        llama_cpp_prune_layers(Plan(drop_attn=[3]))
    with pytest.raises(SelectionError, match="whole layers"):
        mergekit_yaml(Plan(drop_mlp=[3]), "m", 30)
    text = rows_to_csv([{"k": 0, "perplexity": 3.5, "plan": {"drop_layers": [1], "source": {"x": 1}}},
                        {"k": 1, "perplexity": float("nan")}], tmp_path / "r.csv")
    lines = text.splitlines()
    assert lines[0] == "k,perplexity,plan.drop_layers" and lines[1] == "0,3.5,[1]" and lines[2] == "1,,"
    m = reproduction_manifest(lm, plan, {"corpus": "wiki"}, argv=["eval", "--model", "smollm2"])
    assert m["command"] == "python -m analysis eval --model smollm2" and m["model"]["fingerprint"]
    assert m["plan"]["drop_layers"] == [20, 21, 25] and "torch" in m["versions"]
    json.dumps(m)


def test_sweep_trie_reuse_on_mixed_random_plans_is_exact(lm):
    """Plans mixing layer, attention and MLP drops in any order: the prefix-sharing walk equals plain
    evaluation bit for bit, including plans that drop everything after their first change."""
    import random

    rng = random.Random(0)
    cfg = EvalConfig(window=40, batch_size=2)
    stream = STREAM[:120]
    plans = {}
    for i in range(10):
        layers = rng.sample(range(6), rng.randint(0, 2))
        rest = [x for x in range(6) if x not in layers]
        plans[f"p{i}"] = Plan(drop_layers=layers, drop_attn=rng.sample(rest, rng.randint(0, 2)),
                              drop_mlp=rng.sample(rest, rng.randint(0, 2)))
    plans["late"] = Plan(drop_layers=[3, 4, 5])
    plans["late2"] = Plan(drop_layers=[4, 5], drop_attn=[3])
    from analysis.evaluate import sweep_nll
    from analysis.models.prefix import prefix_schedule

    windows = prepare_eval(lm, stream, cfg)
    items = [((name,), p) for name, p in plans.items()]
    fast = sweep_nll(lm, items, windows, cfg, reuse=True, progress=None)
    for (name,), p in items:
        assert fast[(name,)] == perplexity(lm, stream, p, cfg)["nll_sum"], name
    steps = prefix_schedule(lm, items)
    assert sum(len(s.layer_ids) for s in steps[1:]) < 6 * len(items)  # work was actually shared
