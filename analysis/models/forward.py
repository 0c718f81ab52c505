"""Shared forward numerics, each written once: final hidden states, LM-head logits with final-logit
soft-capping, chunked next-token NLL, perplexity with its overflow clamp, and the original-vs-pruned
comparison statistics (KL, top-1 agreement).

Shapes: ``ids [B, n]`` token ids; ``hidden [B, n, d]`` final hidden states (after the final norm);
logits ``[B, c, vocab]`` for a chunk of ``c`` positions. Target ``ids[:, j]`` is predicted by logit
position ``j - 1``; a window scores targets ``first..n-1`` (``first >= 1``).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.errors import is_oom, oom_error
from analysis.models.adapters import get_path, spec_for

#: a mean NLL above this (nats) would overflow ``exp``: the perplexity is reported as infinite
NLL_OVERFLOW = 700.0


def softcap_logits(logits: Tensor, config) -> Tensor:
    """Final-logit soft-capping ``tanh(z / cap) * cap`` when the config has ``final_logit_softcapping``
    (Gemma); the logits unchanged otherwise."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def head_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """LM-head logits for final hidden states (with Gemma's final logit soft-capping)."""
    return softcap_logits(model.get_output_embeddings()(hidden), model.config)


def _base(model: nn.Module) -> nn.Module:
    return get_path(model, spec_for(model).base)


def final_hidden(model: nn.Module, ids: Tensor | None = None, embeds: Tensor | None = None) -> Tensor:
    """Last hidden state [B, n, d] (after the final norm) from token ids or residual-stream input."""
    if embeds is not None:
        return _base(model)(inputs_embeds=embeds, use_cache=False).last_hidden_state
    return _base(model)(input_ids=ids, use_cache=False).last_hidden_state


def logit_chunks(first: int, n: int, size: int) -> Iterable[tuple[int, int]]:
    """Ranges [s, e) of *logit* positions predicting scored targets first..n-1."""
    for s in range(first - 1, n - 1, size):
        yield s, min(s + size, n - 1)


def nll_sum(model: nn.Module, hidden: Tensor, ids: Tensor, first: int, chunk: int) -> float:
    """Sum of next-token NLL over scored targets, computing logits chunk by chunk."""
    total = 0.0
    for s, e in logit_chunks(first, ids.shape[1], chunk):
        logits = head_logits(model, hidden[:, s:e]).float()                # [B, c, vocab]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, s + 1:e + 1].reshape(-1),
                                       reduction="sum"))
    return total


def ppl_from_nll(nll: float) -> float:
    """Perplexity ``exp(nll)`` of a mean NLL (nats), infinite where ``exp`` would overflow."""
    return math.exp(nll) if nll < NLL_OVERFLOW else float("inf")


def ppl_result(nll_total: float, tokens: int) -> dict:
    """``{"perplexity", "nll" (mean), "nll_sum", "tokens"}`` from a summed NLL over ``tokens`` targets."""
    nll = nll_total / max(tokens, 1)
    return {"perplexity": ppl_from_nll(nll), "nll": nll, "nll_sum": nll_total, "tokens": tokens}


def compare_sums(model_a: nn.Module, hidden_a: Tensor, model_b: nn.Module, hidden_b: Tensor, ids: Tensor,
                 first: int, chunk: int) -> tuple[float, float, float, float]:
    """Over the scored targets of one window batch: (NLL sum of a, NLL sum of b, sum of KL(a ‖ b) of the
    next-token distributions, number of positions where both predict the same top-1 token)."""
    nll_a = nll_b = kl = agree = 0.0
    for s, e in logit_chunks(first, ids.shape[1], chunk):
        za, zb = head_logits(model_a, hidden_a[:, s:e]).float(), head_logits(model_b, hidden_b[:, s:e]).float()
        tgt = ids[:, s + 1:e + 1].reshape(-1)                               # za, zb: [B, c, vocab]
        nll_a += float(F.cross_entropy(za.reshape(-1, za.shape[-1]), tgt, reduction="sum"))  # as nll_sum
        nll_b += float(F.cross_entropy(zb.reshape(-1, zb.shape[-1]), tgt, reduction="sum"))
        la, lb = torch.log_softmax(za, -1), torch.log_softmax(zb, -1)
        kl += float((la.exp() * (la - lb)).sum())
        agree += float((za.argmax(-1) == zb.argmax(-1)).sum())
    return nll_a, nll_b, kl, agree


def oom_guard(fn, what: str):
    """``fn()``, with an out-of-memory error turned into a clear :func:`~analysis.errors.oom_error`."""
    try:
        return fn()
    except RuntimeError as exc:
        if is_oom(exc):
            raise oom_error(exc, what) from exc
        raise
