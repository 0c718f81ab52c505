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
    """LM-head logits for final hidden states (with Gemma's final logit soft-capping).

    ``hidden`` is made contiguous first: a position slice ``hidden[:, s:e]`` of a batch is a strided view, and
    on the CPU a bf16 ``linear`` over a strided 3-D input takes a fallback ~6× slower than over the same
    rows laid out densely (SmolLM2's head: 1.50 s vs 0.23 s for 8 × 255 positions, one thread)."""
    return softcap_logits(model.get_output_embeddings()(hidden.contiguous()), model.config)


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


#: logit rows upcast and scored at a time on the CPU: the float32 copy and the log-softmax of 8 rows of even a
#: 262k-token vocabulary stay in cache, instead of a float32 copy and a log-softmax of the whole [B, c, vocab]
#: chunk streaming through memory (2–4× faster there; every row's NLL is bit-identical to the whole-chunk form)
NLL_ROWS_CPU = 8


def row_blocks(rows: int, device: torch.device) -> Iterable[tuple[int, int]]:
    """Ranges ``[a, b)`` of rows processed together: :data:`NLL_ROWS_CPU` on the CPU, all at once elsewhere."""
    step = NLL_ROWS_CPU if device.type == "cpu" else max(rows, 1)
    for s in range(0, rows, step):
        yield s, min(s + step, rows)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Next-token NLL of every row: ``logits [R, vocab]`` (any dtype), ``targets [R]`` → ``[R]`` float32.

    Each row is ``cross_entropy(logits[r].float(), targets[r])``, computed a few rows at a time on the CPU
    (:data:`NLL_ROWS_CPU`), so no float32 copy of the whole logits tensor is ever made."""
    out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for s, e in row_blocks(logits.shape[0], logits.device):
        out[s:e] = F.cross_entropy(logits[s:e].float(), targets[s:e], reduction="none")
    return out


def nll_sum(model: nn.Module, hidden: Tensor, ids: Tensor, first: int, chunk: int) -> float:
    """Sum of next-token NLL over scored targets, computing logits chunk by chunk (per-token NLLs in float32,
    summed in float64, so the total does not depend on how windows are batched beyond the last bits)."""
    total = 0.0
    for s, e in logit_chunks(first, ids.shape[1], chunk):
        logits = head_logits(model, hidden[:, s:e])                          # [B, c, vocab], model dtype
        total += float(token_nll(logits.reshape(-1, logits.shape[-1]), ids[:, s + 1:e + 1].reshape(-1))
                       .sum(dtype=torch.float64))
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
    next-token distributions, number of positions where both predict the same top-1 token). Rows are upcast
    and compared a few at a time, as in :func:`token_nll` (the NLLs are the same numbers as :func:`nll_sum`'s)."""
    nll_a = nll_b = kl = agree = 0.0
    for s, e in logit_chunks(first, ids.shape[1], chunk):
        za, zb = head_logits(model_a, hidden_a[:, s:e]), head_logits(model_b, hidden_b[:, s:e])
        za, zb = za.reshape(-1, za.shape[-1]), zb.reshape(-1, zb.shape[-1])  # [R, vocab], model dtype
        tgt = ids[:, s + 1:e + 1].reshape(-1)
        rows = torch.empty(3, za.shape[0], dtype=torch.float32, device=za.device)   # NLL a, NLL b, KL per row
        same = torch.zeros((), dtype=torch.int64, device=za.device)
        for r0, r1 in row_blocks(za.shape[0], za.device):
            fa, fb = za[r0:r1].float(), zb[r0:r1].float()
            la, lb = torch.log_softmax(fa, -1), torch.log_softmax(fb, -1)
            t = tgt[r0:r1].unsqueeze(1)
            rows[0, r0:r1] = la.gather(1, t).squeeze(1).neg_()    # = cross_entropy's value (log-softmax, then NLL)
            rows[1, r0:r1] = lb.gather(1, t).squeeze(1).neg_()
            rows[2, r0:r1] = (la.exp() * (la - lb)).sum(-1)
            same += (fa.argmax(-1) == fb.argmax(-1)).sum()
        a, b, k = rows.sum(dim=1, dtype=torch.float64).tolist()
        nll_a, nll_b, kl, agree = nll_a + a, nll_b + b, kl + k, agree + float(same)
    return nll_a, nll_b, kl, agree


def oom_guard(fn, what: str):
    """``fn()``, with an out-of-memory error turned into a clear :func:`~analysis.errors.oom_error`."""
    try:
        return fn()
    except RuntimeError as exc:
        if is_oom(exc):
            raise oom_error(exc, what) from exc
        raise
