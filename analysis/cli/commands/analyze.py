"""``python -m analysis analyze``: the entropy analysis pass → run.json."""
from __future__ import annotations

import sys

from analysis.cli.argtypes import out_file
from analysis.cli.common import add_data_args, add_model_args, emit, load_lm, stderr_progress, tokens_from_args
from analysis.run import AnalysisConfig
from analysis.settings import add_arguments, from_args


def register(sub) -> None:
    p = sub.add_parser("analyze", help="stream calibration text through the model and score every block",
                       description="Per-layer entropy (resid_pre/mid/post), ΔH per block, two-stage boundary, "
                                   "EntroDrop drop order and the cosine baselines. Blocks are 0-based.")
    add_model_args(p)
    add_data_args(p)
    # every estimator / MI flag is an AnalysisConfig field (analysis.settings); --seed comes with the data flags
    add_arguments(p.add_argument_group("estimator"), AnalysisConfig, exclude=("seed",))
    p.add_argument("--no-cache", action="store_true",
                   help="don't use the results cache (by default statistics are saved as the pass goes, so an "
                        "interrupted run resumes where it stopped and a finished one is not recomputed)")
    p.add_argument("--out", required=True, type=out_file, help="where to write the run JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args):
    """The :class:`~analysis.run.AnalysisConfig` an ``analyze`` command line asks for (the app's reproduce
    script is checked against this, field by field)."""
    return from_args(AnalysisConfig, args)


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
    # rank 0 writes the run; --out is written before the results cache's last write (a failing cache write
    # never costs the finished result)
    result = analyze(lm, tokens, cfg, progress=progress, cache=not args.no_cache,
                     write_out=(lambda r: r.save(args.out)) if rank == 0 else None)
    if rank != 0:
        return 0
    if not args.quiet:
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        emit({"out": args.out, "num_layers": result.num_layers, "boundary": result.boundary,
                          "stages": result.stage_text(), "sinks": result.sinks.get("mode"),
                          "protected": result.protected, "drop_order": result.drop_order})
    return 0
