"""Class 8 (docs/reliability.md): messages. Usage errors exit 2 as documented; an OSError anywhere (disk
full, permission, read-only filesystem) is named with its path, never the catch-all; safetensors write
errors are specific; when the product is JSON on stdout nothing else is printed there, whoever prints
(us, a library, a C extension or a subprocess writing to file descriptor 1). ``MESSAGE_CASES`` and
``STDOUT_CASES`` are the class's catalogue (counted in the docs)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from analysis.cli.main import main
from analysis.testing import save_tiny_checkpoint
from test_reliability_cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-m"), layers=4))


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ids-m") / "ids.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    return str(p)


@pytest.fixture(scope="module")
def run_json(tiny_dir, ids_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-m") / "run.json"
    assert main(["analyze", "--model", tiny_dir, "--tokens", ids_file, "--out", str(out), "--quiet", "--no-cache"]) == 0
    return str(out)


#: (errno raised while the command writes, what the message says)
MESSAGE_CASES = [
    (errno.ENOSPC, "no space left on device (the disk is full)"),
    (errno.EDQUOT, "disk quota"),
    (errno.EACCES, "permission denied"),
    (errno.EROFS, "read-only"),
    (errno.EIO, "input/output error"),
    (errno.EFBIG, "too large"),
]


@pytest.mark.parametrize("code,pattern", MESSAGE_CASES, ids=[errno.errorcode[c] for c, _ in MESSAGE_CASES])
def test_os_errors_while_writing_are_named_with_the_path(capsys, tmp_path, run_json, monkeypatch, code, pattern):
    import analysis.store.outdir as outdir

    def fail(folder, name, data):
        raise OSError(code, os.strerror(code), str(folder / name))

    monkeypatch.setattr(outdir, "_write_tmp", fail)
    out = tmp_path / "plan.json"
    rc, err = run_cli(capsys, ["select", "--run", run_json, "--k", "1", "--out", str(out)])
    assert rc == 2 and pattern in err.lower() and str(tmp_path) in err, err
    assert "internal error" not in err and "unexpected" not in err and not out.exists()


def test_an_oserror_escaping_a_command_is_named_not_a_catch_all(capsys, run_json, monkeypatch):
    import analysis.score.result as result

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", run_json)

    monkeypatch.setattr(result.AnalysisResult, "load", classmethod(lambda cls, p: denied()))
    rc, err = run_cli(capsys, ["select", "--run", run_json, "--k", "1"])
    assert rc == 2 and "permission denied" in err.lower() and run_json in err, err
    assert "internal error" not in err and "unexpected" not in err


def test_safetensors_write_errors_are_specific(capsys, tmp_path, tiny_dir, monkeypatch):
    from safetensors import SafetensorError

    import transformers.modeling_utils as mu

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(mu, "safe_save_file", full)          # what save_pretrained calls
    rc, err = run_cli(capsys, ["prune", "--model", tiny_dir, "--drop-layers", "1", "--out", str(tmp_path / "ck"),
                               "--quiet"])
    assert rc == 2 and "disk is full" in err and "internal error" not in err, err
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("argv", [["analyze", "--samples", "x"], ["select"], ["nosuchcommand"], ["prune", "--out"],
                                  ["eval", "--latency-batch-sizes", "0"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ")


def _noisy(monkeypatch, module: str, attr: str, cls_attr: str | None = None) -> None:
    """Make a library function the command calls print to stdout first (as chatty libraries do)."""
    import importlib

    mod = importlib.import_module(module)
    owner = getattr(mod, cls_attr) if cls_attr else mod
    real = getattr(owner, attr)
    if cls_attr:
        fn = real.__func__

        def wrapped(cls, *a, **k):
            print("noise from a library")
            return fn(cls, *a, **k)

        monkeypatch.setattr(owner, attr, classmethod(wrapped))
    else:
        def wrapped2(*a, **k):
            print("noise from a library")
            return real(*a, **k)

        monkeypatch.setattr(owner, attr, wrapped2)


#: (command line, the library call made noisy): stdout must hold exactly one JSON document
STDOUT_CASES = [
    (["analyze", "--model", "{tiny}", "--tokens", "{ids}", "--out", "{t}/r.json", "--no-cache"],
     ("analysis.models.loading", "load_model", None)),
    (["select", "--run", "{run}", "--k", "1"], ("analysis.score.result", "load", "AnalysisResult")),
    (["select", "--run", "{run}", "--k", "1", "--out", "{t}/p.json"], ("analysis.score.result", "load", "AnalysisResult")),
    (["prune", "--model", "{tiny}", "--drop-layers", "1", "--out", "{t}/ck"], ("analysis.models.loading", "load_model", None)),
    (["eval", "--model", "{tiny}", "--text", "{t}/t.txt", "--max-tokens", "256", "--out", "{t}/e.json"],
     ("analysis.models.loading", "load_model", None)),
    (["groundtruth", "--model", "{tiny}", "--tokens", "{ids}", "--samples", "2", "--out", "{t}/g.json"],
     ("analysis.models.loading", "load_model", None)),
    (["figures", "--run", "{run}", "--out", "{t}/figs", "--formats", "svg"], ("analysis.score.result", "load", "AnalysisResult")),
    (["load", "{t}/ck0"], ("analysis.models.loading", "load_pruned", None)),
]


@pytest.mark.parametrize("argv,noisy", STDOUT_CASES, ids=[" ".join(a[:1] + a[-2:-1]) for a, _ in STDOUT_CASES])
def test_stdout_holds_only_the_json_product(capsys, tmp_path, tiny_dir, ids_file, run_json, monkeypatch, argv, noisy):
    (tmp_path / "t.txt").write_text("word " * 600)
    if argv[0] == "load":
        assert main(["prune", "--model", tiny_dir, "--drop-layers", "1", "--out", str(tmp_path / "ck0"), "--quiet"]) == 0
        capsys.readouterr()
    _noisy(monkeypatch, *noisy)
    argv = [a.format(tiny=tiny_dir, ids=ids_file, run=run_json, t=tmp_path) for a in argv]
    assert main(argv) == 0
    cap = capsys.readouterr()
    json.loads(cap.out)                                      # exactly one JSON document, nothing else
    assert "noise from a library" in cap.err                 # the noise went to stderr instead


def test_stdout_is_product_only_at_the_file_descriptor_level(tmp_path, run_json):
    """In a real process, writes to file descriptor 1 (C libraries, subprocesses) go to stderr too."""
    code = ("import os, sys\n"
            "import analysis.score.result as r\n"
            "real = r.AnalysisResult.load.__func__\n"
            "def noisy(cls, p):\n"
            "    os.write(1, b'fd-level noise\\n')\n"
            "    os.system('echo subprocess noise')\n"
            "    print('python noise')\n"
            "    return real(cls, p)\n"
            "r.AnalysisResult.load = classmethod(noisy)\n"
            "from analysis.cli.main import main\n"
            f"sys.exit(main(['select', '--run', {run_json!r}, '--k', '1']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert "drop_attn" in plan
    assert "fd-level noise" in p.stderr and "subprocess noise" in p.stderr and "python noise" in p.stderr


def test_a_file_given_as_a_model_directory_is_named_as_such(capsys, run_json):
    rc, err = run_cli(capsys, ["load", run_json])
    assert rc == 2 and "is a file, not a" in err and "directory" in err and "not found" not in err, err
