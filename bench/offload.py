"""Model-parallel / offload cost: a capture and a perplexity evaluation with the model forced partly onto
disk by ``--max-memory`` (accelerate ``device_map="auto"``), ÷ the same with the model in memory (fp32).

    .venv/bin/python bench/offload.py --model smollm2 --max-memory cpu=250MiB
    # the 1.5B model: never two copies in memory, so one process per side, compared through a JSON file
    .venv/bin/python bench/offload.py --model qwen2.5-coder-1.5b --max-memory cpu=2GiB \\
        --samples 4 --seq-len 128 --only offloaded --save /tmp/offload-1.5b.json
    .venv/bin/python bench/offload.py --model qwen2.5-coder-1.5b --samples 4 --seq-len 128 \\
        --only in-memory --against /tmp/offload-1.5b.json

Prints where the modules went, seconds for each step, whether the figures match the in-memory model
(perplexity and every per-sequence, per-layer entropy), and ``ratio=<offloaded ÷ in memory>`` (capture +
evaluation) last when both sides were run (``--only`` both, the default, or ``--against``).
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
from common import analysis_config, calib_tokens, loadavg, machine

from analysis.evaluate import EvalConfig, perplexity
from analysis.measure.capture import capture
from analysis.models.loading import load_model


def steps(lm, ids) -> dict:
    t, c = time.perf_counter(), time.process_time()
    ccfg = analysis_config(app=True).capture_config()      # the app's default pass, in one batch
    ccfg.batch_size = len(ids)
    est = next(iter(ccfg.estimators))
    st = capture(lm, ids, ccfg)
    t_cap, c_cap = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    ppl = perplexity(lm, ids, cfg=EvalConfig(batch_size=len(ids)))["perplexity"]
    ent = st.entropy[est]
    return {"capture_s": t_cap, "eval_s": time.perf_counter() - t, "ppl": ppl,
            "capture_cpu_s": c_cap, "eval_cpu_s": time.process_time() - c,   # all threads: robust to a shared CPU
            "h_mean": float(ent["boundary"].double().mean()),
            "entropy": {k: v.double().tolist() for k, v in ent.items()},   # [N, L+1] and [N, L]
            "ids": ids.tolist()}


def run_side(args, offloaded: bool, ids=None) -> dict:
    t = time.perf_counter()
    if offloaded:
        lm = load_model(args.model, dtype="fp32", max_memory=args.max_memory)
    else:
        lm = load_model(args.model, dtype="fp32", device="cpu")
    t_load = time.perf_counter() - t
    if offloaded:
        placed: dict = {}
        for k, v in getattr(lm.model, "hf_device_map", {}).items():
            placed.setdefault(str(v), []).append(k)
        print(f"load {t_load:.1f} s with --max-memory {args.max_memory}; placement: "
              + "; ".join(f"{d}: {len(ks)} module(s) ({', '.join(ks if len(ks) <= 6 else ks[:3] + ['…', ks[-1]])})"
                          for d, ks in placed.items()), flush=True)
    else:
        print(f"load {t_load:.1f} s in memory (fp32, cpu)", flush=True)
    if ids is None:
        ids = calib_tokens(lm, args.samples, args.seq_len)
    out = steps(lm, ids)
    out["load_s"] = t_load
    name = "offloaded" if offloaded else "in memory"
    print(f"{name}: capture {out['capture_s']:.2f} s (CPU {out['capture_cpu_s']:.2f} s), evaluation "
          f"{out['eval_s']:.2f} s (CPU {out['eval_cpu_s']:.2f} s), "
          f"PPL {out['ppl']:.4f}, mean H {out['h_mean']:.4f}", flush=True)
    del lm
    gc.collect()
    return out


def compare(off: dict, ref: dict) -> None:
    diff = max(abs(a - b) for k in ref["entropy"] for ra, rb in zip(ref["entropy"][k], off["entropy"][k])
               for a, b in zip(ra, rb))
    print(f"same PPL: {abs(ref['ppl'] - off['ppl']) <= 1e-4 * ref['ppl']} "
          f"(|Δ| {abs(ref['ppl'] - off['ppl']):.2e}); same entropies: {diff <= 1e-4} (max |ΔH| {diff:.2e})")
    print(f"capture ratio {off['capture_s'] / ref['capture_s']:.3f}, evaluation ratio "
          f"{off['eval_s'] / ref['eval_s']:.3f}, load ratio {off['load_s'] / ref['load_s']:.3f}")
    cpu = (off["capture_cpu_s"] + off["eval_cpu_s"]) / (ref["capture_cpu_s"] + ref["eval_cpu_s"])
    print(f"CPU-time ratio {cpu:.3f} (capture {off['capture_cpu_s'] / ref['capture_cpu_s']:.3f}, evaluation "
          f"{off['eval_cpu_s'] / ref['eval_cpu_s']:.3f}; process CPU seconds, less sensitive to a shared machine)")
    print(f"ratio={(off['capture_s'] + off['eval_s']) / (ref['capture_s'] + ref['eval_s']):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-memory", default="cpu=250MiB")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--only", choices=["both", "offloaded", "in-memory"], default="both",
                    help="run one side only (large models: one copy in memory per process)")
    ap.add_argument("--no-reference", action="store_true", help="same as --only offloaded")
    ap.add_argument("--save", help="write this side's figures (and token ids) as JSON")
    ap.add_argument("--against", help="a --save file of the other side: same tokens, then compare and ratio")
    args = ap.parse_args()
    load0 = loadavg()
    if args.no_reference:
        args.only = "offloaded"
    print(machine(), flush=True)
    other = json.loads(Path(args.against).read_text()) if args.against else None
    ids = torch.tensor(other["ids"]) if other else None
    res = {}
    if args.only in ("both", "offloaded"):
        res["offloaded"] = run_side(args, True, ids)
        ids = torch.tensor(res["offloaded"]["ids"])
    if args.only in ("both", "in-memory"):
        res["in-memory"] = run_side(args, False, ids)
    if args.save:
        side = res.get("offloaded") or res["in-memory"]
        side["side"] = "offloaded" if "offloaded" in res else "in-memory"
        Path(args.save).write_text(json.dumps(side))
    if other:
        res.setdefault(other.get("side", "offloaded"), other)
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}", flush=True)
    if "offloaded" in res and "in-memory" in res:
        compare(res["offloaded"], res["in-memory"])           # its last line: ratio=<offloaded ÷ in memory>


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
