"""User text files and uploaded bytes as a :class:`~analysis.data.corpus.Corpus`, and pre-tokenized
window files as a :class:`~analysis.data.tokens.TokenSet`.

Tables (``.jsonl``/``.json``/``.csv``/``.parquet``) are read with `datasets`; the column helpers here are
shared with :mod:`analysis.data.hub`.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from analysis.data.corpus import DEFAULT_EVAL_FRACTION, Corpus, user_corpus
from analysis.data.tokens import TokenSet
from analysis.errors import DataError
from analysis.store.inputs import check_input_file

# ----------------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------------

_TEXT_SUFFIXES = {".txt", ".text", ".md"}
_TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_PREFERRED_FIELDS = ("text", "content", "document")
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # size limit of load_text_bytes
MAX_FILE_BYTES = 2 * 1024**3          # size limit of a text, table or token file given by path (read whole)


def _decode_text(raw: bytes, name: str) -> str:
    """Decode file bytes as UTF-8, or raise a DataError saying why they are not text."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{name} is not UTF-8: it is UTF-16 encoded (byte-order mark {raw[:2].hex()})",
                        hint="re-save it as UTF-8")
    head = raw[:65536]
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    if b"\x00" in raw or controls > 0.05 * len(head):
        raise DataError(f"{name} looks like a binary file (it contains NUL or control bytes), not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}: "
                        f"{exc.reason}); it may be Latin-1 or another legacy encoding",
                        hint="re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def _paragraphs(text: str) -> list[str]:
    """Documents of a plain-text file: blocks separated by blank lines (one document if there are none)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]


def _string_columns(features) -> list[str]:
    return [c for c, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]


def pick_text_column(features, text_field: str | None, name: str) -> str:
    """The text column: ``text_field`` if given, else text/content/document, else the first string column."""
    strings = _string_columns(features)
    described = ", ".join(f"{c} ({getattr(f, 'dtype', type(f).__name__)})" for c, f in features.items())
    if text_field is not None:
        if text_field not in features:
            raise DataError(f"{name} has no column {text_field!r}; its columns are: {described}")
        if text_field not in strings:
            raise DataError(f"column {text_field!r} of {name} is not text; its columns are: {described}")
        return text_field
    lower = {c.lower(): c for c in strings}
    for pref in _PREFERRED_FIELDS:
        if pref in lower:
            return lower[pref]
    if strings:
        return strings[0]
    raise DataError(f"{name} has no text column; its columns are: {described or '(none)'}",
                    hint="pass text_field (--text-field) naming a column of strings")


def first_line(exc: BaseException) -> str:
    """First line of the message of ``exc`` (its type name when the message is empty), at most 200 chars."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


class QuietDatasets:
    """Silence the `datasets` progress bars and error logging inside a ``with`` block (we raise instead)."""

    def __enter__(self):
        import datasets
        from datasets.utils import logging as dlog

        self._was_disabled = datasets.are_progress_bars_disabled()
        self._verbosity = dlog.get_verbosity()
        datasets.disable_progress_bars()
        dlog.set_verbosity(dlog.CRITICAL)

    def __exit__(self, *exc):
        import datasets
        from datasets.utils import logging as dlog

        dlog.set_verbosity(self._verbosity)
        if not self._was_disabled:
            datasets.enable_progress_bars()


def _root_message(exc: BaseException) -> str:
    """First line of the innermost cause of ``exc`` (datasets wraps parser errors), at most 200 chars."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return first_line(exc)


def _read_table(path: Path, kind: str, text_field: str | None) -> tuple[list[str], str]:
    """Documents of a .jsonl/.json/.csv/.parquet file (read with `datasets`) and the column used."""
    import datasets

    try:
        with tempfile.TemporaryDirectory() as cache, QuietDatasets():
            # `datasets` reads data_files as patterns and URLs ([ * ? { :: ://): give it a plain-named link
            safe = Path(cache) / f"input{path.suffix.lower()}"
            try:
                safe.symlink_to(path.resolve())
            except OSError:                               # no symlinks on this filesystem: a copy
                import shutil

                shutil.copyfile(path, safe)
            ds = datasets.load_dataset(kind, data_files=str(safe), split="train", cache_dir=os.path.join(cache, "c"))
            column = pick_text_column(ds.features, text_field, path.name)
            docs = [x.strip() for x in ds[column] if isinstance(x, str) and x.strip()]
    except DataError:
        raise
    except Exception as exc:  # malformed JSON/CSV/parquet: the parser's own message
        raise DataError(f"could not read {path.name} as {path.suffix.lstrip('.')}: {_root_message(exc)}") from None
    return docs, column


def load_text_file(path, text_field: str | None = None, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Corpus:
    """Load a user text file as a Corpus.

    ``.txt``/``.md``: documents are blocks separated by blank lines. ``.jsonl``/``.json``/``.csv``/
    ``.parquet``: one document per row, from ``text_field`` or an auto-detected text column. The split
    is document-level (ranked by a hash of each document's text); a single document is cut in two.
    """
    p = Path(path)
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    suffix = p.suffix.lower()
    if suffix not in _TEXT_SUFFIXES and suffix not in _TABLE_SUFFIXES:
        raise DataError(f"unsupported file type {suffix or '(no extension)'} for {p.name}; "
                        "use .txt, .md, .jsonl, .json, .csv or .parquet")
    # FIFOs, devices, folders, empty, huge, archives or binary under a text name: refused before reading
    check_input_file(p, "text file", expect="auto", max_bytes=MAX_FILE_BYTES)
    column = None
    if suffix == ".parquet":
        docs, column = _read_table(p, "parquet", text_field)
    else:
        text = _decode_text(p.read_bytes(), p.name)
        if not text.strip():
            raise DataError(f"{p.name} is empty (only whitespace)")
        if suffix in _TEXT_SUFFIXES:
            docs = _paragraphs(text)
        else:
            docs, column = _read_table(p, _TABLE_SUFFIXES[suffix], text_field)
    if not docs:
        raise DataError(f"{p.name} has no non-empty text" + (f" in column {column!r}" if column else ""))
    return user_corpus(p.name, docs, eval_fraction, f"file {p.name}", path=str(p), text_field=column)


def load_text_bytes(data: bytes, filename: str, text_field: str | None = None,
                    eval_fraction: float = DEFAULT_EVAL_FRACTION, max_bytes: int | None = None) -> Corpus:
    """Like :func:`load_text_file`, for uploaded bytes (e.g. Streamlit); the type comes from ``filename``.

    ``max_bytes`` defaults to :data:`MAX_UPLOAD_BYTES` (read at call time)."""
    base = Path(str(filename).replace("\\", "/")).name or "upload.txt"
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    if len(data) > max_bytes:
        raise DataError(f"{base} is {len(data) / 2**20:.1f} MB; the upload limit is {max_bytes / 2**20:.0f} MB")
    if not data:
        raise DataError(f"{base} is empty")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", base)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        try:
            corpus = load_text_file(path, text_field, eval_fraction)
        except DataError as exc:
            raise DataError(exc.message.replace(safe, base), exc.hint) from None
    corpus.name = base
    corpus.meta.pop("path", None)
    corpus.meta["source"] = f"upload {base}"
    return corpus


# ----------------------------------------------------------------------------------------------------
# Token files
# ----------------------------------------------------------------------------------------------------


def _read_token_array(p: Path) -> torch.Tensor:
    """The integer tensor stored in a .npy or .pt file (DataError for anything else)."""
    if p.suffix.lower() == ".npy":
        import numpy as np

        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:
            if isinstance(exc, ValueError) and "pickle" in str(exc).lower():
                raise DataError(f"{p.name} holds Python objects, not an integer array") from None
            raise DataError(f"could not read {p.name} as a .npy array: {first_line(exc)}") from None
        if arr.dtype.kind not in "iub":
            raise DataError(f"{p.name} has dtype {arr.dtype}; token ids must be integers")
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > torch.iinfo(torch.int64).max:
            raise DataError(f"{p.name} has token ids too large for int64 (max {int(arr.max())})")
        return torch.from_numpy(arr) if arr.dtype.kind == "b" else torch.from_numpy(arr.astype("int64"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"could not read {p.name} as a torch tensor file (weights_only): {first_line(exc)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("input_ids"), torch.Tensor):
        obj = obj["input_ids"]
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{p.name} holds a {type(obj).__name__}, not a tensor of token ids")
    return obj


def load_token_file(path, vocab_size: int | None = None, seq_len: int | None = None) -> TokenSet:
    """Read pre-tokenized windows: an integer array ``[N, T]`` in a .npy or .pt file, used as-is."""
    p = Path(path)
    if p.suffix.lower() not in (".npy", ".pt", ".pth"):
        check_input_file(p, "token file", expect=None)    # a missing or special file is named as such first
        raise DataError(f"unsupported token file type {p.suffix or '(no extension)'} for {p.name}; use .npy or .pt")
    check_input_file(p, "token file", expect="auto", max_bytes=MAX_FILE_BYTES)
    ids = _read_token_array(p)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise DataError(f"{p.name} has dtype {str(ids.dtype).replace('torch.', '')}; token ids must be integers")
    if ids.numel() == 0:
        raise DataError(f"{p.name} is empty (shape {tuple(ids.shape)})")
    if ids.ndim != 2:
        raise DataError(f"{p.name} has shape {tuple(ids.shape)}; expected a 2-D array [N, T] of token ids")
    ids = ids.to(torch.long)
    if (neg := int((ids < 0).sum())):
        raise DataError(f"{p.name} has {neg} negative token id(s) (min {int(ids.min())})")
    if vocab_size is not None and (over := int((ids >= vocab_size).sum())):
        raise DataError(f"{p.name} has {over} token id(s) >= the vocab size {vocab_size} (max id {int(ids.max())})")
    if seq_len is not None and ids.shape[1] != seq_len:
        raise DataError(f"{p.name} has windows of {ids.shape[1]} tokens but seq_len is {seq_len}")
    source = {"kind": "token_file", "file": p.name, "path": str(p), "n_samples": int(ids.shape[0]),
              "seq_len": int(ids.shape[1]), "vocab_size_checked": vocab_size}
    return TokenSet(ids.contiguous(), [p.name] * int(ids.shape[0]), source)
