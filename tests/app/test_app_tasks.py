"""AppTest: the task picker on Prune & compare — accuracies with error bars next to perplexity for every kept
plan, accuracy as the Pareto quality axis, and HumanEval refused without the opt-in."""
from __future__ import annotations

import pytest

pytest.importorskip("streamlit")

from test_app_pages import _env, _with_plan, frame_with, goto, ok  # noqa: E402,F401 - _env: autouse fixture

SETTINGS = {"cmp.window": 32, "cmp.max_tokens": 256, "cmp.new_tokens": 2, "cmp.repeats": 1}
_FORKS: list[int] = []
# the page must never fork its process (the Streamlit server): see analysis/tasks/workers.py
__import__("os").register_at_fork(before=lambda: _FORKS.append(1))


def test_task_accuracy_next_to_perplexity_and_as_pareto_axis():
    from analysis.models.loading import weights_hash

    from app_support.models import _cached_model

    lm = _cached_model("tiny-llama", "auto", "fp32", False)
    before = weights_hash(lm.model)
    at = goto(_with_plan(**SETTINGS, **{"cmp.tasks": ["cloze-news"], "cmp.task_limit": 3}), "5_Prune_and_compare")
    ok(at)
    _FORKS.clear()
    at.button(key="run_compare").click().run()
    ok(at)
    assert _FORKS == []  # lm-eval's bootstrap pool used to fork here (and hang inside the real server)
    df = frame_with(at, "cloze-news acc")
    assert len(df) == 2 and "perplexity" in df and "cloze-news ±" in df
    assert df["cloze-news acc"].between(0, 1).all()
    assert any("lm-evaluation-harness" in c.value and "first 3 examples" in c.value for c in at.caption)
    radio = at.radio(key="pareto_quality")
    assert radio.options == ["perplexity", "cloze-news acc"]
    radio.set_value("cloze-news acc").run()
    ok(at)
    assert weights_hash(lm.model) == before


def test_humaneval_without_opt_in_is_refused_with_a_message():
    at = goto(_with_plan(**SETTINGS, **{"cmp.tasks": ["humaneval"]}), "5_Prune_and_compare")
    ok(at)
    assert at.checkbox(key="w:cmp.allow_code").value is False
    at.button(key="run_compare").click().run()
    assert any("executes model-written code" in e.value and "allow code execution" in e.value for e in at.error)
