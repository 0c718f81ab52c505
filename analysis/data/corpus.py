"""A corpus: text documents with a fixed, seed-independent calibration/evaluation split.

Built-in domains (:mod:`analysis.data.domains`), user files (:mod:`analysis.data.files`) and hub datasets
(:mod:`analysis.data.hub`) all return a :class:`Corpus`; the split helpers here are shared by them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from analysis.errors import DataError

#: How built-in domains and multi-document files are split (the fraction is the file's eval_fraction).
HASH_SPLIT_RULE = ("document-level, seed-independent: documents ranked by sha256 of their {key}; "
                   "the first {pct}% go to eval, the rest to calib")
DEFAULT_EVAL_FRACTION = 0.2
SPLITS = ("calib", "eval", "all")
MIN_TEXT_CHARS = 200  # a user corpus with less text than this is rejected


@dataclass
class Corpus:
    """Text documents with a fixed calibration/evaluation split."""

    name: str  # domain name ("wiki"), or the file / dataset name for user text
    calib: list[str]  # calibration documents
    eval: list[str]  # held-out evaluation documents (never in calib)
    meta: dict = field(default_factory=dict)  # source, licence, doc and char counts, split rule

    def split(self, which: str) -> list[str]:
        """The documents of one split: ``"calib"``, ``"eval"`` or ``"all"`` (calib then eval)."""
        check_split(which)
        if which == "calib":
            return list(self.calib)
        if which == "eval":
            return list(self.eval)
        return list(self.calib) + list(self.eval)


def check_split(which: str) -> None:
    """DataError unless ``which`` is one of :data:`SPLITS`."""
    if which not in SPLITS:
        raise DataError(f"unknown split {which!r}; use 'calib', 'eval' or 'all'")


def corpus_meta(source: str, licence: str, calib: Sequence[str], eval_: Sequence[str], rule: str, **extra) -> dict:
    """Corpus metadata: source, licence, split rule, and document/character counts per split."""
    return {"source": source, "licence": licence, "split_rule": rule,
            "n_docs": {"calib": len(calib), "eval": len(eval_)},
            "n_chars": {"calib": sum(map(len, calib)), "eval": sum(map(len, eval_))}, **extra}


def _n_eval(n: int, fraction: float) -> int:
    """How many of ``n`` documents go to eval: round(n * fraction), at least 1 and leaving 1 for calib."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def hash_split(items: Sequence[tuple[str, str]], fraction: float) -> tuple[list[str], list[str]]:
    """Split ``(key, doc)`` pairs: rank by sha256(key), the first ``_n_eval`` go to eval.

    The ranking doubles as a deterministic shuffle, so the first documents of either split are a
    varied sample rather than, e.g., the alphabetically first modules.
    """
    ranked = sorted(items, key=lambda kv: (hashlib.sha256(kv[0].encode("utf-8")).hexdigest(), kv[0]))
    k = _n_eval(len(ranked), fraction)
    return [d for _, d in ranked[k:]], [d for _, d in ranked[:k]]


def _split_single(doc: str, fraction: float) -> tuple[list[str], list[str]]:
    """Split one document at a line break (or space) near ``1 - fraction`` of its characters."""
    cut = int(len(doc) * (1 - fraction))
    for sep in ("\n", " "):
        after, before = doc.find(sep, cut), doc.rfind(sep, 0, cut)
        options = [p for p in (after, before) if p > 0]
        if options:
            cut = min(options, key=lambda p: abs(p - cut))
            break
    head, tail = doc[:cut].strip(), doc[cut:].strip()
    return ([head], [tail]) if head and tail else ([doc], [])


def user_corpus(name: str, docs: list[str], eval_fraction: float, source: str, **extra) -> Corpus:
    """A Corpus from user documents: drop exact duplicates, check the size, split deterministically."""
    unique = list(dict.fromkeys(docs))
    chars = sum(map(len, unique))
    if chars < MIN_TEXT_CHARS:
        raise DataError(f"too little text in {name}: {chars} characters in {len(unique)} document(s), "
                        f"need at least {MIN_TEXT_CHARS}")
    if len(unique) == 1 and eval_fraction > 0:
        calib, eval_ = _split_single(unique[0], eval_fraction)
        rule = (f"single document: cut at a line break near {round((1 - eval_fraction) * 100)}% of its "
                "characters; the head -> calib, the tail -> eval")
    else:
        calib, eval_ = hash_split([(d, d) for d in unique], eval_fraction)
        rule = HASH_SPLIT_RULE.format(key="text", pct=round(eval_fraction * 100))
    meta = corpus_meta(source, "user-provided", calib, eval_, rule, duplicates_dropped=len(docs) - len(unique),
                       **extra)
    return Corpus(name, calib, eval_, meta)
