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
                   help="also write a mergekit passthrough YAML (whole-layer plans; for models with per-layer config "
                        "fields such as layer_types also the FILE-stem-mergekit-source/ folder it reads). Skipped, "
                        "with one line saying why, when the plan cannot be expressed that way")
    p.add_argument("--eval", default=None, metavar="FILE", type=in_path,
                   help="an `eval` result JSON for this plan (perplexity, --tasks accuracy): its numbers and protocol "
                        "go into the checkpoint's model card (README.md)")
    p.add_argument("--quiet", action="store_true")
    add_heal_args(p)
    p.set_defaults(func=run)


def _optional_exports(args, lm, plan, healed) -> tuple[dict, list[str]]:
    """mergekit YAML and llama.cpp routes: what can be written is written; what cannot is one line each (an
    optional export never aborts the prune)."""
    from analysis.errors import SelectionError
    from analysis.export import llama_cpp_routes, lm_eval_command, write_mergekit

    norm, out, skipped = plan.normalized(), {}, []
    if args.mergekit:
        if healed is not None:
            skipped.append(f"mergekit: not written — it rebuilds the model from the original weights, so it cannot "
                           f"carry --heal {args.heal}; share the healed checkpoint instead")
        elif norm.drop_attn or norm.drop_mlp:
            skipped.append(f"mergekit: not written — passthrough slices whole layers and this plan drops sub-blocks "
                           f"({norm.describe()}); the checkpoint is the export")
        else:
            try:
                out["mergekit"] = write_mergekit(lm, plan, args.mergekit, args.overwrite, args.root)
            except SelectionError as exc:   # e.g. a model built in memory: no source for mergekit to read
                skipped.append(f"mergekit: not written — {exc}")
    routes = llama_cpp_routes(plan, lm, args.out)
    if healed is not None:
        routes.update(prune_layers=None, command=None, note="--prune-layers rebuilds the model from the original "
                      "weights, so it cannot carry the healing; convert this healed checkpoint (the convert command)")
    if routes["refused"]:
        skipped.append(f"llama.cpp: no command — {routes['refused']}")
    out["llama_cpp"] = {k: v for k, v in routes.items() if v is not None}
    out["lm_eval"] = lm_eval_command(args.out)          # lm-eval's own CLI with Entroscope's local tasks
    return out, skipped


def read_eval(path, plan) -> dict:
    """The ``eval`` result JSON for the model card; refused (one line) when it was measured for another plan."""
    from analysis.errors import DataError, SelectionError
    from analysis.models.plan import Plan
    from analysis.store.schemas import read_json

    hint = "write it with `python -m analysis eval --model M --plan plan.json --out eval.json`"
    data = read_json(path, "evaluation", hint)
    if not isinstance(data, dict) or ("perplexity" not in data and "tasks" not in data):
        raise DataError(f"{path} is not an `eval` result (no perplexity or tasks)", hint=hint)
    theirs = Plan.from_dict(data["plan"], str(path)).normalized() if data.get("plan") else None
    mine = plan.normalized()
    if theirs is not None and (theirs.drop_attn, theirs.drop_mlp, theirs.drop_layers) != (
            mine.drop_attn, mine.drop_mlp, mine.drop_layers):
        raise SelectionError(f"{path} evaluated another plan ({theirs.describe()}) than this one ({mine.describe()})",
                             hint="evaluate this plan, or drop --eval")
    return data


def _sizes(lm, plan, out_dir=None) -> dict:
    """What the checkpoint saves, honestly: file bytes and parameters as stored, what plain transformers runs
    (zeroed sub-blocks included) and what Entroscope's loader runs (zeroed sub-blocks removed)."""
    from analysis.evaluate.cost import param_report
    from analysis.models.plan import Plan

    norm = plan.normalized()
    ours = param_report(lm, norm)
    plain = param_report(lm, Plan(drop_layers=norm.drop_layers)) if (norm.drop_attn or norm.drop_mlp) else ours
    files = sorted(Path(out_dir).glob("*.safetensors")) if out_dir is not None else []
    res = {"file_bytes": sum(f.stat().st_size for f in files),
           "params_in_files_and_plain_transformers": plain["total"], "params_entroscope_loader": ours["total"],
           "original_params": ours["original_total"],
           "flops_per_token_plain_transformers": 2 * plain["non_embedding"],
           "flops_per_token_entroscope_loader": 2 * ours["non_embedding"],
           "flops_per_token_original": 2 * ours["original_non_embedding"],
           "flops_note": "≈ 2 × non-embedding parameters run per token (matrix products; attention scores excluded)"}
    if norm.drop_attn or norm.drop_mlp:
        res["note"] = ("dropped sub-blocks are stored zeroed: the files and plain transformers keep their size and "
                       "compute; `python -m analysis load` skips them (fewer parameters, FLOPs, no KV cache for a "
                       "dropped attention)")
    return res


def run(args) -> int:
    import sys

    from analysis.models.checkpoint import subblock_drops
    from analysis.errors import SelectionError
    from analysis.evaluate.cost import param_report
    from analysis.export import reproduction_manifest, to_json
    from analysis.heal import save_healed
    from analysis.cli.healargs import heal_from_args
    from analysis.store.outdir import check_out_file
    from analysis.models.surgery import check_out_dir, save_pruned

    quiet_transformers(args.quiet)
    plan = plan_from_cli(args, required=True)
    if plan.is_empty:                       # an "unpruned pruned copy" is never what was meant
        raise SelectionError("The plan drops nothing, so the checkpoint would be the original model",
                             hint="give at least one block to drop (0-based), e.g. --drop-layers 20")
    out = Path(args.out).expanduser()
    state = check_out_dir(out, args.overwrite, args.root)       # fail before the (slow) model load
    check_out_file(args.mergekit, "--mergekit file")
    evaluation = read_eval(args.eval, plan) if args.eval else None
    lm = load_lm(args, stderr_progress(args.quiet))
    check_plan_provenance(args, plan, lm)
    plan.validate(lm.num_layers)
    params = param_report(lm, plan)
    healed = heal_from_args(args, lm, plan, stderr_progress(args.quiet))
    exports, skipped = _optional_exports(args, lm, plan, healed)
    norm = plan.normalized()
    zeroed = {str(j): kinds for j, kinds in subblock_drops(norm, lm.num_layers).items()}
    checkpoint = {"format": "standard checkpoint (plain from_pretrained loads it exactly)",
                  "zeroed_subblocks": zeroed,      # saved layer index -> ["attn"/"mlp"], output projection = 0
                  "note": "dropped sub-blocks are stored with zeroed output projections and listed in config.json "
                          "per_layer_config; `python -m analysis load` removes them physically" if zeroed else None}
    results = {"params": params, "checkpoint": checkpoint, **exports,
               **({"healing": healed.describe()} if healed else {}), **({"skipped_exports": skipped} if skipped else {})}
    manifest = reproduction_manifest(lm, plan, argv=getattr(args, "argv", None), results=results)
    files = {"entroscope-manifest.json": to_json(manifest)}
    card = {"evaluation": evaluation, "sizes": _sizes(lm, plan)}
    if healed is None:
        save_pruned(lm, plan, out, overwrite=args.overwrite, root=args.root, expected=state, extra_files=files,
                    card=card)
    else:
        save_healed(lm, healed, out, overwrite=args.overwrite, root=args.root, expected=state, extra_files=files,
                    card=card)
    for line in skipped:
        print(line, file=sys.stderr)
    summary = {"out": str(out), "plan": plan.describe(), "layers": params["layers"],
               "params": params["total"], "params_removed_fraction": round(params["removed_fraction"], 6),
               "size": _sizes(lm, plan, out), **{k: v for k, v in checkpoint.items() if v is not None}, **exports}
    if healed is not None:
        summary["healing"] = {"method": healed.method, "seconds": round(healed.report.get("seconds", 0), 2)}
    emit(summary)
    return 0
