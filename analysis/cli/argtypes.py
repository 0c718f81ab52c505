"""argparse types of CLI-only values (block windows, index lists), refusing out-of-domain values with a one-line message
(``error: argument --window: …``) before anything is loaded. The value parsers shared with the config
dataclasses' settings (:func:`~analysis.settings.positive_int`, ``seed_int``, ``finite_float``,
``bounded_int``) live in :mod:`analysis.settings`."""
from __future__ import annotations

import argparse

from analysis.indices import IndexListError, parse_indices
from analysis.settings import bounded_int

#: per-block window (angular criterion): a positive block count
block_window = bounded_int(1, 4096, "a block window")


def int_list(text: str) -> list[int]:
    """``"20,21"`` or ``"3-5,9"`` → [20, 21] / [3, 4, 5, 9] (0-based indices); see :mod:`analysis.indices`."""
    try:
        return parse_indices(text)
    except IndexListError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (expected 0-based indices like 3,5,7 or 3-5)") from None


# ---- paths: which arguments are outputs and inputs (checked together by the CLI before any work) --------
class PathArg(str):
    """A path argument; ``role`` ``"output"`` / ``"input"`` / ``"both"`` and, for outputs, ``kind``
    (``"file"``, ``"checkpoint"``: a folder replaced as a whole, ``"folder"``: a folder files go into).
    :func:`analysis.cli.main.main` hands all of a command's path arguments to
    :func:`analysis.store.outdir.check_outputs` before the command runs."""

    role = "input"
    kind = "file"


def _path_type(role: str, kind: str = "file"):
    cls = type(f"{role.title()}{kind.title()}Path", (PathArg,), {"role": role, "kind": kind})

    def parse(text: str) -> str:
        if "\x00" in text:
            raise argparse.ArgumentTypeError("a path cannot contain a NUL character")
        if not text.strip():
            raise argparse.ArgumentTypeError("expected a path, got an empty string")
        return cls(text)

    parse.__name__ = f"{role}_{kind}"
    return parse


#: ``--out run.json``, ``--csv``, ``--mergekit``: a file written by the command
out_file = _path_type("output", "file")
#: ``prune/channels --out``: a checkpoint folder replaced as a whole
out_checkpoint = _path_type("output", "checkpoint")
#: ``figures --out``: a folder files are written into
out_folder = _path_type("output", "folder")
#: ``--run``, ``--plan``, ``--text``, ``--model``: read by the command
in_path = _path_type("input")
#: ``groundtruth --into run.json``: read, then rewritten
in_out_file = _path_type("both", "file")


def path_args(args: argparse.Namespace) -> tuple[list, dict[str, str]]:
    """``(outputs, inputs)`` of a parsed command line: :class:`analysis.store.outdir.Output` rows and
    ``{flag: path}`` (read from the :class:`PathArg` values the types above returned)."""
    from analysis.store.outdir import Output

    outputs, inputs = [], {}
    for dest, v in vars(args).items():
        if not isinstance(v, PathArg):
            continue
        flag = "--" + dest.replace("_", "-") if dest != "dir" else "DIR"
        if v.role in ("output", "both"):
            outputs.append(Output(flag, str(v), v.kind))
        if v.role == "input":
            inputs[flag] = str(v)
    return outputs, inputs
