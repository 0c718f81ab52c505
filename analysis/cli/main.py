"""Command line: ``python -m analysis <command> ...``.

Sub-commands live in :mod:`analysis.cli.commands` (one module each, discovered here). Usage errors and user
errors print one line on stderr and exit 2; nothing prints a traceback unless ``ENTROSCOPE_DEBUG=1``.

Before a command runs, all of its path arguments (typed with :mod:`analysis.cli.argtypes`' path types) are
checked together by :func:`analysis.store.outdir.check_outputs`; every command with an output gets
``--overwrite``. While it runs, stdout is the command's product only (its JSON, through
:func:`analysis.cli.common.emit`): anything else printed to stdout, by us or a library, goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys

from analysis.cli import commands
from analysis.errors import EntroscopeError, is_oom, oom_error


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m analysis",
                     description="Entroscope: entropy and information-theoretic analysis and pruning of causal LMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    for p in sub.choices.values():
        _add_overwrite(p)
    return parser


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    """Every command with an output file or folder takes --overwrite (replace a file Entroscope did not write)."""
    has_output = any(getattr(a.type, "__name__", "").startswith(("output_", "both_")) for a in p._actions)
    if has_output and "--overwrite" not in p._option_string_actions:
        p.add_argument("--overwrite", action="store_true",
                       help="replace existing output files that Entroscope did not write (never a folder, FIFO or device)")


def _quiet_libraries() -> None:
    """Library chatter (transformers warnings, load progress bars) would bury our one-line messages."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    from analysis.cli import common

    with _product_stdout() as product:
        common.set_product_stream(product)
        try:
            return _run(args)
        finally:
            common.set_product_stream(None)


def _run(args) -> int:
    from analysis.cli.argtypes import path_args
    from analysis.store.outdir import check_outputs, describe_os_error, reset_checks

    try:
        reset_checks()
        outputs, inputs = path_args(args)
        check_outputs(outputs, inputs, overwrite=bool(getattr(args, "overwrite", False)))
        return int(args.func(args) or 0)
    except EntroscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:               # `... | head`: the reader left; end quietly (no traceback, no message)
        _silence_stdout()
        return 141
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if os.environ.get("ENTROSCOPE_DEBUG") == "1":
            raise
        if is_oom(exc):
            print(f"error: {oom_error(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):      # disk full, permission, read-only filesystem …: the reason and the path
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 2
        print(f"error: internal error in Entroscope ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''}); please report it "
              f"(set ENTROSCOPE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _product_stdout():
    """Yield the stream the command's product goes to (stdout as it was), while anything else printed to
    stdout goes to stderr: Python-level prints always, and file-descriptor-level writes (C libraries,
    subprocesses) too when stdout is the process's own."""
    product = sys.stdout
    fd_level = sys.stdout is sys.__stdout__ and _has_fd(sys.stdout) and _has_fd(sys.stderr)
    saved = None
    if fd_level:
        try:
            sys.stdout.flush()
            saved = os.dup(sys.stdout.fileno())
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
            product = os.fdopen(saved, "w", buffering=1, encoding=sys.stdout.encoding or "utf-8", closefd=False)
        except (OSError, ValueError):
            saved = None
            product = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield product
    finally:
        if saved is not None:
            with contextlib.suppress(OSError, ValueError):
                product.flush()
            with contextlib.suppress(OSError, ValueError):
                sys.__stdout__.flush()
                os.dup2(saved, sys.__stdout__.fileno())
            with contextlib.suppress(OSError):
                os.close(saved)


def _has_fd(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush doesn't raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass

