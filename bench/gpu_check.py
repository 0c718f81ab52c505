"""One command for a GPU machine (< 8 minutes on one GPU): the figures the CPU benches cannot give.

Prints, each step with its own time limit inside an overall budget (default 450 s):

1. analysis pass ÷ bare forward, fp32 and bf16 (``bench/analysis_overhead.py``: the reference path, the app's
   default path, the other sinks view and each lens);
2. host-device synchronisations during one capture (``torch.cuda.set_sync_debug_mode``), per layer
   (target 0: the only synchronisation is the final transfer of the statistics to the CPU);
3. peak GPU memory of the analysis pass vs N calibration samples (``max_memory_allocated``, one process);
4. prefill/decode speedup of physically pruned models ÷ FLOP-ideal (``bench/speedup.py``);
5. the test suite's result on this machine (``pytest -m "not browser and not slow"``), with what is left of
   the budget.

Every analysis is the product's default (``bench.common.analysis_config``). Ends with a summary table, the
load average before and after, and ``ratio=<default path ÷ bare forward, bf16>`` (fp32 when bf16 failed).
``--dry-run`` runs every step on the CPU with tiny sizes (a smoke test of the script itself; its figures mean
nothing) and a single small test file.

    .venv/bin/python bench/gpu_check.py                 # on the GPU machine, from the repository root
    .venv/bin/python bench/gpu_check.py --dry-run       # anywhere (CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


SCALE = 1.0      # per-step limits × this (--dry-run on a slow, shared CPU: larger)


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def run_step(name: str, argv: list[str], limit: float, budget: Budget) -> tuple[int | None, str]:
    """Run a subprocess with ``min(limit, budget left)`` seconds; print and return its output."""
    t = min(limit * SCALE, budget.left())
    print(f"\n$ {' '.join(argv)}   (limit {t:.0f} s)", flush=True)
    if t < 5:
        print("  skipped: out of time budget")
        return None, ""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=t, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        print(out[-3000:])
        print(f"  {name}: timed out after {t:.0f} s")
        return None, out
    print(p.stdout[-4000:], end="")
    if p.returncode:
        print(p.stderr[-2000:])
    return p.returncode, p.stdout


def sync_count(model: str, device: str, dtype: str, n: int, t: int) -> dict:
    """Synchronising CUDA calls during one capture (after a warm-up capture), from the sync debug mode."""
    import torch

    from analysis.measure.capture import capture
    from analysis.models.loading import load_model
    from bench.common import analysis_config

    lm = load_model(model, device=device, dtype=dtype)
    ids = torch.randint(0, 1000, (n, t), generator=torch.Generator().manual_seed(0))
    # the app's default pass (both sinks views), with MI-PRUN's state sampling on
    cfg = analysis_config(app=True, mi=True, k=min(25, t - 4)).capture_config()
    cfg.batch_size = n
    capture(lm, ids, cfg)
    if lm.device.type != "cuda":
        return {"syncs": None, "layers": lm.num_layers, "note": f"device {lm.device}: no CUDA sync debug mode"}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            capture(lm, ids, cfg)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    msgs = [str(x.message).splitlines()[0] for x in w if "synchroniz" in str(x.message).lower()]
    return {"syncs": len(msgs), "layers": lm.num_layers, "kinds": sorted(set(msgs))[:5]}


def peak_memory(model: str, device: str, dtype: str, ns: list[int], t: int) -> list[dict]:
    import torch

    from analysis.models.loading import load_model
    from analysis.run import analyze
    from bench.common import analysis_config

    lm = load_model(model, device=device, dtype=dtype)
    vocab = lm.model.get_input_embeddings().num_embeddings
    rows = []
    for n in ns:
        ids = torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(n))
        cuda = lm.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        analyze(lm, ids, analysis_config(app=True, k=min(25, t - 4)))
        rows.append({"n": n, "seconds": time.perf_counter() - t0,
                     "peak_bytes": (torch.cuda.max_memory_allocated() - base) if cuda else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--budget", type=float, default=450, help="seconds for everything (default 450 < 8 min)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one test file: exercises the script")
    ap.add_argument("--no-tests", action="store_true")
    ap.add_argument("--limit-scale", type=float, default=None,
                    help="multiply every step's time limit (default 1; 5 with --dry-run)")
    args = ap.parse_args()
    global SCALE
    SCALE = args.limit_scale or (5.0 if args.dry_run else 1.0)
    import torch

    from bench.common import loadavg, machine, print_ratio

    load0 = loadavg()
    budget = Budget(args.budget)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to exercise the script on the CPU")
        sys.exit(2)
    device = "cpu" if dry else "cuda"
    py = sys.executable
    print(machine(), "| dry run (CPU, tiny sizes: figures mean nothing)" if dry else "")
    summary: dict = {}
    default_ratio: dict = {}

    # 1. analysis ÷ bare forward, fp32 and bf16
    sizes = ["--samples", "4", "--seq-len", "32"] if dry else ["--samples", "128", "--seq-len", "256"]
    for dt in ("fp32", "bf16"):
        rc, out = run_step(f"overhead {dt}", [py, os.path.join(HERE, "analysis_overhead.py"), "--model", args.model,
                                              "--device", device, "--dtype", dt, *sizes], 90, budget)
        summary[f"analysis ÷ bare ({dt})"] = "; ".join(
            f"{m.group(1).strip()} {m.group(2)}" for m in re.finditer(r"^(.{28}) .*? bare .*?ratio (\d+\.\d+)", out, re.M)) \
            or f"failed (rc {rc})"
        m = re.search(r"^ratio=(\S+)\s*$", out, re.M)
        if m:
            default_ratio[dt] = float(m.group(1))

    # 2. host-device syncs during one capture (in this process)
    print("\n# host-device synchronisations during one capture", flush=True)
    try:
        sc = sync_count(args.model, device, "bf16" if not dry else "fp32", 2 if dry else 8, 32 if dry else 256)
        print(json.dumps(sc))
        summary["syncs per capture"] = ("n/a on CPU" if sc["syncs"] is None else
                                        f"{sc['syncs']} total = {sc['syncs'] / sc['layers']:.2f}/layer "
                                        f"({sc['layers']} layers; the final transfer of the statistics is expected)")
    except Exception as exc:  # noqa: BLE001 - report and go on
        summary["syncs per capture"] = f"failed: {type(exc).__name__}: {exc}"
        print(summary["syncs per capture"])

    # 3. peak GPU memory vs N
    print("\n# peak memory of the analysis pass vs N", flush=True)
    try:
        rows = peak_memory(args.model, device, "fp32" if dry else "bf16", [2, 4] if dry else [32, 128, 512],
                           32 if dry else 256)
        for r in rows:
            print(json.dumps(r))
        if rows[0]["peak_bytes"]:
            summary["peak GPU memory vs N"] = ", ".join(f"N={r['n']}: {r['peak_bytes'] / 2**20:.0f} MiB" for r in rows) \
                + f" (×{rows[-1]['peak_bytes'] / rows[0]['peak_bytes']:.2f}, target ≤ 1.10)"
        else:
            summary["peak GPU memory vs N"] = "n/a on CPU (" + ", ".join(f"N={r['n']} {r['seconds']:.1f} s" for r in rows) + ")"
    except Exception as exc:  # noqa: BLE001
        summary["peak GPU memory vs N"] = f"failed: {type(exc).__name__}: {exc}"
        print(summary["peak GPU memory vs N"])

    # 4. speedup of physically pruned models ÷ FLOP-ideal
    sp = ["--k", "4", "--prompt-len", "64", "--new-tokens", "4", "--rounds", "1", "--calib", "2", "--seq-len", "32"] if dry else \
        ["--k", "4,8,12", "--prompt-len", "2048", "--new-tokens", "64", "--rounds", "3", "--dtype", "bf16"]
    rc, out = run_step("speedup", [py, os.path.join(HERE, "speedup.py"), "--model", args.model, *sp], 120, budget)
    lines = [ln.strip() for ln in out.splitlines() if "ideal" in ln.lower() or "speedup" in ln.lower()]
    summary["pruned speedup ÷ FLOP-ideal"] = " | ".join(lines[-3:]) if lines else f"failed (rc {rc})"

    # 5. the test suite on this machine
    if not args.no_tests:
        tests = ["tests/models/test_plan.py"] if dry else ["-m", "not browser and not slow"]
        rc, out = run_step("tests", [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                           max(budget.left() - 5, 0), budget)
        last = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
        summary["test suite"] = (last[-1].strip() if last else "no result") + (f" (rc {rc})" if rc else "")

    print("\n## summary\n")
    for k, v in summary.items():
        print(f"| {k} | {v} |")
    print(f"\ntotal {args.budget - budget.left():.0f} s of the {args.budget:.0f} s budget; load average (1/5/15 min) "
          f"before {load0}, after {loadavg()}")
    print_ratio(default_ratio.get("bf16", default_ratio.get("fp32", float("nan"))))


if __name__ == "__main__":
    main()
