"""Lazy, cached tokenization of documents, and token streams of documents joined with EOS.

Documents are tokenized without special tokens and only as far as needed; whole-document tokenizations
are cached per tokenizer. :func:`token_stream` is the perplexity stream; the window samplers of
:mod:`analysis.data.windows` use the helpers.
"""
from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from typing import Sequence

import torch

from analysis.errors import DataError


class _TokenCache:
    """Whole-document token ids per tokenizer (weakly keyed), LRU-bounded by the number of tokens."""

    def __init__(self, max_tokens: int = 8_000_000):
        self.max_tokens = max_tokens
        self._by_tok: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, tokenizer, text: str) -> torch.Tensor | None:
        with self._lock:
            try:
                entry = self._by_tok.get(tokenizer)
            except TypeError:  # not weak-referenceable / hashable: no caching
                return None
            if entry is None or text not in entry[0]:
                return None
            entry[0].move_to_end(text)
            return entry[0][text]

    def put(self, tokenizer, text: str, ids: torch.Tensor) -> None:
        with self._lock:
            try:
                entry = self._by_tok.setdefault(tokenizer, [OrderedDict(), 0])
            except TypeError:
                return
            if text in entry[0]:
                return
            entry[0][text] = ids
            entry[1] += len(ids)
            while entry[1] > self.max_tokens and len(entry[0]) > 1:
                _, old = entry[0].popitem(last=False)
                entry[1] -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._by_tok.clear()


_CACHE = _TokenCache()
WHITESPACE = re.compile(r"\s")


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` without special tokens."""
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def doc_ids(tokenizer, doc: str) -> torch.Tensor:
    """Token ids of a whole document (cached per tokenizer)."""
    ids = _CACHE.get(tokenizer, doc)
    if ids is None:
        ids = encode(tokenizer, doc)
        _CACHE.put(tokenizer, doc, ids)
    return ids


def _prefix_ids(tokenizer, doc: str, need: int, cap: int) -> torch.Tensor:
    """The first ``need`` tokens of ``doc`` (or all of it), tokenizing only a growing prefix of a long doc."""
    if len(doc) <= cap:
        return doc_ids(tokenizer, doc)[:need]
    chars = max(cap, 8 * need)
    while chars < len(doc):
        end = WHITESPACE.search(doc, chars)  # cut at whitespace; the last token may still be partial: drop it
        piece = doc[:end.start()] if end else doc
        ids = encode(tokenizer, piece)
        if len(ids) > need or not end:
            return ids[:need]
        chars *= 2
    return doc_ids(tokenizer, doc)[:need]


def chunk_cap(seq_len: int) -> int:
    """Characters tokenized per draw from a long document: plenty for a ``seq_len``-token window."""
    return max(8000, 40 * seq_len)


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when the tokenizer puts a BOS token first by default (e.g. Gemma; not SmolLM2 or Qwen)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def resolve_add_bos(tokenizer, add_bos: bool | None) -> bool:
    """``add_bos``, or when None whether the tokenizer adds a BOS by default; DataError if it has no BOS."""
    use = tokenizer_adds_bos(tokenizer) if add_bos is None else bool(add_bos)
    if use and getattr(tokenizer, "bos_token_id", None) is None:
        raise DataError("add_bos is set but the tokenizer has no BOS token")
    return use


def with_bos(ids: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """``ids`` (``[L]`` or ``[N, L]``) with one BOS put first along the last dim: ``[L+1]`` / ``[N, L+1]``."""
    return torch.cat([ids.new_full((*ids.shape[:-1], 1), bos_token_id), ids], dim=-1)


def separator(tokenizer) -> torch.Tensor:
    """Ids put between documents (LongTensor): EOS, or the tokens of a blank line when there is no EOS."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return torch.tensor([eos] if eos is not None else encode(tokenizer, "\n\n").tolist(), dtype=torch.long)


def joined_stream(docs: Sequence[str], tokenizer, need: int | None, cap: int) -> torch.Tensor:
    """Docs joined with the separator, tokenized lazily until ``need`` tokens (all when None)."""
    sep = separator(tokenizer)
    parts: list[torch.Tensor] = []
    total = 0
    for i, doc in enumerate(docs):
        if need is not None and total >= need:
            break
        if i:
            parts.append(sep)
            total += len(sep)
        ids = doc_ids(tokenizer, doc) if need is None else _prefix_ids(tokenizer, doc, need - total, cap)
        parts.append(ids)
        total += len(ids)
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return stream if need is None else stream[:need]


def token_stream(docs: list[str], tokenizer, max_tokens: int | None = None,
                 add_bos: bool | None = None) -> torch.Tensor:
    """1-D ids of ``docs`` joined with EOS (no other special tokens), for perplexity over disjoint windows.

    Tokenizes lazily and stops after ``max_tokens``. ``add_bos`` (None: automatic, as in SampleConfig)
    puts one BOS at the start of the stream; pass ``add_bos=False`` if you add a BOS to every window.
    """
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"max_tokens must be >= 1, got {max_tokens}")
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise DataError("no text to tokenize: the document list is empty")
    bos = resolve_add_bos(tokenizer, add_bos)
    need = None if max_tokens is None else max_tokens - int(bos)
    stream = joined_stream(docs, tokenizer, need, chunk_cap(max_tokens or 256))
    if bos:
        stream = with_bos(stream, tokenizer.bos_token_id)
    return stream
