"""Stop inside one model's evaluation (the comparison job of Prune & compare): it is checked after every window
batch, so a long single evaluation ends within one batch; the models finished are kept, the one cut short is
named (``interrupted``) and never kept as a result."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("streamlit")

SETTINGS = {"window": 32, "max_tokens": 4096, "prompt_len": 8, "new_tokens": 2, "repeats": 1}


def _stop_at(job, marker: str) -> list[str]:
    """Press Stop (what the button does) when a progress message containing ``marker`` is reported."""
    seen: list[str] = []
    real = job.progress

    def progress(frac, msg, stage=None):
        seen.append(msg)
        if marker in msg:
            job.stop()
        real(frac, msg, stage)

    job.progress = progress
    return seen


@pytest.fixture(scope="module")
def lm():
    from analysis.testing import tiny_loaded

    return tiny_loaded("llama", layers=4, hidden=32)


def test_stop_during_one_evaluation_ends_within_one_window_batch(lm):
    from analysis.models.plan import Plan
    from analysis.testing import random_tokens
    from app_support.evaluation import comparison_job

    data = random_tokens(40, 32, seed=3)                      # 10 window batches of 4 windows
    evals: dict = {}
    job = comparison_job({"original": lm, "p": lm}, ["p"], {"p": SimpleNamespace(plan=Plan(drop_layers=[1]))},
                         SETTINGS, data, {}, {}, evals, {})
    seen = _stop_at(job, "p: windows 12/40")
    job.start()
    assert job.wait(120) and job.status == "stopped"
    res = job.result
    assert list(res["results"]) == ["original"]                        # the model finished is kept …
    assert res["interrupted"] == {"name": "p", "at": "windows 16/40"}  # … the one cut short is named …
    assert not any("p: windows 20/40" in m for m in seen)              # … and stopped within one window batch
    assert len(evals) == 1                                             # its partial sums were never cached


def test_stop_during_the_original_keeps_nothing_and_says_where(lm):
    from analysis.testing import random_tokens
    from app_support.evaluation import comparison_job

    job = comparison_job({"original": lm}, [], {}, SETTINGS, random_tokens(40, 32, seed=4), {}, {}, {}, {})
    _stop_at(job, "original: perplexity: window batch 2/10")
    job.start()
    assert job.wait(120)
    assert job.result["results"] == {} and job.result["interrupted"] == {
        "name": "original", "at": "perplexity: window batch 3/10"}


def test_stop_during_latency_ends_after_the_run_in_progress(lm, monkeypatch):
    """Latency repeats until its spread is tight (up to its caps): Stop ends it after the run in progress; the
    model's quality is not kept as a result without its latency, and where it stopped is named."""
    import app_support.evaluation as evaluation
    from analysis.testing import random_tokens

    monkeypatch.setattr(evaluation, "LATENCY_MAX_REPEATS", 1000)
    monkeypatch.setattr(evaluation, "LATENCY_CAP_S", 600.0)
    settings = dict(SETTINGS, repeats=200)                           # at least 200 runs: only Stop ends it early
    job = evaluation.comparison_job({"original": lm}, [], {}, settings, random_tokens(8, 32, seed=5), {}, {}, {}, {})
    seen = _stop_at(job, "original: latency, batch size 1: run 3 ")
    job.start()
    assert job.wait(120) and job.status == "stopped"
    assert job.result["results"] == {}
    assert job.result["interrupted"]["name"] == "original"
    assert job.result["interrupted"]["at"].startswith("latency, batch size 1: run 4 of at most 1001")
    assert not any(": run 5 " in m for m in seen)


def test_stop_during_task_accuracy_keeps_the_quality_and_names_the_step(lm):
    """Task accuracy (lm-eval) hears Stop before every model call: the model's quality, finished, is kept; its task
    accuracy is not a result, and the job says where it stopped."""
    from analysis.testing import random_tokens
    from app_support.evaluation import comparison_job

    tasks = {"tasks": ["cloze-news"], "limit": 12, "allow_code_execution": False}      # 3+ batches of 4
    task_evals: dict = {}
    job = comparison_job({"original": lm}, [], {}, SETTINGS, random_tokens(8, 32, seed=6), tasks, {}, {}, task_evals)
    seen = _stop_at(job, "original: task accuracy: model call 1")
    job.start()
    assert job.wait(300) and job.status == "stopped"
    res = job.result
    assert list(res["results"]) == ["original"] and res["tasks"] == {}
    assert res["interrupted"] == {"name": "original", "at": "task accuracy: model call 2"}
    assert not any("model call 3" in m for m in seen) and task_evals == {}
