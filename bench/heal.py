"""Healing after layer pruning: how much of the perplexity gap do `linear` and `distill` win back?

Whole-layer plans of k = 4, 6, 8 layers chosen by the cosine baseline (the best layer criterion on
SmolLM2, see docs/benchmarks.md) and by EntroDrop, from one analysis pass over wiki calibration text.
Healing calibrates on wiki (calib split); perplexity is measured on held-out text of *another* domain
(news, eval split), so the fraction of the log-perplexity gap recovered,

    (log ppl_pruned − log ppl_healed) / (log ppl_pruned − log ppl_dense),

is an out-of-domain figure. Costs: wall seconds (shared CPU: compare within a run) and calibration passes
(`linear`: one forward pass of the original model up to the deepest gap; `distill`: epochs over the
calibration windows, each step a teacher forward plus a student forward and backward).

    .venv/bin/python bench/heal.py [--ks 4,6,8] [--criteria cosine,entrodrop] [--steps 50] [--max-tokens 4096]

Last line: ``ratio=<mean fraction of the log-ppl gap recovered by linear>``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

from common import analysis_config, describe, loadavg, machine, print_ratio

from analysis.data import SampleConfig, load_corpus, sample_windows
from analysis.score.criteria import select
from analysis.evaluate import EvalConfig, perplexity, prepare_eval
from analysis.heal import heal, healed_lm
from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.run import analyze
from analysis.models.surgery import pruned_view  # noqa: F401 - documents what "pruned" means


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ks", default="4,6,8")
    ap.add_argument("--criteria", default="cosine,entrodrop")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--analysis-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-corpus", default="news")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--no-distill", action="store_true")
    args = ap.parse_args()
    load0 = loadavg()
    print(machine())
    t_all = time.perf_counter()
    lm = load_model(args.model, dtype="fp32", device="cpu")
    calib = sample_windows(load_corpus("wiki"), lm.tokenizer,
                           SampleConfig(n_samples=args.calib_samples, seq_len=args.seq_len), split="calib").input_ids
    t = time.perf_counter()
    acfg = analysis_config(app=True, granularity="layer")           # the product's analysis, ranked per layer
    run = analyze(lm, calib[:args.analysis_samples, :128], acfg)
    t_analysis = time.perf_counter() - t
    cfg = EvalConfig(max_tokens=args.max_tokens, window=args.window)
    windows = prepare_eval(lm, load_corpus(args.eval_corpus), cfg, "eval")
    dense = perplexity(lm, windows, None, cfg)
    print(f"model {args.model} fp32 CPU; analysis pass ({args.analysis_samples} × 128 wiki tokens, {describe(acfg)}, layer) "
          f"{t_analysis:.1f} s; healing calibration wiki {args.calib_samples} × {args.seq_len}; eval "
          f"{args.eval_corpus} eval split, {windows.tokens_scored} tokens, window {args.window}; "
          f"distill {args.steps} steps × 2 windows, LoRA rank {args.rank}, lr {args.lr}")
    print(f"dense perplexity {dense['perplexity']:.2f}")
    header = ("| criterion | k | layers | dense | pruned | linear | distill | recovered linear | recovered distill "
              "| linear s | distill s | distill epochs |")
    plans = [(crit, k, Plan.from_selection(select(run, crit, k, "layer"), run))
             for crit in args.criteria.split(",") for k in (int(x) for x in args.ks.split(","))]
    rows = []
    for crit, k, plan in plans:                  # linear first: cheap, so its table exists even if cut short
        t = time.perf_counter()
        pruned = perplexity(lm, windows, plan, cfg)
        lin = heal(lm, plan, "linear", calib)
        p_lin = perplexity(healed_lm(lm, lin), windows, None, cfg)
        gap = pruned["nll"] - dense["nll"]
        rows.append({"crit": crit, "k": k, "layers": plan.normalized().drop_layers, "pruned": pruned,
                     "linear": p_lin, "r_lin": (pruned["nll"] - p_lin["nll"]) / gap,
                     "lin_s": lin.report["seconds"], "gap": gap})
        print(f"[{crit} k={k}] pruned {pruned['perplexity']:.2f} linear {p_lin['perplexity']:.2f} "
              f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        del lin
    if not args.no_distill:
        for row, (crit, k, plan) in zip(rows, plans):
            dis = heal(lm, plan, "distill", calib, steps=args.steps, rank=args.rank, lr=args.lr)
            p_dis = perplexity(healed_lm(lm, dis), windows, None, cfg)
            row.update(distill=p_dis, r_dis=(row["pruned"]["nll"] - p_dis["nll"]) / row["gap"],
                       dis_s=dis.report["seconds"], epochs=dis.report["passes"])
            print(f"[{crit} k={k}] distill {p_dis['perplexity']:.2f} ({dis.report['seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
            del dis
    print(header)
    print("|---" * 12 + "|")
    for r in rows:
        cells = [r["crit"], r["k"], r["layers"], f"{dense['perplexity']:.2f}", f"{r['pruned']['perplexity']:.2f}",
                 f"{r['linear']['perplexity']:.2f}"]
        if "distill" in r:
            cells += [f"{r['distill']['perplexity']:.2f}", f"{r['r_lin']:.1%}", f"{r['r_dis']:.1%}",
                      f"{r['lin_s']:.1f}", f"{r['dis_s']:.1f}", r["epochs"]]
        else:
            cells += ["–", f"{r['r_lin']:.1%}", "–", f"{r['lin_s']:.1f}", "–", "–"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    rec_lin = [r["r_lin"] for r in rows]
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")
    mean = sum(rec_lin) / len(rec_lin) if rec_lin else math.nan
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(mean)


if __name__ == "__main__":
    main()
