"""Analysis pass ÷ bare forward over the same tokens, measured in one run (issue targets ≤1.15 Bucket+cosine,
≤1.2 with KNN).

Bare forward = the base model (embeddings → decoder layers → final norm, no LM head) under
``torch.inference_mode``: exactly the computation the analysis rides on. Batches alternate
(bare, analysis, bare, analysis, …) so machine noise hits both sides alike.

    .venv/bin/python bench/analysis_overhead.py [--samples 128] [--seq-len 256] [--dtype fp32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from analysis.measure.capture import CaptureConfig, capture  # noqa: E402
from analysis.models.loading import load_model  # noqa: E402

CONFIGS = {  # name -> (estimators, sinks mode); "keep" is the reference path, "exclude" the default picture
    "bucket+cosine": ({"bucket": {"bins": 80}}, "keep"),
    "knn+cosine": ({"knn": {"k": 25}}, "keep"),
    "bucket+knn+cosine": ({"bucket": {"bins": 80}, "knn": {"k": 25}}, "keep"),
    "bucket+cosine sinks=exclude": ({"bucket": {"bins": 80}}, "exclude"),
    "knn+cosine sinks=exclude": ({"knn": {"k": 25}}, "exclude"),
    "bucket+knn+cos sinks=excl": ({"bucket": {"bins": 80}, "knn": {"k": 25}}, "exclude"),
    # the other sinks view in the same pass (what `analyze` does by default; --one-view turns it off)
    "bucket+knn+cos both views": ({"bucket": {"bins": 80}, "knn": {"k": 25}}, "exclude", {"alt_view": True}),
    # the lenses (analysis.measure.lenses), both views
    "matrix+logit-lens both": ({"matrix": {}, "logit-lens": {"lens_positions": 16}}, "exclude", {"alt_view": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    vocab = lm.model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    base = lm.adapter.base
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    def bare(batch):
        with torch.inference_mode():
            base(input_ids=batch.to(lm.device), use_cache=False)
        sync()

    def analysed(batch, cfg):
        est, sinks, *extra = cfg
        capture(lm, batch, CaptureConfig(estimators=est, batch_size=len(batch), sinks=sinks, **(extra[0] if extra else {})))
        sync()

    batches = list(ids.split(args.batch_size))
    bare(batches[0])  # warm-up
    for est in CONFIGS.values():
        analysed(batches[0], est)
    times = {name: [] for name in CONFIGS}
    bare_t = {name: [] for name in CONFIGS}
    for batch in batches:
        for name, est in CONFIGS.items():
            t = time.perf_counter()
            bare(batch)
            bare_t[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            analysed(batch, est)
            times[name].append(time.perf_counter() - t)
    print(f"model={args.model} dtype={args.dtype} device={lm.device} tokens={args.samples}x{args.seq_len} "
          f"batch={args.batch_size} threads={torch.get_num_threads()}")
    for name in CONFIGS:
        ratio = sum(times[name]) / sum(bare_t[name])
        med = statistics.median(a / b for a, b in zip(times[name], bare_t[name]))
        print(f"{name:28s} bare {sum(bare_t[name]):7.2f}s  analysis {sum(times[name]):7.2f}s  "
              f"ratio {ratio:.3f} (median per-batch {med:.3f})")


if __name__ == "__main__":
    main()
