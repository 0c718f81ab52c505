"""The inside half of :mod:`analysis.tasks.sandbox`: run as a script (``python -I -S -B jail.py CONFIG``) by
``unshare`` as PID 1 of fresh mount, network, PID, IPC and UTS namespaces. Standard library only, single
threaded, never imported by the rest of the package.

In order: read the program from stdin; mount a size-capped tmpfs on the work folder; (as real root) expose
the interpreter to an unprivileged uid by covering its non-traversable ancestors (e.g. ``/root``) with a
tmpfs holding only a read-only bind of the interpreter's prefix; write ``main.py``; set the resource limits;
(as real root) drop to the run's own unprivileged uid/gid; ``PR_SET_NO_NEW_PRIVS``; a Landlock ruleset
(read/execute: the interpreter and the system libraries; read/write: the work folder only; no TCP bind or
connect; no signals or abstract unix sockets outside the sandbox); report the layers on the status pipe;
fork the program (``python -I -S -B main.py``) and wait for it, reaping orphans. When this process exits,
the kernel kills everything left in the PID namespace.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

# Landlock (include/uapi/linux/landlock.h); syscall numbers are the same on every architecture
_CREATE, _ADD, _RESTRICT = 444, 445, 446
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_ALL = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)   # + TRUNCATE, IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2
PR_SET_NO_NEW_PRIVS = 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: not available)."""
    ret = _libc.syscall(_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def _enc(s):
    return None if s is None else str(s).encode()


def _mount(src, target, fstype, flags, data=None):
    enc = _enc
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def expose(prefix: str, stage: str) -> str | None:
    """Make ``prefix`` (read-only) reachable by any uid: the first ancestor that is not world-traversable is
    covered by a tmpfs that holds only the path down to ``prefix``, bound read-only. Returns what was covered."""
    parts = prefix.strip("/").split("/")
    for i in range(1, len(parts)):
        anc = "/" + "/".join(parts[:i])
        if os.stat(anc).st_mode & 0o001:
            continue
        os.mkdir(stage, 0o700)
        _mount(prefix, stage, None, MS_BIND | MS_REC)
        _mount("tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        os.makedirs(prefix, 0o755)
        _mount(stage, prefix, None, MS_BIND | MS_REC)
        _mount(None, prefix, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        _check(_libc.umount2(stage.encode(), MNT_DETACH), "umount stage")
        os.rmdir(stage)
        return anc
    return None


def landlock(abi: int, read: list[str], read_files: list[str], write: list[str]) -> dict:
    """Restrict this process (and its future children) for good; returns what is handled."""
    fs_all = FS_ALL[min(abi, 5)]
    attr = _RulesetAttr(fs=fs_all, net=NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        scoped=SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    rs = _check(_libc.syscall(_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
                "landlock_create_ruleset")
    file_rights = FS_FILE_RIGHTS & fs_all
    rules = [(p, FS_EXECUTE | FS_READ_FILE | FS_READ_DIR) for p in read] + \
            [(p, FS_READ_FILE | FS_WRITE_FILE) for p in read_files] + [(p, fs_all) for p in write]
    for path, rights in rules:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            allowed = rights if os.path.isdir(path) else rights & file_rights
            rule = _PathBeneath(allowed=allowed, fd=fd)
            _check(_libc.syscall(_ADD, ctypes.c_int(rs), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)),
                   f"landlock_add_rule {path}")
        finally:
            os.close(fd)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(_libc.syscall(_RESTRICT, ctypes.c_int(rs), ctypes.c_uint32(0)), "landlock_restrict_self")
    os.close(rs)
    return {"abi": abi, "fs": True, "tcp": abi >= 4, "scoped": abi >= 6}


def set_limits(lim: dict) -> None:
    cpu = int(lim["cpu_s"])
    for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, lim["memory"], lim["memory"]),
                            (resource.RLIMIT_FSIZE, lim["file_bytes"], lim["file_bytes"]),
                            (resource.RLIMIT_NOFILE, lim["open_files"], lim["open_files"]),
                            (resource.RLIMIT_NPROC, lim["processes"], lim["processes"]),
                            (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_MEMLOCK, 0, 0),
                            (resource.RLIMIT_MSGQUEUE, 0, 0)):
        resource.setrlimit(res, (soft, hard))


def main() -> int:
    cfg = json.loads(sys.argv[1])
    status = os.fdopen(cfg["status_fd"], "w")
    layers = {"pid1": os.getpid() == 1}
    try:
        layers["pidns"] = os.readlink("/proc/self/ns/pid")  # for the parent's leftover scan
        source = sys.stdin.buffer.read()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        work, lim = cfg["workdir"], cfg["limits"]
        _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={lim['disk_bytes']},nr_inodes={lim['inodes']},mode=0700")
        layers["tmpfs"] = lim["disk_bytes"]
        uid = cfg.get("uid")
        if uid is not None:
            layers["covered"] = expose(cfg["prefix"], os.path.join(work, ".stage"))
        path = os.path.join(work, "main.py")
        with open(path, "wb") as fh:
            fh.write(source)
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(path, uid, uid)
        os.chdir(work)
        set_limits(lim)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        layers["uid"] = os.getuid()
        abi = landlock_abi()
        if abi < 1:
            raise OSError("Landlock is not available in this kernel")
        layers["landlock"] = landlock(abi, cfg["read"], cfg["read_files"], [work])
    except OSError as exc:
        status.write(json.dumps({"error": str(exc), "layers": layers}) + "\n")
        status.close()
        return 125
    status.write(json.dumps({"layers": layers}) + "\n")
    status.close()
    child = os.fork()
    if child == 0:
        try:
            os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-B", "main.py"], cfg["env"])
        finally:
            os._exit(126)
    while True:  # PID 1: reap orphans until the program itself ends
        pid, st = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(st)
            return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
