"""Class 1 (docs/reliability.md): outputs never replace what the user owns. Every output path of every
command (--out, --csv, --mergekit, --into, figure files, checkpoint folders) goes through
analysis.store.outdir with one set of rules, checked before any work: an existing file Entroscope did not
write needs --overwrite; an output that is one of the command's inputs, or two outputs naming one path,
is refused; a FIFO, device, socket, directory or broken link is refused and never opened; files honour
the umask; one lock file per folder. ``OUTPUT_CASES`` is the class's catalogue (counted in the docs)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
from pathlib import Path

import numpy as np
import pytest

from analysis.cli.main import main
from analysis.errors import SaveError
from analysis.store.outdir import LOCK_FILE, REGISTRY, check_out_file, is_ours, write_text_atomic
from analysis.testing import save_tiny_checkpoint
from test_reliability_cli import run_cli


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-o"), layers=4))


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ids-o") / "ids.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    return str(p)


@pytest.fixture(scope="module")
def run_json(tiny_dir, ids_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-o") / "run.json"
    assert main(["analyze", "--model", tiny_dir, "--tokens", ids_file, "--out", str(out), "--quiet", "--no-cache"]) == 0
    return str(out)


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Opening a FIFO for writing blocks forever: fail instead of hanging if anything ever does."""
    def boom(*_):
        raise TimeoutError("the command blocked (did it open a FIFO?)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _make(tmp: Path, name: str, kind: str, keep: list, fmt: dict) -> None:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "foreign":
        p.write_text("the user's own file\n")
    elif kind == "eval":                       # an eval JSON the user keeps (figures can draw it)
        p.write_text(json.dumps({"perplexity": 31.5, "perplexity_original": 20.25, "kl": 0.31, "top1": 0.72,
                                 "manifest": {"plan": {"drop_layers": [2], "drop_attn": [], "drop_mlp": []}}}))
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        keep.append(s)
    elif kind.startswith("link:"):
        p.symlink_to(tmp / kind[5:].format(**fmt))
    elif kind == "checkpoint":
        save_tiny_checkpoint(p, layers=4)
    else:
        raise ValueError(kind)


def _snapshot(tmp: Path) -> dict:
    out = {}
    for p in sorted(tmp.rglob("*")):
        st = os.lstat(p)
        out[str(p.relative_to(tmp))] = (stat.S_IFMT(st.st_mode),
                                        p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


#: (id, things placed in the folder first, argv, what the one-line error says). {t}: the test folder,
#: {run} a run JSON, {tiny} a tiny checkpoint, {ids} a token file. Every case must leave the folder unchanged.
OUTPUT_CASES = [
    ("foreign --out (analyze)", {"r.json": "foreign"},
     ["analyze", "--model", "{tiny}", "--tokens", "{ids}", "--out", "{t}/r.json"], "did not write it"),
    ("foreign --out (select)", {"p.json": "foreign"},
     ["select", "--run", "{run}", "--k", "1", "--out", "{t}/p.json"], "did not write it"),
    ("foreign --csv (eval)", {"e.csv": "foreign"},
     ["eval", "--model", "{tiny}", "--out", "{t}/e.json", "--csv", "{t}/e.csv"], "did not write it"),
    ("foreign --mergekit (prune)", {"m.yaml": "foreign"},
     ["prune", "--model", "{tiny}", "--drop-layers", "1", "--out", "{t}/ck", "--mergekit", "{t}/m.yaml"],
     "did not write it"),
    ("foreign figure file", {"figs/eval_perplexity.png": "foreign", "e.json": "eval"},
     ["figures", "--eval", "{t}/e.json", "--out", "{t}/figs", "--formats", "png"], "did not write it"),
    ("--out is the --run input (select)", {}, ["select", "--run", "{run}", "--k", "1", "--out", "{run}"],
     "is also this command's input --run"),
    ("--out is the --run input (miprun)", {}, ["miprun", "--run", "{run}", "--n", "1", "--out", "{run}"],
     "is also this command's input --run"),
    ("--out is the --run input (sweep)", {}, ["sweep", "--run", "{run}", "--model", "{tiny}", "--out", "{run}"],
     "is also this command's input --run"),
    ("--out is the --plan input (eval)", {"plan.json": "foreign"},
     ["eval", "--model", "{tiny}", "--plan", "{t}/plan.json", "--out", "{t}/plan.json", "--overwrite"],
     "is also this command's input --plan"),
    ("--out is the --text input (analyze)", {"notes.txt": "foreign"},
     ["analyze", "--model", "{tiny}", "--text", "{t}/notes.txt", "--out", "{t}/notes.txt", "--overwrite"],
     "is also this command's input --text"),
    ("--out is the --tokens input (groundtruth)", {}, ["groundtruth", "--model", "{tiny}", "--tokens", "{ids}",
                                                       "--out", "{ids}", "--overwrite"], "input --tokens"),
    ("--out through a symlink to the --run input", {"link.json": "link:{run}"},
     ["select", "--run", "{run}", "--k", "1", "--out", "{t}/link.json", "--overwrite"], "input --run"),
    ("figures --out is the --eval input", {"e.json": "eval"},
     ["figures", "--eval", "{t}/e.json", "--out", "{t}/e.json"], "is also this command's input --eval"),
    ("--csv and --out name one file (eval)", {},
     ["eval", "--model", "{tiny}", "--out", "{t}/e.json", "--csv", "{t}/e.json"], "both name"),
    ("--csv and --out name one file via ./ (sweep)", {},
     ["sweep", "--run", "{run}", "--model", "{tiny}", "--out", "{t}/s.json", "--csv", "{t}/./s.json"], "both name"),
    ("--into and --out name one file (groundtruth)", {},
     ["groundtruth", "--model", "{tiny}", "--tokens", "{ids}", "--into", "{run}", "--out", "{run}"], "both name"),
    ("--mergekit inside the checkpoint folder (prune)", {},
     ["prune", "--model", "{tiny}", "--drop-layers", "1", "--out", "{t}/ck", "--mergekit", "{t}/ck/m.yaml"],
     "lies inside --out"),
    ("prune --out is the --model folder", {"model": "checkpoint"},
     ["prune", "--model", "{t}/model", "--drop-layers", "1", "--out", "{t}/model", "--overwrite"],
     "input --model"),
    ("prune --out holds the --plan input", {"ck/plan.json": "foreign"},
     ["prune", "--model", "{tiny}", "--plan", "{t}/ck/plan.json", "--out", "{t}/ck", "--overwrite"],
     "holds this command's input --plan"),
    ("--out is a FIFO (analyze)", {"r.json": "fifo"},
     ["analyze", "--model", "{tiny}", "--tokens", "{ids}", "--out", "{t}/r.json"], "is a FIFO"),
    ("--out is a FIFO, with --overwrite (select)", {"p.json": "fifo"},
     ["select", "--run", "{run}", "--k", "1", "--out", "{t}/p.json", "--overwrite"], "is a FIFO"),
    ("--csv is a symlink to a FIFO (eval)", {"f": "fifo", "e.csv": "link:f"},
     ["eval", "--model", "{tiny}", "--out", "{t}/e.json", "--csv", "{t}/e.csv"], "is a FIFO"),
    ("--out is /dev/null (select)", {}, ["select", "--run", "{run}", "--k", "1", "--out", "/dev/null", "--overwrite"],
     "is under /dev"),
    ("--mergekit is a socket (prune)", {"m.sock": "socket"},
     ["prune", "--model", "{tiny}", "--drop-layers", "1", "--out", "{t}/ck", "--mergekit", "{t}/m.sock"],
     "is a socket"),
    ("--out is /dev/stdout, with --overwrite", {}, ["select", "--run", "{run}", "--k", "1", "--out", "/dev/stdout",
                                                  "--overwrite"], "is under /dev"),
    ("--out is /proc/self/fd/2, with --overwrite", {},
     ["select", "--run", "{run}", "--k", "1", "--out", "/proc/self/fd/2", "--overwrite"], "is under /proc"),
    ("--out replaces a file inside the --model folder", {"model": "checkpoint"},
     ["analyze", "--model", "{t}/model", "--tokens", "{ids}", "--out", "{t}/model/config.json", "--overwrite"],
     "inside this command's input --model"),
    ("--out is a broken symlink (miprun)", {"p.json": "link:nowhere/p.json"},
     ["miprun", "--run", "{run}", "--n", "1", "--out", "{t}/p.json"], "broken symbolic link"),
    ("--out is a directory (select)", {"d": "dir"}, ["select", "--run", "{run}", "--k", "1", "--out", "{t}/d"],
     "is a directory"),
    ("checkpoint --out is a FIFO (prune)", {"ck": "fifo"},
     ["prune", "--model", "{tiny}", "--drop-layers", "1", "--out", "{t}/ck", "--overwrite"], "is a FIFO"),
    ("checkpoint --out is a FIFO (channels)", {"ck": "fifo"},
     ["channels", "--model", "{tiny}", "--out", "{t}/ck", "--overwrite"], "is a FIFO"),
    ("figures --out is a FIFO", {"figs": "fifo", "e.json": "eval"},
     ["figures", "--eval", "{t}/e.json", "--out", "{t}/figs"], "is a FIFO"),
    ("a FIFO at a figure's file name, with --overwrite", {"figs/eval_perplexity.png": "fifo", "e.json": "eval"},
     ["figures", "--eval", "{t}/e.json", "--out", "{t}/figs", "--formats", "png", "--overwrite"], "is a FIFO"),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_outputs_never_replace_what_the_user_owns(capsys, tmp_path, monkeypatch, tiny_dir, ids_file, run_json, case):
    _, setup, argv, pattern = case
    keep: list = []
    fmt = {"t": tmp_path, "run": run_json, "tiny": tiny_dir, "ids": ids_file}
    for name, kind in setup.items():
        _make(tmp_path, name, kind, keep, fmt)
    import analysis.models.loading

    def never(*a, **k):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(analysis.models.loading, "load_model", never)
    run_before = Path(run_json).read_bytes()
    ids_before = Path(ids_file).read_bytes()
    before = _snapshot(tmp_path)
    argv = [a.format(**fmt) for a in argv]
    with no_hang():
        code, err = run_cli(capsys, argv)
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert pattern.lower() in err.lower(), err
    assert _snapshot(tmp_path) == before                     # nothing created, replaced or removed
    assert Path(run_json).read_bytes() == run_before and Path(ids_file).read_bytes() == ids_before
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    for s in keep:
        s.close()


# ---- what is allowed: our own files are replaced; --overwrite replaces the user's regular files ------------
def test_our_outputs_are_replaced_and_edited_ones_need_overwrite(capsys, tmp_path, run_json):
    out = tmp_path / "plan.json"
    for _ in range(2):                                       # our own output: replaced without --overwrite
        assert main(["select", "--run", run_json, "--k", "1", "--out", str(out)]) == 0
    assert is_ours(out)
    out.write_text(out.read_text().replace('"drop', ' "drop', 1))     # the user edited it: theirs now
    assert not is_ours(out)
    code, err = run_cli(capsys, ["select", "--run", run_json, "--k", "1", "--out", str(out)])
    assert code == 2 and "did not write it" in err
    assert main(["select", "--run", run_json, "--k", "1", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["drop_attn"] is not None and is_ours(out)


def test_symlink_to_a_regular_file_writes_the_target(capsys, tmp_path, run_json):
    target = tmp_path / "real.json"
    target.write_text("mine")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    code, err = run_cli(capsys, ["select", "--run", run_json, "--k", "1", "--out", str(link)])
    assert code == 2 and "did not write it" in err and target.read_text() == "mine"
    assert main(["select", "--run", run_json, "--k", "1", "--out", str(link), "--overwrite"]) == 0
    assert link.is_symlink() and "drop_attn" in json.loads(target.read_text()) and is_ours(link)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    from analysis.figures import save_figures

    old = os.umask(umask)
    try:
        p = write_text_atomic(tmp_path / "run.json", "{}")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure()
        (f,) = save_figures({"x": fig}, tmp_path / "figs", ["svg"])
        plt.close(fig)
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert stat.S_IMODE(f.stat().st_mode) == mode


def test_one_lock_file_per_folder_and_no_leftovers(tmp_path):
    for i in range(6):
        write_text_atomic(tmp_path / f"out{i}.json", "{}")
    write_text_atomic(tmp_path / "out0.json", "{ }")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.endswith(".lock")] == [LOCK_FILE]
    assert names == sorted([LOCK_FILE, REGISTRY] + [f"out{i}.json" for i in range(6)])


def test_stale_partial_files_of_dead_writers_are_removed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".run.json.{dead}-0123abcd.part"
    stale.write_text("half")
    write_text_atomic(tmp_path / "run.json", "{}")
    assert not stale.exists()


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_library_writes_follow_the_same_rules(tmp_path):
    from analysis.models.plan import Plan

    theirs = tmp_path / "plan.json"
    theirs.write_text("mine")
    with pytest.raises(SaveError, match="did not write it"):
        Plan(drop_layers=[1]).save(theirs)
    assert theirs.read_text() == "mine"
    write_text_atomic(theirs, "x", overwrite=True)
    assert theirs.read_text() == "x" and is_ours(theirs)
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(SaveError, match="FIFO"):
        write_text_atomic(fifo, "x", overwrite=True)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_fifo_made_after_the_check_is_not_replaced(tmp_path):
    out = tmp_path / "run.json"
    check_out_file(out)                                  # at the start of the command: absent
    os.mkfifo(out)                                       # meanwhile
    with no_hang(), pytest.raises(SaveError, match="FIFO"):
        write_text_atomic(out, "{}")
    assert stat.S_ISFIFO(os.stat(out).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
