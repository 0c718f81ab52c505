"""Channel pruning settings: :class:`ChannelConfig` (every choice of the provisional recipe, named) and
the option tables the CLI and the app render (scoring methods, domain aggregations, allocations)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

from analysis.data.domains import DOMAINS, check_weights, parse_domain_weights
from analysis.data.windows import MODES
from analysis.errors import DataError, SelectionError
from analysis.settings import check_ranges, seed_int, setting, unchecked_float

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

#: Channel-importance methods (all provisional; the paper's formula is unknown).
METHODS: dict[str, str] = {
    "act_weight": "S_j = ||W_down[:, j]||_2 * ||a_j||_2, a_j the down_proj input over all calibration tokens "
                  "(Wanda-style activation-weighted norm; default)",
    "fluctuation": "S_j = Var_t(a_j) * ||W_down[:, j]||_2^2 (FLAP's fluctuation metric)",
    "taylor": "S_j = sum_t |a_tj * dL/da_tj| (first-order Taylor; one backward pass per batch, "
              "gradients on the activations only)",
}
#: How per-domain scores are combined (per-domain scores are first divided by their mean over all
#: channels of all layers, so a domain with larger activations does not dominate).
DOMAIN_AGGS: dict[str, str] = {
    "pooled": "statistics pooled over all calibration tokens of all domains (default)",
    "mean": "mean over domains of the normalised per-domain scores",
    "min": "minimum over domains of the normalised per-domain scores (a channel is kept only when every "
           "domain needs it: consensus)",
    "max": "maximum over domains of the normalised per-domain scores (a channel any domain needs is kept: "
           "protects each domain's specialised channels)",
    "rank_mean": "mean over domains of the channel's rank (0..1) among all channels",
}
ALLOCATIONS: dict[str, str] = {
    "uniform": "every layer keeps the same fraction of its original channels (default)",
    "global": "lowest scores across all layers go first, each layer keeping at least min_keep_frac",
}
GLOBAL_NORMS: dict[str, str] = {
    "none": "raw scores compared across layers (default)",
    "layer_mean": "each layer's scores divided by the layer's mean score",
    "layer_zscore": "each layer's scores standardised (score - mean) / std (FLAP's structure search)",
}


@dataclass
class ChannelConfig:
    """Every choice of the provisional recipe, named (defaults in the comments; see docs/channels.md)."""

    # --- hybrid calibration set (paper: a multi-domain mix; its domains and proportions are unknown) ------
    domains: dict = setting(factory=lambda: {"wiki": 1.0, "code": 1.0, "news": 1.0}, kind="text",  # name -> weight
        to_text=lambda w: ",".join(f"{d}:{x:g}" for d, x in w.items()),
        help="domain weights, e.g. wiki:1,code:1,news:1 (built-in: wiki news code docs dialogue math)")
    n_samples: int = setting(64, flag="samples", min=1, max=1_000_000, what="a window count",  # split over domains in proportion to the weights (exact)
        help="calibration windows in total")
    seq_len: int = setting(256, min=1, max=1_048_576, what="a token count", help="tokens per window")
    seed: int = setting(2024, type=seed_int, help="sampling seed (per-domain seeds derive from it)")
    sampling: str = setting("random", choices=MODES,  # corpora sampling mode
        help="random windows of random documents or consecutive windows")
    batch_size: int = setting(8, min=1, max=65_536, what="a batch size", help="windows per calibration forward")
    skip_first_token: bool = setting(False, help="leave position 0 out of the statistics")  # BOS / attention sink
    # --- channel score -----------------------------------------------------------------------------------------
    method: str = setting("act_weight", choices=METHODS, help="channel score (see docs/channels.md)")
    domain_agg: str = setting("pooled", flag="agg", choices=DOMAIN_AGGS, help="how per-domain scores combine")
    # --- schedule ------------------------------------------------------------------------------------------------
    ratio: float = setting(0.25, type=unchecked_float("a number in [0, 1)"),  # of the ORIGINAL MLP channels, in the end
        help="fraction of the original MLP channels removed")
    steps: int = setting(4, min=1, max=1_000, what="a step count",  # T: cumulative removal after step t is round(t * r / T * original)
        help="T: calibrate/score/prune rounds (1 = one-shot)")
    allocation: str = setting("uniform", choices=ALLOCATIONS, help="uniform (per layer) or global")
    min_keep_frac: float = setting(0.1, min=0, max=1,  # every layer keeps at least this fraction of its channels
        help="global allocation: per-layer floor")
    global_norm: str = setting("none", choices=GLOBAL_NORMS,  # how scores are compared across layers
        help="global allocation: how scores are compared across layers")
    multiple_of: int = setting(64, min=1, max=65_536, what="a width multiple",  # kept widths rounded to a multiple (efficient kernels)
        help="round kept widths (1 = no rounding)")
    # --- compensation --------------------------------------------------------------------------------------------
    bias_compensation: bool = setting(False,  # FLAP: add W_down[:, pruned] @ E[a_pruned] as a down_proj bias
        help="FLAP-style down_proj bias for pruned channels")
    # --- attention heads (off by default) ------------------------------------------------------------------------
    head_ratio: float = setting(0.0, type=unchecked_float("a number in [0, 1)"),  # removed per layer
        help="also remove this fraction of KV groups (with their query heads) per layer; 0 = off")
    # --- evaluation -----------------------------------------------------------------------------------------------
    eval_domains: tuple | None = setting(None, kind="tuple",  # held-out perplexity on these domains
        help="comma-separated (default: the calibration domains)")
    eval_tokens: int = setting(4096, min=1, max=10**9, what="a token budget", help="held-out tokens per domain")  # token budget per domain (eval split)
    eval_window: int = setting(512, min=1, max=1_048_576, what="a token count", help="tokens per perplexity window")  # disjoint windows

    def __post_init__(self) -> None:
        check_ranges(self)               # every numeric setting finite and in its stated range (settings.py)

    def validated(self) -> "ChannelConfig":
        """A checked copy (domain weights parsed from ``"wiki:1,code:1"`` strings); raises EntroscopeError."""
        cfg = replace(self)
        if isinstance(cfg.domains, str):
            cfg.domains = parse_domain_weights(cfg.domains)
        elif isinstance(cfg.domains, (list, tuple)):
            cfg.domains = {str(d): 1.0 for d in cfg.domains}
        cfg.domains = check_weights(dict(cfg.domains))
        unknown = [d for d in cfg.domains if d not in DOMAINS]
        if unknown:
            raise DataError(f"unknown domain {unknown[0]!r}; valid domains: {', '.join(DOMAINS)}")
        for name, choices in (("method", METHODS), ("domain_agg", DOMAIN_AGGS), ("allocation", ALLOCATIONS),
                              ("global_norm", GLOBAL_NORMS)):
            if getattr(cfg, name) not in choices:
                raise SelectionError(f"unknown {name} {getattr(cfg, name)!r}; use one of {', '.join(choices)}")
        if not (isinstance(cfg.ratio, (int, float)) and 0 <= float(cfg.ratio) < 1):
            raise SelectionError(f"ratio must be in [0, 1), got {cfg.ratio}")
        if not (isinstance(cfg.head_ratio, (int, float)) and 0 <= float(cfg.head_ratio) < 1):
            raise SelectionError(f"head_ratio must be in [0, 1), got {cfg.head_ratio}")
        if int(cfg.steps) < 1:
            raise SelectionError(f"steps must be >= 1, got {cfg.steps}")
        if int(cfg.multiple_of) < 1:
            raise SelectionError(f"multiple_of must be >= 1, got {cfg.multiple_of}")
        if not 0 <= float(cfg.min_keep_frac) <= 1:
            raise SelectionError(f"min_keep_frac must be in [0, 1], got {cfg.min_keep_frac}")
        for name in ("n_samples", "seq_len", "batch_size", "eval_tokens", "eval_window"):
            if int(getattr(cfg, name)) < 1:
                raise DataError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if int(cfg.seq_len) < 2:
            raise DataError(f"seq_len must be >= 2, got {cfg.seq_len}")
        if int(cfg.eval_window) < 2:
            raise DataError(f"eval_window must be >= 2, got {cfg.eval_window}")
        cfg.ratio, cfg.head_ratio, cfg.min_keep_frac = float(cfg.ratio), float(cfg.head_ratio), float(cfg.min_keep_frac)
        cfg.steps, cfg.multiple_of = int(cfg.steps), int(cfg.multiple_of)
        if cfg.eval_domains is not None:
            if isinstance(cfg.eval_domains, str):
                cfg.eval_domains = tuple(d.strip() for d in cfg.eval_domains.split(",") if d.strip())
            cfg.eval_domains = tuple(cfg.eval_domains)
            bad = [d for d in cfg.eval_domains if d not in DOMAINS]
            if bad or not cfg.eval_domains:
                raise DataError(f"unknown evaluation domain {(bad or [''])[0]!r}; valid domains: {', '.join(DOMAINS)}")
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eval_domains"] = list(self.eval_domains) if self.eval_domains is not None else None
        return d


def resolve_config(cfg: ChannelConfig | None, overrides: dict) -> ChannelConfig:
    cfg = cfg or ChannelConfig()
    known = {f.name for f in fields(ChannelConfig)}
    bad = [k for k in overrides if k not in known]
    if bad:
        raise TypeError(f"unknown ChannelConfig option(s): {', '.join(bad)}")
    return replace(cfg, **overrides).validated()


