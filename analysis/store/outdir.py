"""Writing outputs safely: checkpoint directories only inside a chosen root, never over a folder this
project did not write, atomically, and never two writers at once.

* **Ownership marker.** Every directory written here holds :data:`OWNER_MARKER` (a small JSON with a
  unique write id). ``overwrite`` replaces only a directory carrying it (or an empty one); a folder
  that merely looks like a checkpoint (``config.json``) is refused.
* **Checked before anything is created.** :func:`check_out_dir` resolves the final path (symlinks and
  ``..`` included), refuses it outside ``root``, refuses the root itself, a filesystem root, the home
  folder or a folder holding the working directory, and checks the nearest existing parent is a
  writable directory on a writable filesystem and that every name fits — all before any folder is made.
* **Atomic, locked replace.** :func:`atomic_dir` yields a temporary sibling folder; every file (the
  marker and manifests included) is written there. The rename into place happens under a
  :mod:`filelock` lock, after re-checking that the target is still what it was when the command
  started; if another process wrote it meanwhile, this result is kept beside it under a name given in
  the error, so nothing computed is lost and there are never two successes.
* **Crash clean-up.** Temporary folders carry the writer's process id; one left by a dead process is
  removed by the next write in the same parent folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from analysis.errors import SaveError

#: file written into every directory this project creates; ``overwrite`` replaces only such folders
OWNER_MARKER = ".entroscope-output.json"
#: kept for callers that imported it: files of a checkpoint (no longer enough to allow ``overwrite``)
CHECKPOINT_MARKERS = ("config.json", "entroscope-plan.json", "entroscope-channels.json")
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
LOCK_TIMEOUT_S = 600.0
_ABSENT = "absent"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _name_max(folder: Path) -> tuple[int, int]:
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def _check_writable_location(target: Path, shown: Path, what: str) -> None:
    """The nearest existing ancestor of ``target`` is a writable directory, and every name fits."""
    anc = _nearest_existing(target.parent)
    if not anc.is_dir():
        raise SaveError(f"Cannot create {shown.parent}: {anc} is a file, not a folder")
    name_max, path_max = _name_max(anc)
    for part in target.relative_to(anc).parts:
        if len(part.encode()) > name_max - 24:         # room for the temporary folder's suffix
            raise SaveError(f"{what} name {part[:40]}… is too long ({len(part.encode())} bytes; this filesystem "
                            f"allows {name_max})", hint="choose a shorter name")
    if len(str(target).encode()) > path_max - 32:
        raise SaveError(f"{what} path is too long ({len(str(target).encode())} bytes)", hint="choose a shorter path")
    try:
        if os.statvfs(anc).f_flag & os.ST_RDONLY:
            raise SaveError(f"Cannot write {shown}: {anc} is on a read-only filesystem")
    except (OSError, AttributeError):
        pass
    if not os.access(anc, os.W_OK | os.X_OK):
        raise SaveError(f"Cannot write {shown}: folder {anc} is not writable")


def _resolve(out: str | os.PathLike) -> Path:
    p = Path(out).expanduser()
    if not str(p).strip():
        raise SaveError("No output directory given")
    return Path(os.path.abspath(p)).resolve()          # symlinks and '..' resolved: the real target


def _protected_paths() -> list[Path]:
    return [Path.home().resolve()]


def marker_state(out: Path) -> str:
    """What is at ``out`` now: ``"absent"``, our write id, or ``"foreign"`` / ``"empty"`` / ``"file"``."""
    if not (out.exists() or out.is_symlink()):
        return _ABSENT
    if out.is_symlink() or not out.is_dir():
        return "file"
    try:
        return "entroscope:" + str(json.loads((out / OWNER_MARKER).read_text()).get("write_id"))
    except (OSError, ValueError, AttributeError):
        return "empty" if not any(out.iterdir()) else "foreign"


def check_out_dir(out: str | os.PathLike, overwrite: bool, root: str | os.PathLike | None) -> str:
    """Raise :class:`SaveError` unless ``out`` may be written; creates nothing. Call it before any slow
    work. Returns the state of ``out`` now (pass it to :func:`atomic_dir` as ``expected``)."""
    given, real = _check_target(out, root)
    state = marker_state(real)
    if state != _ABSENT:
        if not overwrite:
            raise SaveError(f"Output directory {given} already exists", hint="use --overwrite to replace it")
        if state == "file":
            raise SaveError(f"{given} exists and is not a directory; refusing to replace it")
        if state == "foreign":
            raise SaveError(f"{given} is a non-empty directory that Entroscope did not write (no {OWNER_MARKER}); "
                            "refusing to replace it", hint="choose another folder, or delete it yourself")
    _check_writable_location(real, given, "Output directory")
    return state


def _check_target(out, root) -> tuple[Path, Path]:
    """(as given, resolved) after refusing a target outside ``root`` or a root/home/working folder."""
    given = Path(out).expanduser()
    real = _resolve(out)
    if root is not None:
        root_p = _resolve(root)
        if real == root_p or not real.is_relative_to(root_p):
            raise SaveError(f"Output directory {given} is outside the allowed folder {root_p}",
                            hint="give a folder name inside it")
    if real == Path(real.anchor) or real in _protected_paths() or Path.cwd().resolve().is_relative_to(real):
        raise SaveError(f"Refusing to write a checkpoint at {given}: it is a filesystem root, the home folder or "
                        "holds the working directory", hint="give a new folder name")
    return given, real


def _clean_stale(parent: Path) -> list[str]:
    """Remove temporary folders in ``parent`` left by processes that no longer run; returns their names."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if m and e.is_dir() and not e.is_symlink() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(e, ignore_errors=True)
            removed.append(e.name)
    return removed


def _lock(real: Path):
    from filelock import FileLock

    return FileLock(str(real.parent / f".{real.name}.lock"), timeout=LOCK_TIMEOUT_S)


def write_marker(folder: Path, kind: str = "checkpoint") -> str:
    write_id = uuid.uuid4().hex
    (folder / OWNER_MARKER).write_text(json.dumps({"tool": "entroscope", "kind": kind, "write_id": write_id,
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                   "pid": os.getpid()}))
    return write_id


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False, root: str | os.PathLike | None = None,
               expected: str | None = None, kind: str = "checkpoint") -> Iterator[Path]:
    """Yield a temporary sibling folder to write into (our marker already in it); on success it replaces
    ``out`` under a lock. ``expected``: the state :func:`check_out_dir` returned when the command started
    (default: the state now); if ``out`` changed since, the result is kept aside and :class:`SaveError`
    names where."""
    given = Path(out).expanduser()
    if expected is None:
        expected = check_out_dir(given, overwrite, root)
    else:                 # checked when the command started; a change since is handled at the commit below
        _check_target(given, root)
    real = _resolve(given)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(f"Cannot create {given.parent}: {exc.strerror or exc}") from None
    _clean_stale(real.parent)
    tmp = real.with_name(f".{real.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        write_marker(tmp, kind)
        yield tmp
        with _lock(real):
            current = marker_state(real)
            if current != expected and not (expected == "empty" and current == _ABSENT):
                kept = real.with_name(f"{real.name}.unsaved-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}")
                os.replace(tmp, kept)
                raise SaveError(f"{given} was written by another process while this one ran; nothing was replaced. "
                                f"This result is kept at {kept}", hint="compare the two and rename the one you want")
            old = None
            if current != _ABSENT:
                old = real.with_name(f".{real.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.replace(real, old)
            os.replace(tmp, real)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"Could not write {given}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- single output files (run.json, plan.json, eval.json, CSV, YAML) ---------------------------------------
#: state of each output file when its command started (see check_out_file / write_text_atomic)
_FILE_EXPECTED: dict[str, object] = {}


def file_state(p: Path):
    try:
        st = p.stat()
    except FileNotFoundError:
        return _ABSENT
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def check_out_file(path: str | os.PathLike | None, what: str = "Output file") -> None:
    """Refuse, before any slow work, an output file that cannot be written: a directory, a missing
    parent folder, a read-only place, a name that is too long. Creates nothing. Records the file's
    state, so that :func:`write_text_atomic` refuses to replace it if another process wrote it meanwhile."""
    if path is None:
        return
    given = Path(path).expanduser()
    if not str(path).strip():
        raise SaveError(f"{what}: empty path")
    real = Path(os.path.abspath(given))
    if real.is_dir():
        raise SaveError(f"{what} {given} is a directory", hint="give a file name, e.g. out/run.json")
    if not real.parent.is_dir():
        raise SaveError(f"{what} {given}: folder {given.parent} does not exist", hint="create it first")
    _check_writable_location(real, given, what)
    if real.exists() and not os.access(real, os.W_OK):
        raise SaveError(f"{what} {given} exists and is not writable")
    _FILE_EXPECTED[str(real)] = file_state(real)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename (never a half-written file). If
    :func:`check_out_file` saw the file at the start of this command and another process has written it
    since, nothing is replaced: this text is kept beside it and :class:`SaveError` says where."""
    p = Path(path).expanduser()
    expected = _FILE_EXPECTED.pop(str(Path(os.path.abspath(p))), None)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=str(p.parent) or ".")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            if expected is None:
                os.replace(tmp, p)
            else:
                with _lock(Path(os.path.abspath(p))):
                    if file_state(p) != expected:
                        kept = p.with_name(f"{p.stem}.unsaved-{time.strftime('%Y%m%d-%H%M%S')}-"
                                           f"{uuid.uuid4().hex[:4]}{p.suffix}")
                        os.replace(tmp, kept)
                        raise SaveError(f"{p} was written by another process while this one ran; it was not "
                                        f"replaced. This result is kept at {kept}")
                    os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise SaveError(f"Cannot write {p}: {exc.strerror or exc}") from None
    return p
