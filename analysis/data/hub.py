"""Hugging Face hub datasets (streamed) as a :class:`~analysis.data.corpus.Corpus`, and the offline checks
(:func:`hub_offline_env`, :func:`hub_reachable`) that let callers fail fast without a network."""
from __future__ import annotations

import itertools
import os
import re
import threading
from typing import Sequence

from analysis.data.corpus import DEFAULT_EVAL_FRACTION, Corpus, user_corpus
from analysis.data.files import QuietDatasets, first_line, pick_text_column
from analysis.errors import DataError

_TRUE = {"1", "true", "yes", "on"}


def hub_offline_env() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
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
    if hub_offline_env() or not hub_reachable():
        raise _offline_error(name)
    import datasets

    label = name + (f"/{config}" if config else "")
    try:
        with QuietDatasets():
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
            rows = list(itertools.islice(iter(ds), max_docs if "wikitext" not in name else max_docs * 20))
    except (ConnectionError, TimeoutError) as exc:
        raise _offline_error(name) from exc
    except Exception as exc:
        first = first_line(exc)
        if re.search(r"connect|offline|timed? ?out|resolve|network", first, re.I):
            raise _offline_error(name) from exc
        raise DataError(f"could not load hub dataset {label!r} (split {split!r}): {first}") from None
    if not rows:
        raise DataError(f"hub dataset {label!r} split {split!r} has no rows")
    column = pick_text_column({k: _Str() if isinstance(v, str) else v for k, v in rows[0].items()},
                               text_field, f"hub dataset {label!r}")
    texts = [r[column] for r in rows if isinstance(r.get(column), str)]
    docs = _wikitext_articles(texts) if "wikitext" in name else [t.strip() for t in texts if t.strip()]
    if not docs:
        raise DataError(f"hub dataset {label!r} has no non-empty text in column {column!r}")
    return user_corpus(label, docs[:max_docs], eval_fraction, f"hub dataset {label} (split {split})",
                        text_field=column)


class _Str:
    """Stand-in feature for a string value seen in a streamed row."""

    dtype = "string"
