"""``python -m analysis groundtruth``: drop-one ΔPPL, SLEB and BlockPruner baselines on calibration windows → gt.json."""
from __future__ import annotations


from analysis.cli.argtypes import in_out_file, int_list, out_file
from analysis.settings import bounded_int
from analysis.cli.common import add_data_args, add_model_args, emit, load_lm, stderr_progress, tokens_from_args
from analysis.indices import GRANULARITIES

METHODS = ("delta-ppl", "sleb", "blockpruner")


def register(sub) -> None:
    p = sub.add_parser("groundtruth", help="ground-truth block importance by removing blocks (forward passes)",
                       description="delta-ppl: calibration perplexity with one block removed minus the full "
                                   "model's (one pass per block); sleb: iterative greedy layer removal; "
                                   "blockpruner: iterative greedy removal of attention/MLP sub-blocks. "
                                   "Blocks are 0-based.")
    add_model_args(p)
    add_data_args(p)
    p.set_defaults(default_samples=8)           # every block removal is a pass over these windows
    for a in p._actions:
        if a.dest == "samples":
            a.help = "N windows (default 8)"
    p.add_argument("--granularity", choices=GRANULARITIES, default="layer",
                   help="blocks scored by delta-ppl (sleb: layers; blockpruner: sub-blocks)")
    p.add_argument("--methods", default="delta-ppl",
                   help=f"comma-separated subset of {', '.join(METHODS)} (default delta-ppl)")
    p.add_argument("--n", type=bounded_int(1, 100_000, "a block count"), default=4, help="blocks removed by sleb / blockpruner (default 4)")
    p.add_argument("--protect", type=int_list, default=[], help="layers sleb / blockpruner never remove")
    p.add_argument("--batch-size", type=bounded_int(1, 65_536, "a batch size"), default=8)
    p.add_argument("--use-windows", type=bounded_int(1, 1_000_000, "a window count"), default=None,
                   help="use only the first N of the sampled windows (the app's ground truth on a run's first N "
                        "calibration windows)")
    p.add_argument("--into", default=None, type=in_out_file,
                   help="also store the delta-ppl scores in this run JSON (criterion 'delta-ppl'), rewriting it")
    p.add_argument("--out", required=True, type=out_file, help="where to write the ground-truth JSON")
    p.add_argument("--force", action="store_true",
                   help="--into a run made with another model (prints a warning)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from analysis.evaluate.groundtruth import blockpruner_select, delta_ppl_details, sleb_select, store_ground_truth
    from analysis.errors import SelectionError
    from analysis.store.jsonio import dumps

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SelectionError(f"Unknown ground-truth method(s) {bad}", hint=f"choose from {', '.join(METHODS)}")
    from analysis.store.outdir import check_out_file, write_text_atomic
    from analysis.store.provenance import check_recorded_model

    check_out_file(args.out, "--out file")
    check_out_file(args.into, "--into run file")
    run_result = None
    if args.into:
        from analysis.score.result import AnalysisResult

        run_result = AnalysisResult.load(args.into)   # fail before the expensive part
    progress = stderr_progress(args.quiet)
    lm = load_lm(args, progress)
    if run_result is not None:
        check_recorded_model(run_result, lm, f"Run {args.into}", force=args.force)
    tokens = tokens_from_args(args, lm)
    if args.use_windows is not None:
        if args.use_windows > len(tokens):
            raise SelectionError(f"--use-windows {args.use_windows} but only {len(tokens)} windows were sampled",
                                 hint=f"use --use-windows {len(tokens)} or fewer, or sample more (--samples)")
        tokens = tokens.subset(slice(0, args.use_windows))
    out: dict = {"model": lm.manifest(), "data": tokens.to_manifest() if hasattr(tokens, "to_manifest") else None,
                 "index_base": 0}
    if "delta-ppl" in methods:
        d = delta_ppl_details(lm, tokens, args.granularity, batch_size=args.batch_size, progress=progress)
        out["delta-ppl"] = d
        if run_result is not None:
            if run_result.num_layers != lm.num_layers:
                raise SelectionError(f"--into run has {run_result.num_layers} layers but the model has {lm.num_layers}")
            store_ground_truth(run_result, args.granularity, d["scores"], d)
            run_result.save(args.into)
    if "sleb" in methods:
        out["sleb"] = sleb_select(lm, tokens, args.n, args.protect, args.batch_size, progress)
    if "blockpruner" in methods:
        out["blockpruner"] = blockpruner_select(lm, tokens, args.n, args.protect, args.batch_size, progress)
    write_text_atomic(args.out, dumps(out, indent=1))
    if not args.quiet:
        summary = {"out": args.out}
        if "delta-ppl" in out:
            summary["delta_ppl_base_ppl"] = out["delta-ppl"]["base_ppl"]
        for m in ("sleb", "blockpruner"):
            if m in out:
                summary[m] = out[m]["plan"]
        emit(summary)
    return 0
