"""``python -m analysis prune``: apply a plan and save the pruned model to a directory.

Every plan gives a standard transformers checkpoint that plain ``from_pretrained`` reloads with exactly the
pruned model's outputs: whole layers are removed, dropped attention/MLP sub-blocks are stored with zeroed
output projections (see :mod:`analysis.models.checkpoint`), and ``python -m analysis load DIR`` /
:func:`analysis.models.loading.load_model` remove those physically again from ``entroscope-plan.json``.
"""
from __future__ import annotations

from pathlib import Path

from analysis.cli.argtypes import in_path, int_list, out_checkpoint, out_file
from analysis.cli.healargs import add_heal_args
from analysis.cli.common import add_model_args, emit, load_lm, stderr_progress


def add_plan_args(p, required: bool = False) -> None:
    """--plan FILE or --drop-layers / --drop-attn / --drop-mlp index lists (0-based)."""
    g = p.add_argument_group("plan (0-based blocks; a plan file or index lists)")
    g.add_argument("--plan", default=None, type=in_path, help="plan JSON from `select` (drop_attn / drop_mlp / drop_layers)")
    g.add_argument("--drop-layers", type=int_list, default=None, metavar="IDS", help="whole layers, e.g. 20,21")
    g.add_argument("--drop-attn", type=int_list, default=None, metavar="IDS", help="attention sub-blocks, e.g. 5,7")
    g.add_argument("--drop-mlp", type=int_list, default=None, metavar="IDS", help="MLP sub-blocks, e.g. 9 or 3-5")
    g.add_argument("--force", action="store_true",
                   help="apply a plan made for another model (different fingerprint, type or depth); prints a warning")


def plan_from_cli(args, required: bool = False):
    from analysis.errors import SelectionError
    from analysis.models.plan import plan_from_args

    plan = plan_from_args(args.plan, args.drop_layers, args.drop_attn, args.drop_mlp)
    if plan is None and required:
        raise SelectionError("No plan given", hint="use --plan plan.json or --drop-layers/--drop-attn/--drop-mlp")
    return plan


def check_plan_provenance(args, plan, lm) -> None:
    """Refuse a plan made for another model unless --force (see :mod:`analysis.store.provenance`)."""
    from analysis.store.provenance import check_recorded_model

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
    p.add_argument("--out", required=True, type=out_checkpoint, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    p.add_argument("--root", default=None,
                   help="refuse to write anywhere outside this folder (e.g. a shared output root)")
    p.add_argument("--mergekit", default=None, metavar="FILE", type=out_file,
                   help="also write a mergekit passthrough YAML (whole-layer plans only)")
    p.add_argument("--quiet", action="store_true")
    add_heal_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from analysis.models.checkpoint import subblock_drops
    from analysis.errors import SelectionError
    from analysis.evaluate.cost import param_report
    from analysis.export import (LLAMA_CPP_NOTE, llama_cpp_command, llama_cpp_prune_layers, mergekit_for,
                          reproduction_manifest, to_json)
    from analysis.heal import save_healed
    from analysis.cli.healargs import heal_from_args
    from analysis.store.outdir import check_out_file, write_text_atomic
    from analysis.models.surgery import check_out_dir, save_pruned

    quiet_transformers(args.quiet)
    plan = plan_from_cli(args, required=True)
    if plan.is_empty:                       # an "unpruned pruned copy" is never what was meant
        raise SelectionError("The plan drops nothing, so the checkpoint would be the original model",
                             hint="give at least one block to drop (0-based), e.g. --drop-layers 20")
    if args.mergekit and args.heal != "none":
        raise SelectionError("--mergekit rebuilds the model from the original weights, so it cannot carry "
                             f"--heal {args.heal}", hint="share the healed checkpoint directory instead")
    out = Path(args.out).expanduser()
    state = check_out_dir(out, args.overwrite, args.root)       # fail before the (slow) model load
    check_out_file(args.mergekit, "--mergekit file")
    lm = load_lm(args, stderr_progress(args.quiet))
    check_plan_provenance(args, plan, lm)
    plan.validate(lm.num_layers)
    if args.mergekit:
        write_text_atomic(args.mergekit, mergekit_for(lm, plan))
    params = param_report(lm, plan)
    healed = heal_from_args(args, lm, plan, stderr_progress(args.quiet))
    norm = plan.normalized()
    zeroed = {str(j): kinds for j, kinds in subblock_drops(norm, lm.num_layers).items()}
    checkpoint = {"format": "standard checkpoint (plain from_pretrained loads it exactly)",
                  "zeroed_subblocks": zeroed,      # saved layer index -> ["attn"/"mlp"], output projection = 0
                  "note": "dropped sub-blocks are stored with zeroed output projections and listed in config.json "
                          "per_layer_config; `python -m analysis load` removes them physically" if zeroed else None}
    if healed is not None:
        checkpoint["llama_cpp_note"] = ("llama-quantize --prune-layers rebuilds the model from the original weights, "
                                        "so it cannot carry the healing; convert this healed checkpoint to GGUF")
    elif not (norm.drop_attn or norm.drop_mlp):
        checkpoint.update(llama_cpp_prune_layers=llama_cpp_prune_layers(plan),
                          llama_cpp_command=llama_cpp_command(plan, lm), llama_cpp_note=LLAMA_CPP_NOTE)
    results = {"params": params, "checkpoint": checkpoint, **({"healing": healed.describe()} if healed else {})}
    manifest = reproduction_manifest(lm, plan, argv=getattr(args, "argv", None), results=results)
    files = {"entroscope-manifest.json": to_json(manifest)}
    if healed is None:
        save_pruned(lm, plan, out, overwrite=args.overwrite, root=args.root, expected=state, extra_files=files)
    else:
        save_healed(lm, healed, out, overwrite=args.overwrite, root=args.root, expected=state, extra_files=files)
    summary = {"out": str(out), "plan": plan.describe(), "layers": params["layers"],
               "params": params["total"], "params_removed_fraction": round(params["removed_fraction"], 6),
               **{k: v for k, v in checkpoint.items() if v is not None}}
    if healed is not None:
        summary["healing"] = {"method": healed.method, "seconds": round(healed.report.get("seconds", 0), 2)}
    emit(summary)
    return 0
