"""``python -m analysis load DIR``: load a saved (pruned) model, print a summary, optionally generate."""
from __future__ import annotations

import json

from analysis.cli.argtypes import in_path
from analysis.cli.common import emit
from analysis.settings import bounded_int


def register(sub) -> None:
    p = sub.add_parser("load", help="load a pruned model directory (restoring sub-block drops) and summarise it")
    p.add_argument("dir", type=in_path, help="directory written by `prune` (or any transformers checkpoint)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--prompt", default=None, help="greedy-generate a continuation of this text")
    p.add_argument("--max-new-tokens", type=bounded_int(1, 65_536, "a token count"), default=40)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from analysis.evaluate.cost import kv_cache_report, param_report
    from analysis.errors import ModelLoadError
    from analysis.models.plan import Plan
    from analysis.models.loading import load_pruned
    from analysis.models.surgery import layer_status

    lm = load_pruned(args.dir, device=args.device, dtype=args.dtype)
    status = layer_status(lm)
    plan = lm.info.get("plan")
    summary = {"dir": args.dir, "model_type": lm.model.config.model_type, "layers": len(status),
               "attention_dropped": [s["layer"] for s in status if not s["attn"]],
               "mlp_dropped": [s["layer"] for s in status if not s["mlp"]],
               "plan": Plan.from_dict(plan).describe() if plan else None,
               "params": param_report(lm)["total"],
               "kv_bytes_per_token": kv_cache_report(lm.model)["kv_bytes_per_token"],
               "device": str(lm.device), "dtype": args.dtype}
    if args.prompt:
        if lm.tokenizer is None:
            raise ModelLoadError(f"{args.dir} has no tokenizer, so it cannot generate")
        enc = lm.tokenizer(args.prompt, return_tensors="pt").to(lm.device)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
        with torch.inference_mode():
            out = lm.model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad,
                                    temperature=None, top_p=None, top_k=None)
        summary["generation"] = lm.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    emit(json.dumps(summary, indent=1))
    return 0
