"""Checkpoint integrity: a model whose config and weights disagree is refused with the list of
mismatches (never loaded with randomly initialised or silently dropped tensors), and a corrupted entry
in the model cache (``~/.cache/entroscope/models``) is detected so it can be rebuilt."""
from __future__ import annotations

import shutil
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
