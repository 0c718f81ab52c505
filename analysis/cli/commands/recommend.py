"""``python -m analysis recommend``: a bake-off of every criterion the run supports, at several k, with and
without healing, judged on held-out text of other domains with paired bootstrap intervals and a random band
→ rec.json (the table, a recommendation per k, and a ``plan`` that ``eval --plan`` / ``prune --plan`` accept)."""
from __future__ import annotations

import json

from analysis.cli.common import add_data_args, add_model_args, load_lm, stderr_progress


def register(sub) -> None:
    from analysis.recommend.config import RecommendConfig
    from analysis.settings import add_arguments

    p = sub.add_parser("recommend", help="pick criterion, k and healing for this model, with error bars",
                       description="Calibrates on the chosen data (default: 32 windows of wiki), judges every "
                                   "criterion's plan on held-out text of the other built-in domains against the "
                                   "dense model and a random band (paired bootstrap over windows). Blocks 0-based.")
    add_model_args(p)
    add_data_args(p, required=False)
    g = p.add_argument_group("bake-off")
    add_arguments(g, RecommendConfig)
    p.add_argument("--out", required=True, help="where to write rec.json")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the per-window results cache")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run, default_samples=32)


def run(args) -> int:
    from analysis.cli.commands.prune import quiet_transformers
    from analysis.cli.common import tokens_from_args
    from analysis.recommend.bakeoff import recommend
    from analysis.recommend.config import RecommendConfig
    from analysis.settings import from_args
    from analysis.store.outdir import check_out_file, write_text_atomic

    cfg = from_args(RecommendConfig, args)
    cfg.validate()                                  # bad --k, --heal or --level refused before loading
    check_out_file(args.out, "--out file")
    if not (args.corpus or args.text or args.tokens):
        args.corpus = "wiki"
    quiet_transformers(args.quiet)
    progress = stderr_progress(args.quiet)
    lm = load_lm(args, progress)
    tokens = tokens_from_args(args, lm)
    rec = recommend(lm, tokens, cfg, progress=progress, cache=not args.no_cache)
    rec["argv"] = getattr(args, "argv", None)
    write_text_atomic(args.out, json.dumps(rec, indent=1, default=str, ensure_ascii=False))
    if not args.quiet:
        for k, r in rec["recommendations"].items():
            print(r["sentence"])
        ch = rec["choice"] or {}
        if ch.get("heal", "none") != "none":          # the plan file holds the blocks; healing is a flag
            print(f"the recommended plan is healed: python -m analysis eval --plan {args.out} --heal {ch['heal']} …")
        print(json.dumps({"out": args.out, "choice": rec["choice"], "seconds": round(rec["seconds"], 1)}))
    return 0
