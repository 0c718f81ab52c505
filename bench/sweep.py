"""Sweep cost: time for a k-plan sweep ÷ k single evaluations, measured in one run (target ≤ 0.6, k ≥ 8).

Plans are EntroDrop's k = 1..K attention drops on SmolLM2 (the sweep a user runs on the Prune page).
The single evaluations call :func:`analysis.evaluate.quality.perplexity` once per plan; the sweep calls
:func:`analysis.evaluate.sweep` (prefix reuse). Both must give identical perplexities.

    .venv/bin/python bench/sweep.py [--k 12] [--max-tokens 2048] [--granularity attention]

Defaults: the app's model, dtype, calibration windows and default analysis; the evaluation protocol is
``EvalConfig``'s (its window), with a budget of ``--max-tokens`` (2048) where ``EvalConfig`` reads the whole split.
Last line: ``ratio=<sweep ÷ single evaluations>``; the load average is printed.
"""
from __future__ import annotations

import argparse
import time

from common import analysis_config, app_defaults, calib_tokens, loadavg, machine, print_ratio

import torch
from analysis.evaluate import EvalConfig, perplexity, sweep
from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.run import analyze


def main() -> None:
    model, data, _ = app_defaults()
    ev = EvalConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=model["spec"])
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=ev.max_tokens or 2048)
    ap.add_argument("--window", type=int, default=ev.window)
    ap.add_argument("--granularity", default=analysis_config(app=True).granularity)
    ap.add_argument("--criteria", default="entrodrop")
    ap.add_argument("--dtype", default=model["dtype"])
    ap.add_argument("--samples", type=int, default=data["n_samples"], help="calibration windows of the analysis")
    ap.add_argument("--seq-len", type=int, default=data["seq_len"])
    args = ap.parse_args()
    load0 = loadavg()
    print(machine())
    lm = load_model(args.model, dtype=args.dtype)
    run = analyze(lm, calib_tokens(lm, args.samples, args.seq_len, seed=data["seed"]),
                  analysis_config(app=True, granularity=args.granularity))
    cfg = EvalConfig(max_tokens=args.max_tokens, window=args.window)
    crits = args.criteria.split(",")
    ks = list(range(1, args.k + 1))
    perplexity(lm, "wiki", cfg=cfg)  # warm-up (+ corpus load)
    t = time.perf_counter()
    singles = {}
    for c in crits:
        order = run.baselines[c]["drop_order"]
        for k in ks:
            key = {"attention": "drop_attn", "mlp": "drop_mlp", "layer": "drop_layers"}[args.granularity]
            singles[(c, k)] = perplexity(lm, "wiki", Plan(**{key: sorted(order[:k])}), cfg=cfg)["perplexity"]
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    sw = sweep(lm, run, crits, ks, data="wiki", granularity=args.granularity, cfg=cfg)
    t_sweep = time.perf_counter() - t
    same = all(abs(r["perplexity"] - singles[(r["criterion"], r["k"])]) == 0 for r in sw["rows"])
    n = len(sw["rows"])
    print(f"{n} plans ({','.join(crits)}, k=1..{args.k}, {args.granularity}), {sw['protocol']['tokens_scored']} "
          f"tokens, window {args.window}")
    print(f"single evaluations {t_single:7.2f} s   sweep {t_sweep:7.2f} s   ratio {t_sweep / t_single:.3f} "
          f"(target ≤ 0.6)   identical perplexities: {same}")
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(t_sweep / t_single)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
