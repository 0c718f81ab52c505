"""Measured prefill/decode speedup after dropping k attention layers ÷ the FLOP-ideal speedup (target ≥ 0.9).

The pruned model is a physical copy (dropped attention runs nothing and has no KV cache). Dense and
pruned measurements alternate, several rounds, medians taken, so machine noise hits both alike. The
FLOP-ideal speedup counts matmul FLOPs (2 × parameters touched per token) plus attention-score FLOPs
at the measured context, with the LM head once per sequence in prefill and once per token in decode.

    .venv/bin/python bench/speedup.py [--k 4,8,12] [--prompt-len 512] [--new-tokens 32]

The drop order comes from the app's default analysis on the app's model and calibration windows. Last line:
``ratio=<the smallest measured ÷ ideal speedup over every k, prefill and decode>``; the load is printed.
"""
from __future__ import annotations

import argparse
import statistics

from common import analysis_config, app_defaults, calib_tokens, loadavg, machine, print_ratio

import torch
from analysis.evaluate import latency
from analysis.models.loading import count_params, load_model
from analysis.models.plan import Plan
from analysis.run import analyze


def flops(lm, plan: Plan, ctx: int, decode: bool) -> float:
    """Per generated/prefilled token, at average context ctx."""
    cfg = lm.model.config
    L = cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layer = lm.adapter.layers[0]
    attn_p = sum(p.numel() for p in layer.self_attn.parameters())
    mlp_p = sum(p.numel() for p in layer.mlp.parameters())
    n = plan.normalized()
    attn_kept = L - len(set(n.drop_attn) | set(n.drop_layers))
    mlp_kept = L - len(set(n.drop_mlp) | set(n.drop_layers))
    head = count_params(lm.model) - count_params(lm.model, non_embedding=True)  # tied: embeddings = head
    f = 2 * (attn_p * attn_kept + mlp_p * mlp_kept) + attn_kept * 4 * cfg.num_attention_heads * hd * ctx
    return f + (2 * head if decode else 0)


def main() -> None:
    model, data, _ = app_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=model["spec"])
    ap.add_argument("--k", default="4,8,12")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default=model["dtype"])
    ap.add_argument("--calib", type=int, default=data["n_samples"], help="calibration windows for the drop order")
    ap.add_argument("--seq-len", type=int, default=data["seq_len"], help="calibration window length")
    args = ap.parse_args()
    load0 = loadavg()
    print(machine())
    lm = load_model(args.model, dtype=args.dtype)
    run = analyze(lm, calib_tokens(lm, args.calib, args.seq_len, seed=data["seed"]), analysis_config(app=True))
    fractions = []
    for k in map(int, args.k.split(",")):
        plan = Plan(drop_attn=sorted(run.drop_order[:k]))
        meas = {"dense": {"pre": [], "dec": []}, "pruned": {"pre": [], "dec": []}}
        for _ in range(args.rounds):
            for name, p in (("dense", None), ("pruned", plan)):
                r = latency(lm, p, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=3)["rows"][0]
                meas[name]["pre"].append(r["prefill_tokens_per_s"]["median"])
                meas[name]["dec"].append(r["decode_tokens_per_s"]["median"])
        med = {n: {k2: statistics.median(v) for k2, v in d.items()} for n, d in meas.items()}
        sp_pre = med["pruned"]["pre"] / med["dense"]["pre"]
        sp_dec = med["pruned"]["dec"] / med["dense"]["dec"]
        empty = Plan()
        ideal_pre = flops(lm, empty, args.prompt_len / 2, False) / flops(lm, plan, args.prompt_len / 2, False)
        ctx_dec = args.prompt_len + args.new_tokens / 2
        ideal_dec = flops(lm, empty, ctx_dec, True) / flops(lm, plan, ctx_dec, True)
        print(f"drop {k:2d} attention layers {plan.drop_attn}: prefill {med['dense']['pre']:.0f}→"
              f"{med['pruned']['pre']:.0f} tok/s speedup {sp_pre:.3f} / ideal {ideal_pre:.3f} = "
              f"{sp_pre / ideal_pre:.3f};  decode {med['dense']['dec']:.1f}→{med['pruned']['dec']:.1f} tok/s "
              f"speedup {sp_dec:.3f} / ideal {ideal_dec:.3f} = {sp_dec / ideal_dec:.3f}")
        fractions += [sp_pre / ideal_pre, sp_dec / ideal_dec]
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(min(fractions))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
