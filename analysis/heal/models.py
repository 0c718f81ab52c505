"""Using a :class:`~analysis.heal.registry.Healed` model: as a LoadedModel, compared with the original,
saved as a checkpoint; the calibration tokens healing trains on."""
from __future__ import annotations

import hashlib
import math
import json
import os
from pathlib import Path

import torch

from analysis.data.domains import load_corpus, parse_domain_weights
from analysis.data.windows import SampleConfig, sample_hybrid, sample_windows
from analysis.evaluate.quality import eval_protocol
from analysis.evaluate.windows import EvalConfig, prepare_eval
from analysis.heal.registry import Healed
from analysis.models.adapters import adapter_for
from analysis.models.forward import compare_sums, final_hidden, ppl_result
from analysis.models.plan import Plan
from analysis.models.surgery import save_pruned

HEAL_FILE = "entroscope-heal.json"


def _settings_hash(healed: Healed) -> str:
    text = json.dumps({"m": healed.method, "s": healed.settings, "p": healed.plan.to_dict()["drop_layers"]},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def healed_lm(lm, healed: Healed):
    """The healed model as a :class:`~analysis.models.loading.LoadedModel` (evaluate it like any model)."""
    return type(lm)(model=healed.model, tokenizer=lm.tokenizer, adapter=adapter_for(healed.model),
                    name=f"{lm.name}+heal:{healed.method}", source=lm.source,
                    fingerprint=f"{lm.fingerprint}:heal:{_settings_hash(healed)}", device=lm.device, dtype=lm.dtype,
                    info={**lm.info, "plan": healed.plan.to_dict(), "healing": healed.describe()})


def compare(lm, model, windows, cfg=None, progress=None) -> dict:
    """Perplexity of ``model`` and of the original, KL(original ‖ model) and top-1 agreement on the same
    windows (anything :func:`~analysis.evaluate.windows.prepare_eval` accepts), as
    :func:`~analysis.evaluate.quality.agreement`. ``progress(frac, text)`` is told the batches done."""
    cfg = cfg or EvalConfig()
    windows = prepare_eval(lm, windows, cfg)
    kl = agree = nll_o = nll_h = 0.0
    n_b = len(windows.batches)
    with torch.inference_mode():
        for b, (ids, first) in enumerate(windows.batches):
            if progress:
                progress(b / n_b, f"healed vs original: window batch {b + 1}/{n_b}")
            ids = ids.to(lm.device)
            h_o, h_h = final_hidden(lm.model, ids), final_hidden(model, ids)
            sums = compare_sums(lm.model, h_o, model, h_h, ids, first, cfg.logits_chunk)
            nll_o, nll_h, kl, agree = (t + x for t, x in zip((nll_o, nll_h, kl, agree), sums))
    n = windows.tokens_scored
    o, h = ppl_result(nll_o, n), ppl_result(nll_h, n)
    return {"kl": kl / n, "top1": agree / n, "tokens": n, "perplexity_original": o["perplexity"],
            "perplexity": h["perplexity"], "nll_original": o["nll"], "nll": h["nll"],
            "protocol": eval_protocol(lm, windows)}


def save_healed(lm, healed: Healed, out_dir: str | os.PathLike, overwrite: bool = False,
                root: str | os.PathLike | None = None, extra_files: dict | None = None,
                expected: str | None = None, card: dict | None = None) -> Path:
    """Save the healed pruned model like :func:`~analysis.models.surgery.save_pruned` (same safe write, same
    format): whole layers removed; sub-blocks the healed copy has lost stored with zeroed output projections,
    so plain ``from_pretrained`` gives exactly the healed model's outputs. ``entroscope-heal.json`` records
    the healing, with the plan in the original model's 0-based indices."""
    record = {**healed.describe(), "plan_in_original_indices": healed.plan.to_dict()}
    files = {HEAL_FILE: json.dumps(record, indent=1, default=str), **(extra_files or {})}
    card = {"model_name": getattr(lm, "name", None), "source_kind": getattr(lm, "source", None), **(card or {})}
    return save_pruned(healed.model, Plan(), out_dir, overwrite=overwrite, root=root, tokenizer=lm.tokenizer,
                       extra_files=files, expected=expected, card=card)

def heal_tokens(lm, corpus: str = "wiki", samples: int = 32, seq_len: int = 256, seed: int = 2024):
    """Calibration TokenSet for healing from a built-in domain or a mix like ``wiki:1,code:1``."""
    cfg = SampleConfig(n_samples=samples, seq_len=seq_len, seed=seed)
    if ":" in corpus or "," in corpus:
        return sample_hybrid(parse_domain_weights(corpus), lm.tokenizer, cfg, split="calib")
    return sample_windows(load_corpus(corpus), lm.tokenizer, cfg, split="calib")


def recovered(nll_original: float, nll_pruned: float, nll_healed: float) -> float | None:
    """Fraction of the log-perplexity gap recovered: (nll_pruned − nll_healed) / (nll_pruned − nll_original)."""
    gap = nll_pruned - nll_original
    if not gap or not all(math.isfinite(x) for x in (nll_original, nll_pruned, nll_healed)):
        return None
    return (nll_pruned - nll_healed) / gap

def healed_summary(lm, healed, windows, cfg, nll_original: float, nll_pruned: float) -> dict:
    """What ``eval --heal`` adds: the healed model's perplexity, KL and top-1 against the original."""
    c = compare(lm, healed.model, windows, cfg)
    return {"method": healed.method, "settings": healed.settings, "report": healed.report,
            "perplexity": c["perplexity"], "nll": c["nll"], "kl": c["kl"], "top1": c["top1"],
            "recovered_fraction": recovered(nll_original, nll_pruned, c["nll"])}
