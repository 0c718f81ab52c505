"""The bake-off's settings (:class:`RecommendConfig`): CLI flags, app defaults and bench defaults come from
these fields (:mod:`analysis.settings`)."""
from __future__ import annotations

from dataclasses import dataclass

from analysis.errors import SelectionError
from analysis.indices import GRANULARITIES
from analysis.settings import seed_int, setting

MIN_SEEDS = 5


@dataclass
class RecommendConfig:
    """What the bake-off compares and how it judges (calibration data is given separately)."""

    granularity: str = setting("attention", choices=GRANULARITIES, help="what a block is (attention, mlp, layer)")
    ks: str = setting("auto", flag="k", kind="str",
        help="blocks to drop, e.g. 2,4,8 (default auto: a quarter and a half of the unprotected blocks; at most half)")
    estimators: tuple[str, ...] = setting(("bucket", "knn"), sep=",", choices="analysis.measure.estimators:ESTIMATORS",
        help="EntroDrop estimators compared (all in one analysis pass)")
    sinks: str = setting("exclude", choices=("exclude", "keep", "first"), help="massive-activation tokens in the analysis")
    protect: str = setting("fixed", choices=("fixed", "auto"), help="protected blocks, the same for every criterion")
    mi: bool = setting(False, flag="with-mi",
        help="also compare MI-PRUN (and Fast-Block-Select at layer granularity); keeps sampled states, slower")
    delta_ppl_windows: int = setting(8, min=0, what="a window count",
        help="calibration windows for the drop-one ΔPPL candidate (0 leaves it out)")
    seeds: int = setting(MIN_SEEDS, min=MIN_SEEDS, what=f"a seed count (>= {MIN_SEEDS})",
        help=f"seeds of the random band (>= {MIN_SEEDS}): its median and spread")
    heal: tuple[str, ...] = setting(("none", "linear"), sep=",", choices="analysis.heal.registry:HEAL_METHODS",
        help="healing compared: none, linear (distill is opt-in: slow)")
    heal_top: int = setting(3, min=1, help="heal the best N unhealed plans per k")
    heldout: str = setting("", kind="str",
        help="judging domains, e.g. news,code (default: the built-in domains not used for calibration)")
    heldout_tokens: int = setting(4096, min=2, help="held-out tokens judged (eval split of the judging domains)")
    window: int = setting(256, min=2, help="tokens per judging window (the bootstrap resamples windows)")
    n_boot: int = setting(2000, min=100, what="a resample count", help="bootstrap resamples")
    level: float = setting(0.90, min=0.5, max=0.999, what="a level in [0.5, 0.999]", help="interval level")
    max_dppl: float = setting(50.0, min=0, what="a percentage",
        help="rec.json's plan: the largest k whose recommended ΔPPL upper bound is under this many percent")
    seed: int = setting(0, type=seed_int, flag="boot-seed", help="seed of the bootstrap and of the random band's first seed")
    batch_size: int = setting(4, min=1, help="windows per forward pass")

    def validate(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise SelectionError(f"Unknown granularity {self.granularity!r}", hint=f"use one of {', '.join(GRANULARITIES)}")
        if self.seeds < MIN_SEEDS:
            raise SelectionError(f"the random band needs at least {MIN_SEEDS} seeds, got {self.seeds}")
        if not 0.5 <= self.level < 1:
            raise SelectionError(f"interval level must be in [0.5, 1), got {self.level}")
        if "none" not in self.heal:
            raise SelectionError("healing must include 'none' (the unhealed plans are what healing is compared with)",
                                 hint="e.g. --heal none,linear")
        parse_ks(self.ks, None)
        from analysis.heal.registry import get_heal_method
        from analysis.measure.estimators import get_estimator

        if not self.estimators:
            raise SelectionError("--estimators is empty", hint="e.g. --estimators bucket,knn")
        for e in self.estimators:
            get_estimator(e)
        for h in self.heal:
            get_heal_method(h)


def parse_ks(text: str, max_k: int | None) -> list[int] | None:
    """``"auto"`` → None (chosen from the model), ``"2,4"`` / ``"2-4"`` → sorted ks; each 1..max_k."""
    from analysis.indices import IndexListError, parse_indices

    text = (text or "auto").strip()
    if text == "auto":
        return None
    try:
        ks = sorted(set(parse_indices(text)))
    except IndexListError as exc:
        raise SelectionError(f"--k {text!r}: {exc}", hint="e.g. --k 2,4 or --k 2-4") from None
    if not ks or ks[0] < 1:
        raise SelectionError(f"--k {text!r}: k must be >= 1")
    if max_k is not None and ks[-1] > max_k:
        raise SelectionError(f"k = {ks[-1]} is more than half of the unprotected blocks ({max_k})",
                             hint=f"use k <= {max_k}: the bake-off compares criteria up to a 50 % budget")
    return ks


def auto_ks(unprotected: int) -> list[int]:
    """A quarter and a half of the unprotected blocks (rankings flip between 25 % and 50 %)."""
    half = max(1, unprotected // 2)
    return sorted({max(1, round(unprotected / 4)), half})
