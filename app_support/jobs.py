"""Long work as jobs: background threads with progress, a smoothed time left and a Stop that keeps what is done.

Every long step of the app (the analysis pass, MI-PRUN, ground truth, the bake-off, healing, the comparison,
sweeps, generation — and any other page's work through :func:`start_job`) runs as a :class:`Job` keyed by its
inputs (a hash of the model fingerprint, the data and the settings). Jobs live in a process-wide
:class:`JobRegistry`; each session remembers its jobs' keys in ``es.jobs`` (kept by the session store),
so a reload (F5) or a second visit re-attaches to the running job and shows its progress, and starting
the same job twice joins the first instead of doing the work again.

The page starts a job and polls it (:func:`follow`: ``st.progress`` with the time left, and Stop).
Clicking *Stop* reruns the script, which sets the job's stop event; the work checks ``should_stop``
between steps and returns what finished. Switching pages interrupts only the polling, not the job.

Finished results are also kept in a process-wide cache (``st.cache_resource``) keyed by the model
fingerprint, the token set's sha256 and the analysis config, so repeating a run is instant.

Test hook (browser tests only): ``ENTROSCOPE_TEST_JOB_HOLD="ground-truth:120,comparison:10"`` makes every
progress report of a job of those kinds wait that many seconds, or until Stop is pressed, so a test can press
Stop while the job runs however fast the machine is (:func:`job_hold_seconds`). Unset, nothing waits.
"""
from __future__ import annotations

import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import streamlit as st

from analysis.errors import EntroscopeError


def fmt_seconds(sec: float) -> str:
    """``42 s`` / ``3 min 05 s``."""
    sec = int(round(sec))
    return f"{sec} s" if sec < 90 else f"{sec // 60} min {sec % 60:02d} s"


def job_hold_seconds(kind: str) -> float:
    """Seconds each progress report of a ``kind`` job waits (or until Stop) under the test hook
    ``ENTROSCOPE_TEST_JOB_HOLD`` (``"kind:seconds,…"``; a kind without seconds waits 30 s); 0 when unset."""
    for part in os.environ.get("ENTROSCOPE_TEST_JOB_HOLD", "").split(","):
        name, _, sec = part.strip().partition(":")
        if name and name == kind:
            return float(sec or 30)
    return 0.0


@st.cache_resource(show_spinner=False)
def result_cache() -> dict:
    """Process-wide ``{run_id: AnalysisResult}`` of completed (not stopped) runs."""
    return {}


class Smoother:
    """Time left from a stream of ``(time, fraction done)``: an exponential moving average of the rate.

    The rate is measured over intervals of at least ``min_dt`` seconds and averaged in time with time
    constant ``tau`` (an interval of ``dt`` seconds weighs ``1 − exp(−dt/tau)``), so one slow or fast
    batch moves the estimate a little, not by minutes, while a lasting change of speed is followed within
    about ``tau`` seconds; the estimate appears once two intervals are measured. A new stage (``reset``)
    starts a new average.
    """

    def __init__(self, tau: float = 20.0, min_dt: float = 1.0) -> None:
        self.tau, self.min_dt = tau, min_dt
        self.reset()

    def reset(self) -> None:
        self.rate: float | None = None
        self.samples = 0
        self.last: tuple[float, float] | None = None

    def update(self, t: float, frac: float) -> None:
        if self.last is None:
            self.last = (t, frac)
            return
        t0, f0 = self.last
        if t - t0 < self.min_dt or frac <= f0:
            return
        r = (frac - f0) / (t - t0)
        a = 1.0 - math.exp(-(t - t0) / self.tau)
        self.rate = r if self.rate is None else a * r + (1 - a) * self.rate
        self.samples += 1
        self.last = (t, frac)

    def eta(self, t: float, frac: float) -> float | None:
        """Seconds left at time ``t`` (None until two intervals are measured)."""
        if self.rate is None or self.samples < 2 or self.rate <= 0:
            return None
        since = max(0.0, t - self.last[0])            # time already spent on the current interval
        return max(0.0, (1.0 - frac) / self.rate - since)


@dataclass(eq=False)
class Job:
    """A long piece of work in a background thread: progress, smoothed time left, Stop keeps what is done.

    ``work(job)`` does the work and returns the result; it reports with ``job.progress(frac, msg)``,
    checks ``job.should_stop()`` between steps, and may put finished pieces into ``job.partial`` as it
    goes (a stopped job's result is whatever ``work`` returns after the stop — what finished). ``key``
    identifies the inputs (model fingerprint, data, settings): the :class:`JobRegistry` joins a second
    start of the same key to the first. A job never touches ``st.session_state`` (it has no session).
    """

    key: str
    work: Callable | None = None
    kind: str = "job"
    label: str = ""
    frac: float = 0.0
    message: str = "starting"
    result: object = None
    partial: dict = field(default_factory=dict)
    error: str | None = None
    error_detail: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    stage: str = ""
    smoother: Smoother = field(default_factory=Smoother)
    stop_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    on_change: Callable | None = None          # (job) -> None: the registry mirrors status into the store

    def start(self) -> "Job":
        self.thread = threading.Thread(target=self._run, name=f"entroscope-{self.kind}-{self.key}", daemon=True)
        self.thread.start()
        return self

    def progress(self, frac: float, msg: str, stage: str | None = None) -> None:
        """Report progress; a new ``stage`` restarts the time-left average."""
        stage = self.stage if stage is None else stage
        if stage != self.stage:
            self.smoother.reset()
            self.stage = stage
        self.frac, self.message = float(frac), msg
        self.smoother.update(time.time(), self.frac)
        if self.on_change is not None:
            self.on_change(self)
        hold = job_hold_seconds(self.kind)
        if hold:                                  # test hook only (module docstring): Stop ends the wait
            self.stop_event.wait(hold)

    def should_stop(self) -> bool:
        return self.stop_event.is_set()

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    @property
    def eta(self) -> float | None:
        if self.finished is not None:
            return None
        return self.smoother.eta(time.time(), self.frac)

    def status_text(self) -> str:
        """``"analysed 8/32 sequences · 12 s · about 30 s left"`` for the progress bar."""
        eta = None if "left" in self.message else self.eta        # some steps report their own time left
        left = "" if eta is None else f" · about {fmt_seconds(eta)} left"
        return f"{self.message} · {self.elapsed:.0f} s{left}" + (" · stopping" if self.stopped else "")

    def _work(self):
        return self.work(self)

    def _run(self) -> None:
        try:
            self.result = self._work()
        except EntroscopeError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - last resort: the specific reason, else a bug logged with the step
            from .failures import describe

            self.error, bug = describe(exc, self.label or f"the {self.kind}")
            if bug:
                self.error_detail = traceback.format_exc()
        finally:
            self.finished = time.time()
            try:
                if self.on_change is not None:
                    self.on_change(self)          # the store sees the final status before anyone waiting does
            finally:
                self.done_event.set()

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def ok(self) -> bool:
        """Finished, not stopped, no error: a later start of the same key can reuse it."""
        return not self.running and not self.stopped and self.error is None

    @property
    def status(self) -> str:
        return ("running" if self.running else "error" if self.error else "stopped" if self.stopped
                else "done")

    def stop(self) -> None:
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started


class JobRegistry:
    """Process-wide jobs by key: a second start of a running (or finished, complete) key joins the first.

    Every start and join is also written to the session database's ``jobs`` table (starts, joins,
    status, progress), so what ran is visible from outside the process too (the browser tests read it).
    """

    MAX_FINISHED = 64

    def __init__(self, store=None) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.store = store
        self._written: dict[str, float] = {}

    def get(self, key: str | None) -> Job | None:
        with self.lock:
            return self.jobs.get(key) if key else None

    def submit(self, job: Job, sid: str | None = None) -> tuple[Job, bool]:
        """Start ``job`` unless a job with its key is running or finished complete: then return that one.
        Returns ``(job, joined)``."""
        with self.lock:
            old = self.jobs.get(job.key)
            if old is not None and (old.running or old.ok):
                if self.store is not None:
                    self.store.job_joined(job.key)
                return old, True
            self.jobs[job.key] = job
            done = [k for k, j in self.jobs.items() if not j.running]
            for k in done[: max(0, len(done) - self.MAX_FINISHED)]:
                del self.jobs[k]
        if self.store is not None:
            self.store.job_started(job.key, job.kind, job.label, sid)
            job.on_change = self._mirror
        job.start()
        return job, False

    def _mirror(self, job: Job) -> None:
        now = time.time()
        if job.running and now - self._written.get(job.key, 0.0) < 1.0:
            return                                   # progress: at most one write a second
        self._written[job.key] = now
        self.store.job_update(job.key, job.status, job.frac, job.message, job.finished)


@st.cache_resource(show_spinner=False)
def _registry(path: str) -> JobRegistry:
    from .session_store import db

    return JobRegistry(db())


def registry() -> JobRegistry:
    """The process-wide registry (one per session database)."""
    from .session_store import db_path

    return _registry(str(db_path()))


def session_jobs() -> dict:
    """``{slot: job key}`` of this session (kept across reloads by the session store)."""
    return st.session_state.setdefault("es.jobs", {})


def start_job(slot: str, job: Job) -> tuple[Job, bool]:
    """Start (or join) ``job`` for this session's ``slot`` ("analysis", "comparison", …) and remember its
    key, so a reload re-attaches. Returns ``(job, joined)``."""
    from .session_store import save

    job, joined = registry().submit(job, st.session_state.get("es.sid"))
    session_jobs()[slot] = job.key
    save()                                     # now, not at the end of the run: a reload mid-job finds it
    return job, joined


def attached(slot: str) -> Job | None:
    """This session's job in ``slot`` (after a reload too), or None (never started, or lost with a server
    restart: then the slot is cleared)."""
    key = session_jobs().get(slot)
    job = registry().get(key)
    if key and job is None:
        session_jobs().pop(slot, None)
    return job


def forget(slot: str) -> None:
    session_jobs().pop(slot, None)


def follow(job: Job, title: str, stop_key: str, stop_help: str = "Stops after the current step; keeps what "
           "is finished", poll: float = 0.25, on_tick: Callable | None = None) -> None:
    """Draw a progress bar with the time left and a Stop button, and poll until ``job`` finishes.

    Clicking Stop reruns the page: the button sets the job's stop event and polling resumes until the
    work stops at its next step. Leaving the page interrupts only the polling, never the job.
    """
    bar = st.progress(min(job.frac, 1.0), text=f"{title} … {job.status_text()}")
    stop_slot = st.empty()                     # cleared with the bar: no Stop button outlives its job
    if stop_slot.button("Stop", icon=":material/stop:", key=stop_key, help=stop_help, disabled=job.stopped):
        job.stop()
        st.toast("Stopping after the current step …")
    while job.running:
        bar.progress(min(job.frac, 1.0), text=f"{title} … {job.status_text()}")
        if on_tick is not None:
            on_tick(job)
        time.sleep(poll)
    bar.empty()
    stop_slot.empty()


class AnalysisJob(Job):
    """The analysis pass (:func:`analysis.run.analyze`) as a :class:`Job` keyed by its run id."""

    def __init__(self, run_id: str, lm, tokens, cfg, meta: dict | None = None) -> None:
        super().__init__(key=run_id, kind="analysis", label="the analysis pass")
        self.run_id, self.lm, self.tokens, self.cfg, self.meta = run_id, lm, tokens, cfg, meta or {}
        self.preview: dict | None = None          # {"n_done", "estimator", "boundary": [L+1] mean H} as it fills
        self.stage = "tokens"                     # "tokens" (the pass), then "mi" (MI-PRUN, its own progress)

    def _progress(self, frac: float, msg: str) -> None:
        self.progress(frac, msg, "mi" if msg.startswith("MI-PRUN") else "tokens")

    def _preview(self, stats) -> None:
        est = self.cfg.estimator
        h = stats.entropy[est]["boundary"][: stats.n_done]                  # [n_done, L+1]
        self.preview = {"n_done": int(stats.n_done), "estimator": est,
                        "boundary": h.double().mean(0).numpy(), "mid": stats.entropy[est]["mid"][
                            : stats.n_done].double().mean(0).numpy()}

    def _work(self):
        from analysis.run import analyze

        # cache=True: accumulators are saved as the pass goes, so a stopped or killed run resumes
        result = analyze(self.lm, self.tokens, self.cfg, progress=lambda f, m: self._progress(f, m),
                         should_stop=self.stop_event.is_set, cache=True, preview=self._preview)
        if not self.stop_event.is_set() and result.manifest.get("completed", True):
            result_cache()[self.run_id] = result
        return result


def mi_token_counts(settings: dict) -> tuple[int, int]:
    """``(token states kept and used for block MI, token states for the boundary matrix)`` that the config
    built from the Entropy page's settings uses, so the help, the slider and the captions quote what is
    computed. They are equal: block scores and matrix share one subsample (MI-PRUN's default, ≈ 2 analysis
    passes end to end)."""
    mi = make_config({**settings, "mi": True}).mi
    return int(mi["n_tokens"]), int(mi["matrix_tokens"])


def make_config(settings: dict):
    """AnalysisConfig from the Entropy page's settings: flat :mod:`analysis.settings` keys (``"k"``,
    ``"mi"``, ``"mi.estimator"``, ``"seed"``), missing ones at the dataclass defaults. The CLI builds its
    config from the same fields (``analysis.cli.commands.analyze.config_from_args``), so they cannot drift."""
    from analysis.run import AnalysisConfig
    from analysis.settings import build

    return build(AnalysisConfig, settings)


def run_id_for(lm, tokens, cfg) -> str:
    from dataclasses import asdict

    from .state import stable_hash

    return stable_hash({"model": lm.fingerprint, "dtype": str(lm.dtype), "device": str(lm.device),
                        "tokens": tokens.sha256() if hasattr(tokens, "sha256") else None,
                        "config": asdict(cfg)}, 10)                         # includes the MI settings
