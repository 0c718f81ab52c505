"""argparse types of CLI-only numbers, refusing out-of-domain values with a one-line message
(``error: argument --window: …``) before anything is loaded. The value parsers shared with the config
dataclasses' settings (:func:`~analysis.settings.positive_int`, ``seed_int``, ``finite_float``,
``bounded_int``) live in :mod:`analysis.settings`."""
from __future__ import annotations

from analysis.settings import bounded_int

#: per-block window (angular criterion): a positive block count
block_window = bounded_int(1, 4096, "a block window")
