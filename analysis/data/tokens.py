"""Token windows: the ``[N, T]`` :class:`TokenSet` every measurement consumes, and decoded previews."""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Iterator

import torch

from analysis.errors import DataError


@dataclass
class TokenSet:
    """``[N, T]`` token windows with the domain of each row and a description of where they came from."""

    input_ids: torch.Tensor  # LongTensor [N, T]
    domains: list[str]  # per row: the domain / source it came from
    source: dict = field(default_factory=dict)  # for the run manifest: corpora, weights, split, config

    def __post_init__(self):
        if not isinstance(self.input_ids, torch.Tensor) or self.input_ids.ndim != 2:
            raise ValueError("TokenSet.input_ids must be a 2-D tensor [N, T]")
        self.input_ids = self.input_ids.to(torch.long)
        self.domains = list(self.domains)
        if len(self.domains) != self.input_ids.shape[0]:
            raise ValueError(f"TokenSet has {self.input_ids.shape[0]} rows but {len(self.domains)} domain labels")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """T, the tokens per window."""
        return int(self.input_ids.shape[1])

    def sha256(self) -> str:
        """sha256 of the int64 bytes of ``input_ids`` (row-major), for the manifest."""
        return hashlib.sha256(self.input_ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive ``[B, T]`` slices in row order (the last one may be smaller)."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield self.input_ids[i:i + batch_size]

    def domain_counts(self) -> dict[str, int]:
        """Rows per domain, in order of first appearance."""
        counts: dict[str, int] = {}
        for d in self.domains:
            counts[d] = counts.get(d, 0) + 1
        return counts

    def subset(self, idx) -> "TokenSet":
        """The rows selected by ``idx`` (slice, list of ints, or an index / boolean-mask tensor)."""
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            t = torch.as_tensor(idx)
            rows = t.nonzero().flatten().tolist() if t.dtype == torch.bool else t.flatten().tolist()
        index = torch.tensor(rows, dtype=torch.long)
        source = {**self.source, "subset_of": self.sha256(), "subset_rows": len(rows)}
        return TokenSet(self.input_ids[index].reshape(len(rows), self.seq_len), [self.domains[i] for i in rows],
                        source)

    def to_manifest(self) -> dict:
        """``source`` plus n, seq_len, sha256, and rows and tokens per domain."""
        counts = self.domain_counts()
        return {**self.source, "n": len(self), "seq_len": self.seq_len, "sha256": self.sha256(),
                "domain_counts": counts, "token_counts": {d: c * self.seq_len for d, c in counts.items()}}


def preview(tokens: TokenSet, tokenizer, n: int = 3, chars: int = 300) -> list[dict]:
    """Up to ``n`` decoded windows for the UI, taken round-robin across domains.

    Each item: ``row``, ``domain``, ``n_tokens``, ``text`` (special tokens kept, cut to ``chars``),
    ``truncated``.
    """
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(tokens.domains):
        by_domain.setdefault(d, []).append(i)
    rows = [i for group in itertools.zip_longest(*by_domain.values()) for i in group if i is not None][:max(n, 0)]
    out = []
    for i in rows:
        text = tokenizer.decode(tokens.input_ids[i].tolist(), skip_special_tokens=False)
        out.append({"row": i, "domain": tokens.domains[i], "n_tokens": tokens.seq_len, "text": text[:chars],
                    "truncated": len(text) > chars})
    return out
