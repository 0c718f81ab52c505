"""What the app says when a step fails: a specific reason for everything a user or the environment causes,
"internal error … please report it" (logged on the server with the step and the traceback) only for a bug, and
no catch-all in pages/ or app_support/ that swallows or hides a failure."""
from __future__ import annotations

import ast
import errno
import logging
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app_support.jobs import Job  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _guarded_script():
    import errno
    import os

    from app_support.widgets import guarded

    kind = os.environ["RELC_KIND"]
    with guarded("Saving the checkpoint"):
        if kind == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", "/exports/ck/model.safetensors")
        if kind == "eacces":
            raise PermissionError(errno.EACCES, "Permission denied", "/exports/ck")
        raise ValueError("something odd\nsecond line")


@pytest.mark.parametrize("kind, expected", [
    ("enospc", "Saving the checkpoint: no space left on device (the disk is full) (/exports/ck/model.safetensors)"),
    ("eacces", "Saving the checkpoint: permission denied (/exports/ck)"),
])
def test_os_errors_get_their_reason_not_unexpected(monkeypatch, kind, expected):
    monkeypatch.setenv("RELC_KIND", kind)
    at = AppTest.from_function(_guarded_script, default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error] == [expected]
    assert not at.expander                                        # not a bug: no "details for a bug report"


def test_a_bug_is_named_logged_with_the_step_and_its_traceback(monkeypatch, caplog):
    monkeypatch.setenv("RELC_KIND", "bug")
    with caplog.at_level(logging.ERROR, logger="entroscope.app"):
        at = AppTest.from_function(_guarded_script, default_timeout=60).run()
    assert not at.exception
    msg = at.error[0].value
    assert msg.startswith("Saving the checkpoint: internal error in Entroscope (ValueError: something odd); "
                          "please report it")
    assert "Unexpected" not in msg and "second line" not in msg
    assert at.expander[0].label == "Details (for a bug report)"
    rec = [r for r in caplog.records if r.name == "entroscope.app"]
    assert rec and "Saving the checkpoint" in rec[0].getMessage() and rec[0].exc_info[0] is ValueError


def test_jobs_name_os_errors_and_log_bugs(caplog):
    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device", "/cache/run.pt")

    def bug(job):
        raise KeyError("oops")

    job = Job("relc-os", full, kind="comparison", label="the comparison").start()
    assert job.wait(30)
    assert job.status == "error" and job.error == "no space left on device (the disk is full) (/cache/run.pt)"
    assert job.error_detail is None
    with caplog.at_level(logging.ERROR, logger="entroscope.app"):
        job = Job("relc-bug", bug, kind="comparison", label="the comparison").start()
        assert job.wait(30)
    assert job.error.startswith("internal error in Entroscope (KeyError: 'oops'); please report it")
    assert "KeyError" in job.error_detail
    assert any("the comparison" in r.getMessage() and r.exc_info for r in caplog.records)


#: The only ``except Exception`` handlers allowed in the app: each hands the failure to the one place that
#: names its reason or logs it as a bug (``show_error`` / ``failures.describe``), or logs it itself.
_HANDLES = ("show_error(", "describe(", "log.", "logging.")


def test_no_catch_all_swallows_or_hides_a_failure():
    bad = []
    for f in sorted([*ROOT.glob("pages/*.py"), *ROOT.glob("app_support/*.py"), ROOT / "app.py"]):
        src = f.read_text()
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, ast.ExceptHandler):
                continue
            names = [node.type] if not isinstance(node.type, ast.Tuple) else list(node.type.elts)
            if node.type is not None and not any(isinstance(n, ast.Name) and n.id in ("Exception", "BaseException")
                                                 for n in names):
                continue
            body = "\n".join(ast.get_source_segment(src, s) or "" for s in node.body)
            if not any(h in body for h in _HANDLES):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"catch-alls that hide a failure (catch the specific error instead): {bad}"
