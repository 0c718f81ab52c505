"""Results cache: capture statistics saved as the pass goes, so long analyses resume and never repeat.

The key is everything the statistics depend on: model fingerprint, dtype, the exact token ids and the
capture configuration. Files live under ``<cache root>/runs/<key>.pt`` (tensors only, loaded with
``weights_only=True``: nothing is unpickled).

The cache is optional: a write that fails (full disk, read-only folder) never loses the result — it becomes
the named warning ``CacheWriteFailed: …`` on the result — and temporaries of killed passes are swept.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from pathlib import Path

import torch

from analysis.measure.capture import CaptureConfig, CaptureStats, capture, merge_stats
from analysis.models.device import dtype_name
from analysis.models.embedded import cache_root
from analysis.models.integrity import sweep_temporaries
from analysis.models.loading import LoadedModel


def run_key(lm: LoadedModel, input_ids: torch.Tensor, cfg: CaptureConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": lm.fingerprint, "dtype": dtype_name(lm.dtype), "device": lm.device.type,
                         "cfg": dataclasses.asdict(cfg), "shape": list(input_ids.shape), "v": 1},
                        sort_keys=True).encode())
    h.update(input_ids.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def cache_path(key: str) -> Path:
    """``$ENTROSCOPE_RUNS`` or ``<cache root>/runs``."""
    root = os.environ.get("ENTROSCOPE_RUNS")
    return (Path(root) if root else cache_root() / "runs") / f"{key}.pt"


def save_stats(path: Path, stats: CaptureStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        torch.save(dataclasses.asdict(stats), tmp)
        os.replace(tmp, path)
    finally:                                  # a failed or interrupted write leaves no temporary behind
        tmp.unlink(missing_ok=True)


def cache_write_warning(exc: BaseException, path: Path) -> str:
    """The named warning for a results-cache write that failed (the result itself is complete)."""
    err = getattr(exc, "errno", None)
    if err in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
        why = "the disk is full"
    elif err in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable"
    else:
        why = f"{type(exc).__name__}: {str(exc)[:120]}"
    return (f"CacheWriteFailed: the results cache could not be saved at {path.parent} ({why}); the result is "
            f"complete and unaffected, but an interrupted run of these settings will start again from the beginning "
            f"(free space, or set ENTROSCOPE_RUNS to another folder)")


def _try_save(path: Path, stats: CaptureStats, notes: list[str]) -> None:
    """Save the cache; a failure (full disk, read-only folder) is noted once, never raised: the cache is optional."""
    if notes:
        return                                # failed once in this pass: do not retry every checkpoint
    try:
        save_stats(path, stats)
    except (OSError, RuntimeError) as exc:    # torch.save reports a full disk as RuntimeError
        notes.append(cache_write_warning(exc, path))


def load_stats(path: Path) -> CaptureStats | None:
    try:
        d = torch.load(path, weights_only=True)
        return CaptureStats(**d)
    except Exception:  # noqa: BLE001 - a corrupt or foreign file is simply recomputed
        return None


def cached_capture(lm: LoadedModel, input_ids: torch.Tensor, cfg: CaptureConfig, progress=None,
                   should_stop=None, checkpoint_every_s: float = 20.0, preview=None,
                   defer_final: bool = False) -> CaptureStats:
    """:func:`~analysis.measure.capture.capture` with resume: finished rows are loaded, the rest computed.

    ``defer_final=True``: the last write of the cache is not made here but left to the caller as
    ``stats.cache_pending()`` (it returns the ``CacheWriteFailed`` warnings it adds), so the caller can write the
    user's own output first (:func:`analysis.run.analyze`'s ``write_out``)."""
    path = cache_path(run_key(lm, input_ids, cfg))
    sweep_temporaries(path.parent, r"[0-9a-f]{32}\.(\d+)\.tmp")   # left by passes killed while saving (ours only)
    n = input_ids.shape[0]
    notes: list[str] = []
    done = load_stats(path) if path.exists() else None
    if done is not None and done.n_done >= n:
        if progress:
            progress(1.0, f"loaded finished run from the results cache ({n} sequences)")
        return done
    start = done.n_done if done is not None else 0

    def ckpt(partial: CaptureStats) -> None:
        _try_save(path, partial if done is None else merge_stats(done, partial), notes)

    def show(partial: CaptureStats) -> None:
        preview(partial if done is None else merge_stats(done, partial))

    rest = capture(lm, input_ids[start:], cfg, progress=progress, should_stop=should_stop, offset=start, total=n,
                   checkpoint=ckpt, checkpoint_every_s=checkpoint_every_s, preview=show if preview else None)
    stats = rest if done is None else merge_stats(done, rest)
    stats.completed = stats.n_done >= n
    if defer_final:
        def pending() -> list[str]:
            before = len(notes)
            _try_save(path, stats, notes)
            return notes[before:]

        stats.cache_pending = pending
    else:
        _try_save(path, stats, notes)
    stats.cache_warnings = list(notes)        # shown with the result (run.build_result); never a lost result
    return stats
