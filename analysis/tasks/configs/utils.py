"""Functions the task configs in this folder name with ``!function utils.…`` (lm-eval loads this file by path)."""
from analysis.tasks.data import load_task_dataset
from analysis.tasks.scoring import humaneval_results, math_results  # noqa: F401 - named by the YAML configs


def load_local(entroscope_task: str, **_metadata):
    """``custom_dataset``: the local task's splits, built from the installed corpora on first use."""
    return load_task_dataset(entroscope_task)
