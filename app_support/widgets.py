"""Page scaffolding shared by every page: set-up, sidebar status, error handling, charts, explainers."""
from __future__ import annotations

import contextlib
import traceback

import streamlit as st

from analysis.errors import EntroscopeError, is_oom, oom_error

from . import failures, session_store, state

PAGES = {
    "home": ("app.py", "Home", ":material/home:"),
    "data": ("pages/2_Model_and_data.py", "Model & data", ":material/database:"),
    "entropy": ("pages/3_Entropy.py", "Entropy dynamics", ":material/monitoring:"),
    "select": ("pages/4_Select_blocks.py", "Select blocks", ":material/checklist:"),
    "compare": ("pages/5_Prune_and_compare.py", "Prune & compare", ":material/compare_arrows:"),
    "export": ("pages/6_Export.py", "Export", ":material/download:"),
    "channels": ("pages/7_Channels.py", "Channel pruning", ":material/content_cut:"),
}

#: Browser-tab icons as emoji: Streamlit turns a ``:material/…:`` page icon into a URL on a font CDN,
#: which an offline machine cannot reach (icons inside the page use the bundled font and are fine).
FAVICONS = {":material/biotech:": "🔬", ":material/home:": "🔬", ":material/database:": "🗂️",
            ":material/monitoring:": "📈", ":material/checklist:": "✅", ":material/compare_arrows:": "⚖️",
            ":material/download:": "📦", ":material/extension:": "🧩", ":material/content_cut:": "✂️"}


def favicon(icon: str) -> str:
    """An emoji for the browser tab (never a ``:material/…:`` name, which would be fetched from a CDN)."""
    return FAVICONS.get(icon, "🔬") if icon.startswith(":material/") else icon


INDEX_NOTE = "Block indices are 0-based (block 0 is the first decoder layer)."


def page_setup(title: str, icon: str = ":material/biotech:", intro: str | None = None) -> None:
    """``set_page_config`` (wide), session-state init, the sidebar status and queued messages."""
    st.set_page_config(page_title=f"{title} · Entroscope", page_icon=favicon(icon), layout="wide")
    session_store.restore()
    state.init()
    from .runs import finish_job

    finish_job()
    session_store.save()       # also at the end of every run (app.py); here for pages run on their own
    st.title(f"{icon} {title}")
    if intro:
        st.caption(intro)
    sidebar_status()
    state.show_flash()


_PAGE_OBJECTS: dict = {}


def _extra_pages() -> list[tuple[str, str]]:
    """Other ``pages/N_Name.py`` files (added by other tools), as (path, title), in file-name order."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    known = {v[0] for v in PAGES.values()}
    out = []
    for f in sorted((root / "pages").glob("*.py"), key=lambda p: (int(m.group(1)) if (m := re.match(r"(\d+)", p.name))
                                                                  else 1_000, p.name)):
        rel = f"pages/{f.name}"
        if rel in known or f.name.startswith("_"):
            continue
        out.append((rel, re.sub(r"^\d+[_ ]*", "", f.stem).replace("_", " ") or f.stem))
    return out


def navigation(home_fn) -> list:
    """``st.Page`` objects for ``st.navigation``: Home (a function in app.py), the pipeline pages, then any
    other ``pages/*.py`` (discovered, so tools added later appear in the sidebar)."""
    _PAGE_OBJECTS.clear()
    for key, (path, title, icon) in PAGES.items():
        if key == "home":
            _PAGE_OBJECTS[key] = st.Page(home_fn, title=title, icon=icon, default=True)
        else:
            _PAGE_OBJECTS[key] = st.Page(path, title=title, icon=icon)
    extra = [st.Page(path, title=title, icon=":material/extension:") for path, title in _extra_pages()]
    return list(_PAGE_OBJECTS.values()) + extra


def link(page: str, label: str | None = None, **kw) -> None:
    """A page link; falls back to plain text when the page is not reachable (a page run on its own)."""
    path, title, icon = PAGES[page]
    target = _PAGE_OBJECTS.get(page, path)
    from streamlit.errors import StreamlitPageNotFoundError

    try:
        st.page_link(target, label=label or title, icon=icon, **kw)
    except StreamlitPageNotFoundError:    # a page run on its own (AppTest), outside the multipage app
        st.markdown(f"{icon} {label or title} (open it from the sidebar)")


def switch_to(page: str) -> None:
    st.switch_page(_PAGE_OBJECTS.get(page, PAGES[page][0]))


def sidebar_status() -> None:
    """What the session holds: model, data, current run, plans (with the step that makes each)."""
    from .data import data_label
    from .models import model_label

    s = st.session_state
    with st.sidebar:
        st.markdown("#### Session")
        st.markdown(f"**Model:** {model_label(s.get('es.model'))}")
        tokens = s.get("es.tokens")
        st.markdown(f"**Data:** {data_label(s.get('es.data')) if tokens is not None else 'not sampled yet'}")
        rec = state.current_run()
        if rec is not None:
            r = rec.result
            done = "" if r.manifest.get("completed", True) else " (stopped early)"
            st.markdown(f"**Run:** `{rec.run_id}` · {r.estimator} · {r.n_sequences} seq{done}")
        else:
            st.markdown("**Run:** none yet")
        st.markdown(f"**Plans kept:** {len(state.plans())}")
        job = s.get("es.job")
        if job is not None and job.running:
            st.info(f"Analysis running: {job.frac:.0%} ({job.message})")
        st.caption("Your plans, evaluations and selections survive a browser reload (the `sid` in the address "
                   "is this session's key).")
        st.button("Start over", key="start_over", icon=":material/restart_alt:", on_click=session_store.start_over,
                  help="Forget this session's model choice, data, runs, plans and evaluations")


#: CLI flags that error hints name → where the same setting lives in the app (longest first when matching).
APP_PLACES = {
    "--protect none": "Protected blocks on the Entropy page's analysis settings",
    "--sinks keep or first": "Sinks → keep or first (Entropy page, analysis settings)",
    "--sinks keep": "Sinks → keep (Entropy page, analysis settings)",
    "--heal distill": "the distill heal on Prune & compare",
    "--device cpu": "Device → cpu (Model & data)",
    "--trust-remote-code": "“Trust remote code” (Model & data)",
    "--skip-first-token": "Sinks → first (Entropy page)",
    "--seq-len": "the window length (Model & data)",
    "--text-field": "the text field (Model & data)",
    "--multiple-of": "“round to a multiple of” (Channels page)",
    "--overwrite": "the overwrite option",
    "--also": "“Also compute (same pass)” on the Entropy page with",
    "--mi": "MI-PRUN in the Entropy page's analysis settings",
    "--k": "KNN k (Entropy page, analysis settings)",
}


def app_message(exc: BaseException) -> str:
    """An error's one line for the app: its hint speaks of the app's settings, not of CLI flags.

    Hints are written for the command line (``--mi``, ``python -m analysis …``); here each known flag becomes the
    place of the same setting in the app (:data:`APP_PLACES`), and a hint that tells the user to run a CLI command
    is dropped (the Export page gives the commands, for those who want them)."""
    import re

    msg = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", None)
    if not hint:
        return msg
    if "python -m analysis" in hint or re.search(r"`[^`]*analysis [a-z]+[^`]*`", hint):
        return msg
    out = hint
    for flag in sorted(APP_PLACES, key=len, reverse=True):
        out = re.sub(re.escape(flag) + r"(?![\w-])(\s+[A-Z0-9_.]+(?=\W|$))?", APP_PLACES[flag], out)
    if re.search(r"(?<![\w-])--[a-z]", out):      # a flag with no app counterpart: a CLI-only remedy
        return msg
    return f"{msg} ({out})"


def show_error(exc: BaseException, what: str = "") -> None:
    """A step failed: its specific reason in one line (an EntroscopeError's message, out of memory, the OS
    reason and path of an OSError); anything else is a bug in Entroscope — logged on the server with its
    traceback and the step, shown as "internal error …" plus a details expander (:mod:`app_support.failures`)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, EntroscopeError):
        st.error(f"{prefix}{app_message(exc)}", icon=":material/error:")
        return
    if is_oom(exc):
        st.error(f"{prefix}{oom_error(exc)}", icon=":material/memory:")
        return
    text, bug = failures.describe(exc, what)
    if not bug:
        st.error(f"{prefix}{text}", icon=":material/error:")
        return
    st.error(f"{prefix}{text}", icon=":material/bug_report:")
    with st.expander("Details (for a bug report)"):
        st.code("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-6000:], language="text")


@contextlib.contextmanager
def guarded(what: str = ""):
    """Run a block; show errors instead of tracebacks. Streamlit's rerun/stop signals pass through
    (they are BaseExceptions). What was rendered before the error stays on the page. The last resort for a
    page section: specific failures are caught where they arise; what reaches here unnamed is a bug, logged
    with ``what`` as the step (:func:`show_error`)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - last resort: specific reason, else logged as a bug with the step
        show_error(exc, what)


def chart(fig, caption: str, name: str | None = None, key: str | None = None, **kw):
    """Plotly chart + its one-line caption; registered for the Export page under ``name``."""
    out = st.plotly_chart(fig, key=key, width="stretch", config={"displaylogo": False}, **kw)
    st.caption(caption)
    if name:
        state.register_figure(name, fig, caption)
    return out


def table(df, caption: str, name: str | None = None, **kw):
    """Dataframe + caption; registered for the Export page under ``name``."""
    kw.setdefault("hide_index", True)
    st.dataframe(df, width="stretch", **kw)
    st.caption(caption)
    if name:
        state.register_table(name, df, caption)


# ---- explainers (formulas straight from the registries) ----------------------------------------

def explain_estimator(name: str) -> None:
    from analysis.measure.estimators import ESTIMATORS

    info = ESTIMATORS.get(name)
    if info is None:
        return
    st.markdown(f"**{info.title}** (`{info.name}`) — "
                f"{'scale-invariant' if info.scale_invariant else 'scale-sensitive'}; "
                f"defaults {', '.join(f'{k}={v}' for k, v in info.defaults.items()) or 'none'}"
                + (f"; range {info.bounds}" if getattr(info, "bounds", "") else ""))
    if info.formula:
        st.latex(info.formula)
    if info.notes:
        st.caption(info.notes)


def explain_criterion(name: str) -> None:
    from analysis.score.criteria import CRITERIA

    c = CRITERIA.get(name)
    if c is None:
        return
    direction = "lowest score dropped first" if c.redundant == "low" else "highest score dropped first"
    st.markdown(f"**{c.title}** (`{c.name}`) — {c.description}")
    formula = getattr(c, "formula", "") or ""
    if formula:
        st.latex(formula)
    bits = [f"score: {c.score_label}", direction, f"granularities: {', '.join(c.granularities)}"]
    if c.needs_window:
        bits.append("selects a contiguous window of k blocks")
    if c.stochastic:
        bits.append("stochastic (seeded)")
    if c.params:
        bits.append("parameters: " + ", ".join(f"{k} = {_param_default(k, v)}" for k, v in c.params.items()))
    st.caption(" · ".join(bits) + (f" · {c.reference}" if c.reference else ""))


def _param_default(name: str, value) -> str:
    """A parameter's default in words: ``None`` means the run's own choice (e.g. the run's primary estimator)."""
    if value is None:
        return "the run's own" + (" primary estimator" if name == "estimator" else " setting")
    return str(value)


def explainer_popover(label: str = ":material/function: How is this computed?", estimators=(), criteria=()) -> None:
    """A popover with the formulas of the estimators / criteria a chart uses, and a link to Home."""
    with st.popover(label):
        for e in estimators:
            explain_estimator(e)
        for c in criteria:
            explain_criterion(c)
        link("home", "All estimators and criteria (Home → explainer)")


def need(condition: bool, message: str, page: str | None = None, label: str | None = None) -> None:
    """Stop the page with a friendly pointer to the step that is missing (no dead ends)."""
    if condition:
        return
    st.info(message)
    if page:
        link(page, label)
    st.stop()
