"""Writes never destroy what they don't own (docs/reliability.md, classes W1–W6): locked atomic replace,
our own ownership marker for --overwrite, paths checked before anything is created, stale temporary
folders cleaned, unwritable outputs refused before the long computation."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from analysis.errors import SaveError
from analysis.store.outdir import OWNER_MARKER, atomic_dir, check_out_dir, check_out_file
from analysis.models.plan import Plan
from analysis.models.surgery import save_pruned
from analysis.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer
from test_reliability_cli import expect, run_cli


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-w"), layers=4))


def _race(out: Path, overwrite: bool, n: int = 2):
    """n writers enter atomic_dir for the same folder, write, then commit at the same moment."""
    barrier, results = threading.Barrier(n), [None] * n

    def writer(i):
        try:
            with atomic_dir(out, overwrite=overwrite) as tmp:
                for j in range(20):
                    (tmp / f"part{j}.txt").write_text(f"writer {i}\n" * 100)
                barrier.wait()
            results[i] = "ok"
        except SaveError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_writers_one_success_never_mixed(tmp_path, overwrite):
    out = tmp_path / "ck"
    if overwrite:                                  # start from a folder we own, so both may replace it
        with atomic_dir(out) as tmp:
            (tmp / "old.txt").write_text("old")
    results = _race(out, overwrite)
    assert results.count("ok") == 1, results
    loser = next(r for r in results if r != "ok")
    assert "written by another process" in loser and "kept at" in loser
    texts = {(out / f"part{j}.txt").read_text() for j in range(20)}
    assert len(texts) == 1                         # one writer's files only, all of them
    assert not (out / "old.txt").exists()
    kept = Path(loser.split("kept at ")[1].split(" (")[0])
    assert kept.is_dir() and len(list(kept.glob("part*.txt"))) == 20     # the loser's result is not lost
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_manifest_written_inside_the_temporary_folder(capsys, tmp_path, tiny_dir, monkeypatch):
    out = tmp_path / "ck"
    code, err = run_cli(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--out", str(out), "--quiet"])
    assert code == 0, err
    assert {"entroscope-manifest.json", OWNER_MARKER, "entroscope-plan.json"} <= {p.name for p in out.iterdir()}
    # a crash while writing leaves nothing at all behind: no folder, no stray manifest, no temp folder
    import analysis.models.surgery as surgery

    def crash(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tiny_tokenizer()), "save_pretrained", crash)
    out2 = tmp_path / "ck2"
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--out", str(out2), "--quiet"],
           "No space left")
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ck2")]
    assert surgery.PLAN_FILE


def test_overwrite_needs_our_marker_not_config_json(capsys, tmp_path, tiny_dir):
    foreign = tmp_path / "someone-elses-model"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    (foreign / "model.safetensors").write_bytes(b"weights I trained for a week")
    expect(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--out", str(foreign), "--overwrite"],
           "Entroscope did not write")
    assert (foreign / "model.safetensors").read_bytes() == b"weights I trained for a week"
    ours = tmp_path / "ours"
    assert run_cli(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "2", "--out", str(ours), "--quiet"])[0] == 0
    assert run_cli(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "1", "--out", str(ours), "--overwrite",
                            "--quiet"])[0] == 0
    assert json.loads((ours / "entroscope-plan.json").read_text())["drop_layers"] == [1]


def test_paths_are_resolved_before_anything_is_created(tmp_path):
    base = tiny_model("llama", layers=2)
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (root / "link").symlink_to(outside, target_is_directory=True)
    for bad in (root / "a" / ".." / ".." / "outside", root / "link", root / "link" / "ck", root / "..", root,
                root / "." ):
        with pytest.raises(SaveError, match="outside the allowed folder"):
            save_pruned(base, Plan(drop_layers=[1]), bad, overwrite=True, root=root)
    assert (outside / "keep.txt").read_text() == "mine" and sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in root.iterdir()) == ["link"]          # nothing created, not even "a"
    for bad in (Path("/"), Path.home(), Path.cwd(), Path.cwd().parent):
        with pytest.raises(SaveError, match="filesystem root, the home folder or holds the working directory"):
            check_out_dir(bad, True, None)


def test_stale_temporary_folders_are_removed_at_the_next_write(tmp_path):
    dead = tmp_path / ".ck.tmp-999999999-deadbeef"        # no such pid
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".other.tmp-{os.getpid()}-cafebabe"  # a writer still running: left alone
    live.mkdir()
    mine = tmp_path / ".notes.tmp-999999999-x"             # not our pattern: left alone
    mine.mkdir()
    with atomic_dir(tmp_path / "ck") as tmp:
        (tmp / "a.txt").write_text("a")
    assert not dead.exists() and live.exists() and mine.exists()
    assert (tmp_path / "ck" / "a.txt").read_text() == "a"


def test_interrupted_write_leaves_no_temporary_folder(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "ck") as tmp:
            (tmp / "a.txt").write_text("a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [] or all(p.suffix == ".lock" for p in tmp_path.iterdir())


def test_unwritable_outputs_refused_before_the_long_computation(capsys, tmp_path, monkeypatch):
    import analysis.cli.common as common

    def never(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(common, "load_model", never, raising=False)
    import analysis.models.loading

    monkeypatch.setattr(analysis.models.loading, "load_model", never)
    (tmp_path / "adir").mkdir()
    cases = [(str(tmp_path / "adir"), "is a directory"),
             (str(tmp_path / "missing" / "run.json"), "does not exist"),
             (str(tmp_path / ("x" * 300 + ".json")), "too long")]
    for out, pattern in cases:
        expect(capsys, ["analyze", "--model", "smollm2", "--corpus", "wiki", "--out", out], pattern)
        expect(capsys, ["eval", "--model", "smollm2", "--out", out], pattern)
        expect(capsys, ["prune", "--model", "smollm2", "--drop-layers", "1", "--out", str(tmp_path / "ck"),
                        "--mergekit", out], pattern)
    expect(capsys, ["prune", "--model", "smollm2", "--drop-layers", "1", "--out", str(tmp_path / ("y" * 300))],
           "too long")

    import analysis.store.outdir as outdir

    class RO:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(outdir.os, "statvfs", lambda p: RO())
    expect(capsys, ["analyze", "--model", "smollm2", "--corpus", "wiki", "--out", str(tmp_path / "r.json")],
           "read-only filesystem")
    expect(capsys, ["prune", "--model", "smollm2", "--drop-layers", "1", "--out", str(tmp_path / "ck")],
           "read-only filesystem")


def test_check_out_file_accepts_normal_paths(tmp_path):
    from analysis.store.outdir import write_text_atomic

    check_out_file(tmp_path / "run.json")
    write_text_atomic(tmp_path / "run.json", "{}")
    check_out_file(tmp_path / "run.json")               # replacing a file Entroscope wrote is fine
    (tmp_path / "run.json").write_text("{ }")           # ... but once the user changed it, it is theirs
    with pytest.raises(SaveError, match="did not write it"):
        check_out_file(tmp_path / "run.json")
    check_out_file(tmp_path / "run.json", overwrite=True)
    assert check_out_dir(tmp_path / "new", False, tmp_path) == "absent"
    assert not (tmp_path / "new").exists()


def test_concurrent_file_writers_one_success(tmp_path):
    """Two commands writing the same run.json: the one that finishes second finds it changed since its
    start and keeps its own result beside it instead of replacing it."""
    from analysis.store.outdir import write_text_atomic

    out = tmp_path / "run.json"
    out.write_text("old")
    barrier, results = threading.Barrier(2), [None, None]

    def command(i):
        check_out_file(out, overwrite=True)     # at the start of the command ("old" is the user's)
        barrier.wait()
        if i == 1:
            barrier.wait()                      # the second writer finishes after the first
        try:
            write_text_atomic(out, f"result {i}")
            results[i] = "ok"
        except SaveError as exc:
            results[i] = str(exc)
        if i == 0:
            barrier.wait()

    import analysis.store.outdir as outdir

    outdir._FILE_EXPECTED.clear()
    # check_out_file is keyed by path in one process: emulate two processes by giving each its own table
    tables = [{}, {}]
    real = outdir._FILE_EXPECTED

    class PerThread(dict):
        def _t(self):
            return tables[int(threading.current_thread().name[-1])]

        def __setitem__(self, k, v):
            self._t()[k] = v

        def pop(self, k, d=None):
            return self._t().pop(k, d)

    outdir._FILE_EXPECTED = PerThread()
    try:
        threads = [threading.Thread(target=command, args=(i,), name=f"cmd{i}") for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        outdir._FILE_EXPECTED = real
    assert results[0] == "ok" and "written by another process" in results[1], results
    assert out.read_text() == "result 0"
    kept = [p for p in tmp_path.iterdir() if ".unsaved-" in p.name]
    assert len(kept) == 1 and kept[0].read_text() == "result 1"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_folder_created_during_the_long_run_is_not_replaced_and_the_result_is_kept(tmp_path):
    base = tiny_model("llama", layers=2)
    out = tmp_path / "ck"
    state = check_out_dir(out, False, None)          # at the start of the command
    out.mkdir()                                      # meanwhile someone else puts their work there
    (out / "theirs.txt").write_text("theirs")
    with pytest.raises(SaveError, match="written by another process") as e:
        save_pruned(base, Plan(drop_layers=[1]), out, expected=state)
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    kept = Path(str(e.value).split("kept at ")[1].split(" (")[0])
    assert (kept / "model.safetensors").is_file() and (kept / OWNER_MARKER).is_file()
