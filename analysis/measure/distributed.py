"""Data-parallel analysis pass: under ``torchrun`` (or ``accelerate launch``) every rank captures a shard of
the calibration sequences and the per-sequence statistics are gathered with ``torch.distributed``.

Sharding is by whole batches of ``CaptureConfig.batch_size`` sequences, in order: rank r of W takes the
r-th contiguous block of batches (:func:`shard_rows`). Every batch therefore has the same sequences, the
same shapes and the same seeded state positions as in a single-process pass (``capture(..., offset,
total)``, the mechanism the results cache uses to resume), so the gathered statistics — merged in rank
order with :func:`analysis.measure.capture.merge_stats` — are the single-process ones, and rank 0 writes the
same run (up to timings). Ranks with no batch (more ranks than batches) contribute nothing.

Backends: ``nccl`` when every rank has a CUDA device (``cuda:LOCAL_RANK``), else ``gloo`` (CPU). The
statistics are small (per-sequence scalars plus the capped state sample) and travel as pickled objects.

    torchrun --nproc-per-node 4 -m analysis analyze --model smollm2 --corpus wiki --samples 512 --out run.json

Model-parallel (``--device-map auto``) is for models larger than one device and is not combined with this.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from analysis.measure.capture import CaptureConfig, CaptureStats, capture, merge_stats
from analysis.errors import SelectionError


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else from ``RANK``/``WORLD_SIZE`` (torchrun),
    else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return world()[1] > 1


def local_device(requested: str | None) -> str | None:
    """The device for this rank: ``cuda:LOCAL_RANK`` when CUDA (or ``auto`` with CUDA) is requested under
    a launcher, the request unchanged otherwise."""
    if not is_distributed():
        return requested
    local = int(os.environ.get("LOCAL_RANK", 0))
    if requested in (None, "auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local}"
    if requested in (None, "auto"):
        return "cpu"
    return requested


def init(backend: str | None = None) -> bool:
    """Initialise the default process group from the launcher's environment (no-op when single-process
    or already initialised). Returns whether this process is part of a multi-process group."""
    import torch.distributed as dist

    if not is_distributed():
        return False
    if not dist.is_available():
        raise SelectionError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return dist.get_world_size() > 1


def shard_rows(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of rank ``rank``: a contiguous block of whole batches (sizes differ by ≤ 1 batch)."""
    batches = -(-n // batch_size)
    b0 = batches * rank // world_size
    b1 = batches * (rank + 1) // world_size
    return min(n, b0 * batch_size), min(n, b1 * batch_size)


def distributed_capture(lm, input_ids: torch.Tensor, cfg: CaptureConfig, progress: Callable | None = None,
                        should_stop: Callable[[], bool] | None = None) -> CaptureStats:
    """:func:`analysis.measure.capture.capture` of this rank's shard, gathered: every rank returns the statistics of
    all ``N`` sequences, merged in order (identical to a single-process capture). ``should_stop`` is not
    supported across ranks (a stopped rank would leave a hole), so it is ignored here."""
    import torch.distributed as dist

    init()                                   # launched by torchrun but called from Python: join the group
    rank, ws = world()
    n = input_ids.shape[0]
    s, e = shard_rows(n, cfg.batch_size, rank, ws)
    part = None
    if e > s:
        part = capture(lm, input_ids[s:e], cfg, progress=progress, offset=s, total=n)
        part = _to_cpu(part)
    parts: list = [None] * ws
    dist.all_gather_object(parts, part)
    parts = [p for p in parts if p is not None]
    stats = parts[0]
    for p in parts[1:]:
        stats = merge_stats(stats, p)
    stats.seconds = max(p.seconds for p in parts)     # wall time of the slowest rank
    stats.completed = stats.n_done == n
    return stats


def _to_cpu(stats: CaptureStats) -> CaptureStats:
    """Every tensor on the CPU (``_collect`` already moves them; states are host buffers) — explicit so a
    pickled object never references a device."""
    def cpu(x):
        if isinstance(x, torch.Tensor):
            return x.cpu()
        if isinstance(x, dict):
            return {k: cpu(v) for k, v in x.items()}
        return x

    for f in ("entropy", "cos_attn", "cos_mlp", "cos_layer", "last_cos", "norm_boundary", "norm_mid", "states",
              "entropy_alt", "massive", "first_flags", "seq_means"):
        setattr(stats, f, cpu(getattr(stats, f)))
    return stats
