"""``python -m analysis analyze``: the entropy analysis pass → run.json."""
from __future__ import annotations

import json
import sys

from analysis.cli.argtypes import bucket_bins, renyi_alpha
from analysis.cli.main import positive_int
from analysis.cli.common import add_data_args, add_model_args, load_lm, stderr_progress, tokens_from_args


def register(sub) -> None:
    p = sub.add_parser("analyze", help="stream calibration text through the model and score every block",
                       description="Per-layer entropy (resid_pre/mid/post), ΔH per block, two-stage boundary, "
                                   "EntroDrop drop order and the cosine baselines. Blocks are 0-based.")
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("estimator")
    g.add_argument("--estimator", default="bucket", choices=["bucket", "bucket-robust", "knn", "knn-norm", "renyi"])
    g.add_argument("--also", default="", help="extra estimators computed in the same pass, e.g. knn,renyi")
    g.add_argument("--k", type=positive_int, default=25, help="KNN neighbours (default 25)")
    g.add_argument("--bins", type=bucket_bins, default=80, help="Bucket bins (default 80)")
    g.add_argument("--alpha", type=renyi_alpha, default=4.0, help="Rényi order α > 0 (default 4)")
    g.add_argument("--knn-dedup", action="store_true",
                   help="KNN: count each exactly repeated token state once (default: the reference, where a "
                        "state repeated more than k times has radius 0 and log(1e-10) dominates; see README)")
    g.add_argument("--granularity", default="attention", choices=["attention", "mlp", "layer"])
    g.add_argument("--protect", default="fixed", choices=["fixed", "auto", "none"],
                   help="fixed = {0, 1, L-1} as EntroDrop's code; auto = detected compression stage + last")
    g.add_argument("--skip-first-token", action="store_true", help="same as --sinks first (kept for old scripts)")
    g.add_argument("--sinks", default="exclude", choices=["exclude", "keep", "first"],
                   help="massive-activation (attention-sink) tokens: exclude = leave the tokens the sink rule flags "
                        "out of every statistic (default); keep = every token, exactly as EntroDrop's reference "
                        "code; first = leave out position 0 only")
    g.add_argument("--sink-ratio", type=float, default=8.0,
                   help="sink rule: a token whose norm exceeds this many times its sequence's median token norm "
                        "(default 8; at most 5%% of a sequence's tokens are flagged)")
    g.add_argument("--clip", type=float, default=0.02, help="bucket-robust: quantile clipped on each side (0.02)")
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--mi", action="store_true", help="also keep sampled states and compute MI-PRUN scores")
    g.add_argument("--mi-estimator", default="renyi", choices=["renyi", "gaussian", "ksg", "cka"],
                   help="MI estimator (default: matrix-based Rényi; see docs/mi-prun.md for how they compare)")
    g.add_argument("--mi-token-norm", default="none", choices=["none", "rms"],
                   help="divide each token state by its RMS before estimating MI")
    g.add_argument("--mi-tokens", type=positive_int, default=256,
                   help="sampled token states kept per residual point; block MI and the boundary matrix share them "
                        "(default 256, see docs/mi-prun.md)")
    p.add_argument("--no-cache", action="store_true",
                   help="don't use the results cache (by default statistics are saved as the pass goes, so an "
                        "interrupted run resumes where it stopped and a finished one is not recomputed)")
    p.add_argument("--out", required=True, help="where to write the run JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args):
    """The :class:`~analysis.run.AnalysisConfig` an ``analyze`` command line asks for (the app's reproduce
    script is checked against this, field by field)."""
    from analysis.run import AnalysisConfig

    also = tuple(e for e in (s.strip() for s in args.also.split(",")) if e and e != args.estimator)
    cfg = AnalysisConfig(estimator=args.estimator, extra_estimators=also, k=args.k, bins=args.bins,
                         alpha=args.alpha, dedup=args.knn_dedup, granularity=args.granularity, protect=args.protect,
                         batch_size=args.batch_size, skip_first_token=args.skip_first_token, seed=args.seed,
                         sinks="first" if args.skip_first_token else args.sinks, sink_ratio=args.sink_ratio,
                         clip=args.clip)
    if args.mi:
        cfg.extensions = ("mi",)
        cfg.state_tokens = args.mi_tokens        # keep exactly what MI uses (as the app does)
        cfg.mi = {"estimator": args.mi_estimator, "token_norm": args.mi_token_norm, "n_tokens": args.mi_tokens,
                  "matrix_tokens": args.mi_tokens}
    return cfg


def run(args) -> int:
    from analysis.run import analyze

    cfg = config_from_args(args)
    cfg.validate(args.seq_len or (None if args.tokens else 256))
    from analysis.measure import distributed
    from analysis.store.outdir import check_out_file

    check_out_file(args.out, "--out file")                 # before the long pass
    rank = 0
    if distributed.init():           # under torchrun / accelerate launch: one shard of batches per rank
        rank = distributed.world()[0]
        args.device = distributed.local_device(args.device)
        if args.device_map:
            from analysis.errors import SelectionError

            raise SelectionError("--device-map (model-parallel) cannot be combined with a multi-process launch",
                                 hint="use one process with --device-map auto, or torchrun without --device-map")
    progress = stderr_progress(args.quiet or rank != 0)
    lm = load_lm(args, progress)
    tokens = tokens_from_args(args, lm)
    result = analyze(lm, tokens, cfg, progress=progress, cache=not args.no_cache)
    if rank != 0:
        return 0                     # rank 0 writes the run
    result.save(args.out)
    if not args.quiet:
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(json.dumps({"out": args.out, "num_layers": result.num_layers, "boundary": result.boundary,
                          "stages": result.stage_text(), "sinks": result.sinks.get("mode"),
                          "protected": result.protected, "drop_order": result.drop_order}))
    return 0
