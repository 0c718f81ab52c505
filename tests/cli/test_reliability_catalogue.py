"""The counts in docs/reliability.md's third catalogue are the number of test cases in each class's test
file (each parametrized case counts once), recounted here from the files so the table cannot drift."""
from __future__ import annotations

import importlib
import inspect
import math
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def count_cases(module_name: str) -> int:
    """Test cases pytest collects from a module: one per test function, times each parametrize list."""
    mod = importlib.import_module(module_name)
    total = 0
    for name, fn in inspect.getmembers(mod, inspect.isfunction):
        if not name.startswith("test_") or fn.__module__ != mod.__name__:
            continue
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        total += math.prod(len(m.args[1]) for m in marks) if marks else 1
    return total


@pytest.mark.parametrize("cls,module", [("1", "test_reliability_outputs"), ("2", "test_reliability_numbers"),
                                        ("8", "test_reliability_messages")])
def test_documented_counts_match_the_catalogue(cls, module):
    third = DOC.read_text().split("## Third catalogue", 1)[1]
    row = next(line for line in third.splitlines() if re.match(rf"\| {cls} \| ", line))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert module in cells[3], row
    n = count_cases(module)
    assert cells[4] == str(n) and cells[5] == str(n), f"class {cls}: the docs say {cells[4]}/{cells[5]}, the tests hold {n}"
