"""Compile every kernel an analysis uses, once per installation (``make setup``): the first analysis after a fresh
install then loads them from numba's on-disk cache instead of waiting for the compiler."""
from __future__ import annotations

from analysis.measure import kernels, onepass


def warm() -> str:
    """:func:`analysis.measure.kernels.warm`, then :mod:`analysis.measure.onepass`'s kernels. Returns what was done."""
    done = kernels.warm()
    if done == "compiled kernels ready":
        for split in (False, True):
            onepass.warm(split)
    return done
