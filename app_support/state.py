"""Session state with stable keys, so nothing vanishes when the user switches pages.

Streamlit forgets a widget's value when the page holding the widget is not rendered, so every widget
value that must survive is mirrored into ``st.session_state["es.persist"]`` (see :func:`wkey`). Results
(runs, plans, evaluations) live under ``es.*`` keys that no widget owns.

Schema (all keys prefixed ``es.``):

* ``es.model``       – settings of the loaded model: ``{"spec", "device", "dtype", "trust_remote_code"}``
* ``es.data``        – the data spec the current token set was built from, and ``es.tokens`` (TokenSet)
* ``es.runs``        – ``{run_id: RunRecord}`` (insertion-ordered); ``es.current_run`` the selected one
* ``es.protect``     – ``{run_id: {"mode", "boundary", "extra"}}``: user adjustments of the boundary
* ``es.selection``   – ``{run_id: {"sig", "blocks", "edited"}}``: the working (hand-editable) selection
* ``es.plans``       – ``{name: PlanRecord}`` kept plans
* ``es.evals`` / ``es.sweeps`` / ``es.generations`` – comparison results, keyed by what they depend on
* ``es.figures`` / ``es.tables`` – the latest chart / table of each kind, for the Export page
* ``es.flash``       – messages to show once after a rerun
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

DEFAULT_MODEL = {"spec": "smollm2", "device": "auto", "dtype": "fp32", "trust_remote_code": False}
DEFAULT_DATA = {"source": "builtin", "weights": {"wiki": 1.0}, "n_samples": 32, "seq_len": 256, "seed": 2024,
                "mode": "random", "split": "calib"}
#: the Entropy page's defaults where they differ from AnalysisConfig's: both sinks views in one pass (the page's
#: toggle). KNN is not computed by default: its 256 × 256 distance matrices alone cost about a fifth of a forward per
#: sinks view (docs/benchmarks.md, issue 28), and no model's evidence recommends a criterion that needs it; the
#: Select page offers a re-run with it when EntroDrop ranks. Every other default is the dataclass's
#: (:func:`default_analysis`).
ANALYSIS_APP_DEFAULTS = {"both_views": True}


def default_analysis() -> dict:
    """The Entropy page's settings and their defaults: AnalysisConfig's app-shown settings, flat
    :mod:`analysis.settings` keys (``"k"``, ``"mi"``, ``"mi.estimator"``), plus :data:`ANALYSIS_APP_DEFAULTS`."""
    from analysis.run import AnalysisConfig
    from analysis.settings import defaults

    return {**defaults(AnalysisConfig, app=True), **ANALYSIS_APP_DEFAULTS}


def ss():
    return st.session_state


def init() -> None:
    """Create every ``es.*`` key once per session."""
    s = st.session_state
    for key, factory in (("es.persist", dict), ("es.runs", dict), ("es.protect", dict), ("es.selection", dict),
                         ("es.plans", dict), ("es.evals", dict), ("es.sweeps", dict), ("es.generations", dict),
                         ("es.figures", dict), ("es.tables", dict), ("es.flash", list)):
        if key not in s:
            s[key] = factory()
    for key in ("es.model", "es.data", "es.tokens", "es.current_run", "es.job", "es.data_error"):
        if key not in s:
            s[key] = None


# ---- persisted widget values ---------------------------------------------------------------------

def wkey(name: str, default: Any) -> str:
    """Widget key for a value that must survive page switches.

    Use as ``st.selectbox(..., key=wkey("model.dtype", "fp32"))`` *without* passing ``value``/``index``;
    read the value back with :func:`get` (or the widget's return value).
    """
    s = st.session_state
    store = s.setdefault("es.persist", {})
    key = f"w:{name}"
    if key not in s:
        s[key] = store.get(name, default)
    store.setdefault(name, default)
    return key


def remember(name: str, value: Any) -> None:
    """Store a widget's current value so it is restored on the next visit."""
    st.session_state.setdefault("es.persist", {})[name] = value


def get(name: str, default: Any = None) -> Any:
    """Current value of a persisted widget (live widget value first, then the stored one)."""
    s = st.session_state
    if f"w:{name}" in s:
        return s[f"w:{name}"]
    return s.get("es.persist", {}).get(name, default)


def set_value(name: str, value: Any) -> None:
    """Change a persisted widget's value before the widget is drawn (e.g. from a button)."""
    st.session_state[f"w:{name}"] = value
    remember(name, value)


def sync(*names: str) -> None:
    """Copy the live values of these widgets into the persistent store (call after drawing them)."""
    s = st.session_state
    for n in names:
        if f"w:{n}" in s:
            remember(n, s[f"w:{n}"])


# ---- flash messages ------------------------------------------------------------------------------

def flash(kind: str, text: str) -> None:
    """Queue a message (``info`` / ``success`` / ``warning`` / ``error``) for the next render."""
    st.session_state.setdefault("es.flash", []).append((kind, text))


def show_flash() -> None:
    msgs = st.session_state.get("es.flash") or []
    st.session_state["es.flash"] = []
    for kind, text in msgs:
        getattr(st, kind if kind in ("info", "success", "warning", "error") else "info")(text)


# ---- records -------------------------------------------------------------------------------------

def stable_hash(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass
class RunRecord:
    """One finished (or stopped) analysis pass and everything needed to reproduce it."""

    run_id: str
    result: Any                    # analysis.score.result.AnalysisResult
    model: dict                    # es.model settings used
    data: dict                     # data spec used
    config: dict                   # the analysis settings used (flat analysis.settings keys, seed included)
    label: str = ""
    created: float = field(default_factory=time.time)
    tokens: Any = None             # the calibration TokenSet (for ground truth on the same windows)

    @property
    def num_layers(self) -> int:
        return self.result.num_layers


@dataclass
class PlanRecord:
    """A kept plan: the library's Plan plus how it was chosen (for captions and the CLI command)."""

    name: str
    plan: Any                      # analysis.models.plan.Plan
    run_id: str
    criterion: str
    granularity: str
    k: int
    blocks: list[int]
    edited: bool = False           # blocks changed by hand after the criterion's top-k
    protected: list[int] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)


def runs() -> dict:
    return st.session_state.setdefault("es.runs", {})


def current_run() -> RunRecord | None:
    s = st.session_state
    rid = s.get("es.current_run")
    r = runs()
    if rid in r:
        return r[rid]
    return next(reversed(r.values()), None) if r else None


def add_run(rec: RunRecord) -> None:
    runs()[rec.run_id] = rec
    st.session_state["es.current_run"] = rec.run_id


def plans() -> dict:
    return st.session_state.setdefault("es.plans", {})


def register_figure(name: str, fig, caption: str = "") -> None:
    st.session_state.setdefault("es.figures", {})[name] = (fig, caption)


def register_table(name: str, df, caption: str = "") -> None:
    st.session_state.setdefault("es.tables", {})[name] = (df, caption)
