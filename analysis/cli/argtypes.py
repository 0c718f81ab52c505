"""argparse types that refuse NaN, infinities and out-of-domain numbers with a one-line message
(``error: argument --alpha: …``) before anything is loaded."""
from __future__ import annotations

import argparse
import math

SEED_MAX = 2**32 - 1          # numpy's SeedSequence / legacy seeding range; torch accepts it too


def finite_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
                 what: str = "a number"):
    """A float type: finite, and within [lo, hi] (open ends where asked)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        high_bad = hi is not None and (v >= hi if hi_open else v > hi)
        if low_bad or high_bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"{v:g} is outside {left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}")
        return v

    return parse


def bounded_int(lo: int, hi: int | None = None, what: str = "an integer"):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {what} in {lo}..{hi if hi is not None else '∞'}, got {v}")
        return v

    return parse


#: --seed: numpy and torch generators take 0..2**32-1
seed_int = bounded_int(0, SEED_MAX, "a seed (a whole number)")
#: Rényi order α: finite, > 0 (α → 1 is the Shannon limit, handled by the estimator)
renyi_alpha = finite_float(0, 1000, lo_open=True, what="a Rényi order α > 0")
#: Bucket bins: at least 2 (one bin has no entropy), at most 100 000
bucket_bins = bounded_int(2, 100_000, "a bin count")
#: per-block window (angular criterion): a positive block count
block_window = bounded_int(1, 4096, "a block window")
