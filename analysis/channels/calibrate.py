"""The hybrid calibration set: windows mixed from several domains with exact per-domain counts."""
from __future__ import annotations

from torch import Tensor

from analysis.channels.config import ChannelConfig
from analysis.data.domains import parse_domain_weights
from analysis.data.tokens import TokenSet
from analysis.data.windows import SampleConfig, sample_hybrid
from analysis.errors import DataError


def build_hybrid_calibration(tokenizer, domains: dict | str | None = None, n_samples: int = 64, seq_len: int = 256,
                             seed: int = 2024, mode: str = "random", split: str = "calib", corpora=None):
    """A :class:`~analysis.data.tokens.TokenSet` mixed from several domains with exact per-domain counts.

    ``domains``: ``{"wiki": 1, "code": 1}`` or ``"wiki:1,code:1"`` (default wiki, code, news equally).
    Counts are proportional to the weights by largest remainder and sum to ``n_samples`` exactly; each
    domain is sampled with its own seed derived from ``seed``; rows are shuffled. ``to_manifest()``
    records per-domain sample and token counts.
    """
    if domains is None:
        domains = ChannelConfig().domains
    weights = parse_domain_weights(domains) if isinstance(domains, str) else dict(domains)
    cfg = SampleConfig(n_samples=int(n_samples), seq_len=int(seq_len), seed=int(seed), mode=mode)
    return sample_hybrid(weights, tokenizer, cfg, split=split, corpora=corpora)


def as_tokens(tokens):
    """A TokenSet from a TokenSet or an ``[N, T]`` tensor (one domain called "tokens")."""
    if isinstance(tokens, TokenSet):
        return tokens
    if isinstance(tokens, Tensor) and tokens.ndim == 2:
        return TokenSet(tokens, ["tokens"] * int(tokens.shape[0]), {"kind": "tensor"})
    raise DataError(f"expected a TokenSet or [N, T] token ids, got {type(tokens).__name__}")


