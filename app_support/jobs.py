"""The analysis pass in a background thread: live progress, a working Stop button, page switching.

The page starts an :class:`AnalysisJob` and polls it (updating ``st.progress``) until it finishes.
Clicking *Stop* reruns the script, which sets the job's stop event; :func:`analysis.run.analyze` polls
``should_stop`` between batches and returns a partial result (with a warning) instead of nothing.
Switching pages interrupts only the polling, not the job; coming back resumes the progress bar.

Finished results are also kept in a process-wide cache (``st.cache_resource``) keyed by the model
fingerprint, the token set's sha256 and the analysis config, so repeating a run is instant.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

import streamlit as st

from analysis.errors import EntroscopeError, is_oom, oom_error


def fmt_seconds(sec: float) -> str:
    """``42 s`` / ``3 min 05 s``."""
    sec = int(round(sec))
    return f"{sec} s" if sec < 90 else f"{sec // 60} min {sec % 60:02d} s"


@st.cache_resource(show_spinner=False)
def result_cache() -> dict:
    """Process-wide ``{run_id: AnalysisResult}`` of completed (not stopped) runs."""
    return {}


@dataclass
class AnalysisJob:
    run_id: str
    lm: object
    tokens: object
    cfg: object                                # analysis.run.AnalysisConfig
    meta: dict = field(default_factory=dict)   # model/data/config dicts for the RunRecord
    frac: float = 0.0
    message: str = "starting"
    result: object = None
    error: str | None = None
    error_detail: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    preview: dict | None = None                # {"n_done", "estimator", "boundary": [L+1] mean H} as it fills
    first_progress: tuple[float, float] | None = None   # (time, fraction) of the first report: ETA base
    stage: str = "tokens"                      # "tokens" (the pass), then "mi" (MI-PRUN, its own progress)
    stop_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> "AnalysisJob":
        self.thread = threading.Thread(target=self._run, name=f"entroscope-analysis-{self.run_id}", daemon=True)
        self.thread.start()
        return self

    def _progress(self, frac: float, msg: str) -> None:
        stage = "mi" if msg.startswith("MI-PRUN") else "tokens"
        if self.first_progress is None or stage != self.stage:     # a new stage: a new base for the ETA
            self.first_progress, self.stage = (time.time(), float(frac)), stage
        self.frac, self.message = float(frac), msg

    def _preview(self, stats) -> None:
        est = self.cfg.estimator
        h = stats.entropy[est]["boundary"][: stats.n_done]                  # [n_done, L+1]
        self.preview = {"n_done": int(stats.n_done), "estimator": est,
                        "boundary": h.double().mean(0).numpy(), "mid": stats.entropy[est]["mid"][
                            : stats.n_done].double().mean(0).numpy()}

    @property
    def eta(self) -> float | None:
        """Seconds left, from the rate measured since the first progress report (None until measurable)."""
        if self.first_progress is None or self.finished is not None:
            return None
        t0, f0 = self.first_progress
        dt, df = time.time() - t0, self.frac - f0
        if df <= 0 or dt < 1.0:
            return None
        return max(0.0, dt * (1.0 - self.frac) / df)

    def status_text(self) -> str:
        """``"analysed 8/32 sequences · 12 s · about 30 s left"`` for the progress bar."""
        eta = None if "left" in self.message else self.eta        # MI-PRUN reports its own time left
        left = "" if eta is None else f" · about {fmt_seconds(eta)} left"
        return f"{self.message} · {self.elapsed:.0f} s{left}" + (" · stopping" if self.stop_event.is_set() else "")

    def _run(self) -> None:
        from analysis.run import analyze

        try:
            # cache=True: accumulators are saved as the pass goes, so a stopped or killed run resumes
            self.result = analyze(self.lm, self.tokens, self.cfg, progress=self._progress,
                                  should_stop=self.stop_event.is_set, cache=True, preview=self._preview)
            if not self.stop_event.is_set() and self.result.manifest.get("completed", True):
                result_cache()[self.run_id] = self.result
        except EntroscopeError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown as one line + details expander
            if is_oom(exc):
                self.error = str(oom_error(exc, "the analysis pass"))
            else:
                self.error = f"Unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.error_detail = traceback.format_exc()
        finally:
            self.finished = time.time()
            self.done_event.set()

    @property
    def running(self) -> bool:
        return not self.done_event.is_set()

    def stop(self) -> None:
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started


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
