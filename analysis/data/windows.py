"""Calibration windows: ``[N, T]`` token windows cut from one corpus (:func:`sample_windows`) or a weighted
mix of domains (:func:`sample_hybrid`), as configured by :class:`SampleConfig`.

Sampling follows the EntroDrop protocol by default (128 windows of 256 tokens, seed 2024, each window a
random slice of a random document longer than the window).
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from analysis.data.corpus import Corpus, check_split
from analysis.data.domains import DOMAINS, apportion, check_weights, load_corpus
from analysis.data.streams import (
    WHITESPACE,
    chunk_cap,
    doc_ids,
    encode,
    joined_stream,
    resolve_add_bos,
    separator,
    with_bos,
)
from analysis.data.tokens import TokenSet
from analysis.errors import DataError
from analysis.settings import check_ranges, seed_int, setting

MODES = ("random", "consecutive")


@dataclass
class SampleConfig:
    """How windows are cut from text (defaults: the EntroDrop calibration protocol)."""

    n_samples: int = setting(128, flag="samples", min=1, max=1_000_000, what="a window count",  # N windows
        help="N windows (default 128; with --tokens: the first N rows of the file, default all)")
    seq_len: int = setting(256, min=1, max=1_048_576, what="a token count", help="T tokens per window (default 256; with --tokens it must equal the file's T)")
    seed: int = setting(2024, type=seed_int, help="seed of the windows (analyze: and of the MI state subsample)")  # EntroDrop's; same seed => identical windows
    mode: str = setting("random", flag="sampling", choices=MODES,  # "random": random window of a random doc longer than T (EntroDrop);
        help="random windows from documents longer than T (EntroDrop) or consecutive windows")
    # "consecutive": docs (order shuffled with the seed) joined with EOS, cut into consecutive windows
    add_bos: bool | None = None  # None: True when the tokenizer adds a BOS by default (Gemma).
    # When True every window is BOS + T-1 text tokens.

    def __post_init__(self) -> None:
        check_ranges(self)               # every numeric setting finite and in its stated range (settings.py)


# --- window sampling --------------------------------------------------------------------------------------


def _check_config(cfg: SampleConfig) -> None:
    if cfg.mode not in MODES:
        raise DataError(f"unknown sampling mode {cfg.mode!r}; use 'random' or 'consecutive'")
    if int(cfg.n_samples) < 1:
        raise DataError(f"n_samples must be >= 1, got {cfg.n_samples}")
    if int(cfg.seq_len) < 2:
        raise DataError(f"seq_len must be >= 2, got {cfg.seq_len}")


def _docs_of(corpus, split: str) -> tuple[str, list[str], dict]:
    """(name, non-empty documents, meta) of a Corpus, a built-in domain name, or a list of strings."""
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    if isinstance(corpus, Corpus):
        name, docs, meta = corpus.name, corpus.split(split), corpus.meta
    elif isinstance(corpus, (list, tuple)) and all(isinstance(d, str) for d in corpus):
        check_split(split)
        name, docs, meta = "text", list(corpus), {}
    else:
        raise TypeError(f"expected a Corpus or a list of strings, got {type(corpus).__name__}")
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise DataError(f"corpus {name!r} has no {split} documents")
    return name, docs, meta


def _window_source(doc: str, tokenizer, t_text: int, rng: random.Random, cap: int) -> torch.Tensor | None:
    """Token ids to cut a window from, or None when the doc has no more than ``t_text`` tokens.

    Docs up to ``cap`` characters are tokenized whole (cached); from a longer doc a random ``cap``-character
    chunk starting at whitespace is tokenized, and its possibly cut last token dropped.
    """
    if len(doc) > cap:
        off = rng.randrange(len(doc) - cap + 1)
        if off:
            m = WHITESPACE.search(doc, off, off + 1000)
            off = m.start() if m else off
        ids = encode(tokenizer, doc[off:off + cap])
        ids = ids[:-1] if off + cap < len(doc) else ids
        if len(ids) > t_text:
            return ids
    ids = doc_ids(tokenizer, doc)
    return ids if len(ids) > t_text else None


def _random_windows(docs: Sequence[str], tokenizer, n: int, t_text: int, seed: int) -> list[torch.Tensor] | None:
    """EntroDrop sampling: n times, a uniform window of a uniformly drawn doc longer than ``t_text`` tokens.

    Short docs are dropped from the candidates when met. None when no doc is long enough.
    """
    rng = random.Random(seed)
    cap = chunk_cap(t_text)
    candidates = list(range(len(docs)))
    rows: list[torch.Tensor] = []
    while len(rows) < n:
        if not candidates:
            return None
        j = rng.randrange(len(candidates))
        ids = _window_source(docs[candidates[j]], tokenizer, t_text, rng, cap)
        if ids is None:
            candidates[j] = candidates[-1]
            candidates.pop()
            continue
        start = rng.randrange(len(ids) - t_text + 1)
        rows.append(ids[start:start + t_text])
    return rows


def _doc_order(n: int, seed: int) -> list[int]:
    """The seeded document order of consecutive mode."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _consecutive_windows(docs: Sequence[str], tokenizer, n: int, t_text: int, seed: int,
                         name: str) -> tuple[torch.Tensor, dict]:
    """``[n, t_text]`` consecutive slices of the docs (seeded order) joined with EOS.

    When the text holds fewer than ``n`` windows the stream is repeated (recorded as ``wrapped``).
    """
    need = n * t_text
    ordered = [docs[i] for i in _doc_order(len(docs), seed)]
    stream = joined_stream(ordered, tokenizer, need, chunk_cap(t_text))
    info: dict = {"doc_order": "shuffled with the seed"}
    if len(stream) < t_text:
        raise DataError(f"not enough text in {name!r} for one window: {len(stream)} tokens available, "
                        f"{t_text} needed", hint="use more text or a smaller seq_len")
    if len(stream) < need:
        info.update(wrapped=True, available_tokens=len(stream))
        sep = separator(tokenizer)
        reps = math.ceil(need / (len(stream) + len(sep)))
        stream = torch.cat([torch.cat([stream, sep])] * reps)[:need]
    return stream.view(n, t_text), info


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def sample_windows(corpus: Corpus | list[str] | str, tokenizer, cfg: SampleConfig | None = None,
                   split: str = "calib") -> TokenSet:
    """Cut ``cfg.n_samples`` windows of exactly ``cfg.seq_len`` tokens from one corpus.

    ``corpus`` is a Corpus (``split`` picks calib/eval/all), a built-in domain name, or a list of documents
    (used as-is). Random mode falls back to consecutive windows when no document is long enough
    (``source["fallback"] = "consecutive"``).
    """
    cfg = cfg or SampleConfig()
    _check_config(cfg)
    name, docs, meta = _docs_of(corpus, split)
    n, seq_len = int(cfg.n_samples), int(cfg.seq_len)
    bos = resolve_add_bos(tokenizer, cfg.add_bos)
    t_text = seq_len - int(bos)
    source = {"kind": "corpus", "corpus": name, "corpus_source": meta.get("source", "documents"),
              "split": split, "mode": cfg.mode, "seed": cfg.seed, "n_samples": n, "seq_len": seq_len,
              "add_bos": bos, "tokenizer": _tokenizer_name(tokenizer), "n_docs": len(docs)}
    rows = _random_windows(docs, tokenizer, n, t_text, cfg.seed) if cfg.mode == "random" else None
    if rows is not None:
        ids = torch.stack(rows)
    else:
        if cfg.mode == "random":
            source["fallback"] = "consecutive"
        ids, info = _consecutive_windows(docs, tokenizer, n, t_text, cfg.seed, name)
        source.update(info)
    if bos:
        ids = with_bos(ids, tokenizer.bos_token_id)
    return TokenSet(ids.clone(), [name] * n, source)


# --- hybrid (multi-domain) sampling -----------------------------------------------------------------------


def _derive_seed(seed: int, name: str) -> int:
    """A per-domain seed derived from the run seed and the domain name."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "big")


def sample_hybrid(weights: dict[str, float], tokenizer, cfg: SampleConfig | None = None, split: str = "calib",
                  corpora: dict[str, Corpus] | None = None) -> TokenSet:
    """A weighted mix of domains: exact per-domain counts (largest remainder), rows shuffled with the seed.

    Names are looked up in ``corpora`` first (e.g. user files), then among the built-in domains. Each
    domain is sampled with its own seed derived from ``cfg.seed`` and its name.
    """
    cfg = cfg or SampleConfig()
    _check_config(cfg)
    weights = check_weights(weights)
    corpora = corpora or {}
    unknown = [k for k in weights if k not in corpora and k not in DOMAINS]
    if unknown:
        raise DataError(f"unknown domain {unknown[0]!r} in weights; valid domains: "
                        f"{', '.join(list(DOMAINS) + [c for c in corpora if c not in DOMAINS])}")
    counts = apportion(int(cfg.n_samples), weights)
    parts: list[TokenSet] = []
    for name, k in counts.items():
        if k:
            corpus = corpora.get(name) or load_corpus(name)
            part = sample_windows(corpus, tokenizer, replace(cfg, n_samples=k, seed=_derive_seed(cfg.seed, name)),
                                  split)
            parts.append(TokenSet(part.input_ids, [name] * k, part.source))
    perm = _doc_order(int(cfg.n_samples), cfg.seed)
    ids = torch.cat([p.input_ids for p in parts])[perm]
    domains = [d for p in parts for d in p.domains]
    source = {"kind": "hybrid", "weights": weights, "counts": counts, "split": split, "mode": cfg.mode,
              "seed": cfg.seed, "n_samples": int(cfg.n_samples), "seq_len": int(cfg.seq_len),
              "add_bos": parts[0].source["add_bos"], "tokenizer": _tokenizer_name(tokenizer),
              "row_order": "shuffled with the seed",
              "parts": {p.domains[0]: {k: v for k, v in p.source.items() if k not in ("kind", "tokenizer")}
                        for p in parts}}
    return TokenSet(ids, [domains[i] for i in perm], source)
