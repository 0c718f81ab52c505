"""Token windows for evaluation: :class:`EvalConfig` and :func:`prepare_eval`, which turns a corpus name, texts,
a token stream or given ``[N, T]`` windows into batches of scored windows (the protocol is described in
:mod:`analysis.evaluate.quality`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from analysis.data.corpus import Corpus
from analysis.data.domains import load_corpus
from analysis.data.streams import token_stream
from analysis.errors import DataError
from analysis.models.loading import LoadedModel
from analysis.settings import check_ranges, setting

Progress = Callable[[float, str], None]
DEFAULT_CORPUS = "wiki"


@dataclass
class EvalConfig:
    """How perplexity is measured (defaults: disjoint 2048-token windows, remainder dropped)."""

    window: int | None = setting(None, kind="int", min=1, max=1_048_576, what="a token count",  # tokens per window incl. BOS; None → min(2048, model context)
        help="tokens per window (default min(2048, context))")
    stride: int | None = setting(None, kind="int", min=1, max=1_048_576, what="a token count",  # None (or >= window): disjoint windows; < window: HF sliding window
        help="sliding-window stride < window (default: disjoint windows, remainder dropped)")
    max_tokens: int | None = setting(None, kind="int", min=1, max=10**10, what="a token budget",  # budget of stream tokens read from the split (None: all of it)
        help="token budget (default: the whole split)")
    batch_size: int = setting(1, min=1, max=65_536, what="a batch size", help="windows per forward pass")
    logits_chunk: int = 512        # positions per LM-head call: bounds logits memory to [B, chunk, vocab]
    bos: bool | None = None        # prepend BOS to every window; None → the architecture's needs_bos

    def __post_init__(self) -> None:
        check_ranges(self)               # every numeric setting finite and in its stated range (settings.py)


@dataclass
class EvalWindows:
    """Token windows ready to score, in batches, plus where they came from."""

    batches: list[tuple[Tensor, int]]   # ([B, n] input ids, first scored target position in the window)
    meta: dict = field(default_factory=dict)

    @property
    def tokens_scored(self) -> int:
        return sum(ids.shape[0] * (ids.shape[1] - first) for ids, first in self.batches)

    @property
    def n_windows(self) -> int:
        return sum(ids.shape[0] for ids, _ in self.batches)


# ----------------------------------------------------------------------------------------------------
# windows


def model_context(model: nn.Module) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _window_spans(n_tokens: int, body: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index within the span) over a stream of ``n_tokens``."""
    if stride is None or stride >= body:                     # disjoint, remainder dropped
        if n_tokens < body:
            return [(0, n_tokens, 0)]
        return [(b, b + body, 0) for b in range(0, n_tokens - body + 1, body)]
    spans, prev_end = [], 0                                  # HF "perplexity of fixed-length models"
    for begin in range(0, n_tokens, stride):
        end = min(begin + body, n_tokens)
        spans.append((begin, end, (end - begin) - (end - prev_end)))
        prev_end = end
        if end == n_tokens:
            break
    return spans


def make_windows(stream: Tensor, window: int, stride: int | None = None, bos_id: int | None = None,
                 batch_size: int = 1) -> list[tuple[Tensor, int]]:
    """Cut a 1-D token stream into scored windows, batched (equal shapes only).

    Target ``ids[j]`` (predicted from position ``j - 1``) is scored when ``j >= first`` (first >= 1).
    """
    if stream.ndim != 1:
        raise DataError(f"expected a 1-D token stream, got shape {tuple(stream.shape)}")
    if stride is not None and stride < 1:
        raise DataError(f"stride must be >= 1, got {stride}")
    body = window - (bos_id is not None)
    if body < 1 or window < 2:
        raise DataError(f"window must be >= 2 tokens, got {window}")
    windows = []
    for begin, end, first in _window_spans(len(stream), body, stride):
        ids = stream[begin:end]
        if bos_id is not None:
            ids, first = torch.cat([torch.tensor([bos_id], dtype=ids.dtype), ids]), first + 1
        first = max(first, 1)
        if first < len(ids):                                 # at least one scored target
            windows.append((ids, first))
    if not windows:
        raise DataError(f"not enough tokens to score: the stream has {len(stream)} token(s)")
    return batch_windows(windows, batch_size)


def batch_windows(windows: list[tuple[Tensor, int]], batch_size: int) -> list[tuple[Tensor, int]]:
    """Group ``(ids [n], first)`` windows into ``(ids [B, n], first)`` batches of up to ``batch_size``
    consecutive windows of the same shape and first scored position."""
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    out, group = [], []
    for ids, first in windows:
        if group and (len(group) == batch_size or group[0][0].shape != ids.shape or group[0][1] != first):
            out.append((torch.stack([g[0] for g in group]), group[0][1]))
            group = []
        group.append((ids, first))
    if group:
        out.append((torch.stack([g[0] for g in group]), group[0][1]))
    return out


def _use_bos(lm: LoadedModel, cfg: EvalConfig) -> int | None:
    use = lm.adapter.spec.needs_bos if cfg.bos is None else cfg.bos
    if not use:
        return None
    bos = getattr(lm.tokenizer, "bos_token_id", None) if lm.tokenizer is not None else None
    if bos is None:
        bos = getattr(lm.model.config, "bos_token_id", None)
    if bos is None:
        raise DataError("this model needs a BOS token, but neither the tokenizer nor the config defines one")
    return int(bos)


def _resolve_window(lm: LoadedModel, cfg: EvalConfig) -> int:
    ctx = model_context(lm.model)
    window = cfg.window or min(2048, ctx or 2048)
    if ctx and window > ctx:
        raise DataError(f"window {window} is beyond the model's context of {ctx} tokens")
    if cfg.stride is not None and cfg.stride > window:
        raise DataError(f"stride {cfg.stride} is larger than the window {window}", hint="use stride <= window")
    return window


def _stream_of(lm: LoadedModel, data, split: str, max_tokens: int | None) -> tuple[Tensor, dict]:
    """1-D token stream and its description from a corpus name, Corpus, list of texts or tensor."""
    if isinstance(data, Tensor) and data.ndim == 1:
        stream = data.to(torch.long)
        return (stream if max_tokens is None else stream[:max_tokens]), {"corpus": "tokens", "split": None}
    if data is None or isinstance(data, str):
        corpus = load_corpus(data or DEFAULT_CORPUS)
        name, docs = corpus.name, corpus.split(split)
    elif isinstance(data, Corpus):
        name, docs = data.name, data.split(split)
    elif isinstance(data, (list, tuple)) and all(isinstance(d, str) for d in data):
        name, docs = "text", list(data)
    else:
        raise DataError(f"cannot evaluate on {type(data).__name__}: give a corpus name, a Corpus, "
                        "a list of texts, a 1-D token stream or [N, T] windows")
    if lm.tokenizer is None:
        raise DataError("this model has no tokenizer; pass token ids instead of text")
    stream = token_stream(docs, lm.tokenizer, max_tokens=max_tokens, add_bos=False)
    return stream, {"corpus": name, "split": split}


def prepare_eval(lm: LoadedModel, data=None, cfg: EvalConfig | None = None, split: str = "eval") -> EvalWindows:
    """Windows for perplexity from ``data``: a corpus name (default ``wiki``), a Corpus, a list of texts,
    a 1-D token stream, ``[N, T]`` windows (a tensor or TokenSet, each scored whole) or EvalWindows."""
    cfg = cfg or EvalConfig()
    if isinstance(data, EvalWindows):
        return data
    bos = _use_bos(lm, cfg)
    if hasattr(data, "input_ids") and isinstance(data.input_ids, Tensor):   # TokenSet
        data = data.input_ids
    if isinstance(data, Tensor) and data.ndim == 2:
        ids = data.to(torch.long)
        if bos is not None and not bool((ids[:, 0] == bos).all()):
            ids = torch.cat([torch.full((ids.shape[0], 1), bos, dtype=torch.long), ids], dim=1)
        if ids.shape[1] < 2:
            raise DataError("windows need at least 2 tokens")
        _check_vocab(lm, ids)
        meta = {"corpus": "tokens", "split": None, "window": int(ids.shape[1]), "stride": None,
                "remainder": "none (windows given)", "tokens_used": int(data.numel())}
        return EvalWindows(batch_windows([(r, 1) for r in ids], cfg.batch_size), {**meta, "bos": bos is not None})
    window = _resolve_window(lm, cfg)
    stream, meta = _stream_of(lm, data, split, cfg.max_tokens)
    _check_vocab(lm, stream)
    batches = make_windows(stream, window, cfg.stride, bos, cfg.batch_size)
    sliding = cfg.stride is not None and cfg.stride < window - (bos is not None)
    used = sum(ids.numel() for ids, _ in batches) - (bos is not None) * sum(ids.shape[0] for ids, _ in batches)
    meta.update(window=min(window, int(batches[0][0].shape[1])) if not sliding else window,
                stride=cfg.stride if sliding else None, bos=bos is not None,
                remainder="none (sliding window covers the stream)" if sliding else "dropped",
                tokens_in_stream=int(len(stream)), tokens_used=int(len(stream) if sliding else used),
                max_tokens=cfg.max_tokens)
    return EvalWindows(batches, meta)


def _check_vocab(lm: LoadedModel, ids: Tensor) -> None:
    vocab = lm.model.get_input_embeddings().num_embeddings
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise DataError(f"token ids outside this model's vocabulary 0..{vocab - 1}",
                        hint="were these tokens made with another tokenizer?")
