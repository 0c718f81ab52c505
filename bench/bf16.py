"""bf16 vs fp32: calibration throughput against the measured matmul roofline, and drop-order agreement.

Targets (issue "Performance and scale"): bf16 calibration throughput ≥ 60% of the matmul roofline
(FLOPs per token × tokens/s ÷ matmul FLOP/s measured in the same run), and the bf16 EntroDrop drop order
agrees with fp32 (Spearman ≥ 0.98 on ΔH, same first 8).

    .venv/bin/python bench/bf16.py [--samples 32] [--seq-len 256]

Defaults: the app's model, device and windows and its default analysis (``--estimator`` overrides the ranking
estimator). Last line: ``ratio=<bf16 achieved ÷ matmul roofline>``; the load average is printed.
"""
from __future__ import annotations

import argparse
import time

from common import analysis_config, app_defaults, calib_tokens, describe, flops_per_token, loadavg, machine, matmul_flops, print_ratio

import torch
from analysis.models.loading import load_model
from analysis.run import analyze
from analysis.score.selection import rank_correlation


def main() -> None:
    model, data, _ = app_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=model["spec"])
    ap.add_argument("--samples", type=int, default=data["n_samples"])
    ap.add_argument("--seq-len", type=int, default=data["seq_len"])
    ap.add_argument("--estimator", default=None, help="default: the app's")
    ap.add_argument("--device", default=model["device"])
    args = ap.parse_args()
    load0 = loadavg()
    print(machine())
    res = {}
    ids = None
    for dt in ("fp32", "bf16"):
        lm = load_model(args.model, device=args.device, dtype=dt)
        ids = calib_tokens(lm, args.samples, args.seq_len) if ids is None else ids
        cfg = analysis_config(app=True, **({"estimator": args.estimator} if args.estimator else {}))
        analyze(lm, ids[:8], cfg)  # warm-up
        t = time.perf_counter()
        run = analyze(lm, ids, cfg)
        secs = time.perf_counter() - t
        tok_s = ids.numel() / secs
        achieved = flops_per_token(lm, args.seq_len) * tok_s
        roof = matmul_flops(lm.dtype, lm.device)
        res[dt] = run
        print(f"{dt}: {tok_s:8.0f} tok/s  achieved {achieved / 1e9:7.1f} GFLOP/s  matmul roofline "
              f"{roof / 1e9:7.1f} GFLOP/s  ratio {achieved / roof:.2f}  ({secs:.1f} s; {describe(cfg)})")
        res[dt + "_roof"] = achieved / roof
        del lm
    a, b = res["fp32"], res["bf16"]
    rc = rank_correlation(a.delta_h(), b.delta_h())
    same8 = a.drop_order[:8] == b.drop_order[:8]
    print(f"drop order fp32 {a.drop_order[:8]}\ndrop order bf16 {b.drop_order[:8]}")
    print(f"Spearman(ΔH fp32, ΔH bf16) = {rc['spearman']:.4f}  same first 8: {same8}  "
          f"same first-8 set: {set(a.drop_order[:8]) == set(b.drop_order[:8])}")
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(res["bf16_roof"])


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
