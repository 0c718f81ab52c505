"""Second load of a cached model (target ≤ 4 s on this machine). Fresh process per measurement.

    .venv/bin/python bench/load.py [--model smollm2]

Default model: the app's. Last line: ``ratio=<median cached load ÷ the 4 s target>``; the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import statistics

from common import app_defaults, loadavg, machine, print_ratio

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import transformers, torch
t1 = time.perf_counter()
from analysis.models.loading import load_model
lm = load_model({model!r}, device="cpu")
t2 = time.perf_counter()
print(json.dumps({{"imports_s": t1 - t0, "load_s": t2 - t1, "from_cache": lm.from_cache}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=app_defaults()[0]["spec"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    load0 = loadavg()
    print(machine())
    cached = []
    for i in range(args.repeats + 1):
        out = subprocess.run([sys.executable, "-c", CHILD.format(root=root, model=args.model)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        tag = "first (may convert GGUF)" if i == 0 else "cached"
        print(f"{args.model} load #{i} [{tag}]: load_model {r['load_s']:.2f} s (+ imports {r['imports_s']:.2f} s), "
              f"from_cache={r['from_cache']}")
        if i:
            cached.append(r["load_s"])
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(statistics.median(cached) / 4.0 if cached else float("nan"))


if __name__ == "__main__":
    main()
