"""Command line: ``python -m analysis <command>``. :mod:`.main` builds the parser from the command modules in
:mod:`.commands` (one per command, discovered); :mod:`.common` holds the model and data flags,
:mod:`.healargs` and :mod:`.taskargs` the ``--heal`` and ``--tasks`` flags; every settings flag is generated
from the config dataclasses (:mod:`analysis.settings`)."""
from analysis.lazy import lazy_exports

_LAZY = {"main": "main", "build_parser": "main"}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
