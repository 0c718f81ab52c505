"""``python -m analysis prune``: apply a plan and save the pruned model to a directory.

Whole-layer plans give a standard transformers checkpoint (plain ``from_pretrained`` reloads it);
attention/MLP sub-block drops store only the remaining weights plus ``entroscope-plan.json``, which
``python -m analysis load DIR`` and :func:`analysis.models.load_model` restore.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..cli import int_list
from .common import add_model_args, load_lm, stderr_progress


def add_plan_args(p, required: bool = False) -> None:
    """--plan FILE or --drop-layers / --drop-attn / --drop-mlp index lists (0-based)."""
    g = p.add_argument_group("plan (0-based blocks; a plan file or index lists)")
    g.add_argument("--plan", default=None, help="plan JSON from `select` (drop_attn / drop_mlp / drop_layers)")
    g.add_argument("--drop-layers", type=int_list, default=None, metavar="IDS", help="whole layers, e.g. 20,21")
    g.add_argument("--drop-attn", type=int_list, default=None, metavar="IDS", help="attention sub-blocks, e.g. 5,7")
    g.add_argument("--drop-mlp", type=int_list, default=None, metavar="IDS", help="MLP sub-blocks, e.g. 9 or 3-5")
    g.add_argument("--force", action="store_true",
                   help="apply a plan made for another model (different fingerprint, type or depth); prints a warning")


def plan_from_cli(args, required: bool = False):
    from ..errors import SelectionError
    from ..plan import plan_from_args

    plan = plan_from_args(args.plan, args.drop_layers, args.drop_attn, args.drop_mlp)
    if plan is None and required:
        raise SelectionError("No plan given", hint="use --plan plan.json or --drop-layers/--drop-attn/--drop-mlp")
    return plan


def check_plan_provenance(args, plan, lm) -> None:
    """Refuse a plan made for another model unless --force (see :mod:`analysis.provenance`)."""
    from ..provenance import check_recorded_model

    if plan is not None and getattr(args, "plan", None):
        check_recorded_model(plan, lm, f"Plan {args.plan}", force=getattr(args, "force", False))


def quiet_transformers(quiet: bool) -> None:
    """--quiet: also silence transformers' own progress bars (weights loading / writing)."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def register(sub) -> None:
    p = sub.add_parser("prune", help="apply a plan and save the pruned model",
                       description="Remove the planned blocks (0-based) and save a checkpoint directory "
                                   "(weights, config, tokenizer, entroscope-plan.json).")
    add_model_args(p)
    add_plan_args(p, required=True)
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    p.add_argument("--root", default=None,
                   help="refuse to write anywhere outside this folder (e.g. a shared output root)")
    p.add_argument("--mergekit", default=None, metavar="FILE",
                   help="also write a mergekit passthrough YAML (whole-layer plans only)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate import param_report
    from ..export import llama_cpp_prune_layers, mergekit_yaml, reproduction_manifest, to_json
    from ..outdir import check_out_file, write_text_atomic
    from ..surgery import check_out_dir, save_pruned

    quiet_transformers(args.quiet)
    plan = plan_from_cli(args, required=True)
    if plan.is_empty:                       # an "unpruned pruned copy" is never what was meant
        from ..errors import SelectionError

        raise SelectionError("The plan drops nothing, so the checkpoint would be the original model",
                             hint="give at least one block to drop (0-based), e.g. --drop-layers 20")
    out = Path(args.out).expanduser()
    state = check_out_dir(out, args.overwrite, args.root)       # fail before the (slow) model load
    check_out_file(args.mergekit, "--mergekit file")
    lm = load_lm(args, stderr_progress(args.quiet))
    check_plan_provenance(args, plan, lm)
    plan.validate(lm.num_layers)
    if args.mergekit:
        write_text_atomic(args.mergekit, mergekit_yaml(plan, lm.name, lm.num_layers))
    params = param_report(lm, plan)
    manifest = reproduction_manifest(lm, plan, argv=getattr(args, "argv", None), results={"params": params})
    save_pruned(lm, plan, out, overwrite=args.overwrite, root=args.root, expected=state,
                extra_files={"entroscope-manifest.json": to_json(manifest)})
    norm = plan.normalized()
    summary = {"out": str(out), "plan": plan.describe(), "layers": params["layers"],
               "params": params["total"], "params_removed_fraction": round(params["removed_fraction"], 6),
               "format": "standard checkpoint" if not (norm.drop_attn or norm.drop_mlp)
               else "checkpoint + entroscope-plan.json (load with `python -m analysis load`)"}
    if not (norm.drop_attn or norm.drop_mlp):
        summary["llama_cpp_prune_layers"] = llama_cpp_prune_layers(plan)
    print(json.dumps(summary))
    return 0
