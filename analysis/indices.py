"""What a 0-based block index refers to (:data:`GRANULARITIES`, and the plan key holding each granularity's
indices), and parsing 0-based index lists such as ``3,5,7`` or ``3-5,9`` (CLI ``--drop-layers``, ``--protect``,
``sweep --k``), refusing anything ambiguous before a single block is touched.

Grammar: items separated by commas; an item is ``N`` or an inclusive range ``A-B`` with ``A <= B``;
numbers are non-negative decimal integers. Refused: empty items (``3,,5``, a trailing comma), backwards
ranges (``5-3``), duplicates (``3,3`` or ``2-4,3``), negative numbers, and lists longer than
:data:`MAX_INDICES` (``0-999999999`` would otherwise allocate a billion ints). ``none`` is the empty list.
"""
from __future__ import annotations

import re

#: what a "block" is: an attention sub-block, an MLP sub-block or a whole decoder layer
GRANULARITIES = ("attention", "mlp", "layer")
#: granularity -> the plan JSON key listing the dropped blocks of that granularity
GRANULARITY_KEY = {"attention": "drop_attn", "mlp": "drop_mlp", "layer": "drop_layers"}
MAX_INDICES = 4096            # far beyond any model depth; stops absurd ranges before anything is allocated
_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class IndexListError(ValueError):
    """A malformed index list; the message says which item and why."""


def parse_indices(text: str, max_count: int = MAX_INDICES, allow_none: bool = True) -> list[int]:
    """``"20,21"`` → [20, 21]; ``"3-5,9"`` → [3, 4, 5, 9]; ``"none"`` → [] (order kept as written)."""
    if not isinstance(text, str):
        raise IndexListError(f"expected text like 3,5,7 or 3-5, got {type(text).__name__}")
    s = text.strip()
    if allow_none and s.lower() == "none":
        return []
    if not s:
        raise IndexListError("empty index list" + (" (write 'none' for no blocks)" if allow_none else ""))
    out: list[int] = []
    seen: set[int] = set()
    for pos, raw in enumerate(s.split(",")):
        if not raw.strip():
            raise IndexListError(f"empty item at position {pos + 1} in {text!r}")
        m = _ITEM.match(raw)
        if not m:
            why = "indices are 0-based and non-negative" if raw.strip().startswith("-") else \
                "expected N or A-B with whole numbers"
            raise IndexListError(f"bad item {raw.strip()!r} in {text!r}: {why}")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise IndexListError(f"backwards range {raw.strip()!r} in {text!r}: write {b}-{a}")
        if len(out) + (b - a + 1) > max_count:
            raise IndexListError(f"{text!r} names more than {max_count} indices; no model has that many blocks")
        for i in range(a, b + 1):
            if i in seen:
                raise IndexListError(f"index {i} appears twice in {text!r}")
            seen.add(i)
            out.append(i)
    return out
