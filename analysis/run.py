"""The analysis pipeline: tokens → capture → estimators → criteria → boundary → drop order.

:func:`analyze` is what the CLI's ``analyze`` command and the app's Entropy page call.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from analysis.measure.capture import CaptureConfig, CaptureStats, Progress, capture
from analysis.score.baselines import compute_baselines
from analysis.errors import DataError, ExtensionStopped, SelectionError, is_oom, oom_error
from analysis.measure.estimators import BUCKET_BINS, ESTIMATORS, KNN_K, LENS_POSITIONS, RENYI_ALPHA, ROBUST_CLIP, get_estimator
from analysis.models.loading import LoadedModel
from analysis.indices import GRANULARITIES
from analysis.score.result import AnalysisResult
from analysis.measure.boundary import boundary_interval
from analysis.score.selection import PROTECT_MODES, protected_blocks
from analysis.store.jsonio import library_versions
from analysis.measure.mi_states import mi_extension
from analysis.measure.sinks import DEFAULT_MAX_FRAC, DEFAULT_RATIO, SINK_MODES, check_mode, max_sinks
from analysis.settings import check_memory, check_ranges, seed_int, setting

#: Post-capture extensions: name -> fn(stats, lm, cfg) -> dict merged into ``result.extras[name]``.
#: Used by criteria that need more than per-sequence scalars (e.g. MI-PRUN on the sampled states).
EXTENSIONS: dict[str, Callable[[CaptureStats, LoadedModel, "AnalysisConfig"], dict]] = {"mi": mi_extension}


@dataclass
class AnalysisConfig:
    estimator: str = setting("bucket", choices=ESTIMATORS, help="entropy estimator of the ranking")  # primary estimator
    extra_estimators: tuple[str, ...] = setting((), flag="also", sep=",", choices=ESTIMATORS,  # computed in the same pass
        help="extra estimators computed in the same pass, e.g. knn,renyi", clean=lambda v, s: tuple(e for e in v if e != s["estimator"]))
    k: int = setting(KNN_K, min=1, max=10_000, what="a neighbour count", help="KNN neighbours")  # EntroDrop Llama path
    bins: int = setting(BUCKET_BINS, min=2, max=100_000, what="a bin count", help="Bucket bins")  # EntroDrop Mistral path
    clip: float = setting(ROBUST_CLIP, app=False, min=0, max=0.5, max_open=True, help="bucket-robust: quantile clipped on each side")  # bins span the clip … 1−clip quantiles per dimension
    alpha: float = setting(RENYI_ALPHA, min=0, min_open=True, max=1000, what="a Rényi order α > 0", help="Rényi order α > 0")
    dedup: bool = setting(False, flag="knn-dedup", app=False,  # KNN: estimate on distinct token states (False = reference, see entropy_knn)
        help="KNN: count each exactly repeated token state once (default: the reference, where a state repeated more than "
             "k times has radius 0 and log(1e-10) dominates; see README)")
    lens_positions: int = setting(LENS_POSITIONS, min=1, app=False,  # logit lens: cost ∝ positions × vocabulary
        help="logit-lens: token positions per sequence decoded at every residual point (seeded by --seed)")
    granularity: str = setting("attention", choices=GRANULARITIES,  # EntroDrop v1 headline: attention
        help="what a 'block' is for ΔH and the drop order (EntroDrop's headline: attention)")
    protect: str = setting("fixed", choices=PROTECT_MODES,
        help="fixed = {0, 1, L-1} as EntroDrop's code; auto = detected compression stage + last")
    protect_extra: tuple[int, ...] = ()  # more blocks never to drop
    batch_size: int = setting(8, min=1, max=65_536, what="a batch size", help="sequences per forward pass")
    skip_first_token: bool = setting(False, app=False, help="same as --sinks first (kept for old scripts)")  # legacy
    sinks: str = setting("exclude", choices=SINK_MODES,  # detected sinks (analysis.measure.sinks)
        help="massive-activation (attention-sink) tokens: exclude = leave the tokens the sink rule flags out of every "
             "statistic (default); keep = every token, exactly as EntroDrop's reference code; first = leave out position 0 only")
    sink_ratio: float = setting(DEFAULT_RATIO, app=False, min=1, min_open=True, max=1e6,  # sink rule: token norm > ratio × the sequence's median token norm
        help="sink rule: a token whose norm exceeds this many times its sequence's median token norm (default 8; at most "
             "5% of a sequence's tokens are flagged)")
    sink_max_frac: float = DEFAULT_MAX_FRAC  # ... and among its ⌊frac·T⌋ largest norms
    both_views: bool = setting(False, app=False,  # also the other sinks view in the same pass (result.views); the app: on
        help="also compute every estimator in the other sinks view (sinks kept when excluded, excluded when kept; "
             "first → kept) in the same pass, so both curves compare without a re-run; with Bucket (both views "
             "in one call, a sequence without sinks counted once) it adds about 0.01–0.02 of a bare forward, with "
             "KNN KNN's own cost again, about 0.16 (bench/analysis_overhead.py)")
    state_tokens: int = field(default=0, metadata={  # keep this many sampled token states per point (for MI criteria)
        "derive": lambda c: int(c.mi.get("n_tokens", 0)) if c.mi else 0})      # settings: exactly what MI uses
    extensions: tuple[str, ...] = field(default=(), metadata={  # names in EXTENSIONS to run after the pass
        "derive": lambda c: ("mi",) if c.mi else ()})
    mi: dict = setting(dict, nested="analysis.measure.mi_states:MIConfig",  # MI-PRUN settings (MIConfig fields)
        help="also keep sampled states and compute MI-PRUN scores")
    seed: int = setting(2024, type=seed_int, app=False, help="seed (windows and the MI state subsample)")  # app: Model & data page

    def __post_init__(self) -> None:
        if self.skip_first_token and self.sinks != "first":
            self.sinks = "first"
        check_ranges(self)               # every numeric setting finite and in its stated range (settings.py)

    def capture_config(self) -> CaptureConfig:
        """What :func:`analyze` streams with: the capture settings of this analysis (the benches use it too)."""
        names = dict.fromkeys((self.estimator, *self.extra_estimators))
        return CaptureConfig(estimators={n: self.estimator_params(n) for n in names}, batch_size=self.batch_size,
                             sinks=self.sinks, sink_ratio=self.sink_ratio, sink_max_frac=self.sink_max_frac,
                             state_tokens=self.state_tokens, seed=self.seed, alt_view=self.both_views)

    def estimator_params(self, name: str) -> dict:
        info = get_estimator(name)
        return {k: getattr(self, k) for k in info.defaults if hasattr(self, k)}

    def validate(self, seq_len: int | None = None) -> None:
        if self.granularity not in GRANULARITIES:
            raise SelectionError(f"Unknown granularity {self.granularity!r}",
                                 hint=f"use one of {', '.join(GRANULARITIES)}")
        if self.protect not in PROTECT_MODES:
            raise SelectionError(f"Unknown protection mode {self.protect!r}",
                                 hint=f"use one of {', '.join(PROTECT_MODES)}")
        for name in (self.estimator, *self.extra_estimators):
            get_estimator(name)
        if self.batch_size <= 0:
            raise SelectionError("batch size must be positive")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise SelectionError(f"Rényi alpha must be a finite number > 0, got {self.alpha}")
        if self.bins < 2:
            raise SelectionError(f"bins must be >= 2, got {self.bins}")
        if self.k < 1:
            raise SelectionError(f"k must be >= 1, got {self.k}")
        check_mode(self.sinks)
        if not self.sink_ratio > 1:
            raise SelectionError(f"sink ratio must be > 1, got {self.sink_ratio}")
        if not 0 < self.sink_max_frac < 0.5:
            raise SelectionError(f"sink max fraction must be in (0, 0.5), got {self.sink_max_frac}")
        if not 0 <= self.clip < 0.5:
            raise SelectionError(f"clip must be in [0, 0.5), got {self.clip}")
        if seq_len is not None and any(e.startswith("knn") for e in (self.estimator, *self.extra_estimators)):
            usable = seq_len - {"first": 1, "exclude": max_sinks(seq_len, self.sink_max_frac)}.get(self.sinks, 0)
            if usable <= self.k:
                raise SelectionError(f"KNN with k={self.k} needs sequences longer than {self.k} tokens; "
                                     f"got {usable}", hint="raise --seq-len or lower --k")
        for name in self.extensions:
            if name not in EXTENSIONS:
                raise SelectionError(f"Unknown analysis extension {name!r}",
                                     hint=f"available: {', '.join(EXTENSIONS) or 'none'}")


def _check_tokens(lm: LoadedModel, ids: torch.Tensor) -> None:
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise DataError(f"Calibration tokens must be a non-empty [N, T] array, got shape {tuple(ids.shape)}")
    vocab = lm.model.get_input_embeddings().num_embeddings
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        bad = int(((ids < 0) | (ids >= vocab)).sum())
        raise DataError(f"{bad} token id(s) are outside this model's vocabulary 0..{vocab - 1} "
                        f"(max id {int(ids.max())})", hint="were these tokens made with another tokenizer?")
    ctx = getattr(lm.model.config, "max_position_embeddings", None)
    if ctx and ids.shape[1] > ctx:
        raise DataError(f"seq-len {ids.shape[1]} is beyond the model's context of {ctx} tokens")


def memory_estimate(cfg: AnalysisConfig, n: int, t: int, num_layers: int, d: int) -> int:
    """Bytes the analysis pass allocates beyond the model (the large parts): the sampled MI token states
    ([rows, 2L+1, d] fp32), per-sequence statistics and cosines, and KNN's [B, T, T] distances per point."""
    L = num_layers
    rows = n * -(-cfg.state_tokens // n) if cfg.state_tokens and n else 0
    states = rows * (2 * L + 1) * d * 4
    names = {cfg.estimator, *cfg.extra_estimators}
    per_seq = n * (2 * L + 1) * 4 * (len(names) + 2) + n * (L + 1) ** 2 * 4
    knn = min(cfg.batch_size, n) * t * t * 4 * 2 if any(e.startswith("knn") for e in names) else 0
    return states + per_seq + knn


def analyze(lm: LoadedModel, tokens, cfg: AnalysisConfig | None = None, progress: Progress | None = None,
            should_stop: Callable[[], bool] | None = None, cache: bool = False,
            preview: Callable[[CaptureStats], None] | None = None,
            write_out: Callable[[AnalysisResult], None] | None = None) -> AnalysisResult:
    """Run the streaming analysis pass and compute every registered per-block criterion.

    ``tokens`` is a :class:`~analysis.data.tokens.TokenSet` (or a raw ``[N, T]`` LongTensor). If
    ``should_stop`` ends the pass early, the result covers the sequences finished so far and says so
    in ``warnings`` and ``manifest["completed"]``. With ``cache=True`` the accumulators are written to
    the results cache as the pass goes (:mod:`analysis.measure.runcache`): an interrupted run resumes where it
    stopped and a finished one is never recomputed. ``preview(partial_stats)`` receives the statistics of the
    sequences finished so far during the pass (see :func:`~analysis.measure.capture.capture`), to draw live curves.
    ``write_out(result)``: the caller's own output (the CLI's ``--out``), written as soon as the result is complete
    and *before* the results cache's last write, so a failing, slow or interrupted cache write never costs the
    finished result (a ``CacheWriteFailed`` warning from that write is added to ``result.warnings`` afterwards).
    """
    cfg = cfg or AnalysisConfig()
    ids = tokens.input_ids if hasattr(tokens, "input_ids") else torch.as_tensor(tokens)
    cfg.validate(ids.shape[1] if ids.ndim == 2 else None)
    _check_tokens(lm, ids)
    check_memory(memory_estimate(cfg, *ids.shape, lm.num_layers, lm.adapter.hidden_size), "The analysis pass",
                 hint="lower --mi-tokens, --samples, --seq-len or --batch-size")
    usable = ids.shape[1] - (1 if cfg.skip_first_token else 0)
    if usable < 2:
        raise DataError(f"Each sequence has {usable} usable token(s); entropy across tokens needs at least 2, "
                        "so every ΔH would be 0 and the drop order arbitrary",
                        hint="use longer windows (--seq-len)" + (" or drop --skip-first-token"
                                                                 if cfg.skip_first_token else ""))
    ccfg = cfg.capture_config()
    t0 = time.perf_counter()
    from analysis.measure.distributed import is_distributed

    try:
        if is_distributed():       # torchrun / accelerate launch: shards of batches, gathered (analysis.measure.distributed)
            from analysis.measure.distributed import distributed_capture

            stats = distributed_capture(lm, ids, ccfg, progress=progress)
        elif cache:
            from analysis.measure.runcache import cached_capture

            stats = cached_capture(lm, ids, ccfg, progress=progress, should_stop=should_stop, preview=preview,
                                   defer_final=True)
        else:
            stats = capture(lm, ids, ccfg, progress=progress, should_stop=should_stop, preview=preview)
    except Exception as exc:
        if is_oom(exc):
            raise oom_error(exc, "the analysis pass") from exc
        raise
    if stats.n_done == 0:
        raise SelectionError("The analysis was stopped before the first batch finished; nothing to show")
    result = build_result(lm, stats, cfg, tokens)
    for name in cfg.extensions:
        if is_distributed() and _rank() != 0:
            continue               # extensions (e.g. MI) work on the gathered states: rank 0 only
        if not stats.completed:        # stopped during the token pass: no extension on a partial state sample
            result.warnings.append(f"{name}: not computed, the token pass was stopped")
            continue
        try:
            # extensions get the same progress and Stop as the token pass (after it: fraction of their own work)
            result.extras[name] = _call_extension(EXTENSIONS[name], stats, lm, cfg, progress, should_stop)
        except ExtensionStopped as exc:
            result.warnings.append(f"{name}: stopped during {exc}; the token pass is kept (run again to finish it: "
                                   "the token statistics come from the results cache)")
            result.manifest["stopped_during"] = name
            continue
        for crit, by_gran in (result.extras[name].pop("criteria_scores", None) or {}).items():
            result.extras.setdefault("criteria_scores", {}).setdefault(crit, {}).update(by_gran)
    body = ids[: stats.n_done, (1 if cfg.skip_first_token else 0):]
    if not bool((body != body[:, :1]).any()):
        result.warnings.append("DegenerateInput: every sequence repeats a single token, so the states differ only "
                               "by position and rounding; ΔH and the drop order are not meaningful — use real text")
    result.warnings.extend(degenerate_warnings(result))
    compute_baselines(result)
    result.manifest["timings"]["total_s"] = time.perf_counter() - t0
    if is_distributed():
        from analysis.measure.distributed import world

        result.manifest["timings"]["world_size"] = world()[1]   # data-parallel pass (timing context only)
    pending = getattr(stats, "cache_pending", None)
    try:
        if write_out is not None:
            write_out(result)                  # the user's output first ...
    finally:
        if pending is not None:                # ... then the results cache (optional: a failure is a warning)
            result.warnings.extend(pending())
    return result


def degenerate_warnings(result: AnalysisResult) -> list[str]:
    """Named warnings for scores that cannot rank blocks; :class:`DataError` when every entropy is null."""
    b, m = result.seq_entropy()
    if not (np.isfinite(b).any() or np.isfinite(m).any()):
        raise DataError(f"Every {result.estimator} entropy is null (NaN/inf): the residual stream holds no usable "
                        "values", hint="check the model's dtype (fp16 overflow? try bf16 or fp32) and the input data")
    dh = result.delta_h()
    out = []
    nulls = [i for i, v in enumerate(dh) if not np.isfinite(v)]
    if nulls:
        out.append(f"NullScores: ΔH of blocks {nulls} is null (NaN); they rank last and their order is arbitrary")
    finite = dh[np.isfinite(dh)]
    scale = max(1.0, float(np.nanmax(np.abs(b)))) if np.isfinite(b).any() else 1.0
    if finite.size and float(np.max(np.abs(finite))) <= 1e-9 * scale:
        out.append(f"DegenerateScores: every {result.granularity} ΔH is 0 ({result.estimator}), so the drop order is "
                   "arbitrary; the calibration windows carry no variation (repeated tokens?) — use real text")
    return out


def _call_extension(fn, stats, lm, cfg, progress, should_stop) -> dict:
    """``fn(stats, lm, cfg, progress=…, should_stop=…)``; extensions written before progress/Stop existed
    take ``(stats, lm, cfg)`` only and are called that way."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "progress" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(stats, lm, cfg, progress=progress, should_stop=should_stop)
    return fn(stats, lm, cfg)


def _rank() -> int:
    from analysis.measure.distributed import world

    return world()[0]


def build_result(lm: LoadedModel, stats: CaptureStats, cfg: AnalysisConfig, tokens=None) -> AnalysisResult:
    L = stats.num_layers
    per_seq: dict = {n: {"boundary": v["boundary"].numpy(), "mid": v["mid"].numpy()}
                     for n, v in stats.entropy.items()}
    views: dict = {}
    if stats.entropy_alt:
        views[stats.alt_mode] = {n: {"boundary": v["boundary"].numpy(), "mid": v["mid"].numpy()}
                                 for n, v in stats.entropy_alt.items()}
    if stats.cos_attn is not None:
        per_seq.update(cos_attn=stats.cos_attn.numpy(), cos_mlp=stats.cos_mlp.numpy(),
                       cos_layer=stats.cos_layer.numpy())
    angular = None
    if stats.last_cos is not None:
        angular = (torch.arccos(stats.last_cos.double()) / math.pi).mean(0).numpy()
    binfo = boundary_interval(stats.entropy[cfg.estimator]["boundary"].double().numpy(), seed=0)
    boundary = binfo["boundary"]
    protected = protected_blocks(L, cfg.protect, boundary, cfg.protect_extra)
    warnings = []
    if any(stats.nonfinite.values()):
        warnings.append(f"NonFiniteActivations: {sum(stats.nonfinite.values())} NaN/inf values in the residual "
                        f"stream ({stats.nonfinite}); entropies involving them are not meaningful "
                        f"(fp16 overflow? try bf16 or fp32)")
    warnings.extend(getattr(stats, "cache_warnings", None) or [])     # CacheWriteFailed (measure/runcache.py)
    if not stats.completed:
        warnings.append(f"Stopped early: statistics cover {stats.n_done} of {len(tokens) if tokens is not None else '?'}"
                        f" sequences")
    n_tok = stats.n_done
    d = lm.adapter.hidden_size
    if any(e.startswith("knn") for e in stats.entropy):
        t = tokens.input_ids.shape[1] if hasattr(tokens, "input_ids") else None
        if t is not None and t < d:
            warnings.append(f"KNN entropy uses N={t} tokens per sequence in d={d} dimensions (N < d): "
                            f"heavily under-sampled, compare with Bucket")
    domains = list(getattr(tokens, "domains", []) or [])[:n_tok]
    manifest = {
        "model": lm.manifest(),
        "data": tokens.to_manifest() if hasattr(tokens, "to_manifest") else {"n": n_tok},
        "config": asdict(cfg),
        "estimator_params": {n: cfg.estimator_params(n) for n in stats.entropy},
        "versions": library_versions(),
        "timings": {"capture_s": stats.seconds},
        "completed": stats.completed,
        "n_sequences": n_tok,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    extras = {}
    if stats.seq_means:               # dataset-level entropies over the per-sequence mean states: est -> view -> point
        from analysis.registry import resolve

        for name in stats.entropy:
            pooled = get_estimator(name).pooled
            if pooled is not None:
                fn = resolve(pooled) if isinstance(pooled, str) else pooled
                extras.setdefault("dataset_entropy", {})[name] = {
                    v: {k: fn(t).double().numpy() for k, t in d.items()} for v, d in stats.seq_means.items()}
    return AnalysisResult(
        num_layers=L, estimator=cfg.estimator, granularity=cfg.granularity, protect=cfg.protect,
        per_seq=per_seq, angular=angular, boundary=boundary, protected=protected,
        norms={"boundary": stats.norm_boundary.double().mean(0).numpy(), "mid": stats.norm_mid.double().mean(0).numpy()},
        domains=domains, warnings=warnings, manifest=manifest, boundary_info=binfo, extras=extras,
        sinks=sink_summary(stats, cfg, tokens), views=views,
        massive=None if stats.massive is None else {k: v.numpy() for k, v in stats.massive.items()})


def sink_summary(stats: CaptureStats, cfg: AnalysisConfig, tokens=None) -> dict:
    """What the sink rule flagged (counts per residual point, summed over sequences) and what was excluded."""
    t = tokens.input_ids.shape[1] if hasattr(tokens, "input_ids") else None
    out = {"mode": cfg.sinks, "ratio": cfg.sink_ratio, "max_frac": cfg.sink_max_frac, "n_sequences": stats.n_done,
           "tokens_per_sequence": t,
           "rule": "token norm > ratio × median token norm of its sequence, among its ⌊max_frac·T⌋ largest"}
    if stats.sinks is not None:
        c = {k: v.numpy().astype(int).tolist() for k, v in stats.sinks.items()}
        out["counts"] = {"boundary": c["boundary"], "mid": c["mid"]}
        out["counts_pos0"] = {"boundary": c["boundary_pos0"], "mid": c["mid_pos0"]}
        ex = {"exclude": out["counts"], "keep": None}.get(cfg.sinks)
        if cfg.sinks == "first" and t is not None:
            ex = {k: [stats.n_done] * len(v) for k, v in out["counts"].items()}
        out["excluded"] = ex or {k: [0] * len(v) for k, v in out["counts"].items()}
    if stats.first_flags is not None:         # token-level view: which tokens of sequence 0 are flagged, per boundary
        ids = tokens.input_ids if hasattr(tokens, "input_ids") else tokens
        out["first_sequence"] = {"flags": stats.first_flags.numpy().astype(bool).tolist(),     # [L+1][T]
                                 "token_ids": [int(i) for i in torch.as_tensor(ids)[0].tolist()] if ids is not None else []}
    return out
