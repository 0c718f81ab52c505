"""Evaluating a channel-pruned model: held-out perplexity per domain, FLOPs per token and latency."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from analysis.channels.config import Progress
from analysis.channels.prune import head_dim
from analysis.evaluate.cost import latency
from analysis.evaluate.quality import perplexity
from analysis.evaluate.windows import EvalConfig, model_context
from analysis.models.adapters import adapter_for


def evaluate_domains(lm, domains: Sequence[str], eval_tokens: int = 4096, eval_window: int = 512,
                     batch_size: int = 1, progress: Progress | None = None) -> dict:
    """Held-out perplexity per domain (the domain's eval split, first ``eval_tokens`` tokens, disjoint
    windows of ``eval_window`` tokens; :func:`analysis.evaluate.quality.perplexity`)."""
    ctx = model_context(lm.model) or eval_window
    ecfg = EvalConfig(window=max(2, min(int(eval_window), int(eval_tokens), int(ctx))),
                      max_tokens=int(eval_tokens), batch_size=batch_size)
    out = {}
    for k, d in enumerate(domains):
        res = perplexity(lm, d, cfg=ecfg, split="eval")
        out[d] = {"perplexity": res["perplexity"], "nll": res["nll"], "tokens": res["tokens"],
                  "protocol": res["protocol"]}
        if progress:
            progress((k + 1) / len(domains), f"perplexity on {d}")
    return out


def flops_per_token(model: nn.Module, context: int = 128) -> dict:
    """Forward FLOPs per token: 2 × (matmul weights in the decoder layers) + attention scores/values
    (4 × query heads × head_dim × ``context`` per attention layer) + the LM head (2 × hidden × vocab).
    Use ``context`` ≈ (L + 1) / 2 for the average token of an L-token prefill, the cache length for decode."""
    adapter = adapter_for(model)
    linear = sum(m.weight.numel() for layer in adapter.layers for m in layer.modules() if isinstance(m, nn.Linear))
    hd = head_dim(model)
    q_heads = [int(adapter.attn(i).q_proj.out_features) // hd for i in range(adapter.num_layers)]
    attn = sum(4 * h * hd * context for h in q_heads)
    head = model.get_output_embeddings()
    lm_head = 2 * head.weight.numel() if head is not None else 0
    total = 2 * linear + attn + lm_head
    return {"total": total, "matmul": 2 * linear, "attention": attn, "lm_head": lm_head, "context": context}


def channel_latency(lm, kwargs: dict | None) -> dict:
    """Median prefill/decode throughput of one prompt length (:func:`analysis.evaluate.cost.latency`)
    with the FLOPs per token at that context."""
    kw = {"prompt_len": 128, "new_tokens": 32, "repeats": 3, "warmup": 1, **(kwargs or {})}
    res = latency(lm, None, **kw)
    row = res["rows"][0]
    return {"prefill_tokens_per_s": row["prefill_tokens_per_s"]["median"],
            "decode_tokens_per_s": (row["decode_tokens_per_s"] or {}).get("median"),
            "prompt_len": res["prompt_len"], "new_tokens": res["new_tokens"], "repeats": res["repeats"],
            "device": res["device"], "dtype": res["dtype"],
            "flops_per_token_prefill": flops_per_token(lm.model, (kw["prompt_len"] + 1) // 2)["total"],
            "flops_per_token_decode": flops_per_token(lm.model, kw["prompt_len"] + kw["new_tokens"] // 2)["total"]}


def speedups(dense: dict, pruned: dict) -> dict:
    """Measured and ideal (FLOPs ratio) speed-ups of the pruned model over the dense one, and their ratio."""
    out = {}
    for k in ("prefill", "decode"):
        d, p = dense.get(f"{k}_tokens_per_s"), pruned.get(f"{k}_tokens_per_s")
        ideal = dense[f"flops_per_token_{k}"] / pruned[f"flops_per_token_{k}"]
        measured = p / d if d and p else None
        out[f"{k}_speedup"] = measured
        out[f"{k}_ideal_speedup"] = ideal
        out[f"{k}_efficiency"] = measured / ideal if measured else None
    return out
