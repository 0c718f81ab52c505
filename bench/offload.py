"""Model-parallel / offload cost: a capture and a perplexity evaluation with the model forced partly onto
disk by ``--max-memory`` (accelerate ``device_map="auto"``), ÷ the same with the model in memory.

    .venv/bin/python bench/offload.py --model smollm2 --max-memory cpu=250MiB
    .venv/bin/python bench/offload.py --model ~/.cache/entroscope/gguf/qwen2.5-coder-1.5b-instruct.gguf \\
        --max-memory cpu=2GiB --no-reference      # the 1.5B model: never two copies in memory

Prints where the modules went, seconds for each step, whether the figures match the in-memory model,
and ``ratio=<offloaded ÷ in memory>`` (capture + evaluation) last when a reference was run.
"""
from __future__ import annotations

import argparse
import gc
import time

from common import calib_tokens, machine

import torch
from analysis.measure.capture import CaptureConfig, capture
from analysis.evaluate import EvalConfig, perplexity
from analysis.models.loading import load_model


def steps(lm, ids) -> dict:
    t = time.perf_counter()
    st = capture(lm, ids, CaptureConfig(estimators={"bucket": {}}, batch_size=len(ids)))
    t_cap = time.perf_counter() - t
    t = time.perf_counter()
    ppl = perplexity(lm, ids, cfg=EvalConfig(batch_size=len(ids)))["perplexity"]
    return {"capture_s": t_cap, "eval_s": time.perf_counter() - t, "ppl": ppl,
            "h_mean": float(st.entropy["bucket"]["boundary"].double().mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-memory", default="cpu=250MiB")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--no-reference", action="store_true", help="skip the in-memory run (large models)")
    args = ap.parse_args()
    print(machine())
    t = time.perf_counter()
    lm = load_model(args.model, dtype="fp32", max_memory=args.max_memory)
    t_load = time.perf_counter() - t
    dm = getattr(lm.model, "hf_device_map", {})
    placed = {}
    for k, v in dm.items():
        placed.setdefault(str(v), []).append(k)
    print(f"load {t_load:.1f} s with --max-memory {args.max_memory}; placement: "
          + "; ".join(f"{d}: {len(ks)} module(s) ({', '.join(ks[:3])}{', …' if len(ks) > 3 else ''})"
                      for d, ks in placed.items()))
    ids = calib_tokens(lm, args.samples, args.seq_len)
    off = steps(lm, ids)
    print(f"offloaded: capture {off['capture_s']:.2f} s, evaluation {off['eval_s']:.2f} s, PPL {off['ppl']:.4f}")
    del lm
    gc.collect()
    if args.no_reference:
        return
    lm = load_model(args.model, dtype="fp32", device="cpu")
    ref = steps(lm, ids)
    print(f"in memory: capture {ref['capture_s']:.2f} s, evaluation {ref['eval_s']:.2f} s, PPL {ref['ppl']:.4f}; "
          f"same PPL: {abs(ref['ppl'] - off['ppl']) <= 1e-4 * ref['ppl']}, same mean H: "
          f"{abs(ref['h_mean'] - off['h_mean']) <= 1e-4 * abs(ref['h_mean'])}")
    print(f"ratio={(off['capture_s'] + off['eval_s']) / (ref['capture_s'] + ref['eval_s']):.3f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
