"""Keep a session's work across a browser reload (F5): plans, evaluations, selections, runs, settings.

A reload opens a new Streamlit session with an empty ``st.session_state``. Each session therefore gets a
random id that lives in the page URL (``?sid=…``, 128 random bits); after every script run the session's
results are copied, by reference, into a small process-wide store keyed by that id. When a new session
starts with a ``sid`` the store knows, it gets a shallow copy of those containers back, so a reload loses
nothing and two tabs opened from the same URL do not write into each other's dicts.

The store holds at most :data:`MAX_SESSIONS` sessions (least recently saved dropped first) and forgets a
session after :data:`TTL_S` seconds without a save. *Start over* (:func:`start_over`) forgets the
session and gives it a fresh id. The id is a capability: whoever has the URL has the session, as with any
share link; it carries no other secret.
"""
from __future__ import annotations

import secrets
import threading
import time

import streamlit as st

#: ``st.session_state`` keys kept across reloads (results and the settings that made them; no widgets,
#: no running job, no flash messages).
KEPT = ("es.persist", "es.runs", "es.protect", "es.selection", "es.plans", "es.evals", "es.sweeps",
        "es.generations", "es.figures", "es.tables", "es.current_run", "es.model", "es.data", "es.tokens")
MAX_SESSIONS = 64
TTL_S = 24 * 3600.0
QUERY_KEY = "sid"
_SID = "es.sid"


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, tuple[float, dict]] = {}

    def put(self, sid: str, snapshot: dict) -> None:
        now = time.time()
        with self.lock:
            self.sessions.pop(sid, None)
            self.sessions[sid] = (now, snapshot)          # insertion order = recency
            for old in [k for k, (t, _) in self.sessions.items() if now - t > TTL_S]:
                del self.sessions[old]
            while len(self.sessions) > MAX_SESSIONS:
                del self.sessions[next(iter(self.sessions))]

    def get(self, sid: str) -> dict | None:
        with self.lock:
            item = self.sessions.get(sid)
        if item is None or time.time() - item[0] > TTL_S:
            return None
        return item[1]

    def drop(self, sid: str) -> None:
        with self.lock:
            self.sessions.pop(sid, None)


@st.cache_resource(show_spinner=False)
def store() -> _Store:
    """The process-wide store (one per server process, shared by every session)."""
    return _Store()


def _valid(sid: object) -> bool:
    return isinstance(sid, str) and 16 <= len(sid) <= 64 and sid.replace("-", "").replace("_", "").isalnum()


def _shallow(value):
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value


def restore() -> bool:
    """At the start of a script run: give this session its id and, on a fresh session whose URL names a
    stored one, its saved results back. Returns True when something was restored."""
    s = st.session_state
    if _SID in s:
        if st.query_params.get(QUERY_KEY) != s[_SID]:
            st.query_params[QUERY_KEY] = s[_SID]     # page switches drop query parameters: put it back
        return False
    sid = st.query_params.get(QUERY_KEY)
    snap = store().get(sid) if _valid(sid) else None
    if snap is None:
        sid = secrets.token_urlsafe(16)
        s[_SID] = sid
        st.query_params[QUERY_KEY] = sid
        return False
    s[_SID] = sid
    for key, value in snap.items():
        s[key] = _shallow(value)
    return True


def save() -> None:
    """At the end of a script run: remember this session's results under its id."""
    s = st.session_state
    sid = s.get(_SID)
    if not _valid(sid):
        return
    store().put(sid, {k: s[k] for k in KEPT if k in s and s[k] is not None})


def start_over() -> None:
    """Forget this session's saved results, clear them, and give the session a new id."""
    s = st.session_state
    sid = s.get(_SID)
    if _valid(sid):
        store().drop(sid)
    job = s.get("es.job")
    if job is not None and getattr(job, "running", False):
        job.stop()
    for key in list(s.keys()):
        if isinstance(key, str) and (key.startswith("es.") or key.startswith("w:")):
            del s[key]
    new = secrets.token_urlsafe(16)
    s[_SID] = new
    st.query_params[QUERY_KEY] = new
