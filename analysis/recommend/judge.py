"""Judging text and per-window log-likelihoods: held-out windows from domains calibration did not use, checked
disjoint from the calibration windows, and the summed NLL of every window under many plans (walked as a trie,
:mod:`analysis.models.prefix`), cached on disk so a stopped bake-off resumes."""
from __future__ import annotations

from analysis.store.jsonio import loads_strict

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from analysis.data.domains import DOMAINS, load_corpus
from analysis.errors import DataError, EntroscopeError
from analysis.evaluate.windows import EvalConfig, EvalWindows, batch_windows, prepare_eval
from analysis.models.embedded import cache_root
from analysis.models.forward import final_hidden, nll_sum, oom_guard
from analysis.models.plan import Plan
from analysis.models.prefix import plan_key, prefix_batch, prefix_schedule

NGRAM = 16          # a judging window sharing this many consecutive tokens with calibration counts as overlap


class Stopped(EntroscopeError):
    """The bake-off was stopped; what was measured is cached and a new run resumes there."""


def calibration_domains(tokens) -> list[str]:
    return sorted(set(getattr(tokens, "domains", None) or []))


def judging_domains(heldout: str, calib_domains: list[str]) -> list[str]:
    """The judging domains: ``heldout`` (comma list) or the built-in domains not used for calibration."""
    if heldout and heldout.strip():
        names = [d.strip() for d in heldout.split(",") if d.strip()]
    else:
        names = [d for d in DOMAINS if d not in calib_domains]
    if not names:
        raise DataError("no domain is left to judge on: calibration used every built-in domain",
                        hint="pass --heldout with a domain, or calibrate on fewer domains")
    return names


def judging_windows(lm, domains: list[str], tokens: int, window: int, batch_size: int) -> tuple[EvalWindows, list[str]]:
    """Disjoint windows of ``window`` tokens from each domain's eval split: ``tokens // window`` windows (at
    least 2) shared equally between the domains, rounded up; returns the windows and each window's domain."""
    per = -(-max(2, tokens // window) // len(domains)) * window     # tokens read from each domain
    rows, labels, bos = [], [], False
    cfg = EvalConfig(window=window, max_tokens=per, batch_size=1)
    for name in domains:
        w = prepare_eval(lm, load_corpus(name), cfg, "eval")
        bos = bool(w.meta.get("bos"))
        for ids, first in w.batches:
            rows.append((ids[0], first))
            labels.append(name)
    shapes = {(r.shape, f) for r, f in rows}
    if len(shapes) > 1:                                   # a domain shorter than one window: keep the common shape
        common = max(shapes, key=lambda s: sum((r.shape, f) == s for r, f in rows))
        keep = [i for i, (r, f) in enumerate(rows) if (r.shape, f) == common]
        rows, labels = [rows[i] for i in keep], [labels[i] for i in keep]
    meta = {"corpus": "+".join(domains), "split": "eval", "window": window, "stride": None, "remainder": "dropped",
            "tokens_used": int(sum(r.numel() for r, _ in rows)), "max_tokens": tokens, "bos": bos,
            "domains": {d: labels.count(d) for d in domains}}
    return EvalWindows(batch_windows(rows, batch_size), meta), labels


def _ngrams(ids: torch.Tensor, n: int) -> set[bytes]:
    a = ids.to(torch.int64).numpy()
    return {a[i:i + n].tobytes() for i in range(0, max(0, len(a) - n + 1))}


def check_disjoint(calib_ids: torch.Tensor, windows: EvalWindows, n: int = NGRAM) -> dict:
    """Refuse judging windows that reuse calibration text: no judging window may share a run of ``n``
    consecutive tokens with a calibration window. Returns the check's record."""
    seen: set[bytes] = set()
    for row in calib_ids:
        seen |= _ngrams(row, n)
    hits = 0
    for ids, _ in windows.batches:
        for row in ids:
            if seen & _ngrams(row, n):
                hits += 1
    if hits:
        raise DataError(f"{hits} judging window(s) share {n} consecutive tokens with the calibration windows",
                        hint="judge on another domain or on the eval split (--heldout)")
    return {"ngram": n, "calibration_windows": int(calib_ids.shape[0]), "judging_windows": windows.n_windows,
            "shared": 0}


def windows_hash(lm, windows: EvalWindows) -> str:
    h = hashlib.sha256(json.dumps({"model": lm.fingerprint, "dtype": str(lm.dtype), "v": 1}).encode())
    for ids, first in windows.batches:
        h.update(ids.to(torch.int64).contiguous().numpy().tobytes())
        h.update(str(first).encode())
    return h.hexdigest()[:24]


def tokens_per_window(windows: EvalWindows) -> np.ndarray:
    return np.array([ids.shape[1] - first for ids, first in windows.batches for _ in range(ids.shape[0])], dtype=float)


class NLLCache:
    """Per-window NLL sums per row key, in ``<cache root>/recommend/<windows hash>.json`` (written as it goes)."""

    def __init__(self, key: str, enabled: bool = True):
        root = os.environ.get("ENTROSCOPE_RUNS")
        self.path = (Path(root) if root else cache_root() / "runs") / "recommend" / f"{key}.json"
        self.enabled = enabled
        self.rows: dict[str, list] = {}
        if enabled and self.path.exists():
            try:
                self.rows = loads_strict(self.path.read_text())
            except (OSError, ValueError):
                self.rows = {}

    def get(self, key: str, n: int) -> np.ndarray | None:
        v = self.rows.get(key)
        return np.array(v, dtype=float) if v is not None and len(v) == n and None not in v else None

    def partial(self, key: str, n: int) -> list:
        v = self.rows.get(key)
        return list(v) if v is not None and len(v) == n else [None] * n

    def put(self, key: str, values: list) -> None:
        self.rows[key] = [None if v is None else float(v) for v in values]

    def save(self) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.rows))
        os.replace(tmp, self.path)


def row_key(plan: Plan, heal: str = "none", heal_settings: dict | None = None) -> str:
    return json.dumps({"plan": [list(x) for x in plan_key(plan)], "heal": heal, "settings": heal_settings or {}},
                      sort_keys=True)


Tick = Callable[[int], None]          # called after each window batch with the number of windows done


def plans_nll(lm, plans: list[Plan], windows: EvalWindows, cache: NLLCache, chunk: int = 512,
              tick: Tick | None = None, should_stop: Callable[[], bool] | None = None) -> list[np.ndarray]:
    """Per-window summed NLL ``[W]`` of each plan (an empty plan = the dense model), the plans walked as a trie
    (bit-identical to each plan's own forward); batches already in the cache are skipped."""
    W = windows.n_windows
    keys = [row_key(p) for p in plans]
    todo = {k: p for k, p in zip(keys, plans) if cache.get(k, W) is None}
    vals = {k: cache.partial(k, W) for k in todo}
    if todo:
        steps = prefix_schedule(lm, [(k, p.normalized()) for k, p in todo.items()])
        start = 0
        with torch.inference_mode():
            for ids, first in windows.batches:
                b = ids.shape[0]
                if all(vals[k][start] is not None for k in todo):
                    start += b
                    if tick:
                        tick(b)
                    continue
                if should_stop and should_stop():
                    for k in todo:
                        cache.put(k, vals[k])
                    cache.save()
                    raise Stopped("stopped while judging plans; run it again to resume (measured windows are cached)")
                ids = ids.to(lm.device)
                for key, view, hidden in prefix_batch(steps, ids):
                    for i in range(b):
                        vals[key][start + i] = nll_sum(view, hidden[i:i + 1], ids[i:i + 1], first, chunk)
                start += b
                for k in todo:                        # resumable: every finished batch is on disk
                    cache.put(k, vals[k])
                cache.save()
                if tick:
                    tick(b)
        for k in todo:
            cache.put(k, vals[k])
        cache.save()
    elif tick:
        tick(W)
    return [cache.get(k, W) for k in keys]


def model_nll(model, windows: EvalWindows, device, chunk: int = 512, tick: Tick | None = None,
              should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Per-window summed NLL ``[W]`` of a standalone model (a healed copy)."""
    out = []
    with torch.inference_mode():
        for ids, first in windows.batches:
            if should_stop and should_stop():
                raise Stopped("stopped while judging a healed plan; run it again to resume")
            ids = ids.to(device)
            hidden = oom_guard(lambda: final_hidden(model, ids), "judging")
            out += [nll_sum(model, hidden[i:i + 1], ids[i:i + 1], first, chunk) for i in range(ids.shape[0])]
            if tick:
                tick(ids.shape[0])
    return np.array(out, dtype=float)
