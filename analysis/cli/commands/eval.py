"""``python -m analysis eval``: perplexity (and agreement, latency) of a model or a pruning plan → eval.json."""
from __future__ import annotations

import time

from analysis.settings import bounded_int
from analysis.cli.healargs import add_heal_args
from analysis.cli.argtypes import in_path, out_file
from analysis.cli.common import add_model_args, emit, load_lm, stderr_progress
from analysis.cli.commands.prune import add_plan_args, check_plan_provenance, plan_from_cli, quiet_transformers
from analysis.cli.taskargs import add_task_args, prepare_tasks, run_tasks
from analysis.evaluate.windows import EvalConfig
from analysis.settings import add_arguments, from_args

_latency_batch = bounded_int(1, 4096, "a batch size")
#: results that must be finite numbers before an evaluation is written or reported
RESULT_KEYS = ("perplexity", "nll", "kl", "top1", "perplexity_original", "recovered_fraction")


def add_eval_data_args(p) -> None:
    g = p.add_argument_group("evaluation data (default: the wiki corpus, held-out eval split)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--corpus", default=None, help="built-in domain (wiki, news, code, ...) or hub:NAME[/CONFIG]")
    src.add_argument("--text", default=None, type=in_path, help="text file: .txt, .jsonl, .csv or .parquet")
    g.add_argument("--text-field", default=None, help="column holding the text (jsonl/csv/parquet)")
    g.add_argument("--split", choices=["eval", "calib", "all"], default="eval")
    add_arguments(g, EvalConfig, only=("max_tokens", "window", "stride", "batch_size"))


def eval_corpus(args):
    """The Corpus for --corpus / --text (default wiki)."""
    from analysis.data.domains import load_corpus
    from analysis.errors import DataError
    from analysis.cli.common import corpus_from_args

    if not args.text and not args.corpus:
        return load_corpus("wiki")
    corpus = corpus_from_args(args)
    if corpus is None:
        raise DataError(f"--corpus {args.corpus!r}: evaluation needs a single corpus, not a mix")
    return corpus


def eval_config(args):
    return from_args(EvalConfig, args)


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model or a pruning plan (plus KL, top-1, latency)",
                       description="Token perplexity on a held-out split (protocol recorded in the output); "
                                   "with a plan also KL(original‖pruned) and top-1 agreement.")
    add_model_args(p)
    add_plan_args(p)
    add_eval_data_args(p)
    p.add_argument("--latency", action="store_true", help="also measure prefill/decode throughput")
    p.add_argument("--latency-batch-sizes", type=lambda s: [_latency_batch(x) for x in s.split(",")], default=[1])
    p.add_argument("--prompt-len", type=bounded_int(1, 1_048_576, "a token count"), default=128)
    p.add_argument("--new-tokens", type=bounded_int(1, 65_536, "a token count"), default=32)
    p.add_argument("--repeats", type=bounded_int(1, 10_000, "a repeat count"), default=5)
    p.add_argument("--prompt", default=None, help="also compare greedy generations for this prompt")
    add_task_args(p)
    p.add_argument("--out", required=True, type=out_file, help="where to write the evaluation JSON")
    p.add_argument("--csv", default=None, type=out_file, help="also write the result as a one-row CSV")
    p.add_argument("--quiet", action="store_true")
    add_heal_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from analysis.evaluate.cost import latency, param_report
    from analysis.evaluate.quality import agreement, generate_pair, perplexity
    from analysis.evaluate.windows import prepare_eval
    from analysis.export import evaluation_rows, reproduction_manifest, rows_to_csv, write_json

    from analysis.store.outdir import check_finite_results, check_out_file

    plan = plan_from_cli(args)
    tasks = prepare_tasks(args)  # bad task names, offline hub tasks, code without opt-in: refused before loading
    check_out_file(args.out, "--out file")
    check_out_file(args.csv, "--csv file")
    quiet_transformers(args.quiet)
    progress = stderr_progress(args.quiet)
    lm = load_lm(args, progress)
    if plan is not None:
        check_plan_provenance(args, plan, lm)
        plan.validate(lm.num_layers)
    cfg = eval_config(args)
    windows = prepare_eval(lm, eval_corpus(args), cfg, args.split)
    t0 = time.perf_counter()
    if plan is not None and not plan.is_empty:  # one pass gives both perplexities, KL and top-1
        agr = agreement(lm, plan, windows, cfg)
        res = {"perplexity": agr["perplexity_pruned"], "nll": agr["nll_pruned"], "tokens": agr["tokens"],
               "protocol": agr["protocol"]}
        extra = {"kl": agr["kl"], "top1": agr["top1"], "perplexity_original": agr["perplexity_original"]}
    else:
        res, extra = perplexity(lm, windows, plan, cfg, progress=progress), {}
    out = {"perplexity": res["perplexity"], "nll": res["nll"], "tokens": res["tokens"], "protocol": res["protocol"],
           "plan": plan.to_dict() if plan else None, "plan_description": plan.describe() if plan else None,
           "params": param_report(lm, plan), **extra}
    if args.heal != "none" and plan is not None and not plan.is_empty:   # what-if healing, in memory
        from analysis.cli.healargs import heal_from_args
        from analysis.heal.models import healed_summary

        healed = heal_from_args(args, lm, plan, progress)
        out["healed"] = healed_summary(lm, healed, windows, cfg, agr["nll_original"], agr["nll_pruned"])
    if args.latency:
        out["latency"] = latency(lm, plan, args.latency_batch_sizes, args.prompt_len, args.new_tokens, args.repeats)
        if plan is not None and not plan.is_empty:
            out["latency_original"] = latency(lm, None, args.latency_batch_sizes, args.prompt_len, args.new_tokens,
                                              args.repeats)
    if args.prompt:
        out["generation"] = generate_pair(lm, plan, args.prompt)
    out["seconds"] = time.perf_counter() - t0
    if tasks:
        out["tasks"] = run_tasks(lm, plan, tasks)
    out["manifest"] = reproduction_manifest(lm, plan, res["protocol"], getattr(args, "argv", None))
    check_finite_results({k: v for k, v in out.items() if k != "manifest"}, RESULT_KEYS, args.out)
    write_json(out, args.out)
    if args.csv:
        from analysis.tasks import flat_columns

        rows_to_csv(evaluation_rows({**{k: v for k, v in out.items() if k not in ("manifest", "generation", "tasks")},
                                     **flat_columns(out.get("tasks") or {})}), args.csv)
    if not args.quiet:
        keys = ("perplexity", "perplexity_original", "kl", "top1", "tokens")
        healed = {f"{k}_healed": out["healed"][k] for k in ("perplexity", "kl", "recovered_fraction")} \
            if "healed" in out else {}
        emit({"out": args.out, **{k: out[k] for k in keys if k in out}, **healed,
              "plan": out["plan_description"], **_task_summary(out)})
    return 0


def _task_summary(out: dict) -> dict:
    """``{"tasks": {name: primary metric value}}`` for the one-line summary (empty without --tasks)."""
    tasks = (out.get("tasks") or {}).get("tasks") or {}
    return {"tasks": {t: r["metrics"][r["primary"]]["value"] for t, r in tasks.items()}} if tasks else {}
