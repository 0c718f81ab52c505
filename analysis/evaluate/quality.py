"""How good a pruned model is: perplexity, agreement with the original (KL, top-1), greedy generations.

Perplexity protocol (default; the GPTQ/SparseGPT "WikiText-2 PPL" protocol most pruning papers use):
the held-out split's documents are joined with EOS into one token stream, cut into **disjoint windows**
of ``window = min(2048, context)`` tokens, and the **remainder is dropped** (a stream shorter than
one window is scored as a single shorter window). Perplexity is token perplexity
``exp(sum NLL / tokens scored)``; within a window the first token is context only. When the
architecture needs a BOS (Gemma, ``adapter.spec.needs_bos``) every window is ``BOS + window-1``
stream tokens and all stream tokens are scored. With ``stride < window`` the Hugging Face sliding
window protocol is used instead: windows start every ``stride`` tokens, the tokens already scored
by the previous window are context only (label -100), and the last window may be shorter (nothing
is dropped). Every result carries its ``protocol``.

Plans are evaluated on a :func:`~analysis.models.surgery.pruned_view` (no copy of the weights); latency uses
a physically pruned copy so skipped blocks really cost nothing (:mod:`analysis.evaluate.cost`).
"""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from analysis.errors import DataError
from analysis.evaluate.windows import EvalConfig, EvalWindows, Progress, prepare_eval
from analysis.models.forward import compare_sums, final_hidden, nll_sum, oom_guard, ppl_result
from analysis.models.device import dtype_name
from analysis.models.loading import LoadedModel
from analysis.models.plan import Plan
from analysis.models.prefix import prefix_batch, prefix_schedule
from analysis.models.surgery import pruned_view


def eval_protocol(lm: LoadedModel, windows: EvalWindows) -> dict:
    """How a result was measured (metric, corpus, windows, tokens scored, dtype, model): every result carries it."""
    m = windows.meta
    return {"metric": "token perplexity exp(mean NLL)", "corpus": m.get("corpus"), "split": m.get("split"),
            "tokens_scored": windows.tokens_scored, "windows": windows.n_windows, "window": m.get("window"),
            "stride": m.get("stride"), "remainder": m.get("remainder"), "bos": bool(m.get("bos")),
            "tokens_used": m.get("tokens_used"), "max_tokens": m.get("max_tokens"),
            "dtype": dtype_name(lm.dtype), "model": lm.name, "fingerprint": lm.fingerprint}


def perplexity(lm: LoadedModel, data=None, plan: Plan | None = None, cfg: EvalConfig | None = None,
               split: str = "eval", progress: Progress | None = None) -> dict:
    """Token perplexity of ``lm`` (or of ``plan`` applied as a view) on held-out data; see module doc.

    Returns ``{"perplexity", "nll", "nll_sum", "tokens", "protocol", "plan", "seconds"}``.
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    windows = prepare_eval(lm, data, cfg, split)
    model = lm.model if plan is None or plan.is_empty else pruned_view(lm.model, plan)
    total, n = 0.0, len(windows.batches)
    with torch.inference_mode():
        for b, (ids, first) in enumerate(windows.batches):
            ids = ids.to(lm.device)
            total += oom_guard(lambda: nll_sum(model, final_hidden(model, ids), ids, first, cfg.logits_chunk),
                               "perplexity evaluation")
            if progress:
                progress((b + 1) / n, f"perplexity: window batch {b + 1}/{n}")
    out = ppl_result(total, windows.tokens_scored)
    out.update(protocol=eval_protocol(lm, windows), plan=plan.to_dict() if plan else None,
               seconds=time.perf_counter() - t0)
    return out


def agreement(lm: LoadedModel, plan: Plan, token_windows=None, cfg: EvalConfig | None = None,
              split: str = "eval", progress: Progress | None = None) -> dict:
    """KL(original ‖ pruned) of next-token distributions (mean nats per token) and top-1 agreement.

    ``token_windows``: anything :func:`prepare_eval` accepts (EvalWindows, [N, T] ids, corpus name).
    Also returns both perplexities on the same tokens, equal to :func:`perplexity`'s.
    """
    cfg = cfg or EvalConfig()
    windows = prepare_eval(lm, token_windows, cfg, split)
    # the pruned forward starts at its first dropped block from the original's residual stream there
    steps = prefix_schedule(lm, [("original", Plan()), ("pruned", plan or Plan())])
    kl = agree = nll_o = nll_p = 0.0
    with torch.inference_mode():
        n_b, n_w, done_w = len(windows.batches), windows.n_windows, 0
        for b, (ids, first) in enumerate(windows.batches):
            ids = ids.to(lm.device)
            out = {key: (view, hidden) for key, view, hidden in prefix_batch(steps, ids)}
            (v_o, h_o), (v_p, h_p) = out["original"], out["pruned"]
            sums = compare_sums(v_o, h_o, v_p, h_p, ids, first, cfg.logits_chunk)
            nll_o, nll_p, kl, agree = (t + x for t, x in zip((nll_o, nll_p, kl, agree), sums))
            done_w += ids.shape[0]
            if progress:
                progress((b + 1) / n_b, f"windows {done_w}/{n_w}")
    n = windows.tokens_scored
    orig, pruned = ppl_result(nll_o, n), ppl_result(nll_p, n)
    return {"kl": kl / n, "top1": agree / n, "tokens": n,
            "perplexity_original": orig["perplexity"], "perplexity_pruned": pruned["perplexity"],
            "nll_original": orig["nll"], "nll_pruned": pruned["nll"],
            "protocol": eval_protocol(lm, windows), "plan": (plan or Plan()).to_dict()}


# ----------------------------------------------------------------------------------------------------
# generations


def greedy_continuation(model: nn.Module, tok, ids: Tensor, mask: Tensor, max_new_tokens: int) -> Tensor:
    """The greedy continuation (new token ids ``[max_new_tokens]``) of the first prompt row, KV cache on."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             use_cache=True, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:]


def generate_pair(lm: LoadedModel, plan: Plan | None, prompt: str, max_new_tokens: int = 40) -> dict:
    """Greedy continuations of ``prompt`` by the original and the pruned model (a view; KV cache on)."""
    if lm.tokenizer is None:
        raise DataError("this model has no tokenizer, so it cannot generate text")
    enc = lm.tokenizer(prompt, return_tensors="pt")
    ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
    if ids.shape[1] == 0:
        raise DataError("the prompt is empty")
    orig = greedy_continuation(lm.model, lm.tokenizer, ids, mask, max_new_tokens)
    pruned = greedy_continuation(pruned_view(lm.model, plan), lm.tokenizer, ids, mask, max_new_tokens)
    n = min(len(orig), len(pruned))
    diff = next((i for i in range(n) if int(orig[i]) != int(pruned[i])), None if len(orig) == len(pruned) else n)
    dec = lambda t: lm.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    return {"prompt": prompt, "original": dec(orig), "pruned": dec(pruned), "original_ids": orig.tolist(),
            "pruned_ids": pruned.tolist(), "first_divergence": diff, "max_new_tokens": max_new_tokens,
            "plan": plan.to_dict() if plan else None}
