"""Every input path goes through one gate: :func:`check_input_file`.

It answers *what the path really is* before anything reads it: the path is ``stat``-ed first (never opened
when it is a FIFO, a device or a socket, so nothing can hang), empty and oversized files are refused with their
size, and the first bytes are sniffed (:func:`sniff`) so an archive under another extension (a zip or gzip named
``.txt`` or ``.json``), text named ``.npy``, or binary named ``.txt`` is refused with its true nature instead of
a parser's confused message. Paths are used literally: nothing here (or in the callers) expands glob
characters ``[ * ?`` or reads ``::`` / ``://`` / ``{`` as anything but characters of a file name.

Used by text and token files (:mod:`analysis.data.files`), run / plan / eval / sweep JSON
(:func:`analysis.store.jsonio.read_json`), model directories and GGUF files (:mod:`analysis.models.loading`).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from analysis.errors import DataError

#: first bytes → what the file is (checked in order; the first match wins)
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x93NUMPY", "npy"), (b"GGUF", "gguf"), (b"PAR1", "parquet"), (b"%PDF", "pdf"),
    (b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"\x7fELF", "elf"), (b"SQLite format 3\x00", "sqlite"),
    (b"\x89HDF", "hdf5"),
)
ARCHIVES = {"zip", "gzip", "bzip2", "xz", "zstd", "7z"}
#: what each expected format may start with (``text`` also covers JSON, CSV and JSON lines)
ACCEPTS = {
    "text": {"text"}, "json": {"text"}, "csv": {"text"}, "npy": {"npy"}, "pt": {"zip", "pickle"},
    "gguf": {"gguf"}, "parquet": {"parquet"}, "safetensors": {"safetensors"},
}
SUFFIX_FORMAT = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
                 ".npy": "npy", ".pt": "pt", ".pth": "pt", ".gguf": "gguf", ".parquet": "parquet",
                 ".safetensors": "safetensors"}
_FORMAT_NAME = {"text": "text", "json": "JSON text", "csv": "CSV text", "npy": "a .npy array", "pt": "a torch file",
                "gguf": "a GGUF file", "parquet": "a parquet file", "safetensors": "a safetensors file"}


def _kind_of_mode(mode: int) -> str | None:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except NotADirectoryError:
        raise DataError(f"{what} not found: {path} (a parent of it is a file, not a folder)") from None
    except PermissionError:
        raise DataError(f"{what} {path} cannot be read: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise DataError(f"{what} path is too long: {str(path)[:80]}…") from None
        if exc.errno == errno.ELOOP:
            raise DataError(f"{what} {path} is a symbolic link loop") from None
        raise DataError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True                                       # a BOM: text (UTF-16 is explained by the text reader)
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    return b"\x00" not in head and controls <= 0.05 * len(head)


def sniff(head: bytes) -> str:
    """What the first bytes of a file say it is: a name from :data:`MAGIC`, ``safetensors``, ``pickle``,
    ``text`` or ``binary``."""
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 10 and head[8:10] in (b"{\"", b"{ ") and int.from_bytes(head[:8], "little") < 100 << 20:
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "text" if _looks_like_text(head) else "binary"


def read_head(path: str | os.PathLike, n: int = 4096) -> bytes:
    """The first ``n`` bytes of a regular file, opened without blocking (a FIFO swapped in is refused)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path} is {_kind_of_mode(os.fstat(fd).st_mode)}, not a regular file")
        return os.read(fd, n)
    finally:
        os.close(fd)


#: kernel filesystems whose files report a size that is not their content's (/proc: 0 bytes, /sys: 4096)
PSEUDO_ROOTS = ("/proc", "/sys")


def _refuse_pseudo_file(p: Path, st: os.stat_result, what: str) -> None:
    """Refuse a kernel pseudo-file (``/proc/self/status``, a ``/sys`` attribute, also through a symlink): it is a
    "regular file" whose size is not real (0 bytes for a /proc file full of text), so neither the size checks nor
    "empty" would tell the truth about it. A zero-size file elsewhere that still has content (another virtual
    filesystem) is refused the same way; a truly empty file is left to the caller's "empty" check."""
    real = os.path.realpath(p)
    root = next((r for r in PSEUDO_ROOTS if real == r or real.startswith(r + "/")), None)
    if root is None and st.st_size == 0:
        try:
            has_content = bool(read_head(p, 1))
        except BlockingIOError:
            has_content = True                  # would block: not a plain empty file either
        except OSError:
            has_content = False                 # unreadable: the read below names the reason
        if not has_content:
            return
    elif root is None:
        return
    where = f"under {root}" if root else "of a virtual filesystem"
    size = f"{st.st_size} bytes"
    raise DataError(f"{what} {p} is a kernel pseudo-file {where} (it reports a size of {size}, but its content is "
                    "generated as it is read), not a regular file with a real size",
                    hint=f"copy it to a regular file first (cp {p} copy.txt) and give that")


def check_input_file(path: str | os.PathLike, kind: str = "input file", *, expect: str | None = "auto",
                     max_bytes: int | None = None, directory: bool = False, allow_empty: bool = False) -> str:
    """Check ``path`` before anything opens it; return what it is (a :func:`sniff` name, or ``directory``).

    Args:
        kind: what the file is for, used in messages ("run file", "token file", "model directory").
        expect: the format it must have (a key of :data:`ACCEPTS`), ``"auto"`` to take it from the suffix
            (no check for an unknown suffix), or None for no content check.
        max_bytes: refuse larger files, naming both sizes.
        directory: the path must be a directory (a model folder) instead of a file.
        allow_empty: accept a 0-byte file.

    Raises :class:`~analysis.errors.DataError` with the true reason: not found, a directory given as a
    file (or a file given as a directory), a FIFO / device / socket (never opened), empty, too large, or
    contents of another kind than the name says ("a zip archive, not JSON text (despite the .json name)").
    """
    p = Path(os.fspath(path))
    what = kind[:1].upper() + kind[1:]
    st = _stat(p, what)
    other = _kind_of_mode(st.st_mode)
    if directory:
        if not stat.S_ISDIR(st.st_mode):
            raise DataError(f"{what} {p} is {other or 'a file'}, not a directory")
        return "directory"
    if other is not None:
        hint = "Entroscope reads only regular files; a pipe or device could block forever or never end" \
            if other != "a directory" else None
        raise DataError(f"{what} {p} is {other}, not a regular file", hint=hint)
    _refuse_pseudo_file(p, st, what)
    if st.st_size == 0 and not allow_empty:
        raise DataError(f"{what} {p.name} is empty (0 bytes)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DataError(f"{what} {p.name} is {st.st_size / 2**20:.1f} MB; the limit for a {kind} is "
                        f"{max_bytes / 2**20:.0f} MB")
    fmt = SUFFIX_FORMAT.get(p.suffix.lower()) if expect == "auto" else expect
    try:
        head = read_head(p)
    except PermissionError:
        raise DataError(f"{what} {p} cannot be read: permission denied") from None
    except OSError as exc:
        raise DataError(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    found = sniff(head)
    if fmt is None or fmt not in ACCEPTS or found in ACCEPTS[fmt]:
        return found
    want = _FORMAT_NAME[fmt]
    named = f" (despite its {p.suffix} name)" if p.suffix else ""
    if found in ARCHIVES:
        raise DataError(f"{what} {p.name} is a {found} archive, not {want}{named}",
                        hint="extract it first and give the file inside")
    if found == "binary" and fmt in ("text", "json", "csv"):
        raise DataError(f"{what} {p.name} looks like a binary file (it contains NUL or control bytes), not {want}{named}")
    if found in ("text", "binary"):
        raise DataError(f"{what} {p.name} is {'text' if found == 'text' else 'binary data'}, not {want}{named}")
    raise DataError(f"{what} {p.name} is a {found} file, not {want}{named}")
