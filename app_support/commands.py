"""The exact CLI commands that reproduce a session's result.

Commands are built as argv lists and checked against the real CLI parser
(:func:`analysis.cli.main.build_parser`), so the app never shows a flag the CLI does not accept.
"""
from __future__ import annotations

import shlex

PREFIX = ["python", "-m", "analysis"]


def subcommands() -> set[str]:
    from analysis.cli.main import build_parser

    p = build_parser()
    for a in p._actions:  # noqa: SLF001 - argparse has no public accessor for sub-parsers
        if hasattr(a, "choices") and isinstance(a.choices, dict):
            return set(a.choices)
    return set()


def accepts(argv: list[str]) -> bool:
    """True when the CLI parser accepts ``argv`` (nothing is executed)."""
    from analysis.cli.main import build_parser

    try:
        build_parser().parse_args(argv)
        return True
    except SystemExit:
        return False


def shell(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in PREFIX + list(argv))


def model_args(model: dict) -> list[str]:
    out = ["--model", model["spec"], "--device", model.get("device", "auto"), "--dtype", model.get("dtype", "fp32")]
    if model.get("trust_remote_code"):
        out.append("--trust-remote-code")
    return out


def data_args(data: dict) -> list[str]:
    """The data source flags of a data spec (``--corpus``/``--text``/``--tokens``, ``--text-field``,
    ``--split``); the sampling flags come from :func:`sample_config`."""
    src = data.get("source", "builtin")
    if src == "tokens":
        return ["--tokens", data.get("filename", "tokens.npy")]
    if src == "builtin":
        w = {k: float(v) for k, v in (data.get("weights") or {"wiki": 1}).items() if float(v) > 0}
        corpus = next(iter(w)) if len(w) == 1 else ",".join(f"{k}:{v:g}" for k, v in w.items())
        out = ["--corpus", corpus]
    elif src == "hub":
        out = ["--corpus", f"hub:{data.get('name')}" + (f"/{data['config']}" if data.get("config") else "")]
    else:
        out = ["--text", data.get("filename", "upload.txt")]
    if data.get("text_field"):
        out += ["--text-field", data["text_field"]]
    if data.get("split", "calib") != "calib":
        out += ["--split", data["split"]]
    return out


def analyze_argv(rec, out: str = "run.json") -> list[str]:
    """``analyze`` for a RunRecord: same model, data and every analysis setting. The setting flags are
    :func:`analysis.settings.to_argv` of the very configs the app ran (the SampleConfig of its windows and the
    AnalysisConfig, seed included), so nothing can be dropped on the way (tests/test_settings.py)."""
    from analysis.settings import to_argv

    from .data import sample_config
    from .jobs import make_config

    configs = [make_config({**rec.config, **({"seed": int(rec.data["seed"])} if "seed" in rec.data else {})})]
    if rec.data.get("source", "builtin") != "tokens":         # a token file is used as-is: no sampling flags
        configs.insert(0, sample_config(rec.data))
    return ["analyze", *model_args(rec.model), *data_args(rec.data), *to_argv(*configs), "--out", out]


def select_argv(plan_rec, protected: list[int], run_file: str = "run.json", out: str = "plan.json") -> list[str]:
    """``select`` reproducing a kept plan's criterion top-k (with the session's protected blocks)."""
    argv = ["select", "--run", run_file, "--criterion", plan_rec.criterion, "--k", str(plan_rec.k),
            "--granularity", plan_rec.granularity]
    argv += ["--protect", ",".join(map(str, protected)) if protected else "none"]   # none: the session protected nothing
    p = plan_rec.params or {}
    if p.get("estimator"):
        argv += ["--estimator", str(p["estimator"])]
    if "seed" in p:
        argv += ["--seed", str(p["seed"])]
    if "window" in p:
        argv += ["--window", str(p["window"])]
    return argv + ["--out", out]


def _eval_flags(settings: dict) -> list[str]:
    """The perplexity protocol flags: :func:`analysis.settings.to_argv` of the EvalConfig the app evaluates with."""
    from analysis.settings import to_argv

    from .evaluation import eval_cfg

    return to_argv(eval_cfg({"window": 256, "max_tokens": 4096, **settings}))


def eval_argv(model: dict, plan_file: str, data: str, settings: dict, out: str = "eval.json") -> list[str]:
    """``eval`` of a plan with the Prune & compare page's protocol (perplexity, KL/top-1, latency)."""
    argv = ["eval", *model_args(model), "--plan", plan_file]
    argv += ["--corpus", data] if data else []
    argv += [*_eval_flags(settings), "--latency", "--prompt-len", str(settings.get("prompt_len", 64)),
             "--new-tokens", str(settings.get("new_tokens", 16)), "--repeats", str(settings.get("repeats", 3))]
    return argv + ["--out", out]


def channels_argv(model: dict, cfg, latency: bool = False, out_dir: str = "channel-pruned") -> list[str]:
    """``channels`` for the Channels page: the recipe flags are :func:`analysis.settings.to_argv` of the very
    ChannelConfig the page ran."""
    from analysis.settings import to_argv

    return ["channels", *model_args(model), *to_argv(cfg), *(["--latency"] if latency else []), "--out", out_dir]


def prune_argv(model: dict, plan_file: str, out_dir: str) -> list[str]:
    return ["prune", *model_args(model), "--plan", plan_file, "--out", out_dir]


def sweep_argv(model: dict, criteria: list[str], kmax: int, granularity: str, data: str, settings: dict,
               run_file: str = "run.json", out: str = "sweep.json") -> list[str]:
    argv = ["sweep", *model_args(model), "--run", run_file, "--criteria", ",".join(criteria), "--k", f"0-{kmax}",
            "--granularity", granularity]
    argv += ["--corpus", data] if data else []
    return argv + [*_eval_flags(settings), "--out", out]


def session_script(rec, plan_rec=None, protected: list[int] | None = None, eval_data: str | None = None,
                   eval_settings: dict | None = None, sweep: dict | None = None, heal: list[str] | None = None) -> str:
    """A shell script reproducing the session: analyze → select → eval → prune (→ sweep). ``heal``: the
    plan's ``--heal ...`` flags, added to its eval and prune commands.

    Each command is checked against the CLI parser; one it does not accept is written commented out.
    """
    lines = ["#!/usr/bin/env bash", "# Reproduce this Entroscope session (block indices are 0-based)", "set -e"]
    cmds: list[tuple[str, list[str]]] = [("analysis pass: curves, boundary, criteria scores", analyze_argv(rec))]
    if plan_rec is not None:
        plan_file = "plan.json" if not plan_rec.edited else f"{plan_rec.name}.plan.json"
        sel = select_argv(plan_rec, protected or [])
        if plan_rec.edited:
            lines_note = (f"criterion top-k (the kept plan {plan_rec.name!r} was then edited by hand: its exact "
                          f"blocks are in {plan_file}, downloaded from the Export page)")
            sel[sel.index("--out") + 1] = "plan-topk.json"
        else:
            lines_note = f"plan {plan_rec.name!r}: {plan_rec.plan.describe()}"
        cmds.append((lines_note, sel))
        settings = eval_settings or {}
        ev = eval_argv(rec.model, plan_file, eval_data, settings)
        cmds.append(("perplexity, KL/top-1 and latency of the plan", ev[:-2] + list(heal or []) + ev[-2:]))
        cmds.append(("pruned checkpoint" + (" (healed)" if heal else ""),
                     prune_argv(rec.model, plan_file, f"out/{plan_rec.name}") + list(heal or [])))
    if sweep:
        cmds.append(("sweep: perplexity vs k per criterion",
                     sweep_argv(rec.model, sweep["criteria"], sweep["kmax"], sweep["granularity"], eval_data,
                                eval_settings or {})))
    for note, argv in cmds:
        lines.append(f"# {note}")
        ok = accepts(argv)
        lines.append(("" if ok else "# (not accepted by this CLI version) ") + shell(argv))
    return "\n".join(lines) + "\n"
