"""Using a :class:`~analysis.heal.registry.Healed` model: as a LoadedModel, compared with the original,
saved as a checkpoint."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import adapter_for
from ..plan import Plan
from ..surgery import KV_MARK, PLAN_FILE, _checkpoint_plan, atomic_dir, check_out_dir
from .registry import Healed

HEAL_FILE = "entroscope-heal.json"


def _settings_hash(healed: Healed) -> str:
    text = json.dumps({"m": healed.method, "s": healed.settings, "p": healed.plan.to_dict()["drop_layers"]},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def healed_lm(lm, healed: Healed):
    """The healed model as a :class:`~analysis.models.LoadedModel` (evaluate it like any model)."""
    return type(lm)(model=healed.model, tokenizer=lm.tokenizer, adapter=adapter_for(healed.model),
                    name=f"{lm.name}+heal:{healed.method}", source=lm.source,
                    fingerprint=f"{lm.fingerprint}:heal:{_settings_hash(healed)}", device=lm.device, dtype=lm.dtype,
                    info={**lm.info, "plan": healed.plan.to_dict(), "healing": healed.describe()})


def compare(lm, model, windows, cfg=None) -> dict:
    """Perplexity of ``model`` and of the original, KL(original ‖ model) and top-1 agreement on the same
    windows (anything :func:`~analysis.evaluate.prepare_eval` accepts), as :func:`~analysis.evaluate.agreement`."""
    from ..evaluate import EvalConfig, _chunks, _final_hidden, _head, _ppl_result, _protocol, prepare_eval

    cfg = cfg or EvalConfig()
    windows = prepare_eval(lm, windows, cfg)
    kl = agree = nll_o = nll_h = 0.0
    with torch.inference_mode():
        for ids, first in windows.batches:
            ids = ids.to(lm.device)
            h_o, h_h = _final_hidden(lm.model, ids), _final_hidden(model, ids)
            for s, e in _chunks(first, ids.shape[1], cfg.logits_chunk):
                zo, zh = _head(lm.model, h_o[:, s:e]).float(), _head(model, h_h[:, s:e]).float()
                tgt = ids[:, s + 1:e + 1].reshape(-1)
                nll_o += float(F.cross_entropy(zo.reshape(-1, zo.shape[-1]), tgt, reduction="sum"))
                nll_h += float(F.cross_entropy(zh.reshape(-1, zh.shape[-1]), tgt, reduction="sum"))
                lo, lh = torch.log_softmax(zo, -1), torch.log_softmax(zh, -1)
                kl += float((lo.exp() * (lo - lh)).sum())
                agree += float((zo.argmax(-1) == zh.argmax(-1)).sum())
    n = windows.tokens_scored
    o, h = _ppl_result(nll_o, n), _ppl_result(nll_h, n)
    return {"kl": kl / n, "top1": agree / n, "tokens": n, "perplexity_original": o["perplexity"],
            "perplexity": h["perplexity"], "nll_original": o["nll"], "nll": h["nll"],
            "protocol": _protocol(lm, windows)}


def save_healed(lm, healed: Healed, out_dir: str | os.PathLike, overwrite: bool = False,
                root: str | os.PathLike | None = None) -> Path:
    """Save the healed pruned model like :func:`~analysis.surgery.save_pruned`: whole-layer plans give a
    standard checkpoint (plain ``from_pretrained``); sub-block plans add ``entroscope-plan.json``. The plan's
    source and ``entroscope-heal.json`` record the healing."""
    out = Path(out_dir).expanduser()
    check_out_dir(out, overwrite, root)
    model = healed.model
    plan = healed.plan
    stored = _checkpoint_plan(plan, lm.model, getattr(lm, "name", None))
    stored = Plan(stored.drop_attn, stored.drop_mlp, stored.drop_layers,
                  {**stored.source, "healing": {"method": healed.method, "settings": healed.settings}})
    kv = vars(model.config).pop(KV_MARK, None)             # runtime-only: re-applied from the plan on load
    try:
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            if lm.tokenizer is not None:
                lm.tokenizer.save_pretrained(tmp)
            stored.save(tmp / PLAN_FILE)
            (tmp / HEAL_FILE).write_text(json.dumps(healed.describe(), indent=1, default=str))
    finally:
        if kv is not None:
            setattr(model.config, KV_MARK, kv)
    return out
