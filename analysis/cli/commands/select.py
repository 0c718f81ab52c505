"""``python -m analysis select``: choose k blocks with any registered criterion → plan.json
(:meth:`analysis.models.plan.Plan.from_selection`)."""
from __future__ import annotations

from analysis.cli.argtypes import block_window
from analysis.settings import seed_int
from analysis.cli.argtypes import in_path, int_list, out_file
from analysis.cli.common import emit
from analysis.indices import GRANULARITIES


def register(sub) -> None:
    from analysis.score.criteria import CRITERIA

    p = sub.add_parser("select", help="pick k blocks to drop from a run with a criterion",
                       description="Blocks are 0-based. Criteria: " + ", ".join(CRITERIA))
    p.add_argument("--run", required=True, type=in_path, help="run JSON from `analyze`")
    p.add_argument("--criterion", default="entrodrop")
    p.add_argument("--k", type=int, required=True, help="number of blocks to drop")
    p.add_argument("--granularity", choices=GRANULARITIES, default=None,
                   help="default: the run's granularity")
    p.add_argument("--protect", type=int_list, default=None,
                   help="override the protected blocks, e.g. 0,1,29 (default: the run's)")
    p.add_argument("--estimator", default=None, help="entrodrop: which estimator of the run to use")
    p.add_argument("--seed", type=seed_int, default=0, help="random criterion seed")
    p.add_argument("--window", type=block_window, default=1, help="angular: per-block window")
    p.add_argument("--add", type=int_list, default=[],
                   help="hand edits: also drop these blocks after the criterion's top-k, e.g. 7,9 (0-based)")
    p.add_argument("--remove", type=int_list, default=[],
                   help="hand edits: keep these blocks of the criterion's top-k after all (0-based)")
    p.add_argument("--out", default=None, type=out_file, help="write the plan JSON here (default: print it)")
    p.set_defaults(func=run)


def run(args) -> int:
    from analysis.score.criteria import get_criterion, select
    from analysis.models.plan import Plan
    from analysis.score.result import AnalysisResult

    from analysis.store.outdir import check_out_file, write_text_atomic

    check_out_file(args.out, "--out file")
    r = AnalysisResult.load(args.run)
    c = get_criterion(args.criterion)
    params = {}
    if "estimator" in c.params and args.estimator:
        params["estimator"] = args.estimator
    if "seed" in c.params:
        params["seed"] = args.seed
    if "window" in c.params:
        if args.window >= r.num_layers:
            from analysis.errors import SelectionError

            raise SelectionError(f"--window {args.window} spans the whole {r.num_layers}-layer model",
                                 hint=f"use 1..{r.num_layers - 1}")
        params["window"] = args.window
    sel = select(r, args.criterion, args.k, args.granularity, protected=args.protect, **params)
    top = [int(b) for b in sel.blocks]
    if args.add or args.remove:
        sel = apply_edits(sel, args.add, args.remove, r.num_layers)
    plan = Plan.from_selection(sel, r)
    if args.add or args.remove:
        plan.source.update(edited_by_hand=True, criterion_top_k=top, added=sorted(args.add),
                           removed=sorted(args.remove))
    text = plan.to_json()
    if args.out:
        write_text_atomic(args.out, text)
        emit({"out": args.out, "blocks": sel.blocks, "granularity": sel.granularity})
    else:
        emit(text)
    return 0


def apply_edits(sel, add: list[int], remove: list[int], num_layers: int):
    """The selection with hand edits applied: ``remove`` taken out of the top-k, ``add`` put in (0-based). A block
    out of range, a protected block added, a block removed that the top-k does not hold, or one block both added
    and removed is refused (:class:`~analysis.errors.SelectionError`), never silently ignored."""
    from dataclasses import replace

    from analysis.errors import SelectionError

    top = [int(b) for b in sel.blocks]
    bad = [b for b in list(add) + list(remove) if not 0 <= b < num_layers]
    if bad:
        raise SelectionError(f"--add/--remove block(s) {bad} are outside 0..{num_layers - 1}", hint="indices are 0-based")
    both = sorted(set(add) & set(remove))
    if both:
        raise SelectionError(f"block(s) {both} are both added and removed")
    prot = sorted(set(add) & set(int(p) for p in sel.protected))
    if prot:
        raise SelectionError(f"--add names protected block(s) {prot}", hint="change --protect to drop them")
    missing = sorted(set(remove) - set(top))
    if missing:
        raise SelectionError(f"--remove block(s) {missing} are not in the criterion's top-{sel.k} {sorted(top)}",
                             hint="--remove takes blocks out of the criterion's choice")
    already = sorted(set(add) & set(top))
    if already:
        raise SelectionError(f"--add block(s) {already} are already in the criterion's top-{sel.k} {sorted(top)}")
    blocks = sorted((set(top) - set(remove)) | set(add))
    return replace(sel, k=len(blocks), blocks=blocks)
