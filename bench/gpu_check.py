"""Run the analysis and a sweep on whatever accelerator is present and print the same ratios as the CPU
benches: analysis pass ÷ bare forward, bf16 throughput ÷ matmul roofline, bf16/fp32 drop-order agreement,
sweep ÷ single evaluations, prefill/decode speedup ÷ FLOP-ideal, peak memory vs samples. Also counts
host-device synchronisations during a capture with ``torch.cuda.set_sync_debug_mode`` (target: none per
layer).

    .venv/bin/python bench/gpu_check.py [--model smollm2] [--samples 128]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import machine

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--samples", type=int, default=128)
    args = ap.parse_args()
    if not (torch.cuda.is_available() or (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())):
        print("no accelerator present: nothing to check (the CPU figures come from the other bench scripts)")
        return
    print(machine())
    here = os.path.dirname(os.path.abspath(__file__))
    runs = [
        ["analysis_overhead.py", "--model", args.model, "--samples", str(args.samples), "--dtype", "fp32"],
        ["analysis_overhead.py", "--model", args.model, "--samples", str(args.samples), "--dtype", "bf16"],
        ["bf16.py", "--model", args.model, "--samples", str(min(args.samples, 64))],
        ["sweep.py", "--model", args.model, "--k", "12", "--max-tokens", "8192", "--window", "2048",
         "--criteria", "entrodrop,cosine,random,tail"],
        ["speedup.py", "--model", args.model, "--prompt-len", "2048"],
        ["memory.py", "--model", args.model, "--seq-len", "256"],
    ]
    for r in runs:
        print(f"\n$ {' '.join(r)}", flush=True)
        subprocess.run([sys.executable, os.path.join(here, r[0]), *r[1:]], check=False)
    # no per-layer host sync: count synchronising calls during one capture with the CUDA sync debug mode
    from analysis.capture import CaptureConfig, capture
    from analysis.models import load_model

    lm = load_model(args.model, device="cuda", dtype="bf16")
    ids = torch.randint(0, 1000, (8, 256))
    capture(lm, ids, CaptureConfig(estimators={"bucket": {}, "knn": {}}))
    torch.cuda.set_sync_debug_mode("warn")
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        capture(lm, ids, CaptureConfig(estimators={"bucket": {}, "knn": {}}))
    torch.cuda.set_sync_debug_mode(0)
    syncs = [str(x.message).splitlines()[0] for x in w if "synchroniz" in str(x.message).lower()]
    print(f"\nhost-device synchronisations during one capture of {ids.shape[0]} sequences: {len(syncs)} "
          f"(layers: {lm.num_layers}; the final transfer to CPU is expected)")
    for s in sorted(set(syncs))[:5]:
        print("  ", s)


if __name__ == "__main__":
    main()
