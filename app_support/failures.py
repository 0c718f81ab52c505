"""What the app says when a step fails: a specific reason, or — only for a bug — a logged internal error.

Every failure a user or the environment can cause has its own one-line reason, the same as the CLI's
(``analysis/cli/main.py``): an :class:`~analysis.errors.EntroscopeError` its message and hint, running out
of memory the OOM advice, an ``OSError`` the OS reason and the path (disk full, permission denied,
read-only filesystem …, :func:`analysis.store.outdir.describe_os_error`). Anything else is a bug in
Entroscope: :func:`internal` logs its traceback on the server (logger ``entroscope.app``) with the step
that failed, and says so — never a bare "Unexpected ValueError". No Streamlit here (used by the job
threads too).
"""
from __future__ import annotations

import logging

from analysis.errors import EntroscopeError, is_oom, oom_error

log = logging.getLogger("entroscope.app")


def reason(exc: BaseException, step: str = "") -> str | None:
    """The specific one-line reason for a failure the user or the environment causes; None for a bug."""
    if isinstance(exc, EntroscopeError):
        return str(exc)
    if is_oom(exc):
        return str(oom_error(exc, step or "this step"))
    if isinstance(exc, OSError):
        from analysis.store.outdir import describe_os_error

        return describe_os_error(exc)
    return None


def internal(exc: BaseException, step: str = "") -> str:
    """Log ``exc`` with its traceback and the step, and return the one line that says it is a bug (the caller
    shows it after the step's name, e.g. "Comparison failed: internal error in Entroscope (…)")."""
    where = step or "an app step"
    log.error("internal error in Entroscope during %s", where, exc_info=(type(exc), exc, exc.__traceback__))
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return (f"internal error in Entroscope ({type(exc).__name__}: {first}); please report it (the traceback "
            "is in the server log)")


def describe(exc: BaseException, step: str = "") -> tuple[str, bool]:
    """``(one line, is_bug)``: the specific reason, or the logged internal error."""
    text = reason(exc, step)
    return (text, False) if text is not None else (internal(exc, step), True)
