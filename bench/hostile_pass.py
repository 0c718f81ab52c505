"""A fresh hostile pass (issue 25, third pass leftovers): command lines and conditions no test names, run against
a tiny checkpoint. Each case is *clean* when the CLI exits 0 with a valid result, or exits 2 (130 for Ctrl-C) with
one specific ``error:`` line — never a traceback, an "internal error", a hang, or something of the user's
replaced. Prints one line per case and the counts ``tried / clean``; exits 1 when a case is not clean.

    python bench/hostile_pass.py            # ~2-4 min on 2 cores (every case is a fresh process)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def cli(args, *, stdin=None, env=None, timeout=240, cwd=None, close_stdout=False):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    for k in [k for k, v in e.items() if v is None]:
        e.pop(k)
    p = subprocess.run([PY, "-m", "analysis", *args], stdin=stdin if stdin is not None else subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL if close_stdout else subprocess.PIPE, stderr=subprocess.PIPE,
                       env=e, timeout=timeout, cwd=cwd or ROOT, text=True)
    return p.returncode, p.stdout or "", p.stderr


def clean(rc, err, ok_codes=(0, 2)) -> bool:
    if "Traceback" in err or "internal error" in err:
        return False
    if rc not in ok_codes:
        return False
    if rc == 2:
        lines = [x for x in err.strip().splitlines() if x.startswith("error:")]
        return len(lines) == 1
    return True


def main() -> int:
    t = Path(tempfile.mkdtemp(prefix="hostile-"))
    from analysis.testing import save_tiny_checkpoint

    ck = str(save_tiny_checkpoint(t / "ck", layers=4))
    ids = t / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    run = t / "run.json"
    rc, _, err = cli(["analyze", "--model", ck, "--tokens", str(ids), "--out", str(run), "--quiet"])
    assert rc == 0, err
    notes = t / "notes.json"
    notes.write_text('{"mine": true}')
    results = []

    def case(name, args, ok_codes=(0, 2), check=None, **kw):
        try:
            rc, out, err = cli(args, **kw)
        except subprocess.TimeoutExpired:
            results.append((name, False, "hang"))
            return
        good = clean(rc, err, ok_codes) and (check is None or check(rc, out, err))
        last = (err.strip().splitlines() or [""])[-1][:150]
        results.append((name, good, f"rc={rc} {last}"))

    sel = ["select", "--run", str(run), "--criterion", "entrodrop", "--k", "1"]
    # 1-4: odd and unicode paths
    case("unicode --out name", [*sel, "--out", str(t / "plän-😀.json")],
         check=lambda rc, o, e: rc == 0 and (t / "plän-😀.json").is_file())
    nl = t / "a\nb.json"
    nl.write_text(run.read_text())
    case("--run name with a newline", ["select", "--run", str(nl), "--criterion", "cosine", "--k", "1"])
    loop = t / "loop.json"
    os.symlink(loop, loop)
    case("--run a symlink loop", ["select", "--run", str(loop), "--k", "1"])
    case("--out 300-char name", [*sel, "--out", str(t / ("x" * 300 + ".json"))])
    # 5-8: truncated and hollow inputs
    tr = t / "trunc.json"
    tr.write_text(run.read_text()[: len(run.read_text()) // 2])
    case("--run truncated", ["select", "--run", str(tr), "--k", "1"])
    arr = t / "arr.json"
    arr.write_text("[]")
    case("--run a JSON array", ["select", "--run", str(arr), "--k", "1"])
    tnpy = t / "t.npy"
    tnpy.write_bytes(ids.read_bytes()[:100])
    case("--tokens truncated .npy", ["analyze", "--model", ck, "--tokens", str(tnpy), "--out", str(t / "r1.json")])
    z = t / "zero.npy"
    np.save(z, np.zeros((0, 16), dtype=np.int64))
    case("--tokens with 0 rows", ["analyze", "--model", ck, "--tokens", str(z), "--out", str(t / "r2.json")])
    # 9-12: numbers
    neg = t / "neg.npy"
    np.save(neg, -np.ones((2, 16), dtype=np.int64))
    case("--tokens negative ids", ["analyze", "--model", ck, "--tokens", str(neg), "--out", str(t / "r3.json")])
    case("--k 1e3 (float text)", ["select", "--run", str(run), "--k", "1e3", "--out", str(t / "p1.json")])
    case("--k 20-digit", ["select", "--run", str(run), "--k", "9" * 20, "--out", str(t / "p2.json")])
    case("--seed 2**64", ["analyze", "--model", ck, "--corpus", "wiki", "--samples", "2", "--seq-len", "16",
                          "--seed", str(2**64), "--out", str(t / "r4.json")])
    # 13-16: corpus mixes and text files
    case("--corpus wiki:1e400", ["analyze", "--model", ck, "--corpus", "wiki:1e400", "--out", str(t / "r5.json")])
    case("--corpus wiki:-1", ["analyze", "--model", ck, "--corpus", "wiki:-1", "--out", str(t / "r6.json")])
    case("--corpus ':'", ["analyze", "--model", ck, "--corpus", ":", "--out", str(t / "r7.json")])
    ws = t / "ws.txt"
    ws.write_text(" \n\t\n   \n" * 50)
    case("--text only whitespace", ["analyze", "--model", ck, "--text", str(ws), "--out", str(t / "r8.json")])
    # 17-20: special files and pseudo-files
    case("--run /proc/self/status", ["select", "--run", "/proc/self/status", "--k", "1"])
    case("--out /proc/self/status", [*sel, "--out", "/proc/self/status", "--overwrite"])
    case("--out under read-only /sys", [*sel, "--out", "/sys/kernel/plan.json"])
    case("--out the user's notes", [*sel, "--out", str(notes)],
         check=lambda rc, o, e: json.loads(notes.read_text()) == {"mine": True})
    # 21-24: the environment
    case("stdin closed", [*sel, "--out", str(t / "p3.json")], stdin=subprocess.DEVNULL)
    case("stdout closed", [*sel], close_stdout=True, ok_codes=(0, 2, 141))
    filecache = t / "cachefile"
    filecache.write_text("x")
    case("ENTROSCOPE_CACHE is a file", ["analyze", "--model", ck, "--tokens", str(ids), "--out", str(t / "r9.json")],
         env={"ENTROSCOPE_CACHE": str(filecache), "ENTROSCOPE_RUNS": str(filecache / "runs")})
    case("HOME unset, LC_ALL=C, unicode path", [*sel, "--out", str(t / "ünï.json")],
         env={"HOME": None, "LC_ALL": "C", "LANG": "C"})
    # 25-28: commands with hostile values
    case("prune --drop-layers '1-'", ["prune", "--model", ck, "--drop-layers", "1-", "--out", str(t / "pr")])
    case("--model ''", ["analyze", "--model", "", "--tokens", str(ids), "--out", str(t / "r10.json")])
    case("figures --formats png,exe", ["figures", "--run", str(run), "--formats", "png,exe", "--out", str(t / "figs")])
    case("--plan is a run", ["eval", "--model", ck, "--plan", str(run), "--out", str(t / "e.json")])

    # 29: two writers of one --out at once
    outp = t / "race.json"
    procs = [subprocess.Popen([PY, "-m", "analysis", *sel, "--out", str(outp)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    rcs = [p.returncode for p in procs]
    ok = all(clean(rc, e) for rc, (_, e) in zip(rcs, outs)) and json.loads(outp.read_text()).get("drop_attn") is not None
    results.append(("two writers of one --out", ok, f"rcs={rcs}"))

    # 30: Ctrl-C mid-run of analyze (a long pass), nothing half-written at --out
    big = t / "big.npy"
    np.save(big, np.random.default_rng(1).integers(0, 256, size=(512, 128)))
    outr = t / "sigint.json"
    p = subprocess.Popen([PY, "-m", "analysis", "analyze", "--model", ck, "--tokens", str(big), "--estimator", "knn",
                          "--batch-size", "1", "--no-cache", "--out", str(outr)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    time.sleep(12)
    p.send_signal(signal.SIGINT)
    _, e = p.communicate(timeout=120)
    ok = p.returncode in (130, 0) and "Traceback" not in e and (p.returncode == 0 or not outr.exists())
    results.append(("SIGINT mid-run", ok, f"rc={p.returncode} {(e.strip().splitlines() or [''])[-1][:100]}"))

    for name, good, why in results:
        print(f"{'clean' if good else 'NOT CLEAN':9} {name}: {why}")
    n_clean = sum(g for _, g, _ in results)
    print(f"tried {len(results)}, clean {n_clean}")
    return 0 if n_clean == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
