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
    """``select`` reproducing a kept plan's criterion top-k (with the plan's protected blocks) and, for a plan
    edited by hand, the same edits (``--add``/``--remove``), so the command rebuilds exactly the kept blocks."""
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
    if getattr(plan_rec, "edited", False):
        top = [int(b) for b in ((plan_rec.plan.source or {}).get("criterion_top_k") or [])]
        kept = [int(b) for b in plan_rec.blocks]
        add = sorted(set(kept) - set(top))
        remove = sorted(set(top) - set(kept))
        if add:
            argv += ["--add", ",".join(map(str, add))]
        if remove:
            argv += ["--remove", ",".join(map(str, remove))]
    return argv + ["--out", out]


def is_fast_block_select(plan_rec) -> bool:
    """A plan kept from MI-PRUN's Fast-Block-Select (or its exhaustive optimum), not a criterion top-k."""
    return (plan_rec.plan.source or {}).get("method") in ("fast-block-select", "exhaustive")


def miprun_argv(plan_rec, protected: list[int], run_file: str = "run.json", out: str = "plan.json") -> list[str]:
    """``miprun`` rebuilding a Fast-Block-Select (or exhaustive) plan from the run's MI matrix."""
    src = plan_rec.plan.source or {}
    method = "exhaustive" if src.get("method") == "exhaustive" else "fast"
    return ["miprun", "--run", run_file, "--n", str(len(plan_rec.plan.drop_layers)), "--method", method,
            "--protect", ",".join(map(str, protected)) if protected else "none", "--out", out]


def groundtruth_argv(rec, granularity: str, windows: int | None, run_file: str = "run.json",
                     out: str = "groundtruth.json") -> list[str]:
    """``groundtruth`` storing drop-one ΔPPL in the run file (criterion ``delta-ppl``) on the run's own calibration
    windows (the first ``windows`` of them, as the Select page computes it)."""
    from analysis.settings import to_argv

    from .data import sample_config

    argv = ["groundtruth", *model_args(rec.model), *data_args(rec.data)]
    if rec.data.get("source", "builtin") != "tokens":
        argv += to_argv(sample_config(rec.data))
    argv += ["--granularity", granularity]
    if windows:
        argv += ["--use-windows", str(int(windows))]
    return argv + ["--into", run_file, "--out", out]


def plan_commands(plan_rec, run_rec, protected: list[int], plan_file: str,
                  run_file: str = "run.json") -> list[tuple[str, list[str]]]:
    """The commands that rebuild a kept plan from its own run's file: ``select`` (criterion top-k, hand edits as
    ``--add``/``--remove``), ``miprun`` (Fast-Block-Select), preceded by ``groundtruth`` for drop-one ΔPPL."""
    cmds: list[tuple[str, list[str]]] = []
    note = f"plan {plan_rec.name!r}: {plan_rec.plan.describe()}"
    if is_fast_block_select(plan_rec):
        return [(note + " (MI-PRUN Fast-Block-Select on the run's MI matrix)",
                 miprun_argv(plan_rec, protected, run_file, plan_file))]
    if plan_rec.criterion == "delta-ppl":
        gt = ((run_rec.result.extras or {}).get("ground_truth") or {}) if run_rec is not None else {}
        det = gt.get(plan_rec.granularity) if isinstance(gt, dict) else None
        windows = (det or {}).get("windows", [None])[0] if isinstance(det, dict) else None
        cmds.append(("drop-one ΔPPL ground truth, stored in the run file (criterion delta-ppl)",
                     groundtruth_argv(run_rec, plan_rec.granularity, windows, run_file)))
    if plan_rec.edited:
        note += " (criterion top-k, then edited by hand: the same edits as --add/--remove)"
    cmds.append((note, select_argv(plan_rec, protected, run_file, plan_file)))
    return cmds


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
                   eval_settings: dict | None = None, sweep: dict | None = None, heal: list[str] | None = None,
                   runs: dict | None = None) -> str:
    """A shell script reproducing the session: analyze → select → eval → prune (→ sweep). ``heal``: the
    plan's ``--heal ...`` flags, added to its eval and prune commands.

    The plan is rebuilt from *its own* run (``runs[plan_rec.run_id]``, with that run's sinks mode, estimators,
    MI settings and seed), with the protection it was kept with, by the selection method that made it
    (criterion top-k, hand edits, Fast-Block-Select, drop-one ΔPPL); ``rec`` (the run on screen) is analysed
    separately only when a sweep of it is asked for and it is another run. Each command is checked against the
    CLI parser; one it does not accept is written commented out.
    """
    lines = ["#!/usr/bin/env bash", "# Reproduce this Entroscope session (block indices are 0-based)", "set -e"]
    plan_run = (runs or {}).get(plan_rec.run_id, rec) if plan_rec is not None else rec
    rid = getattr(plan_run, "run_id", "")
    cmds: list[tuple[str, list[str]]] = [
        (f"analysis pass{f' of run {rid}' if rid else ''}: curves, boundary, criteria scores", analyze_argv(plan_run))]
    if plan_rec is not None:
        plan_file = "plan.json"
        prot = list(plan_rec.protected) if plan_rec.protected is not None else list(protected or [])
        cmds += plan_commands(plan_rec, plan_run, prot, plan_file)
        settings = eval_settings or {}
        ev = eval_argv(plan_run.model, plan_file, eval_data, settings)
        cmds.append(("perplexity, KL/top-1 and latency of the plan", ev[:-2] + list(heal or []) + ev[-2:]))
        cmds.append(("pruned checkpoint" + (" (healed)" if heal else ""),
                     prune_argv(plan_run.model, plan_file, f"out/{plan_rec.name}") + list(heal or [])))
    if sweep:
        run_file = "run.json"
        if plan_run is not rec and getattr(plan_run, "run_id", None) != getattr(rec, "run_id", None):
            run_file = f"run-{rec.run_id}.json"
            cmds.append((f"analysis pass of run {rec.run_id} (the swept run)", analyze_argv(rec, out=run_file)))
        cmds.append(("sweep: perplexity vs k per criterion",
                     sweep_argv(rec.model, sweep["criteria"], sweep["kmax"], sweep["granularity"], eval_data,
                                eval_settings or {}, run_file=run_file)))
    for note, argv in cmds:
        lines.append(f"# {note}")
        ok = accepts(argv)
        lines.append(("" if ok else "# (not accepted by this CLI version) ") + shell(argv))
    return "\n".join(lines) + "\n"
