"""Command line: ``python -m analysis <command> ...``.

Sub-commands live in :mod:`analysis.cli.commands` (one module each, discovered here). User errors print one
line on stderr and exit 2; nothing prints a traceback unless ``ENTROSCOPE_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from analysis.cli import commands
from analysis.errors import EntroscopeError, is_oom, oom_error


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        raise SystemExit(f"error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m analysis",
                     description="Entroscope: entropy and information-theoretic analysis and pruning of causal LMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(mod, "register"):
            mod.register(sub)
    return parser


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
    try:
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
        print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(set ENTROSCOPE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush doesn't raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass

