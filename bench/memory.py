"""Peak memory of the analysis pass vs number of calibration samples (target: flat within 10%).

Each N runs in a fresh process and reports its peak RSS (VmHWM; CUDA max_memory_allocated on a GPU),
so the numbers are comparable. Streaming accumulators keep only per-sequence scalars.

    .venv/bin/python bench/memory.py [--seq-len 64] [--samples 32,128,512]

The pass is the app's default analysis on the app's model (``bench.common.analysis_config``). Last line:
``ratio=<peak at the largest N ÷ peak at the smallest>``; the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import app_defaults, loadavg, machine, print_ratio

CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
from bench.common import analysis_config, calib_tokens
from analysis.models.loading import load_model
from analysis.run import analyze
lm = load_model({model!r}, dtype={dtype!r})
ids = calib_tokens(lm, {n}, {t})
if lm.device.type == "cuda": torch.cuda.reset_peak_memory_stats()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"): return int(line.split()[1]) * 1024
before = rss()
analyze(lm, ids, analysis_config(app=True))
out = {{"n": {n}, "peak_rss": rss(), "rss_after_load": before}}
if lm.device.type == "cuda": out["cuda_peak"] = torch.cuda.max_memory_allocated()
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=app_defaults()[0]["spec"])
    ap.add_argument("--samples", default="32,128,512")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    load0 = loadavg()
    print(machine())
    rows = []
    for n in map(int, args.samples.split(",")):
        code = CHILD.format(root=root, model=args.model, dtype=args.dtype, n=n, t=args.seq_len)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"N={n:4d} x T={args.seq_len}: peak RSS {r['peak_rss'] / 2**20:7.1f} MiB "
              f"(after load {r['rss_after_load'] / 2**20:7.1f} MiB)" +
              (f", CUDA peak {r['cuda_peak'] / 2**20:.1f} MiB" if "cuda_peak" in r else ""))
    key = "cuda_peak" if "cuda_peak" in rows[0] else "peak_rss"
    print(f"peak ratio N={rows[-1]['n']} / N={rows[0]['n']}: {rows[-1][key] / rows[0][key]:.3f} (target ≤ 1.10)")
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(rows[-1][key] / rows[0][key])


if __name__ == "__main__":
    main()
