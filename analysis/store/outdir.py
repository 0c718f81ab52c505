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
* **Never non-finite weights.** :func:`atomic_dir` refuses a checkpoint whose weights hold NaN/inf.
* **Single files** (run/plan/eval JSON, CSV, YAML, figures) follow the same rules (see the section below):
  ownership by a per-folder registry of what we wrote (:data:`REGISTRY`, name → sha256), special files
  (FIFO, device, socket) refused and never opened, mode 0o666 & ~umask, one lock file per folder
  (:data:`LOCK_FILE`), and :func:`check_outputs` refuses an output that is one of the command's inputs or
  two outputs naming one path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import stat
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
_PART_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.part$")
#: one lock file per output folder (all writes into a folder take it for the final rename)
LOCK_FILE = ".entroscope.lock"
#: per-folder record of the single files Entroscope wrote there: name → sha256 and size of what was written
REGISTRY = ".entroscope-outputs.json"
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
        m = _PART_RE.match(e.name)
        if m and e.is_file() and not e.is_symlink() and not _pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                e.unlink()
                removed.append(e.name)
    return removed


def _lock(real: Path):
    """The lock of ``real``'s folder: one lock file per folder (:data:`LOCK_FILE`), never one per output."""
    from filelock import FileLock

    return FileLock(str(real.parent / LOCK_FILE), timeout=LOCK_TIMEOUT_S)


def _safetensors_reason(exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"code: (\d+)", text)
    if m:
        return describe_os_error(OSError(int(m[1]), os.strerror(int(m[1]))))
    return text.splitlines()[0][:200] if text else "the safetensors writer failed"


def check_finite_weights(folder: Path, shown: Path | None = None) -> None:
    """Refuse a checkpoint whose safetensors weights hold NaN or ±inf (named, with the count), before it is
    moved into place. Reads the files just written (memory-mapped), tensor by tensor."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return
    import torch
    from safetensors import safe_open

    bad: list[str] = []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(name)
    if bad:
        raise SaveError(f"Refusing to save {shown or folder}: {len(bad)} weight tensor(s) hold NaN or infinite "
                        f"values ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})",
                        hint="the model or its healing diverged; try a smaller --heal-lr, or fp32")


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
        check_finite_weights(tmp, given)             # never a checkpoint with NaN/inf weights
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
        raise SaveError(f"Could not write {given}: {describe_os_error(exc)}") from None
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if type(exc).__name__ == "SafetensorError":      # safetensors reports disk full etc. as its own error
            raise SaveError(f"Could not write the weights of {given}: {_safetensors_reason(exc)}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- single output files (run.json, plan.json, eval.json, CSV, YAML, figures) -------------------------------
#
# The same rules as checkpoint folders, in one place (every file output of the CLI, the library and the app
# goes through check_out_file / write_bytes_atomic):
# * a file is Entroscope's when the folder's REGISTRY lists its name with the sha256 of its current content
#   (recorded at every write; a file the user edited since is theirs again). Ours is replaced; any other
#   existing file only with ``overwrite``;
# * anything that is not a regular file (folder, FIFO, device, socket, a symlink to one, a broken symlink)
#   is refused and never opened: the new content is written to a temporary file and renamed into place;
# * files are created with mode 0o666 & ~umask (as ``open(..., "w")`` would), not mkstemp's 0600;
# * the rename happens under the folder's one lock file; temporaries of dead writers are cleaned.


@dataclasses.dataclass
class _Checked:
    state: object            # file_state when the command started
    overwrite: bool          # the command's --overwrite


#: state of each output file when its command started (see check_out_file / write_bytes_atomic)
_FILE_EXPECTED: dict[str, object] = {}


def file_state(p: Path):
    try:
        st = p.stat()
    except FileNotFoundError:
        return _ABSENT
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def path_kind(p: str | os.PathLike) -> str:
    """What is at ``p`` (symlinks followed): ``absent``, ``file``, ``folder``, ``FIFO``, ``character device``,
    ``block device``, ``socket``, ``broken symbolic link`` or ``special file``. Never opens it."""
    p = Path(p)
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):       # (a parent that is a file is reported by the caller)
        return "broken symbolic link" if p.is_symlink() else _ABSENT
    except OSError as exc:
        return f"path that cannot be examined ({describe_os_error(exc)})"
    m = st.st_mode
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(m):
            return name
    return "special file"


def _real_file(path: str | os.PathLike) -> tuple[Path, Path]:
    """(as given, the real file it names): ``~`` expanded, ``..`` and symlinks resolved."""
    given = Path(path).expanduser()
    return given, Path(os.path.realpath(os.path.abspath(given)))


def _sha256(p: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _registry(folder: Path) -> dict:
    try:
        data = json.loads((folder / REGISTRY).read_text())
        files = data.get("files") if isinstance(data, dict) else None
        return dict(files) if isinstance(files, dict) else {}
    except (OSError, ValueError):
        return {}


def is_ours(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file Entroscope wrote and nobody changed since (see :data:`REGISTRY`)."""
    _, real = _real_file(path)
    if path_kind(real) != "file":
        return False
    entry = _registry(real.parent).get(real.name)
    if not isinstance(entry, dict):
        return False
    try:
        if real.stat().st_size != entry.get("size"):
            return False
    except OSError:
        return False
    return _sha256(real) == entry.get("sha256")


def _create_mode() -> int:
    return 0o666                 # os.open applies the umask: the same mode as open(path, "w")


def _write_tmp(folder: Path, name: str, data: bytes) -> Path:
    """A new temporary file in ``folder`` holding ``data`` (mode 0o666 & ~umask); never an existing path."""
    tmp = folder / f".{name[:150]}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _create_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _record(real: Path, data: bytes) -> None:
    """Add ``real`` to its folder's registry (call under the folder lock); entries of vanished files are dropped."""
    folder = real.parent
    files = {n: e for n, e in _registry(folder).items() if (folder / n).is_file()}
    files[real.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = json.dumps({"tool": "entroscope", "about": "files Entroscope wrote in this folder (see docs/reliability.md)",
                       "files": files}, indent=1).encode()
    tmp = _write_tmp(folder, REGISTRY, text)
    os.replace(tmp, folder / REGISTRY)


def _refuse_kind(given: Path, kind: str, what: str) -> None:
    if kind == "folder":
        raise SaveError(f"{what} {given} is a directory", hint="give a file name, e.g. out/run.json")
    if kind not in (_ABSENT, "file"):
        raise SaveError(f"{what} {given} is a {kind}, not a regular file; refusing to write to it or replace it",
                        hint="give the name of a new or regular file")


def check_out_file(path: str | os.PathLike | None, what: str = "Output file", overwrite: bool | None = None) -> None:
    """Refuse, before any slow work, an output file that cannot or must not be written: a directory, a FIFO,
    a device, a socket, a broken symlink, an existing file Entroscope did not write (unless ``overwrite``), a
    missing parent folder, a read-only place, a name that is too long. Creates nothing. Records the file's
    state (and the ``overwrite`` decision) so that :func:`write_bytes_atomic` refuses to replace it if
    another process wrote it meanwhile. ``overwrite=None``: the decision an earlier check of this path
    recorded (the CLI checks every output once, in :func:`check_outputs`), else False."""
    if path is None:
        return
    if not str(path).strip():
        raise SaveError(f"{what}: empty path")
    given, real = _real_file(path)
    prev = _FILE_EXPECTED.get(str(real))
    if overwrite is None:
        overwrite = prev.overwrite if isinstance(prev, _Checked) else False
    kind = path_kind(given)
    _refuse_kind(given, kind, what)
    if not real.parent.is_dir():
        raise SaveError(f"{what} {given}: folder {given.parent} does not exist", hint="create it first")
    _check_writable_location(real, given, what)
    if kind == "file":
        if not os.access(real, os.W_OK):
            raise SaveError(f"{what} {given} exists and is not writable")
        if not overwrite and not is_ours(real):
            raise SaveError(f"{what} {given} already exists and Entroscope did not write it (or it was changed "
                            "since); refusing to replace it", hint="use --overwrite to replace it, or another name")
    _FILE_EXPECTED[str(real)] = _Checked(file_state(real), bool(overwrite))


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool | None = None) -> Path:
    """:func:`write_bytes_atomic` of ``text`` (UTF-8)."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, overwrite: bool | None = None) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename (never a half-written file, never an
    open() of the target). The rules of :func:`check_out_file` apply again at the rename, under the folder's
    lock. If :func:`check_out_file` saw the file at the start of this command and another process has
    written it since, nothing is replaced: this result is kept beside it and :class:`SaveError` says where.
    ``overwrite=None``: the decision recorded by :func:`check_out_file`, else False. Returns the real path."""
    given, real = _real_file(path)
    checked = _FILE_EXPECTED.pop(str(real), None)
    if overwrite is None:
        overwrite = checked.overwrite if isinstance(checked, _Checked) else False
    _refuse_kind(given, path_kind(given), "Output file")
    try:
        _clean_stale(real.parent)
        tmp = _write_tmp(real.parent, real.name, data)
        try:
            with _lock(real):
                kind = path_kind(given)
                _refuse_kind(given, kind, "Output file")          # a FIFO made meanwhile is never replaced
                if isinstance(checked, _Checked) and file_state(real) != checked.state:
                    kept = real.with_name(f"{real.stem}.unsaved-{time.strftime('%Y%m%d-%H%M%S')}-"
                                          f"{uuid.uuid4().hex[:4]}{real.suffix}")
                    os.replace(tmp, kept)
                    raise SaveError(f"{given} was written by another process while this one ran; it was not "
                                    f"replaced. This result is kept at {kept}")
                if not isinstance(checked, _Checked) and kind == "file" and not overwrite and not is_ours(real):
                    raise SaveError(f"Output file {given} already exists and Entroscope did not write it; refusing "
                                    "to replace it", hint="use --overwrite to replace it, or another name")
                os.replace(tmp, real)
                with contextlib.suppress(OSError):
                    _record(real, data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise SaveError(f"Cannot write {given}: {describe_os_error(exc)}") from None
    return real


def describe_os_error(exc: OSError) -> str:
    """A specific reason for an OSError: disk full, permission, read-only filesystem, … with the path."""
    reasons = {errno.ENOSPC: "no space left on device (the disk is full)", errno.EDQUOT: "the disk quota is exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "the filesystem is read-only", errno.ENAMETOOLONG: "the name is too long",
               errno.ENOENT: "no such file or folder", errno.EISDIR: "it is a directory",
               errno.ENOTDIR: "a part of the path is not a folder", errno.EXDEV: "it crosses filesystems",
               errno.EIO: "input/output error (a failing disk or network filesystem?)",
               errno.EFBIG: "the file is too large for this filesystem", errno.EMFILE: "too many open files"}
    reason = reasons.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename
    return f"{reason} ({name})" if name else reason


# ---- all the outputs of one command, checked together before any work ------------------------------------

@dataclasses.dataclass(frozen=True)
class Output:
    """One output of a command: ``kind`` ``"file"``, ``"checkpoint"`` (a folder that is replaced as a whole)
    or ``"folder"`` (a folder files are written into)."""

    label: str
    path: str
    kind: str = "file"


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: list[Output], inputs: dict[str, str] | None = None, overwrite: bool = False) -> None:
    """Check every output of one command before it starts: each by the rules of its kind (files:
    :func:`check_out_file`; folders: not a file / FIFO / device), then together: no output may be one of the
    command's inputs (or, for a checkpoint folder that is replaced, hold one), and no two outputs may name
    the same path (or one lie inside a checkpoint folder another replaces)."""
    inputs = {k: v for k, v in (inputs or {}).items() if v}
    outs = [(o, *_real_file(o.path)) for o in outputs if o.path is not None]
    for o, given, real in outs:                 # /dev/stdout, /dev/fd/1, /proc/self/fd/…: never an output file
        for special in _SPECIAL_ROOTS:
            if Path(os.path.abspath(given)).is_relative_to(special) or real.is_relative_to(special):
                raise SaveError(f"{o.label} {given} is under {special}, which holds devices and process handles, "
                                "not files; refusing to write there", hint="give the name of a regular file")
    for label, inp in inputs.items():
        _, in_real = _real_file(inp)
        if not (in_real.exists() or Path(inp).expanduser().is_symlink()):
            continue                      # a name, not a path (an embedded model, a built-in domain)
        for o, given, real in outs:
            if _same(real, in_real):
                raise SaveError(f"{o.label} {given} is also this command's input {label} {inp}; writing it would "
                                "destroy the input", hint="write the output under another name")
            if o.kind == "checkpoint" and in_real.is_relative_to(real):
                raise SaveError(f"{o.label} {given} would be replaced, but it holds this command's input {label} "
                                f"{inp}", hint="write the output under another name")
            if in_real.is_dir() and real.is_relative_to(in_real) and (real.exists() or real.is_symlink()):
                raise SaveError(f"{o.label} {given} would replace a file inside this command's input {label} "
                                f"{inp}", hint="write the output outside that folder")
    for i, (a, ga, ra) in enumerate(outs):
        for b, gb, rb in outs[i + 1:]:
            if _same(ra, rb):
                raise SaveError(f"{a.label} and {b.label} both name {ga}; the second would replace the first",
                                hint="give each output its own name")
            for (x, gx, rx), (y, gy, ry) in (((a, ga, ra), (b, gb, rb)), ((b, gb, rb), (a, ga, ra))):
                if x.kind == "checkpoint" and ry.is_relative_to(rx):
                    raise SaveError(f"{y.label} {gy} lies inside {x.label} {gx}, which is replaced as a whole",
                                    hint="write it outside that folder")
    for o, given, real in outs:
        if o.kind == "file":
            check_out_file(o.path, f"{o.label} file", overwrite)
        else:
            kind = path_kind(given)
            if kind not in (_ABSENT, "folder"):
                raise SaveError(f"{o.label} {given} is a {kind}, not a folder; refusing to write there or replace it",
                                hint="give a new folder name")


#: places that hold devices and process handles, never output files
_SPECIAL_ROOTS = tuple(Path(p) for p in ("/dev", "/proc", "/sys") if os.path.isdir(p))


def reset_checks() -> None:
    """Forget the outputs checked by an earlier command in this process (the CLI calls it per command)."""
    _FILE_EXPECTED.clear()


# ---- never report non-finite results ------------------------------------------------------------------------

def non_finite_fields(obj, keys: tuple[str, ...], prefix: str = "") -> list[str]:
    """Dotted names of the ``keys`` (at any depth of dicts) whose value is a non-finite number."""
    import math

    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{prefix}{k}"
            if k in keys and isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
                bad.append(f"{name}={v}")
            elif isinstance(v, dict):
                bad += non_finite_fields(v, keys, name + ".")
    return bad


def check_finite_results(obj: dict, keys: tuple[str, ...], what: str) -> None:
    """Refuse to write or report ``obj`` when one of its result ``keys`` (perplexity, nll, kl, …) is NaN or
    infinite: JSON would silently turn it into null. Raises :class:`SaveError` naming the fields."""
    bad = non_finite_fields(obj, keys)
    if bad:
        raise SaveError(f"Refusing to write {what}: {', '.join(bad[:4])} is not a finite number",
                        hint="the model's outputs overflow or are NaN; try dtype fp32 or a smaller plan")
