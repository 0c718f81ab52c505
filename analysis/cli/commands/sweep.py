"""``python -m analysis sweep``: perplexity for k = 0..K blocks dropped by several criteria → sweep.json."""
from __future__ import annotations

from analysis.settings import seed_int
from analysis.cli.argtypes import in_path, int_list, out_file
from analysis.cli.healargs import add_heal_args
from analysis.cli.common import add_model_args, emit, load_lm, stderr_progress
from analysis.cli.commands.eval import add_eval_data_args, eval_config, eval_corpus
from analysis.cli.commands.prune import quiet_transformers
from analysis.cli.taskargs import add_task_args, prepare_tasks
from analysis.indices import GRANULARITIES


def register(sub) -> None:
    p = sub.add_parser("sweep", help="perplexity vs number of dropped blocks, per criterion",
                       description="One row per criterion × k. Hidden states before a plan's first dropped "
                                   "block are computed once and reused (results equal plain evaluation exactly).")
    add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument("--run", required=True, type=in_path, help="run JSON from `analyze` (default model: the run's)")
    p.add_argument("--criteria", default="entrodrop", help="comma list, e.g. entrodrop,cosine,random")
    p.add_argument("--k", type=int_list, default=list(range(13)), help="ks to evaluate, e.g. 0-12 or 0,2,4")
    p.add_argument("--granularity", choices=GRANULARITIES, default=None,
                   help="default: the run's granularity")
    p.add_argument("--seed", type=seed_int, default=0, help="random criterion seed")
    p.add_argument("--no-reuse", action="store_true", help="run every plan from the embeddings (slower; same result)")
    p.add_argument("--latency", action="store_true", help="also time each plan (slow)")
    add_eval_data_args(p)
    add_task_args(p)
    p.add_argument("--out", required=True, type=out_file, help="where to write the sweep JSON")
    p.add_argument("--csv", default=None, type=out_file, help="also write the rows as CSV")
    p.add_argument("--force", action="store_true",
                   help="use the run with a model other than the one it was made with (prints a warning)")
    p.add_argument("--quiet", action="store_true")
    add_heal_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from analysis.errors import SelectionError
    from analysis.evaluate.sweeps import sweep
    from analysis.export import reproduction_manifest, rows_to_csv, write_json
    from analysis.score.result import AnalysisResult

    from analysis.store.outdir import check_out_file
    from analysis.store.provenance import check_recorded_model

    r = AnalysisResult.load(args.run)
    check_out_file(args.out, "--out file")
    check_out_file(args.csv, "--csv file")
    if args.model is None:
        args.model = ((r.manifest.get("model") or {}).get("name")) or "smollm2"
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if not criteria:
        raise SelectionError("--criteria is empty")
    tasks = prepare_tasks(args)  # refused before loading (offline hub task, code without opt-in, ...)
    quiet_transformers(args.quiet)
    progress = stderr_progress(args.quiet)
    lm = load_lm(args, progress)
    check_recorded_model(r, lm, f"Run {args.run}", force=args.force)
    if lm.num_layers != r.num_layers:
        raise SelectionError(f"the run has {r.num_layers} layers but {args.model} has {lm.num_layers}",
                             hint="use the model the run was made with")
    res = sweep(lm, r, criteria, args.k, eval_corpus(args), args.granularity, eval_config(args), args.split,
                reuse=not args.no_reuse, with_latency=args.latency, progress=progress, seed=args.seed)
    if args.heal != "none":                  # healed rows next to the unhealed ones (`heal` column)
        from analysis.evaluate.windows import prepare_eval
        from analysis.cli.healargs import heal_sweep_rows

        for row in res["rows"]:
            row["heal"] = "none"
        healed, skipped = heal_sweep_rows(lm, res["rows"], args, prepare_eval(lm, eval_corpus(args), eval_config(args),
                                                                              args.split), eval_config(args), progress)
        res["rows"] += healed
        res["skipped"] += skipped
    if tasks:
        from analysis.tasks.sweep import add_task_accuracy

        add_task_accuracy(lm, res, tasks, progress)
    _skip_non_finite(res)
    res["manifest"] = reproduction_manifest(lm, None, res["protocol"], getattr(args, "argv", None))
    write_json(res, args.out)
    if args.csv:
        rows_to_csv([{k: v for k, v in row.items() if k != "tasks"} for row in res["rows"]], args.csv)
    if not args.quiet:
        for s in res["skipped"]:
            print(f"warning: skipped {s['criterion']} k={s['k']}: {s['reason']}", file=__import__("sys").stderr)
        emit({"out": args.out, "rows": len(res["rows"]), "skipped": len(res["skipped"]),
              "seconds": round(res["seconds"], 2)})
    return 0


def _skip_non_finite(res: dict) -> None:
    """Rows whose perplexity / nll / kl is NaN or infinite are never reported: they move to ``skipped``
    with the reason (JSON would silently write them as null)."""
    from analysis.cli.commands.eval import RESULT_KEYS
    from analysis.store.outdir import non_finite_fields

    kept = []
    for row in res["rows"]:
        bad = non_finite_fields({k: v for k, v in row.items() if k != "plan"}, RESULT_KEYS)
        if bad:
            res["skipped"].append({"criterion": row.get("criterion"), "k": row.get("k"), "heal": row.get("heal"),
                                   "reason": f"{', '.join(bad)} is not a finite number (the pruned model's outputs "
                                             "overflow or are NaN)"})
        else:
            kept.append(row)
    res["rows"] = kept
