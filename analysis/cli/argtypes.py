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
