"""Keep a session's work across a browser reload (F5): plans, evaluations, selections, runs, settings, jobs.

A reload opens a new Streamlit session with an empty ``st.session_state``. Each session therefore gets a
random id that lives in the page URL (``?sid=…``, 128 random bits); after every script run the session's
results (:data:`KEPT`) are written into one embedded SQLite database (:class:`SessionDB`, stdlib
``sqlite3``, WAL journal, busy timeout), and a new session whose URL names a stored id gets them back.

**Lifetime.** A session touched (saved or reopened) within :data:`RECENT_S` (one day) is never removed,
however many new visitors arrive. Sessions idle longer than :data:`MAX_AGE_S` (30 days) are removed; and
when the database holds more than :data:`MAX_BYTES` (``ENTROSCOPE_SESSION_DB_MB``, default 2048 MiB),
idle sessions older than a day are removed oldest first until it fits (recent ones are kept even above
the cap). The database is ``$ENTROSCOPE_SESSION_DB`` or ``<cache>/sessions.sqlite3``.

**Two tabs on one address.** Every stored session has a version counter. A tab remembers the version
(and a digest of every kept value) it loaded; its save is a compare-and-swap on that version. When
another tab wrote in between, the changes are merged value by value (a dict such as ``es.plans`` entry
by entry): what only one tab changed is kept from that tab. When both tabs changed the same entry
differently, nothing is overwritten: this tab continues under a new id (a fork, with a notice), and the
other tab keeps the address. Derived values (the latest chart and table of each kind, :data:`DERIVED`)
take the last writer's.

*Start over* (:func:`start_over`) forgets the session and gives it a new id. The id is a capability:
whoever has the URL has the session, as with any share link; it carries no other secret. Values are
stored with :mod:`pickle`: the database is written and read only by this server (never upload one).
The previous store was an in-memory dict of the server process, so there is nothing on disk to migrate.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import streamlit as st

from . import state

#: ``st.session_state`` keys kept across reloads (results, the settings that made them and the keys of
#: the session's jobs; no widgets, no live job object, no flash messages).
KEPT = ("es.persist", "es.runs", "es.protect", "es.selection", "es.plans", "es.evals", "es.sweeps",
        "es.generations", "es.figures", "es.tables", "es.current_run", "es.model", "es.data", "es.tokens",
        "es.heal", "es.jobs", "es.last_comparison", "es.last_generation", "es.last_sweep", "es.last_sweep_meta",
        "es.last_sweep_result", "es.task_evals", "es.bakeoff", "es.bakeoff_results",
        "es.bakeoff_applied")
#: kept keys whose entries are re-derived on every render: the last writer's entry wins in a merge
DERIVED = ("es.figures", "es.tables")
RECENT_S = 24 * 3600.0
MAX_AGE_S = 30 * 24 * 3600.0
MAX_BYTES = int(float(os.environ.get("ENTROSCOPE_SESSION_DB_MB", "2048")) * 2**20)
QUERY_KEY = "sid"
_SID, _VERSION, _BASE = "es.sid", "es.sid_version", "es.sid_base"
SCHEMA = 1
log = logging.getLogger(__name__)


def db_path() -> Path:
    env = os.environ.get("ENTROSCOPE_SESSION_DB")
    if env:
        return Path(env)
    from analysis.models.embedded import cache_root

    return cache_root() / "sessions.sqlite3"


class SessionDB:
    """Sessions and job records in one SQLite file; safe across threads and server processes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE IF NOT EXISTS sessions (sid TEXT PRIMARY KEY, version INTEGER NOT NULL, "
                      "created REAL NOT NULL, touched REAL NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL)")
            c.execute("CREATE INDEX IF NOT EXISTS sessions_touched ON sessions(touched)")
            c.execute("CREATE TABLE IF NOT EXISTS jobs (key TEXT PRIMARY KEY, kind TEXT, label TEXT, sid TEXT, "
                      "status TEXT, frac REAL, message TEXT, starts INTEGER NOT NULL DEFAULT 0, "
                      "joins INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL)")
            c.execute(f"PRAGMA user_version={SCHEMA}")

    @contextlib.contextmanager
    def _conn(self):
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA synchronous=NORMAL")
            yield c
        finally:
            c.close()

    # ---- sessions ------------------------------------------------------------------------------------
    def get(self, sid: str, touch: bool = True) -> tuple[int, bytes] | None:
        """``(version, blob)`` of a stored session (and mark it as used now), or None."""
        with self._conn() as c:
            row = c.execute("SELECT version, data FROM sessions WHERE sid=?", (sid,)).fetchone()
            if row is not None and touch:
                c.execute("UPDATE sessions SET touched=? WHERE sid=?", (time.time(), sid))
        return None if row is None else (int(row[0]), bytes(row[1]))

    def put(self, sid: str, blob: bytes, expected: int | None) -> int | None:
        """Write a session if its stored version is still ``expected`` (None: the id must be new).
        Returns the new version, or None when another writer got there first."""
        now = time.time()
        with self._conn() as c:
            if expected is None:
                try:
                    c.execute("INSERT INTO sessions VALUES (?, 1, ?, ?, ?, ?)", (sid, now, now, len(blob), blob))
                except sqlite3.IntegrityError:
                    return None
                self.cleanup(c)
                return 1
            cur = c.execute("UPDATE sessions SET version=version+1, touched=?, size=?, data=? "
                            "WHERE sid=? AND version=?", (now, len(blob), blob, sid, expected))
            return expected + 1 if cur.rowcount == 1 else None

    def drop(self, sid: str) -> None:
        with self._conn() as c:
            c.execute("DELETE FROM sessions WHERE sid=?", (sid,))

    def cleanup(self, c=None, now: float | None = None) -> int:
        """Remove sessions idle for :data:`MAX_AGE_S`; above :data:`MAX_BYTES`, idle ones older than
        :data:`RECENT_S`, oldest first. Returns how many were removed."""
        if c is None:
            with self._conn() as c2:
                return self.cleanup(c2, now)
        now = time.time() if now is None else now
        n = c.execute("DELETE FROM sessions WHERE touched < ?", (now - MAX_AGE_S,)).rowcount
        total = c.execute("SELECT COALESCE(SUM(size), 0) FROM sessions").fetchone()[0]
        if total > MAX_BYTES:
            for sid, size in c.execute("SELECT sid, size FROM sessions WHERE touched < ? ORDER BY touched",
                                       (now - RECENT_S,)).fetchall():
                if total <= MAX_BYTES:
                    break
                c.execute("DELETE FROM sessions WHERE sid=?", (sid,))
                total -= size
                n += 1
        return n

    def sids(self) -> list[str]:
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT sid FROM sessions ORDER BY touched")]

    def set_touched(self, sid: str, when: float) -> None:
        """Backdate a session (tests, and tooling that imports old sessions)."""
        with self._conn() as c:
            c.execute("UPDATE sessions SET touched=? WHERE sid=?", (when, sid))

    # ---- jobs ------------------------------------------------------------------------------------------
    def job_started(self, key: str, kind: str, label: str, sid: str | None) -> None:
        with self._conn() as c:
            c.execute("INSERT INTO jobs (key, kind, label, sid, status, frac, message, starts, started) "
                      "VALUES (?, ?, ?, ?, 'running', 0, 'starting', 1, ?) ON CONFLICT(key) DO UPDATE SET "
                      "starts=starts+1, status='running', frac=0, message='starting', started=excluded.started, "
                      "finished=NULL, sid=excluded.sid", (key, kind, label, sid, time.time()))

    def job_joined(self, key: str) -> None:
        with self._conn() as c:
            c.execute("UPDATE jobs SET joins=joins+1 WHERE key=?", (key,))

    def job_update(self, key: str, status: str, frac: float, message: str, finished: float | None = None) -> None:
        with self._conn() as c:
            c.execute("UPDATE jobs SET status=?, frac=?, message=?, finished=? WHERE key=?",
                      (status, float(frac), message, finished, key))

    def job(self, key: str) -> dict | None:
        with self._conn() as c:
            c.row_factory = sqlite3.Row
            row = c.execute("SELECT * FROM jobs WHERE key=?", (key,)).fetchone()
        return None if row is None else dict(row)


_DB: dict[str, SessionDB] = {}
_DB_LOCK = threading.Lock()


def db() -> SessionDB:
    """The database for the current ``db_path()`` (one object per path and process)."""
    p = str(db_path())
    with _DB_LOCK:
        if p not in _DB:
            _DB[p] = SessionDB(p)
        return _DB[p]


# ---- encoding and three-way merge ---------------------------------------------------------------------
# A snapshot is encoded as {key: bytes} or, for a dict value, {key: {"d": {entry: bytes}}}: each entry
# pickled on its own, so digests compare entries and a merge can take entries from either side.

def _dumps(value) -> bytes | None:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        log.warning("session value not kept across reloads (%s: %s)", type(exc).__name__, exc)
        return None


def encode(snapshot: dict) -> dict:
    out: dict = {}
    for key, value in snapshot.items():
        if isinstance(value, dict):
            entries = {k: b for k, v in value.items() if (b := _dumps(v)) is not None}
            out[key] = {"d": entries}
        elif (b := _dumps(value)) is not None:
            out[key] = b
    return out


def decode_value(enc):
    if isinstance(enc, dict):
        return {k: pickle.loads(b) for k, b in enc["d"].items()}
    return pickle.loads(enc)


def digests(enc: dict) -> dict:
    h = lambda b: hashlib.sha1(b).hexdigest()  # noqa: E731
    return {k: {"d": {e: h(b) for e, b in v["d"].items()}} if isinstance(v, dict) else h(v) for k, v in enc.items()}


def _changed(d: dict, base: dict, key, entry=None) -> bool:
    a, b = d.get(key), base.get(key)
    if entry is None:
        return a != b
    return (a or {"d": {}})["d"].get(entry) != ((b if isinstance(b, dict) else None) or {"d": {}})["d"].get(entry)


def merge(base_db: dict, base_mine: dict, mine: dict, theirs: dict) -> tuple[dict, list[str]]:
    """Three-way merge of encoded snapshots. ``base_db``: digests of what this tab last read from or wrote
    to the database; ``base_mine``: digests of this tab's own encoding of that same state (pickling a
    restored object need not give the stored bytes back, so each side is compared with its own base).
    Returns (merged, conflicting keys)."""
    dm, dt = digests(mine), digests(theirs)
    merged, conflicts = {}, []
    for key in dict.fromkeys([*mine, *theirs]):
        cm, ct = _changed(dm, base_mine, key), _changed(dt, base_db, key)
        if not ct or dm.get(key) == dt.get(key):
            pick = mine.get(key)
        elif not cm:
            pick = theirs.get(key)
        elif isinstance(dm.get(key), dict) and isinstance(dt.get(key), dict):
            entries = {}
            for e in dict.fromkeys([*dm[key]["d"], *dt[key]["d"]]):
                em, et = _changed(dm, base_mine, key, e), _changed(dt, base_db, key, e)
                src = theirs if (em is False and et) else mine
                if em and et and dm[key]["d"].get(e) != dt[key]["d"].get(e) and key not in DERIVED:
                    conflicts.append(f"{key}[{e}]")
                if e in src[key]["d"]:
                    entries[e] = src[key]["d"][e]
            pick = {"d": entries}
        else:
            if key not in DERIVED:
                conflicts.append(key)
            pick = mine.get(key)
        if pick is not None:
            merged[key] = pick
    return merged, conflicts


# ---- the Streamlit side ---------------------------------------------------------------------------------

def _valid(sid: object) -> bool:
    return isinstance(sid, str) and 16 <= len(sid) <= 64 and sid.replace("-", "").replace("_", "").isalnum()


def _snapshot() -> dict:
    s = st.session_state
    return {k: s[k] for k in KEPT if k in s and s[k] is not None}


def _new_sid() -> str:
    sid = secrets.token_urlsafe(16)
    s = st.session_state
    s[_SID], s[_VERSION], s[_BASE] = sid, None, ({}, {})
    st.query_params[QUERY_KEY] = sid
    return sid


def restore() -> bool:
    """At the start of a script run: give this session its id and, on a fresh session whose URL names a
    stored one, its saved results back. Returns True when something was restored."""
    s = st.session_state
    if _SID in s:
        if st.query_params.get(QUERY_KEY) != s[_SID]:
            st.query_params[QUERY_KEY] = s[_SID]     # page switches drop query parameters: put it back
        return False
    sid = st.query_params.get(QUERY_KEY)
    row = db().get(sid) if _valid(sid) else None
    if row is None:
        _new_sid()
        return False
    version, blob = row
    enc = pickle.loads(blob)
    for key, value in enc.items():
        s[key] = decode_value(value)
    s[_SID], s[_VERSION], s[_BASE] = sid, version, (digests(enc), digests(encode(_snapshot())))
    return True


def _apply(merged: dict, mine: dict) -> None:
    """Bring what another tab changed into this session (dicts updated in place)."""
    s = st.session_state
    dm = digests(mine)
    for key, value in merged.items():
        d = digests({key: value})[key]
        if d == dm.get(key):
            continue
        if isinstance(value, dict) and isinstance(s.get(key), dict):
            target = s[key]
            for e in [e for e in target if e not in value["d"]]:
                del target[e]
            for e, b in value["d"].items():
                if (dm.get(key) or {"d": {}})["d"].get(e) != d["d"][e]:
                    target[e] = pickle.loads(b)
        else:
            s[key] = decode_value(value)


def save() -> None:
    """At the end of a script run: store this session's results under its id (only when they changed).
    Merges with another tab's concurrent save, or forks this tab to a new id when both changed one value."""
    s = st.session_state
    sid = s.get(_SID)
    if not _valid(sid):
        return
    mine = encode(_snapshot())
    dm = digests(mine)
    base_db, base_mine = s.get(_BASE) or ({}, {})
    if dm == base_mine and s.get(_VERSION) is not None:
        return
    store = db()
    for _ in range(5):
        version = store.put(sid, pickle.dumps(mine, protocol=pickle.HIGHEST_PROTOCOL), s.get(_VERSION))
        if version is not None:
            s[_VERSION], s[_BASE] = version, (dm, dm)
            return
        row = store.get(sid, touch=False)
        if row is None:                              # removed meanwhile (another tab pressed Start over)
            s[_VERSION] = None
            continue
        their_version, blob = row
        merged, conflicts = merge(base_db, base_mine, mine, pickle.loads(blob))
        if conflicts:
            _fork(mine, dm, conflicts)
            return
        version = store.put(sid, pickle.dumps(merged, protocol=pickle.HIGHEST_PROTOCOL), their_version)
        if version is not None:
            _apply(merged, mine)
            s[_VERSION], s[_BASE] = version, (digests(merged), digests(encode(_snapshot())))
            return
    _fork(mine, dm, ["(busy)"])


def _fork(mine: dict, dm: dict, conflicts: list[str]) -> None:
    s = st.session_state
    old = s[_SID]
    for _ in range(3):
        new = secrets.token_urlsafe(16)
        version = db().put(new, pickle.dumps(mine, protocol=pickle.HIGHEST_PROTOCOL), None)
        if version is not None:
            break
    s[_SID], s[_VERSION], s[_BASE] = new, version, (dm, dm)
    st.query_params[QUERY_KEY] = new
    what = ", ".join(dict.fromkeys(c.split("[")[0].removeprefix("es.") for c in conflicts))
    text = (f"Another tab changed this session at the same time ({what}). Nothing was overwritten: this "
            f"tab now continues as a copy under a new address (sid {new[:6]}…); the other tab keeps "
            f"the old one ({old[:6]}…).")
    state.flash("warning", text)
    s["es.forked"] = (old, new)
    st.toast(text, icon=":material/call_split:")


def start_over() -> None:
    """Forget this session's saved results, clear them, and give the session a new id."""
    s = st.session_state
    sid = s.get(_SID)
    if _valid(sid):
        db().drop(sid)
    job = s.get("es.job")
    if job is not None and getattr(job, "running", False):
        job.stop()
    for key in list(s.keys()):
        if isinstance(key, str) and (key.startswith("es.") or key.startswith("w:")):
            del s[key]
    _new_sid()
