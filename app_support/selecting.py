"""Block selection helpers for the Select page: chart clicks → blocks, the working selection, agreement."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import streamlit as st

from .jobs import Job


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


# ---- the bake-off (analysis.recommend) for the loaded model ---------------------------------------------

#: the bake-off settings the Select page shows (the rest stay at RecommendConfig's defaults)
BAKEOFF_SHOWN = ("ks", "heal", "heldout_tokens", "seeds")


@st.cache_resource(show_spinner=False)
def bakeoff_cache() -> dict:
    """Process-wide ``{key: recommend result}`` of finished bake-offs (per model, data, run and settings)."""
    return {}


def bakeoff_key(lm, tokens, run_id: str, cfg) -> str:
    from dataclasses import asdict

    from .state import stable_hash

    return stable_hash({"kind": "bakeoff", "model": lm.fingerprint, "dtype": str(lm.dtype), "run": run_id,
                        "tokens": tokens.sha256() if hasattr(tokens, "sha256") else None, "cfg": asdict(cfg)}, 12)


def bakeoff_config(settings: dict):
    """RecommendConfig from the page's flat settings (missing keys: the dataclass defaults)."""
    from analysis.recommend.config import RecommendConfig
    from analysis.settings import build

    return build(RecommendConfig, settings)


def bakeoff_slot(run_id: str) -> str:
    """The session's job slot of the bake-off of run ``run_id`` (one per run, re-attached after a reload)."""
    return f"bakeoff.{run_id}"


class BakeoffJob(Job):
    """``analysis.recommend.recommend`` as a :class:`~app_support.jobs.Job` keyed by its inputs (model, data,
    run and settings): a second start joins the first, a reload re-attaches, the time left is the runner's
    smoothed one (restarted at each stage: analysis, ground truth, judging, healing).

    Stop: a bake-off stopped while healing returns the finished rows (every unhealed plan judged, the healed
    rows done so far) with ``"stopped"`` set — labelled partial by the page, never cached as the result;
    stopped before the judging finished, it returns ``{"stopped": why, "rows": []}`` (the windows measured
    are cached on disk and a new start resumes there)."""

    def __init__(self, key: str, lm, tokens, run, cfg, run_id: str) -> None:
        super().__init__(key=key, kind="bakeoff", label="the bake-off")
        self.lm, self.tokens, self.run, self.cfg, self.run_id = lm, tokens, run, cfg, run_id

    def _progress(self, frac: float, msg: str) -> None:
        stage = msg.split(":", 1)[0]
        self.progress(frac, re.sub(r" · about [^·]* left", "", msg), stage)   # the runner's smoothed time left

    def _work(self):
        import copy

        from analysis.recommend.bakeoff import recommend
        from analysis.recommend.judge import Stopped

        run = copy.deepcopy(self.run)            # the bake-off adds drop-one ΔPPL to it; the page's run stays
        try:
            res = recommend(self.lm, self.tokens, self.cfg, run=run, progress=self._progress,
                            should_stop=self.should_stop, partial=True)
        except Stopped as exc:
            return {"stopped": str(exc), "rows": []}
        if not res.get("stopped"):
            bakeoff_cache()[self.key] = res
        return res


def start_bakeoff(lm, tokens, run_id: str, run, settings: dict) -> tuple[str, "BakeoffJob | None"]:
    """``(key, None)`` when this bake-off ran before (its result is in :func:`bakeoff_cache`), else
    ``(key, job)``: a job not yet started (start it with :func:`app_support.jobs.start_job`, which joins a
    running one with the same key)."""
    cfg = bakeoff_config(settings)
    cfg.validate()
    key = bakeoff_key(lm, tokens, run_id, cfg)
    if key in bakeoff_cache():
        return key, None
    return key, BakeoffJob(key, lm, tokens, run, cfg, run_id)


def recommended_selection(rec: dict) -> dict:
    """What the Select page pre-selects from a bake-off: criterion, granularity, k and its parameters."""
    ch = rec["choice"]
    r = rec["recommendations"][ch["k"]] if ch["k"] in rec["recommendations"] else rec["recommendations"][str(ch["k"])]
    src = r["plan"]["source"]
    crit = src.get("criterion", r["label"]).split("[")[0]
    params = dict(src.get("params") or {})
    return {"criterion": crit, "granularity": rec["granularity"], "k": int(ch["k"]), "params": params,
            "label": r["label"], "heal": r["heal"], "sentence": r["sentence"]}


def standing_line(rec: dict | None, model: str | None, criterion: str) -> str | None:
    """``"on this model: worse than random at k = 3"`` from the session's bake-off, else from the repository's
    evidence table for ``model``; None when neither measured it."""
    if rec:
        parts = []
        for row in rec["rows"]:
            if row["heal"] == "none" and (row["label"] == criterion or row["label"].startswith(criterion + "[")):
                parts.append(f"{row['label']} {row['standing']} at k = {row['k']}" if "[" in row["label"]
                             else f"{row['standing']} at k = {row['k']}")
        if parts:
            return "on this model: " + "; ".join(parts)
    from analysis.recommend.evidence import measured_standing

    return measured_standing(model, criterion)


def bakeoff_rows(rec: dict) -> list[dict]:
    """The table the page shows: one row per plan, with its interval and its standing against random."""
    out = []
    for r in sorted(rec["rows"], key=lambda r: (r["k"], r["dppl"])):
        out.append({"k": r["k"], "criterion": r["label"], "healing": r["heal"], "ΔPPL %": round(r["dppl"], 1),
                    f"{round(100 * rec['settings']['level'])} % interval": f"[{r['lo']:.0f}, {r['hi']:.0f}]",
                    "vs random": r["standing"], "blocks (0-based)": str(r["blocks"])})
    for k, b in rec["random"].items():
        if b:
            out.append({"k": int(k), "criterion": f"random band ({b['n_seeds']} seeds, median)", "healing": "none",
                        "ΔPPL %": round(b["dppl"], 1),
                        f"{round(100 * rec['settings']['level'])} % interval": f"[{b['lo']:.0f}, {b['hi']:.0f}]",
                        "vs random": "—", "blocks (0-based)": "—"})
    return out
