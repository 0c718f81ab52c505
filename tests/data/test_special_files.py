"""Class 4 of issue 25: special and mislabelled files. Every input path (text, tokens, run / plan / eval / sweep
JSON, model folders, GGUF) passes :func:`analysis.store.inputs.check_input_file` before anything opens it:
each case is read correctly or refused with its true reason, never a hang (a FIFO is never opened; an alarm
turns a hang into a failure here). The catalogue counts in docs/reliability.md ("Class 4") are the cases here."""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import socket
import zipfile

import numpy as np
import pytest

from analysis.data.files import load_text_file, load_token_file
from analysis.errors import DataError, ModelLoadError
from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.score.result import AnalysisResult
from analysis.store.inputs import check_input_file, sniff
from analysis.store.schemas import read_eval

DOCS = "\n\n".join(f"Paragraph {i} talks about rivers, mountains and the weather in spring." for i in range(40))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROSCOPE_CACHE", str(tmp_path / "cache"))


def _ck_with_fifo_config(t):
    from analysis.testing import save_tiny_checkpoint

    d = save_tiny_checkpoint(t / "ck", layers=2)
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")
    return d


@pytest.fixture(autouse=True)
def no_hang():
    """Turn a hang (a FIFO opened for reading, /dev/zero read to the end) into a test failure."""
    def boom(*_):
        raise TimeoutError("the reader hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def _put(p, data):
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def _fifo(tmp_path, name):
    p = tmp_path / name
    os.mkfifo(p)
    return p


def _socket(tmp_path, name):
    p = tmp_path / name
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    return p, s


READERS = {
    "text": lambda p: load_text_file(p),
    "tokens": lambda p: load_token_file(p),
    "run": lambda p: AnalysisResult.load(p),
    "plan": lambda p: Plan.load(p),
    "eval": lambda p: read_eval(p),
    "model": lambda p: load_model(str(p), device="cpu"),
}

# (reader, how to make the path, expected message)
CASES = [
    # FIFOs: never opened (on today's main, reading one blocks forever)
    ("text", lambda t: _fifo(t, "pipe.txt"), "is a named pipe (FIFO), not a regular file"),
    ("tokens", lambda t: _fifo(t, "pipe.npy"), "is a named pipe (FIFO), not a regular file"),
    ("run", lambda t: _fifo(t, "pipe.json"), "is a named pipe (FIFO), not a regular file"),
    ("plan", lambda t: _fifo(t, "plan.json"), "is a named pipe (FIFO), not a regular file"),
    ("model", lambda t: _fifo(t, "m.gguf"), "is a named pipe (FIFO), not a regular file"),
    ("model", lambda t: _fifo(t, "model-dir"), "is a named pipe (FIFO), not a directory"),
    ("model", _ck_with_fifo_config, "File config.json of the model directory"),
    # devices and sockets
    ("run", lambda t: "/dev/zero", "is a character device, not a regular file"),
    ("text", lambda t: "/dev/null", "unsupported file type"),
    ("tokens", lambda t: "/dev/urandom", "is a character device"),
    ("run", lambda t: _socket(t, "sock.json")[0], "is a socket, not a regular file"),
    # a directory given as a file, a file given as a model folder
    ("run", lambda t: (t / "d.json").mkdir() or t / "d.json", "is a directory, not a regular file"),
    ("tokens", lambda t: (t / "d.npy").mkdir() or t / "d.npy", "is a directory, not a regular file"),
    ("text", lambda t: (t / "d.txt").mkdir() or t / "d.txt", "is a directory, not a regular file"),
    ("model", lambda t: _put(t / "weights", "x"), "is a file, not a directory"),
    # archives under another extension
    ("text", lambda t: _put(t / "a.txt", _zip("a.txt", DOCS.encode())),
     "is a zip archive, not text (despite its .txt name)"),
    ("run", lambda t: _put(t / "r.json", gzip.compress(b'{"num_layers": 2}')),
     "is a gzip archive, not JSON text (despite its .json name)"),
    ("text", lambda t: _put(t / "rows.jsonl", gzip.compress(b'{"text": "hi"}\n')),
     "is a gzip archive, not JSON text"),
    ("text", lambda t: _put(t / "rows.csv", b"\xfd7zXZ\x00" + bytes(64)),
     "is a xz archive, not CSV text"),
    ("tokens", lambda t: _put(t / "ids.npy", _zip("ids.npy", b"x")),
     "is a zip archive, not a .npy array"),
    # text or the wrong binary under a binary name, binary under a text name
    ("tokens", lambda t: _put(t / "ids.npy", "1 2 3\n4 5 6\n"),
     "is text, not a .npy array (despite its .npy name)"),
    ("tokens", lambda t: _put(t / "ids.pt", "[[1, 2]]"), "is text, not a torch file"),
    ("model", lambda t: _put(t / "m.gguf", b"\x89PNG\r\n\x1a\n" + bytes(64)),
     "is not a GGUF file (bad magic bytes; it looks like a png file)"),
    ("text", lambda t: _put(t / "b.txt", b"\x00\x01\x02\xff" * 100), "looks like a binary file"),
    ("model", lambda t: _put(t / "trunc.gguf", b"GGUF\x03\x00\x00\x00"), "Could not read GGUF trunc.gguf: it is "
                                                                         "truncated or corrupted"),
    ("run", lambda t: _put(t / "u16.json", '{"num_layers": 2}'.encode("utf-16")), "not UTF-8 text"),
    ("run", lambda t: _put(t / "deep.json", "[" * 100000 + "]" * 100000), "nested too deeply"),
    ("text", lambda t: _put(t / "p.parquet", "a,b\n1,2\n"), "is text, not a parquet file"),
    # empty and huge files (sparse: nothing is written to disk)
    ("run", lambda t: _put(t / "e.json", b""), "is empty (0 bytes)"),
    ("tokens", lambda t: _put(t / "e.npy", b""), "is empty (0 bytes)"),
    ("model", lambda t: _put(t / "e.gguf", b""), "is empty (0 bytes)"),
    ("text", lambda t: _sparse(t / "huge.txt", 3 * 2**30), "MB; the limit for a text file is"),
    ("run", lambda t: _sparse(t / "huge.json", 600 * 2**20), "MB; the limit for a run file is"),
    # kernel pseudo-files: "regular" files whose size (0 bytes) is not their content's
    ("plan", lambda t: "/proc/self/status", "is a kernel pseudo-file under /proc (it reports a size of 0 bytes"),
    ("run", lambda t: "/proc/version", "is a kernel pseudo-file under /proc"),
    ("tokens", lambda t: "/proc/self/cmdline", "is a kernel pseudo-file under /proc"),
    ("text", lambda t: (t / "status.txt").symlink_to("/proc/self/status") or t / "status.txt",
     "is a kernel pseudo-file under /proc"),
    # missing files are named as missing, globs are never expanded
    ("text", lambda t: _put(t / "a1.txt", DOCS).with_name("a*.txt"), "not found"),
    ("run", lambda t: t / "nope" / "run.json", "not found"),
]


def _sparse(p, size):
    with open(p, "wb") as f:
        f.truncate(size)
    return p


@pytest.mark.parametrize("reader,make,pattern", CASES, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(CASES)])
def test_special_and_mislabelled_files_are_refused_with_the_true_reason(tmp_path, reader, make, pattern):
    path = make(tmp_path)
    with pytest.raises((DataError, ModelLoadError), match=re.escape(pattern)):
        READERS[reader](path)


# ---- names with characters special to glob or to the datasets library are read literally -------------------------
NAMES = ["notes[1].jsonl", "a*b?.jsonl", "x::y.jsonl", "set{1,2}.csv", "zip:rows.jsonl", "hf%3A%2F%2Fx.csv",
         "sp ace #1.csv", "dot..parquet"]


@pytest.mark.parametrize("name", NAMES)
def test_names_special_to_glob_or_datasets_are_read_literally(tmp_path, name):
    rows = [f"Row {i} is about rivers and mountains in spring." for i in range(30)]
    p = tmp_path / name
    if name.endswith(".csv"):
        p.write_text("text\n" + "\n".join(rows) + "\n")
    elif name.endswith(".parquet"):
        import pandas as pd

        pd.DataFrame({"text": rows}).to_parquet(p)
    else:
        p.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    decoy = tmp_path / "notes1.jsonl"            # what a glob `notes[1].jsonl` would match instead
    decoy.write_text(json.dumps({"text": "decoy"}) + "\n")
    text = " ".join(load_text_file(p).split("all"))
    assert "Row 0 is about" in text and "decoy" not in text


def test_token_file_and_run_with_special_names_load(tmp_path):
    ids = tmp_path / "ids[0]*.npy"
    np.save(ids, np.arange(16).reshape(2, 8))
    assert load_token_file(ids).input_ids.shape == (2, 8)
    run = tmp_path / "run{a}::b.json"
    run.write_text(json.dumps({"num_layers": 1, "estimator": "bucket", "granularity": "layer", "protect": "none",
                               "per_seq": {"bucket": {"boundary": [[1.0, 2.0]], "mid": [[1.5]]}},
                               "boundary": 0, "protected": []}))
    assert AnalysisResult.load(run).num_layers == 1


def test_sniff_names_what_the_bytes_are():
    assert sniff(b"PK\x03\x04rest") == "zip" and sniff(b"\x1f\x8b\x08") == "gzip"
    assert sniff(b"\x93NUMPY\x01\x00") == "npy" and sniff(b"GGUF\x03\x00") == "gguf"
    assert sniff(b"hello world\n") == "text" and sniff(b"\x00\x01\x02\x03" * 8) == "binary"
    assert sniff(b"\x80\x04\x95") == "pickle"
    assert sniff((20).to_bytes(8, "little") + b'{"a":{"dtype":"F32"}}') == "safetensors"


def test_check_input_file_never_opens_a_fifo(tmp_path):
    p = _fifo(tmp_path, "x.json")
    with pytest.raises(DataError, match="named pipe"):
        check_input_file(p, "run file")
    assert check_input_file(tmp_path, "model directory", directory=True) == "directory"
