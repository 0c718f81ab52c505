"""Writing checkpoint directories safely: only inside a chosen root, never over a folder that isn't a
checkpoint, and atomically (written under a temporary name, then renamed into place)."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import SaveError

#: files that mark a directory as a checkpoint we may replace with ``overwrite``
CHECKPOINT_MARKERS = ("config.json", "entroscope-plan.json", "entroscope-channels.json")


def check_out_dir(out: Path, overwrite: bool, root: str | os.PathLike | None) -> None:
    """Raise :class:`SaveError` unless ``out`` may be written (call before any slow work)."""
    if root is not None:
        root_p = Path(root).expanduser().resolve()
        if not out.resolve().is_relative_to(root_p):
            raise SaveError(f"Output directory {out} is outside the allowed folder {root_p}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise SaveError(f"Output directory {out} already exists", hint="use --overwrite to replace it")
        if not out.is_dir() or out.is_symlink():
            raise SaveError(f"{out} exists and is not a directory; refusing to replace it")
        if any(out.iterdir()) and not any((out / f).exists() for f in CHECKPOINT_MARKERS):
            raise SaveError(f"{out} is a non-empty directory that is not a model checkpoint; refusing to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(f"Cannot create {out.parent}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise SaveError(f"Output folder {out.parent} is not writable")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory to write into; on success it replaces ``out``."""
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"Could not write {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
