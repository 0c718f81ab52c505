"""Checkpoint integrity: a model whose config and weights disagree is refused with the list of
mismatches (never loaded with randomly initialised or silently dropped tensors) — from the safetensors
headers before any weight is allocated where it can be — and a corrupted entry in the model cache
(``~/.cache/entroscope/models``) is detected so it can be rebuilt: every entry records a digest of its files
when it is written (:func:`entry_digest`) that is checked when it is read (:func:`digest_problem`), and
temporaries of interrupted conversions are swept by pid and age (:func:`sweep_temporaries`)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from analysis.errors import DataError, ModelLoadError
from analysis.store.jsonio import read_json


def _fmt(items, n: int = 4) -> str:
    items = [str(x if not isinstance(x, (tuple, list)) else x[0]) for x in items]
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_loading_info(model, info: dict, where: str) -> None:
    """Refuse a model transformers loaded with missing, unexpected or mis-shaped tensors
    (``from_pretrained(..., output_loading_info=True, ignore_mismatched_sizes=True)``)."""
    missing = sorted(k for k in info.get("missing_keys") or [] if not is_tied(model, k))
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_fmt(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_fmt(unexpected)})")
    if mismatched:
        shown = [f"{m[0]} {tuple(m[1])} vs {tuple(m[2])}" if isinstance(m, (tuple, list)) and len(m) == 3 else str(m)
                 for m in mismatched]
        parts.append(f"{len(mismatched)} with the wrong shape ({_fmt(shown, 3)})")
    raise ModelLoadError(f"{where}: config.json and the weight files disagree: " + "; ".join(parts),
                         hint="the checkpoint is incomplete or was edited; re-save or re-download it")


def cache_entry_problem(path: Path) -> str | None:
    """Why a converted-model cache entry is unusable (None when it looks complete)."""
    try:
        read_json(path / "config.json", kind="config")
    except DataError as exc:
        return f"config.json is missing or unreadable ({exc.message})"
    if not (path / "entroscope-source.json").is_file():
        return "the conversion did not finish (no entroscope-source.json)"
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return "the tokenizer files are missing"
    files = [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = [path / f for f in sorted(set(read_json(index, kind="weight index")["weight_map"].values()))]
        except (DataError, KeyError, TypeError, AttributeError) as exc:
            return f"model.safetensors.index.json is unreadable ({type(exc).__name__})"
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    sf.get_slice(k).get_shape()
            if f.stat().st_size == 0:
                return f"{f.name} is empty"
        except Exception as exc:  # noqa: BLE001 - any failure to read the header means corrupted
            return f"{f.name} is missing or corrupted ({type(exc).__name__})"
    try:
        source = read_json(path / SOURCE_FILE, kind="cache record")
    except DataError as exc:
        return f"its record {SOURCE_FILE} is unreadable ({exc.message})"
    digest = source.get("digest") if isinstance(source, dict) else None
    if isinstance(digest, dict):
        return digest_problem(path, digest)
    record_digest(path)                 # written before digests existed: record one now (headers checked above)
    return None


def discard_cache_entry(path: Path, cache_models: Path, why: str) -> None:
    """Delete a corrupted cache entry (only inside the cache's models folder); else say which folder to delete."""
    real, root = path.resolve(), cache_models.resolve()
    if real == root or not real.is_relative_to(root):
        raise ModelLoadError(f"The converted model at {path} is unusable ({why})", hint=f"delete {path} and retry")
    try:
        shutil.rmtree(real)
    except OSError as exc:
        raise ModelLoadError(f"The cached model at {path} is corrupted ({why}) and could not be removed: "
                             f"{exc.strerror or exc}", hint=f"delete the folder {path} and retry") from None


def is_tied(model, key: str) -> bool:
    """True when parameter ``key`` is the same tensor as another (loaded) parameter, e.g. a tied LM head."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(key)
    return p is not None and any(q is p for k, q in params.items() if k != key)


# ----------------------------------------------------------------------------------------------------
# Digests of cache entries: recorded when written, verified when read
# ----------------------------------------------------------------------------------------------------

DIGEST_ALGO = "sha256-sampled-v1"
SAMPLE_BLOCKS, SAMPLE_BYTES = 64, 1 << 20    # 64 evenly spaced 1 MiB blocks of every large file
SMALL_FILE = 8 << 20                         # files up to 8 MiB are hashed whole
SOURCE_FILE = "entroscope-source.json"       # written last into a cache entry: where it came from + digest


def sampled_digest(f: Path) -> str:
    """sha256 over the size, the whole safetensors header (or the first MiB) and :data:`SAMPLE_BLOCKS` evenly
    spaced blocks of ``f`` — the whole file when it is small. Reads at most ~65 MiB whatever the size."""
    size = f.stat().st_size
    h = hashlib.sha256(f"{size}|".encode())
    with open(f, "rb") as fh:
        if size <= SMALL_FILE:
            h.update(fh.read())
            return h.hexdigest()
        head = fh.read(8)
        n = int.from_bytes(head, "little") if f.suffix == ".safetensors" else 0
        h.update(head + fh.read(min(n, 100 << 20) if 0 < n < size else SAMPLE_BYTES))
        for i in range(SAMPLE_BLOCKS):
            fh.seek((size - SAMPLE_BYTES) * i // (SAMPLE_BLOCKS - 1))
            h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()


def full_sha256(f: Path) -> str:
    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def entry_digest(path: Path, full: bool = False) -> dict:
    """``{"algo", "files": {name: {"size", "sample"[, "sha256"]}}}`` for every file of a cache entry but the
    source record itself."""
    files = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name != SOURCE_FILE and not f.name.endswith(".tmp"):
            files[f.name] = {"size": f.stat().st_size, "sample": sampled_digest(f),
                             **({"sha256": full_sha256(f)} if full else {})}
    return {"algo": DIGEST_ALGO, "files": files}


def digest_problem(path: Path, recorded: dict, full: bool | None = None) -> str | None:
    """Why the files of a cache entry differ from the digest recorded when it was written (None: they match).
    ``full`` (default: ``ENTROSCOPE_VERIFY_CACHE=full``) also checks the whole-file sha256 where recorded."""
    if full is None:
        full = os.environ.get("ENTROSCOPE_VERIFY_CACHE", "").lower() == "full"
    if recorded.get("algo") != DIGEST_ALGO or not isinstance(recorded.get("files"), dict):
        return None                                   # another version's digest: nothing to compare
    for name, rec in recorded["files"].items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != rec.get("size"):
            return f"{name} has {size} bytes, {rec.get('size')} when it was written (truncated or replaced)"
        if sampled_digest(f) != rec.get("sample") or (full and rec.get("sha256") and full_sha256(f) != rec["sha256"]):
            return f"{name} does not match the digest recorded when it was written (corrupted)"
    return None


def record_digest(path: Path, full: bool = False) -> None:
    """Add the entry's digest to its source record (atomically; best effort for entries written before
    digests existed: a failure leaves the entry as it was)."""
    src = path / SOURCE_FILE
    try:
        meta = read_json(src, kind="cache record")
        meta = meta if isinstance(meta, dict) else {}
        meta["digest"] = entry_digest(path, full)
        tmp = src.with_name(f"{SOURCE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, src)
    except (DataError, OSError):
        pass


# ----------------------------------------------------------------------------------------------------
# Temporaries left by interrupted writes
# ----------------------------------------------------------------------------------------------------

_TMP = re.compile(r".*\.(?:tmp(\d+)|(\d+)\.tmp)$")
STALE_AFTER_S = 24 * 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(folder: Path, pattern: str | None = None, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove ``<name>.tmp<pid>`` / ``<name>.<pid>.tmp`` files and folders in ``folder`` whose process is gone
    (or that are older than ``max_age_s``: a reused pid); returns what was removed. Never raises.

    ``pattern`` (a regex with the pid as its one group) restricts the sweep to names Entroscope writes, for
    folders that may hold the user's own files."""
    removed = []
    try:
        items = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in items:
        m = re.fullmatch(pattern, p.name) if pattern else _TMP.fullmatch(p.name)
        if not m:
            continue
        pid = int(next(g for g in m.groups() if g))
        try:
            old = now - p.lstat().st_mtime > max_age_s
        except OSError:
            continue
        if _alive(pid) and not old:                   # a live writer's temporary is left alone
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# ----------------------------------------------------------------------------------------------------
# Config against weights, from the safetensors headers only (before any large allocation)
# ----------------------------------------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _bin_files(path: Path) -> list[str] | None:
    """The PyTorch ``.bin`` weight files of a checkpoint folder (hub style: ``pytorch_model.bin`` or the shards
    its index names); None when there are none."""
    index = path / "pytorch_model.bin.index.json"
    if index.is_file():
        return sorted(set(read_json(index, kind="weight index").get("weight_map", {}).values()))
    if (path / "pytorch_model.bin").is_file():
        return ["pytorch_model.bin"]
    return None


def bin_shapes(path: Path, files: list[str]) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of PyTorch ``.bin`` weight files without reading their data: ``torch.load(mmap=True,
    weights_only=True)`` maps the file (nothing is unpickled but tensors; no weight is copied into memory).
    None for a legacy (pre-zip) file, which cannot be mapped: the real load still checks it."""
    import pickle
    import zipfile

    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        f = path / name
        if not zipfile.is_zipfile(f):
            return None                       # legacy torch.save format: no mmap; left to the loader's own check
        try:
            sd = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"{f} is not a readable PyTorch weight file ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:120] if str(exc) else ''})",
                                 hint="the checkpoint is incomplete, corrupted or holds more than tensors; "
                                      "re-save it (safetensors preferred)") from None
        if not isinstance(sd, dict):
            raise ModelLoadError(f"{f} holds a {type(sd).__name__}, not a state dict of tensors",
                                 hint="save the model with save_pretrained")
        shapes.update({k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)})
        del sd
    return shapes


def _weight_files(path: Path) -> tuple[str, list[str]] | None:
    """``("safetensors" | "bin", the weight files its index or single-file layout names)``, or None for neither."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return "safetensors", sorted(set(read_json(index, kind="weight index").get("weight_map", {}).values()))
    if (path / "model.safetensors").is_file():
        return "safetensors", ["model.safetensors"]
    bins = _bin_files(path)
    return ("bin", bins) if bins else None


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes from the safetensors headers of a checkpoint folder (no tensor is read), or else from its
    PyTorch ``.bin`` files mapped without reading them (:func:`bin_shapes`); None when neither can say."""
    from safetensors import safe_open

    found = _weight_files(path)
    if found is None:
        return None
    kind, files = found
    if kind == "bin":
        return bin_shapes(path, files)
    shapes = {}
    for name in files:
        try:
            with safe_open(str(path / name), framework="pt") as sf:
                for k in sf.keys():
                    shapes[k] = tuple(sf.get_slice(k).get_shape())
        except Exception as exc:  # noqa: BLE001 - any header failure: the file is not a readable safetensors file
            raise ModelLoadError(f"{path / name} is not a readable safetensors file ({type(exc).__name__}: "
                                 f"{str(exc)[:120]})", hint="the checkpoint is incomplete or corrupted; re-save it")
    return shapes


def hub_snapshot(repo_id: str) -> Path | None:
    """The hub cache's folder of ``repo_id`` (its cached ``main`` revision) when it holds ``config.json`` and every
    weight file already — nothing is downloaded — else None."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, no such repo, no hub library: nothing to check from
        return None
    return path if (path / "config.json").is_file() and weights_complete(path) else None


def weights_complete(path: Path) -> bool:
    """Every weight file the folder's index (or its single-file layout) names is there."""
    try:
        files = _weight_files(path)
    except (DataError, AttributeError):       # an unreadable index: not complete
        return False
    return bool(files and files[1]) and all((path / n).is_file() for n in files[1])


def check_config_against_headers(path: Path, config, where: str) -> None:
    """Refuse a checkpoint whose config.json disagrees with its weights' shapes or depth, reading only the
    safetensors headers (or the ``.bin`` files' tensor metadata, mapped) and an empty (meta-device) model:
    nothing large is allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    shapes = weight_shapes(path)
    if not shapes:
        return
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - a config transformers cannot build is reported by the real load
        return
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    n_cfg = getattr(config, "num_hidden_layers", None) or getattr(getattr(config, "text_config", None),
                                                                  "num_hidden_layers", None)
    layers = {int(m.group(1)) for k in shapes if (m := _LAYER.search(k))}
    problems = []
    if n_cfg is not None and layers and layers != set(range(n_cfg)):
        def of(keys, idx):
            return sorted(k for k in keys if (m := _LAYER.search(k)) and int(m.group(1)) in idx)

        missing = of(want, set(range(n_cfg)) - layers)
        extra = of(shapes, layers - set(range(n_cfg)))
        if missing:
            problems.append(f"{len(missing)} missing ({_fmt(missing)}): config.json says {n_cfg} layers")
        if extra:
            problems.append(f"{len(extra)} unexpected ({_fmt(extra)}): config.json says {n_cfg} layers")
    wrong = [f"{k} {shapes[k]} vs {want[k]}" for k in sorted(set(shapes) & set(want)) if shapes[k] != want[k]]
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape ({_fmt(wrong, 3)})")
    if problems:
        raise ModelLoadError(f"{where}: config.json and the weight files disagree: " + "; ".join(problems),
                             hint="the checkpoint is incomplete or was edited; re-save or re-download it "
                                  "(refused before loading any weights)")
