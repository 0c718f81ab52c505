"""``python -m analysis miprun``: MI-PRUN layer selection (Fast-Block-Select) from a run's cached MI data → plan.json."""
from __future__ import annotations


from analysis.cli.argtypes import in_path, int_list, out_file
from analysis.cli.common import emit
from analysis.settings import bounded_int


def register(sub) -> None:
    p = sub.add_parser("miprun", help="choose n layers to drop with MI-PRUN's Fast-Block-Select",
                       description="Uses the boundary MI matrix stored by `analyze --mi` (no model, no forward "
                                   "passes): block scores s_i = -MI(H_i, H_i+1), run scores -MI(H_j, H_k+1). "
                                   "Blocks are 0-based.")
    p.add_argument("--run", required=True, type=in_path, help="run JSON from `analyze --mi`")
    p.add_argument("--n", type=bounded_int(0, 100_000, "a layer count"), required=True, help="number of layers to drop")
    p.add_argument("--method", choices=["fast", "exhaustive", "both"], default="fast",
                   help="fast = Fast-Block-Select; exhaustive = optimum over all n-subsets; both = fast plus "
                        "the exhaustive optimum and the gap (recorded in the plan's source)")
    p.add_argument("--K", type=bounded_int(0, 10_000, "a count"), default=5, help="exact run scores per run length and iteration (0: all)")
    p.add_argument("--alt-size", type=bounded_int(1, 100_000, "a pool size"), default=None, help="alternative pool size (default n)")
    p.add_argument("--max-iter", type=bounded_int(1, 100_000, "an iteration count"), default=20)
    p.add_argument("--repartition", action="store_true",
                   help="also try merging/splitting runs (extension; the reconstruction keeps run lengths)")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="skip the final exact step (dynamic programme over all run lengths) and return "
                        "Fast-Block-Select as reconstructed, which keeps its initial run lengths")
    p.add_argument("--protect", type=int_list, default=None,
                   help="override the protected blocks, e.g. 0,1,29 (default: the run's)")
    p.add_argument("--max-combinations", type=bounded_int(1, 100_000_000, "a combination count"), default=50_000, help="exhaustive search limit")
    p.add_argument("--out", default=None, type=out_file, help="write the plan JSON here (default: print it)")
    p.set_defaults(func=run)


def run(args) -> int:
    from analysis.score.miprun import miprun_select
    from analysis.score.result import AnalysisResult

    from analysis.store.jsonio import dumps
    from analysis.store.outdir import check_out_file, write_text_atomic

    check_out_file(args.out, "--out file")
    r = AnalysisResult.load(args.run)
    plan = miprun_select(r, args.n, method=args.method, protect=args.protect, K=args.K or None,
                         alt_size=args.alt_size, max_iter=args.max_iter, repartition=args.repartition,
                         max_combinations=args.max_combinations, refine=args.refine)
    text = dumps(plan, indent=1)
    if args.out:
        write_text_atomic(args.out, text)
        src = plan["source"]
        summary = {"out": args.out, "blocks": plan["drop_layers"], "granularity": "layer", "method": src["method"],
                   "objective": src.get("objective")}
        if "gap" in src:
            summary["gap"] = src["gap"]
            summary["gap_same_partition"] = src["gap_same_partition"]
        emit(summary)
    else:
        emit(text)
    return 0
