"""Run untrusted (model-written) Python contained: the one place every code-executing task goes through.

Each program runs as ``unshare [--user --map-root-user] --mount --net --pid --ipc --uts --fork --kill-child
python -I -S -B jail.py`` (see :mod:`analysis.tasks.jail` for the inside), started in a new session
(its own process group), with no ``preexec_fn`` (the caller may hold torch threads). Layers and what each
guarantees:

* **network**: a fresh network namespace (no interface but a down loopback: nothing, not even the
  host's 127.0.0.1, is reachable) and, with Landlock ABI ≥ 4, no TCP bind/connect at all.
* **files**: Landlock (kernel ≥ 5.13, ABI ≥ 1 required): read/execute only beneath the interpreter's prefix
  and the system library folders, read/write only beneath the work folder; every other open, create,
  rename, link or delete is refused by the kernel for the program and all its children, for good. As
  real root the program also runs as its own unprivileged uid/gid (no capabilities) and the
  non-traversable ancestors of the interpreter (e.g. ``/root``) are covered by an empty tmpfs.
* **work folder**: a fresh tmpfs of :attr:`Limits.disk_bytes` / :attr:`Limits.inodes` mounted on a fresh
  temporary folder inside the private mount namespace; it vanishes with the namespace and the (empty)
  folder is removed afterwards. ``RLIMIT_FSIZE`` caps any one file (also stdout/stderr, which go to a file).
* **processes**: ``RLIMIT_NPROC`` counted for the run's own uid (real root: a fresh uid per run; otherwise
  per user namespace, kernel ≥ 5.14), ``RLIMIT_AS`` per process, ``RLIMIT_CPU`` per process, ``RLIMIT_NOFILE``.
  A fresh PID namespace: when its init (the jail) ends, the kernel kills everything in it, including
  double-forked ``setsid`` daemons; at the wall-clock limit the whole process group is SIGKILLed
  (``os.killpg``) and the run then checks that no process of its session or PID namespace remains.

Nothing is silently skipped: :func:`require` runs a probe program that checks each layer (no file outside,
no socket, the process cap holds, PID 1) once per process and raises :class:`SandboxUnavailable` with the
reason and a hint when the machine can't provide them.
"""
from __future__ import annotations

import functools
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.errors import EntroscopeError

JAIL = Path(__file__).with_name("jail.py")
#: system library folders the interpreter may read (those that exist)
LIB_DIRS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
READ_FILES = ("/etc/ld.so.cache", "/dev/null", "/dev/urandom")
#: a fresh uid per run when started as root (never one of /etc/passwd's ranges)
UID_BASE, UID_SPAN = 2_000_000_000, 100_000_000
STARTUP_S = 30.0  # unshare + the jail's start; the program's own clock starts when the jail reports
OUTPUT_TAIL = 4000


class SandboxUnavailable(EntroscopeError):
    """The machine can't contain model-written code; code-executing tasks are refused."""


class SandboxError(EntroscopeError):
    """Containment failed while running (setup error, or a process survived the run)."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits. ``timeout_s``: wall clock for the program; CPU per process is ``ceil(timeout_s)``."""

    timeout_s: float = 3.0
    memory: int = 1 << 30          # RLIMIT_AS per process (bytes)
    processes: int = 16            # RLIMIT_NPROC for the run's uid: processes + threads, the jail included
    file_bytes: int = 16 << 20     # RLIMIT_FSIZE: the largest file (and stdout/stderr) it may write
    open_files: int = 64           # RLIMIT_NOFILE
    disk_bytes: int = 32 << 20     # size of the tmpfs work folder
    inodes: int = 1024             # files + folders in the work folder

    def jail(self) -> dict:
        return {**asdict(self), "cpu_s": max(1, math.ceil(self.timeout_s))}


@dataclass
class SandboxResult:
    returncode: int | None     # the program's exit code (128 + signal when a signal ended it); None: killed
    timed_out: bool
    output: str                # the tail of stdout + stderr
    layers: dict

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _python() -> str:
    return os.path.realpath(sys.executable)


def _prefix(python: str) -> str:
    """The interpreter's installation prefix (its executable, libpython and standard library live beneath)."""
    base = os.path.realpath(sys.base_prefix)
    return base if python.startswith(base + os.sep) else os.path.dirname(os.path.dirname(python))


def _traversable(path: str) -> bool:
    p = Path(path)
    return all(os.stat(a).st_mode & 0o001 for a in [p, *p.parents])


def _command(as_root: bool) -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SandboxUnavailable("code execution needs `unshare` (util-linux) to create namespaces, and it is not "
                                 "installed", hint="install util-linux (apt-get install util-linux)")
    user = [] if as_root else ["--user", "--map-root-user"]
    return [unshare, *user, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]


def run_python(source: str, limits: Limits = Limits()) -> SandboxResult:
    """Run ``source`` as ``main.py`` in a fresh sandbox; the machine is left as it was (verified)."""
    as_root = os.geteuid() == 0
    python = _python()
    root = tempfile.gettempdir()
    if as_root and not _traversable(root):
        root = "/tmp"
    work = tempfile.mkdtemp(prefix="entroscope-sandbox-", dir=root)
    out_dir = tempfile.mkdtemp(prefix="entroscope-sandbox-out-")
    r, w = os.pipe()
    try:
        cfg = {"workdir": work, "limits": limits.jail(), "python": python, "prefix": _prefix(python),
               "uid": UID_BASE + uuid.uuid4().int % UID_SPAN if as_root else None, "status_fd": w,
               "read": [_prefix(python), *LIB_DIRS], "read_files": list(READ_FILES),
               "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "PYTHONHASHSEED": "0",
                       "OMP_NUM_THREADS": "1"}}
        out_path = os.path.join(out_dir, "output")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen([*_command(as_root), python, "-I", "-S", "-B", str(JAIL), json.dumps(cfg)],
                                    stdin=subprocess.PIPE, stdout=out, stderr=out, cwd=out_dir, pass_fds=(w,),
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                                    start_new_session=True)
        os.close(w)
        w = -1
        timed_out = started = False
        try:
            try:
                proc.stdin.write(source.encode("utf-8"))
                proc.stdin.close()
            except BrokenPipeError:
                pass
            status_text = _read_status(r, STARTUP_S)  # the jail reports when the program starts
            started = status_text is not None
            if started:
                proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
        os.close(r)
        r = -1
        status = json.loads(status_text or "{}")
        _ensure_gone(proc.pid, (status.get("layers") or {}).get("pidns"))
        output = _tail(out_path)
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(out_dir, ignore_errors=True)
        _remove_workdir(work)
    if not started:
        raise SandboxError(f"the code sandbox did not start within {STARTUP_S:.0f} s",
                           hint="the machine may be overloaded; see docs/tasks.md (code execution)")
    if "error" in status or not status:
        raise SandboxError(f"the code sandbox could not be set up: {status.get('error') or output[-300:] or 'no status'}",
                           hint="see docs/tasks.md (code execution) for what the sandbox needs from the OS")
    code = proc.returncode
    code = 128 - code if code < 0 else code
    return SandboxResult(returncode=None if timed_out else code, timed_out=timed_out, output=output,
                         layers=status.get("layers") or {})


def _read_status(fd: int, wait_s: float) -> str | None:
    """What the jail writes on the status pipe before it starts the program (None: nothing in time)."""
    chunks, deadline = [], time.monotonic() + wait_s
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        chunks.append(chunk)
        if not chunk or chunk.endswith(b"\n"):  # one line, or the jail died (EOF; unshare holds a copy otherwise)
            return b"".join(chunks).decode("utf-8", "replace")


def _tail(path: str) -> str:
    with open(path, "rb") as fh:
        fh.seek(max(0, os.path.getsize(path) - OUTPUT_TAIL))
        return fh.read().decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _remove_workdir(work: str) -> None:
    """The tmpfs lived in the sandbox's mount namespace; the host folder is empty (a leftover means a bug)."""
    left = os.listdir(work) if os.path.isdir(work) else []
    shutil.rmtree(work, ignore_errors=True)
    if left:
        raise SandboxError(f"the sandbox work folder {work} was not empty afterwards: {left[:5]}")


def _procs():
    """``(pid, session id, state, pid namespace)`` of every process visible in /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            ns = os.readlink(f"/proc/{entry.name}/ns/pid")
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
        yield int(entry.name), int(fields[3]), fields[0].decode(), ns


def leftovers(sid: int, pidns: str | None) -> list[int]:
    """Live processes of the run's session or PID namespace (zombies excluded: they hold nothing)."""
    return [pid for pid, s, state, ns in _procs() if state != "Z" and (s == sid or (pidns and ns == pidns))]


def _ensure_gone(sid: int, pidns: str | None, wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        left = leftovers(sid, pidns)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise SandboxError(f"sandboxed processes survived the run: {left[:10]}",
                               hint="this should not happen; please report it with your kernel version")
        time.sleep(0.05)


# ---- availability -------------------------------------------------------------------------------------------

_PROBE = r"""
import errno, json, os, socket, sys
res = {"pid1_child": os.getppid() == 1}
def denied(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0
res["read_outside"] = denied(lambda: open("/etc/passwd").read())
res["write_outside"] = denied(lambda: open("/tmp/entroscope-probe-%d" % os.getpid(), "w").write("x"))
def connect():
    s = socket.socket(); s.settimeout(1); s.connect(("127.0.0.1", 9))
res["connect"] = denied(connect)
open("inside.txt", "w").write("ok")
pids = []
for _ in range(LIMIT + 4):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        import time; time.sleep(5); os._exit(0)
    pids.append(pid)
res["forks"] = len(pids)
print(json.dumps(res))
"""


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str | None, dict]:
    if not sys.platform.startswith("linux"):
        return f"code execution is contained with Linux namespaces and Landlock; this is {sys.platform}", {}
    lim = Limits(timeout_s=5.0, processes=8)
    try:
        res = run_python(_PROBE.replace("LIMIT", str(lim.processes)), lim)
    except SandboxUnavailable as exc:
        return exc.message, {}
    except SandboxError as exc:
        return _explain(exc.message), {}
    try:
        got = json.loads(res.output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return _explain(f"the probe program failed: {res.output.strip()[-300:]}"), {}
    checks = {"files outside the work folder are unreadable": got.get("read_outside"),
              "files outside the work folder are unwritable": got.get("write_outside"),
              "no network": got.get("connect")}
    bad = [name for name, err in checks.items() if not err]
    if got.get("forks", 99) >= lim.processes:
        bad.append(f"the process cap holds (forked {got.get('forks')} of at most {lim.processes - 2})")
    if not got.get("pid1_child"):
        bad.append("a fresh PID namespace")
    if bad:
        return f"the code sandbox does not hold here: not {'; not '.join(bad)}", {}
    return None, res.layers


def _explain(msg: str) -> str:
    low = msg.lower()
    if "operation not permitted" in low and os.geteuid() != 0:
        return (f"{msg} — unprivileged user namespaces look disabled (user.max_user_namespaces=0 or "
                "kernel.apparmor_restrict_unprivileged_userns=1)")
    if "landlock" in low:
        return f"{msg} — the kernel needs CONFIG_SECURITY_LANDLOCK and 'landlock' in the lsm= boot list (Linux ≥ 5.13)"
    return msg


def availability() -> str | None:
    """None when code can run contained here, else why not (the probe runs once per process)."""
    return _probe()[0]


def require() -> dict:
    """The sandbox's layers; raises :class:`SandboxUnavailable` (with the reason) when it can't hold."""
    reason, layers = _probe()
    if reason:
        raise SandboxUnavailable(f"refusing to run model-written code: {reason}",
                                 hint="code-executing tasks (humaneval) need Linux with Landlock, util-linux "
                                      "`unshare` and either root or unprivileged user namespaces; see docs/tasks.md")
    return layers
