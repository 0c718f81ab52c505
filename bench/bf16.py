"""bf16 vs fp32: calibration throughput against the measured matmul roofline, and drop-order agreement.

Targets (issue "Performance and scale"): bf16 calibration throughput ≥ 60% of the matmul roofline
(FLOPs per token × tokens/s ÷ matmul FLOP/s measured in the same run), and the bf16 EntroDrop drop order
agrees with fp32 (Spearman ≥ 0.98 on ΔH, same first 8).

    .venv/bin/python bench/bf16.py [--samples 32] [--seq-len 256]
"""
from __future__ import annotations

import argparse
import time

from common import calib_tokens, flops_per_token, machine, matmul_flops

import torch
from analysis.models.loading import load_model
from analysis.run import AnalysisConfig, analyze
from analysis.score.selection import rank_correlation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--estimator", default="bucket")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    print(machine())
    res = {}
    ids = None
    for dt in ("fp32", "bf16"):
        lm = load_model(args.model, device=args.device, dtype=dt)
        ids = calib_tokens(lm, args.samples, args.seq_len) if ids is None else ids
        cfg = AnalysisConfig(estimator=args.estimator, granularity="attention")
        analyze(lm, ids[:8], cfg)  # warm-up
        t = time.perf_counter()
        run = analyze(lm, ids, cfg)
        secs = time.perf_counter() - t
        tok_s = ids.numel() / secs
        achieved = flops_per_token(lm, args.seq_len) * tok_s
        roof = matmul_flops(lm.dtype, lm.device)
        res[dt] = run
        print(f"{dt}: {tok_s:8.0f} tok/s  achieved {achieved / 1e9:7.1f} GFLOP/s  matmul roofline "
              f"{roof / 1e9:7.1f} GFLOP/s  ratio {achieved / roof:.2f}  ({secs:.1f} s)")
        del lm
    a, b = res["fp32"], res["bf16"]
    rc = rank_correlation(a.delta_h(), b.delta_h())
    same8 = a.drop_order[:8] == b.drop_order[:8]
    print(f"drop order fp32 {a.drop_order[:8]}\ndrop order bf16 {b.drop_order[:8]}")
    print(f"Spearman(ΔH fp32, ΔH bf16) = {rc['spearman']:.4f}  same first 8: {same8}  "
          f"same first-8 set: {set(a.drop_order[:8]) == set(b.drop_order[:8])}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
