"""``--tasks`` options shared by ``eval`` and ``sweep``: lm-eval task accuracy (see :mod:`analysis.tasks`)."""
from __future__ import annotations

def _type(name: str):
    """The argparse type of a :class:`~analysis.tasks.runner.TaskConfig` field (its range, stated once there)."""
    from analysis.settings import specs
    from analysis.tasks.runner import TaskConfig

    return next(s for s in specs(TaskConfig) if s.name == name).arg_type()


def add_task_args(p) -> None:
    g = p.add_argument_group("task accuracy (lm-evaluation-harness)")
    g.add_argument("--tasks", default=None,
                   help="comma list of tasks: local cloze-wiki, cloze-news, cloze-code, cloze-docs, cloze-dialogue, "
                        "cloze-math, math-champ, humaneval (opt-in), or any lm-eval task name when the hub is "
                        "reachable")
    g.add_argument("--limit", type=_type("limit"), default=None,
                   help="first N examples of each task (default: all)")
    g.add_argument("--task-seed", type=_type("seed"), default=1234, help="lm-eval seeds (few-shot sampling, torch, numpy)")
    g.add_argument("--num-fewshot", type=_type("num_fewshot"), default=None, help="override the tasks' few-shot count")
    g.add_argument("--max-gen-toks", type=_type("max_gen_toks"), default=None, help="override generative tasks' token budget")
    g.add_argument("--allow-code-execution", action="store_true",
                   help="allow humaneval, which EXECUTES model-written code (contained: see docs/tasks.md)")


def prepare_tasks(args):
    """``(names, TaskConfig, TaskManager)`` for --tasks, checked before any model loads; None without --tasks."""
    if not getattr(args, "tasks", None):
        return None
    from analysis.tasks import TaskConfig, check_tasks, parse_tasks

    names = parse_tasks(args.tasks)
    cfg = TaskConfig(limit=args.limit, seed=args.task_seed, num_fewshot=args.num_fewshot,
                     max_gen_toks=args.max_gen_toks, allow_code_execution=args.allow_code_execution)
    return names, cfg, check_tasks(names, cfg)


def run_tasks(lm, plan, prepared) -> dict:
    from analysis.tasks import evaluate_tasks

    names, cfg, tm = prepared
    return evaluate_tasks(lm, names, plan, cfg, tm=tm)
