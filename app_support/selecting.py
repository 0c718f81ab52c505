"""Block selection helpers for the Select page: chart clicks → blocks, the working selection, agreement."""
from __future__ import annotations

from typing import Iterable, Sequence

import streamlit as st


def points_to_blocks(points: Iterable[dict]) -> list[int]:
    """Block indices of clicked / box- / lasso-selected bars (``customdata`` holds the block index)."""
    out: list[int] = []
    for p in points or []:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        v = cd if cd is not None else p.get("x")
        try:
            b = int(round(float(v)))
        except (TypeError, ValueError):
            continue
        if b not in out:
            out.append(b)
    return out


def toggle(blocks: Sequence[int], clicked: Sequence[int], protected: Iterable[int]) -> tuple[list[int], list[int]]:
    """Add unselected clicked blocks, remove selected ones; protected blocks are refused.

    Returns ``(new_blocks, refused)``.
    """
    prot = set(protected)
    cur = set(blocks)
    refused = [b for b in clicked if b in prot]
    for b in clicked:
        if b in prot:
            continue
        cur.symmetric_difference_update({b})
    return sorted(cur), refused


def working_selection(run_id: str, sig: tuple, default_blocks: Sequence[int]) -> dict:
    """The hand-editable selection of a run; reset to the criterion's top-k when its inputs change."""
    store = st.session_state.setdefault("es.selection", {})
    ws = store.get(run_id)
    if ws is None or ws.get("sig") != sig:
        ws = {"sig": sig, "blocks": sorted(int(b) for b in default_blocks), "edited": False, "chart_rev": 0}
        if store.get(run_id):
            ws["chart_rev"] = store[run_id].get("chart_rev", 0) + 1
        store[run_id] = ws
    return ws
