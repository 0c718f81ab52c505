"""Where and how a model runs: device and dtype resolution (``auto`` picks the fastest faithful choice) and
accelerate's placement under a per-device memory budget (multi-GPU, CPU and disk offload)."""
from __future__ import annotations

import functools
import re

import torch

from analysis.errors import DataError, ModelLoadError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → cuda, then mps, then cpu; anything else is passed to torch.device."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"Unknown device {device!r}", hint="use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "meta":
        raise ModelLoadError(f"Device {device!r} holds no data (it only records shapes), so a model cannot run on it",
                             hint="use auto, cpu, cuda, cuda:N or mps")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"Device {device!r} is not supported by Entroscope", hint="use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {device!r} asked for, but no CUDA GPU is available", hint="use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"Device {device!r} asked for, but there are only {torch.cuda.device_count()} CUDA GPU(s)",
                             hint=f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ModelLoadError(f"Device {device!r} asked for, but Apple MPS is not available here", hint="use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "fp32", device: torch.device | None = None) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16``, or ``auto``: the fastest dtype that keeps the analysis faithful."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(device or torch.device("cpu"))
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}", hint="use auto, fp32, bf16 or fp16")
    return DTYPES[dtype]


@functools.lru_cache(maxsize=8)
def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it; on a CPU only when it has native bf16 matmul instructions.

    Chosen from measurements (docs/benchmarks.md): bf16 keeps the EntroDrop drop order (Spearman 0.9996
    with fp32 on SmolLM2) and pays off where the hardware has native bf16 (GPUs; CPUs with AVX512-BF16
    or AMX). CPUs without it emulate bf16 ~100× slower than fp32 matmuls, so they get fp32. The CPU check
    reads the instruction-set flags (:func:`cpu_has_native_bf16`), not a timing: a timing taken while
    other jobs load the machine could pick the slow dtype at random.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type != "cpu":
        return torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags include AVX512-BF16 or AMX-BF16 (Linux ``/proc/cpuinfo``; False elsewhere)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))

_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.I)


def parse_max_memory(text: str) -> dict:
    """``"0=10GiB,1=10GiB,cpu=24GiB"`` → ``{0: "10GiB", 1: "10GiB", "cpu": "24GiB"}`` (accelerate's
    ``max_memory``). Keys: a GPU index, ``cuda:N``, ``cpu`` or ``mps``; values: a size with a unit (B, KB,
    MB, GB, TB, KiB, MiB, GiB, TiB) or bytes. Whatever does not fit the budgets is offloaded to disk."""
    out: dict = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        key, sep, val = part.partition("=")
        key, val = key.strip().lower(), val.strip()
        m = _MEM_RE.match(val) if sep else None
        if not m:
            raise DataError(f"Bad --max-memory entry {part!r}",
                            hint="use DEVICE=SIZE pairs, e.g. 0=10GiB,cpu=24GiB (devices: GPU index, cpu, mps)")
        if key.startswith("cuda:"):
            key = key[5:]
        if key.isdigit():
            k: int | str = int(key)
        elif key in ("cpu", "mps"):
            k = key
        else:
            raise DataError(f"Unknown device {key!r} in --max-memory", hint="use a GPU index (0, 1, …), cpu or mps")
        out[k] = f"{m.group(1)}{m.group(2) or ''}" if m.group(2) else int(float(m.group(1)))
    if not out:
        raise DataError("--max-memory is empty", hint="e.g. --max-memory cpu=2GiB")
    return out


def budget_device_map(config, max_memory: dict, dtype, trust_remote_code: bool) -> dict:
    """accelerate's ``auto`` placement under ``max_memory``, with only decoder layers allowed on disk:
    norms, rotary embeddings (non-persistent buffers, which a disk offload would leave on the meta device)
    and embeddings that land on disk are kept in CPU memory instead."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    empty.tie_weights()                         # tied embeddings count once
    dm = infer_auto_device_map(empty, max_memory=max_memory, dtype=dtype,
                               no_split_module_classes=getattr(empty, "_no_split_modules", None) or [])
    if all(v == "disk" for v in dm.values()):
        raise DataError(f"--max-memory {max_memory} leaves no room for any part of the model in memory",
                        hint="raise the CPU/GPU budget (the embeddings and one layer must fit)")
    is_layers = lambda k: ".layers" in f".{k}" or k.endswith("layers")  # noqa: E731
    out: dict = {}
    todo = list(dm.items())
    while todo:
        key, dev = todo.pop(0)
        if dev != "disk" or is_layers(key):
            out[key] = dev
            continue
        mod = empty.get_submodule(key) if key else empty
        kids = list(mod.named_children())
        if kids:                                   # a container on disk: place its children one by one
            todo = [(f"{key}.{n}" if key else n, "disk") for n, _ in kids] + todo
        else:
            out[key] = "cpu"
    return out
