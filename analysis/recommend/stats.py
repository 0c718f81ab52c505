"""Paired bootstrap over judging windows: every row's held-out ΔPPL against the dense model, with an interval,
read against the random band and against the other rows (numpy only).

Each row is the summed NLL of every judging window under one plan, ``p[w]``; the dense model's is ``d[w]`` and
``n[w]`` the tokens scored in window ``w``. A row's log PPL ratio is ``(Σp − Σd) / Σn`` and its ΔPPL
``exp(·) − 1``. Windows are resampled with replacement, **the same resample for every row** (paired), so
two rows' difference is measured on the same text and noise shared by all rows cancels.
"""
from __future__ import annotations

import numpy as np


def resamples(n_windows: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, W]`` window indices drawn with replacement (one draw shared by every row: paired)."""
    return np.random.default_rng(seed).integers(0, n_windows, size=(n_boot, n_windows))


def log_ratio(d: np.ndarray, p: np.ndarray, n: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray | float:
    """``(Σp − Σd) / Σn`` over all windows (``idx`` None: a float) or over each resample (``[n_boot]``)."""
    d, p, n = (np.asarray(x, dtype=float) for x in (d, p, n))
    if idx is None:
        return float((p.sum() - d.sum()) / n.sum())
    return (p[idx].sum(1) - d[idx].sum(1)) / n[idx].sum(1)


def pct(lr) -> np.ndarray | float:
    """ΔPPL in percent from a log PPL ratio."""
    return 100 * np.expm1(lr)


def interval(x: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


def excludes_zero(lo: float, hi: float) -> bool:
    return lo > 0 or hi < 0


def paired_table(d, rows: dict[str, np.ndarray], n, random_rows: dict[str, np.ndarray] | None = None,
                 n_boot: int = 2000, level: float = 0.90, seed: int = 0) -> dict:
    """Every row's ΔPPL against the dense model with a ``level`` paired-bootstrap interval, the random band,
    and which rows are distinguishable from the band and from each other.

    ``rows``: ``{name: per-window NLL sums [W]}``; ``random_rows``: the random band's seeds, same form.
    Returns ``{"rows": {name: {dppl, lo, hi, vs_random: {diff, lo, hi, distinguishable, better}}},
    "random": {dppl (median over seeds), lo, hi (pooled over seeds and resamples), seeds_min, seeds_max,
    seeds: [...]}, "pairs": {a: {b: {lo, hi, distinguishable}}}}`` (ΔPPL and intervals in percent; a pair's
    interval is that of the difference of log PPL ratios, a − b, in percent points of log ratio × 100).
    """
    d, n = np.asarray(d, dtype=float), np.asarray(n, dtype=float)
    W = len(d)
    idx = resamples(W, n_boot, seed)
    boot = {k: log_ratio(d, v, n, idx) for k, v in rows.items()}
    point = {k: log_ratio(d, v, n) for k, v in rows.items()}
    out: dict = {"rows": {}, "random": None, "pairs": {}, "n_windows": W, "tokens": int(n.sum()),
                 "n_boot": n_boot, "level": level}
    band_boot = None
    if random_rows:
        rb = np.stack([log_ratio(d, v, n, idx) for v in random_rows.values()])        # [S, n_boot]
        rp = np.array([log_ratio(d, v, n) for v in random_rows.values()])             # [S]
        band_boot = np.median(rb, axis=0)                                             # [n_boot]
        lo, hi = interval(rb.ravel(), level)
        out["random"] = {"dppl": float(pct(np.median(rp))), "lo": float(pct(lo)), "hi": float(pct(hi)),
                         "seeds_min": float(pct(rp.min())), "seeds_max": float(pct(rp.max())),
                         "seeds": [float(pct(x)) for x in rp], "n_seeds": len(rp)}
    for k in rows:
        lo, hi = interval(boot[k], level)
        row = {"dppl": float(pct(point[k])), "lo": float(pct(lo)), "hi": float(pct(hi)), "log_ratio": point[k]}
        if band_boot is not None:
            diff = boot[k] - band_boot
            dlo, dhi = interval(diff, level)
            row["vs_random"] = {"lo": dlo, "hi": dhi, "distinguishable": excludes_zero(dlo, dhi),
                                "better": bool(dhi < 0), "worse": bool(dlo > 0)}
        out["rows"][k] = row
    names = list(rows)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            lo, hi = interval(boot[a] - boot[b], level)
            out["pairs"].setdefault(a, {})[b] = {"lo": lo, "hi": hi, "distinguishable": excludes_zero(lo, hi)}
            out["pairs"].setdefault(b, {})[a] = {"lo": -hi, "hi": -lo, "distinguishable": excludes_zero(lo, hi)}
    return out
