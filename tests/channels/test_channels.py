"""Tests for analysis.channels: iterative structured (MLP channel / KV-group) pruning with hybrid calibration."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import analysis.channels as CH
from analysis.channels import pipeline
from analysis.data import TokenSet, apportion
from analysis.errors import EntroscopeError, SelectionError
from analysis.models.loading import count_params, weights_hash
from analysis.testing import random_tokens, tiny_loaded, tiny_model, tiny_tokenizer


def toks(n=6, t=32, seed=0, domains=("a", "b", "c")):
    ids = random_tokens(n, t, seed)
    return TokenSet(ids, [domains[i % len(domains)] for i in range(n)], {"kind": "test"})


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = random_tokens(2, 24, seed=7)


@pytest.fixture(scope="module")
def llama():
    return tiny_loaded("llama", layers=3, hidden=64)


def test_ratio_zero_leaves_outputs_unchanged(llama):
    res = CH.iterative_channel_prune(llama, tokens=toks(), ratio=0.0, steps=2, multiple_of=8)
    assert res.report["final"]["widths"] == [128] * 3
    assert not any(s["calibrated"] for s in res.report["steps"])        # nothing to do: no calibration pass
    assert torch.equal(logits(res.model, IDS), logits(llama.model, IDS))
    assert res.model is not llama.model


@pytest.mark.parametrize("method,agg", [("act_weight", "pooled"), ("act_weight", "mean"), ("act_weight", "min"),
                                        ("fluctuation", "pooled"), ("taylor", "pooled")])
def test_zeroed_down_column_scores_zero(method, agg):
    model = tiny_model("llama", layers=2, hidden=64)
    model.model.layers[1].mlp.down_proj.weight[:, 5] = 0
    scores = CH.channel_scores(model, toks(), method=method, domain_agg=agg)
    assert [len(s) for s in scores] == [128, 128]
    assert scores[1][5] == 0
    assert (scores[0] > 0).all() and (torch.cat([scores[1][:5], scores[1][6:]]) > 0).all()


def test_act_weight_formula_and_domain_aggregation():
    model = tiny_model("llama", layers=1, hidden=64)
    ts = toks(n=4, t=16, domains=("a", "b"))
    acts = []
    h = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: acts.append(a[0].detach()))
    with torch.no_grad():
        model(ts.input_ids)
    h.remove()
    a = acts[0].reshape(-1, 128).double()
    w = model.model.layers[0].mlp.down_proj.weight.double().norm(dim=0)
    pooled = CH.channel_scores(model, ts, "act_weight", "pooled")[0]
    assert torch.allclose(pooled, a.norm(dim=0) * w, rtol=1e-5)
    per = [acts[0][[i for i in range(4) if ts.domains[i] == d]].reshape(-1, 128).double().norm(dim=0) * w
           for d in ("a", "b")]
    norm = [p / p.mean() for p in per]
    assert torch.allclose(CH.channel_scores(model, ts, "act_weight", "min")[0], torch.minimum(*norm), rtol=1e-5)
    assert torch.allclose(CH.channel_scores(model, ts, "act_weight", "mean")[0], (norm[0] + norm[1]) / 2, rtol=1e-5)
    assert torch.allclose(CH.channel_scores(model, ts, "act_weight", "max")[0], torch.maximum(*norm), rtol=1e-5)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_param_count_matches_target_within_one_multiple_per_layer(llama, allocation):
    mo, r = 8, 0.3
    res = CH.iterative_channel_prune(llama, tokens=toks(), ratio=r, steps=2, multiple_of=mo, allocation=allocation)
    widths = res.report["final"]["widths"]
    assert all(w % mo == 0 for w in widths)
    assert [len(k) for k in res.kept_channels] == widths
    hidden, L, m = 64, 3, 128
    per_channel = 3 * hidden                                      # gate row + up row + down column
    target_removed = round(r * m * L)
    removed = L * m - sum(widths)
    assert abs(removed - target_removed) <= L * mo
    dense = count_params(llama.model)
    assert count_params(res.model) == dense - removed * per_channel
    assert abs(count_params(res.model) - (dense - target_removed * per_channel)) <= L * mo * per_channel
    if allocation == "uniform":
        assert all(abs(w - (m - round(r * m))) <= mo // 2 for w in widths)
    assert res.report["steps"][0]["widths"] != widths or allocation == "global"   # two real steps


def test_one_step_equals_one_shot(llama):
    ts = toks()
    res = CH.iterative_channel_prune(llama, tokens=ts, ratio=0.25, steps=1, multiple_of=8)
    scores = CH.channel_scores(llama.model, ts)
    k = CH.round_width(128 - round(0.25 * 128), 128, 8)
    keep = [CH.top_positions(s, k) for s in scores]
    manual = CH.prune_channels(copy.deepcopy(llama.model), keep)
    sd1, sd2 = res.model.state_dict(), manual.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[n], sd2[n]) for n in sd1)
    assert res.kept_channels == [k_.tolist() for k_ in keep]


def test_iterative_rescoring_runs_on_the_pruned_model(llama):
    seen = []
    orig = CH.collect_stats

    def spy(model, *a, **kw):
        seen.append(CH.mlp_widths(model))
        return orig(model, *a, **kw)

    pipeline.collect_stats = spy                                         # where iterative_channel_prune looks it up
    try:
        res = CH.iterative_channel_prune(llama, tokens=toks(), ratio=0.5, steps=4, multiple_of=8)
    finally:
        pipeline.collect_stats = orig
    assert seen == [[128] * 3, [112] * 3, [96] * 3, [80] * 3]       # cumulative round(t*r/T*128), mult of 8
    assert [s["widths"][0] for s in res.report["steps"]] == [112, 96, 80, 64]
    removed = [set(c) for s in res.report["steps"] for c in s["removed_channels"][:1]]
    assert all(not (a & b) for i, a in enumerate(removed) for b in removed[i + 1:])
    assert sorted(set().union(*removed) | set(res.kept_channels[0])) == list(range(128))


def test_global_allocation_respects_the_floor():
    lm = tiny_loaded("llama", layers=3, hidden=64)
    with torch.no_grad():
        lm.model.model.layers[1].mlp.down_proj.weight.mul_(100)    # layer 1 dominates: the others get cut
    res = CH.iterative_channel_prune(lm, tokens=toks(), ratio=0.6, steps=2, multiple_of=8, allocation="global",
                                     min_keep_frac=0.3)
    w = res.report["final"]["widths"]
    floor = 8 * -(-round(0.3 * 128 + 0.4999) // 8)               # ceil(0.3*128)=39 → 40
    assert min(w) >= floor and w[0] == floor and w[2] == floor and w[1] > floor
    assert res.report["final"]["uniform"] is False


def test_save_reload_uniform_is_a_standard_checkpoint(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    res = CH.iterative_channel_prune(llama, tokens=toks(), ratio=0.25, steps=2, multiple_of=8)
    out = CH.save_channel_pruned(res.model, tmp_path / "m", report=res.report, tokenizer=llama.tokenizer)
    meta = json.loads((out / CH.CHANNELS_FILE).read_text())
    assert meta["loader"] == "standard" and meta["intermediate_sizes"] == [96] * 3
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.intermediate_size == 96
    assert torch.equal(logits(plain, IDS), logits(res.model, IDS))
    lm2 = CH.load_channel_pruned(out, device="cpu")
    assert torch.equal(logits(lm2.model, IDS), logits(res.model, IDS))
    with pytest.raises(EntroscopeError, match="already exists"):
        CH.save_channel_pruned(res.model, out)


def test_save_reload_non_uniform_needs_the_library_loader(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_loaded("qwen2", layers=3, hidden=64)
    with torch.no_grad():
        lm.model.model.layers[2].mlp.down_proj.weight.mul_(50)
    res = CH.iterative_channel_prune(lm, tokens=toks(), ratio=0.4, steps=2, multiple_of=8, allocation="global")
    assert len(set(res.report["final"]["widths"])) > 1
    out = CH.save_channel_pruned(res.model, tmp_path / "m", report=res.report, tokenizer=lm.tokenizer)
    assert json.loads((out / CH.CHANNELS_FILE).read_text())["loader"] == "entroscope"
    with pytest.raises(RuntimeError, match="mismatched"):    # fails loudly, never loads wrong shapes silently
        AutoModelForCausalLM.from_pretrained(out)
    lm2 = CH.load_channel_pruned(out, device="cpu")
    assert CH.mlp_widths(lm2.model) == res.report["final"]["widths"]
    assert torch.equal(logits(lm2.model, IDS), logits(res.model, IDS))
    from analysis.models.loading import load_model                  # the generic loader (CLI, app) restores it too

    lm3 = load_model(str(out), device="cpu")
    assert CH.mlp_widths(lm3.model) == res.report["final"]["widths"]
    assert torch.equal(logits(lm3.model, IDS), logits(res.model, IDS))


@pytest.mark.parametrize("arch,loader", [("llama", "standard"), ("qwen2", "entroscope"), ("gemma3", "entroscope")])
def test_bias_compensation_preserves_the_mean_and_reloads(arch, loader, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_loaded(arch, layers=2, hidden=64)
    ts = toks()
    res = CH.iterative_channel_prune(lm, tokens=ts, ratio=0.5, steps=1, multiple_of=8, bias_compensation=True)

    def mean_mlp0(model):
        outs = []
        h = model.model.layers[0].mlp.register_forward_hook(lambda m, a, o: outs.append(o.detach().double()))
        with torch.no_grad():
            model(ts.input_ids)
        h.remove()
        return outs[0].reshape(-1, 64).mean(0)

    # layer 0's MLP input does not depend on the pruning: the compensated mean output equals the original's
    assert torch.allclose(mean_mlp0(res.model), mean_mlp0(lm.model), atol=1e-5)
    assert res.model.model.layers[0].mlp.down_proj.bias is not None
    out = CH.save_channel_pruned(res.model, tmp_path / "m", tokenizer=lm.tokenizer)
    assert json.loads((out / CH.CHANNELS_FILE).read_text())["loader"] == loader
    ref = logits(res.model, IDS)
    if loader == "standard":                     # Llama: mlp_bias=True with zero gate/up biases
        assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out), IDS), ref)
    assert torch.equal(logits(CH.load_channel_pruned(out, device="cpu").model, IDS), ref)


def test_hybrid_calibration_counts_are_exact():
    tok = tiny_tokenizer()
    ts = CH.build_hybrid_calibration(tok, "wiki:2,code:1,news:1", n_samples=10, seq_len=32, seed=3)
    counts = ts.domain_counts()
    assert counts == apportion(10, {"wiki": 2, "code": 1, "news": 1}) == {"wiki": 5, "code": 3, "news": 2}
    man = ts.to_manifest()
    assert man["token_counts"] == {d: c * 32 for d, c in counts.items()} and sum(counts.values()) == len(ts) == 10


def test_run_channels_report_and_base_untouched():
    lm = tiny_loaded("qwen2", layers=2, hidden=64)
    before = weights_hash(lm.model)
    fracs, msgs = [], []
    run = CH.run_channels(lm, domains="wiki:1,code:1", n_samples=4, seq_len=32, ratio=0.5, steps=2, multiple_of=8,
                          bias_compensation=True, head_ratio=0.5, domain_agg="mean", eval_tokens=128,
                          eval_window=64, progress=lambda f, m: (fracs.append(f), msgs.append(m)))
    assert weights_hash(lm.model) == before
    rep = run.report
    json.dumps(rep, allow_nan=False)
    assert rep["manifest"]["samples_per_domain"] == {"wiki": 2, "code": 2}
    assert rep["manifest"]["tokens_per_domain"] == {"wiki": 64, "code": 64}
    assert rep["manifest"]["model"]["fingerprint"] == lm.fingerprint and rep["manifest"]["versions"]["torch"]
    assert [s["step"] for s in rep["steps"]] == [1, 2] and rep["steps"][0]["tokens_per_domain"] == {"wiki": 64,
                                                                                                   "code": 64}
    assert set(rep["evaluation"]["domains"]) == {"wiki", "code"}
    assert all(v["before"] > 1 and v["after"] > 1 for v in rep["evaluation"]["domains"].values())
    assert rep["final"]["kv_groups"] == [1, 1] and rep["final"]["widths"] == [64, 64]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0 and any("step 2/2" in m for m in msgs)


def test_head_pruning_whole_kv_groups_and_refusal(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_loaded("llama", layers=2, hidden=64)               # 4 query heads, 2 KV heads (groups of 2)
    res = CH.iterative_channel_prune(lm, tokens=toks(), ratio=0.0, head_ratio=0.5, steps=1)
    cfg = res.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 16)
    assert res.model.model.layers[0].self_attn.q_proj.out_features == 32
    out = CH.save_channel_pruned(res.model, tmp_path / "m")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out), IDS), logits(res.model, IDS))
    mqa = tiny_loaded("llama", layers=2, hidden=64, num_key_value_heads=1)
    with pytest.raises(SelectionError, match="1 KV head"):
        CH.iterative_channel_prune(mqa, tokens=toks(), ratio=0.25, head_ratio=0.5, multiple_of=8)


def test_should_stop_keeps_the_last_completed_step(llama):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 1                                     # first batch of step 1 runs, then stop

    res = CH.iterative_channel_prune(llama, tokens=toks(n=8), ratio=0.5, steps=2, multiple_of=8, batch_size=4,
                                     should_stop=stop)
    assert not res.completed and res.report["steps_done"] == 0 and res.report["final"]["widths"] == [128] * 3


def test_bad_options_raise_one_line_errors(llama):
    for kw, pat in ((dict(ratio=1.0), "ratio"), (dict(steps=0), "steps"), (dict(method="magic"), "method"),
                    (dict(domain_agg="median"), "domain_agg"), (dict(multiple_of=128, ratio=0.5), "multiple_of"),
                    (dict(domains="wiki:1,poetry:1"), "poetry")):
        with pytest.raises(EntroscopeError, match=pat):
            CH.iterative_channel_prune(llama, **kw)


def test_flops_per_token_counts_pruned_matmuls(llama):
    d = CH.flops_per_token(llama.model, context=10)
    lin = sum(p.numel() for n, p in llama.model.model.layers.named_parameters() if n.endswith("proj.weight"))
    assert d["matmul"] == 2 * lin and d["attention"] == 3 * 4 * 4 * 16 * 10 and d["lm_head"] == 2 * 260 * 64
    res = CH.iterative_channel_prune(llama, tokens=toks(), ratio=0.5, steps=1, multiple_of=8)
    p = CH.flops_per_token(res.model, context=10)
    assert d["matmul"] - p["matmul"] == 2 * 3 * 64 * 3 * 64


def test_ablation_rows():
    lm = tiny_loaded("llama", layers=2, hidden=64)
    out = CH.run_ablation(lm, domains="wiki:1,code:1", n_samples=4, seq_len=32, ratio=0.25, steps=2, multiple_of=8,
                          eval_tokens=64, eval_window=64, eval_domains=("code",))
    assert [r["variant"] for r in out["rows"]] == ["hybrid", "single:wiki", "single:code", "one_shot"]
    assert out["rows"][1]["samples_per_domain"] == {"wiki": 4} and out["rows"][-1]["steps"] == 1
    assert all(set(r["perplexity"]) == {"code"} for r in out["rows"]) and out["rows"][0]["ratio_reached"] == 0.25
    json.dumps(out, allow_nan=False)


def test_cli_end_to_end_and_bad_args(tmp_path, capsys):
    from analysis.cli.main import main

    src = tmp_path / "tiny"
    tiny_model("llama", layers=2, hidden=64).save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    out = tmp_path / "pruned"
    rc = main(["channels", "--model", str(src), "--domains", "wiki:1,code:1", "--ratio", "0.25", "--steps", "2",
               "--multiple-of", "8", "--samples", "4", "--seq-len", "32", "--eval-tokens", "128",
               "--eval-window", "64", "--out", str(out), "--quiet"])
    assert rc == 0
    rep = json.loads((out / CH.REPORT_FILE).read_text())
    assert rep["final"]["widths"] == [96, 96]
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 96
    capsys.readouterr()
    assert main(["channels", "--model", str(src), "--ratio", "1.5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ratio" in err[0]
    assert main(["channels", "--model", str(src), "--ratio", "0.2", "--out", str(out)]) == 2   # exists
    assert "already exists" in capsys.readouterr().err
