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


# ---- the bake-off (analysis.recommend) for the loaded model ---------------------------------------------

import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

#: the bake-off settings the Select page shows (the rest stay at RecommendConfig's defaults)
BAKEOFF_SHOWN = ("ks", "heal", "heldout_tokens", "seeds")


@st.cache_resource(show_spinner=False)
def bakeoff_cache() -> dict:
    """Process-wide ``{key: recommend result}`` of finished bake-offs (per model, data, run and settings)."""
    return {}


def bakeoff_key(lm, tokens, run_id: str, cfg) -> str:
    from dataclasses import asdict

    from .state import stable_hash

    return stable_hash({"model": lm.fingerprint, "dtype": str(lm.dtype), "run": run_id,
                        "tokens": tokens.sha256() if hasattr(tokens, "sha256") else None, "cfg": asdict(cfg)}, 12)


def bakeoff_config(settings: dict):
    """RecommendConfig from the page's flat settings (missing keys: the dataclass defaults)."""
    from analysis.recommend.config import RecommendConfig
    from analysis.settings import build

    return build(RecommendConfig, settings)


@dataclass
class BakeoffJob:
    """``analysis.recommend.recommend`` in a background thread, with progress, time left and Stop."""

    key: str
    lm: object
    tokens: object
    run: object                      # the page's AnalysisResult (a copy: the bake-off adds drop-one ΔPPL to it)
    cfg: object
    frac: float = 0.0
    message: str = "starting"
    result: dict | None = None
    error: str | None = None
    error_detail: str | None = None
    stopped: bool = False
    started: float = field(default_factory=time.time)
    finished: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "BakeoffJob":
        threading.Thread(target=self._run, name=f"entroscope-bakeoff-{self.key}", daemon=True).start()
        return self

    def _progress(self, frac: float, msg: str) -> None:
        self.frac, self.message = float(frac), msg

    def _run(self) -> None:
        from analysis.errors import EntroscopeError
        from analysis.recommend.bakeoff import recommend
        from analysis.recommend.judge import Stopped

        try:
            self.result = recommend(self.lm, self.tokens, self.cfg, run=self.run, progress=self._progress,
                                    should_stop=self.stop_event.is_set)
            bakeoff_cache()[self.key] = self.result
        except Stopped as exc:
            self.stopped, self.error = True, str(exc)
        except EntroscopeError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - last resort: the specific reason, else a bug logged with the step
            from .failures import describe

            self.error, bug = describe(exc, "the bake-off")
            self.error_detail = traceback.format_exc() if bug else None
        finally:
            self.finished = time.time()
            self.done_event.set()

    @property
    def running(self) -> bool:
        return not self.done_event.is_set()

    def stop(self) -> None:
        self.stop_event.set()

    def status_text(self) -> str:
        el = (self.finished or time.time()) - self.started
        return f"{self.message} · {el:.0f} s" + (" · stopping" if self.stop_event.is_set() else "")


def start_bakeoff(lm, tokens, run_id: str, run, settings: dict) -> tuple[str, "BakeoffJob | None"]:
    """``("cached", None)`` when this bake-off ran before, else ``("started", job)``."""
    import copy

    cfg = bakeoff_config(settings)
    cfg.validate()
    key = bakeoff_key(lm, tokens, run_id, cfg)
    if key in bakeoff_cache():
        return key, None
    return key, BakeoffJob(key, lm, tokens, copy.deepcopy(run), cfg).start()


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
