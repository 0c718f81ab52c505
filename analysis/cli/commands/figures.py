"""``python -m analysis figures``: every chart of a run (and an eval / sweep) as PNG, SVG and PDF files."""
from __future__ import annotations

import sys

from analysis.cli.argtypes import in_path, out_folder
from analysis.cli.common import emit


def register(sub) -> None:
    p = sub.add_parser("figures", help="save every chart as PNG/SVG/PDF (offline, matplotlib)",
                       description="Render the app's charts from a run JSON (and optionally an eval and a sweep "
                                   "JSON) to static files: one file per chart and format in --out.")
    p.add_argument("--run", default=None, type=in_path, help="run JSON from `analyze`")
    p.add_argument("--eval", default=None, type=in_path, help="eval JSON from `eval` (perplexity before/after)")
    p.add_argument("--sweep", default=None, type=in_path, help="sweep JSON from `sweep` (perplexity vs k, Pareto)")
    p.add_argument("--out", required=True, type=out_folder, help="output folder (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace figure files that already exist in --out")
    p.add_argument("--formats", default="png,svg,pdf", help="comma list of png, svg, pdf (default: all three)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from analysis.errors import DataError
    from analysis.figures import FORMATS, all_figures, save_figures
    from analysis.score.result import AnalysisResult
    from analysis.store.schemas import read_eval, read_sweep

    if not (args.run or args.eval or args.sweep):
        raise DataError("Nothing to draw", hint="give --run run.json and/or --eval eval.json / --sweep sweep.json")
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DataError(f"Unknown figure format(s) {bad or args.formats!r}", hint=f"use {', '.join(FORMATS)}")
    r = AnalysisResult.load(args.run) if args.run else None
    ev = read_eval(args.eval) if args.eval else None       # strict JSON, validated by the pydantic schemas
    sw, notes = read_sweep(args.sweep) if args.sweep else (None, [])
    for w in notes:
        print(f"warning: {w}", file=sys.stderr)
    if sw is not None:                                    # rows whose perplexity was non-finite are not drawn
        sw = {**sw, "rows": [row for row in sw["rows"] if row.get("perplexity") is not None]}
    figs = all_figures(r, ev, sw)
    paths = save_figures(figs, args.out, formats, overwrite=args.overwrite)
    if not args.quiet:
        emit({"out": args.out, "figures": list(figs), "files": len(paths)})
    return 0
