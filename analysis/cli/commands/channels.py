"""``python -m analysis channels``: iterative structured (MLP channel) pruning with a hybrid multi-domain
calibration set (:mod:`analysis.channels`). Writes the pruned model and ``channels-report.json`` to --out."""
from __future__ import annotations


from analysis.channels.config import ChannelConfig
from analysis.cli.argtypes import out_checkpoint
from analysis.cli.common import add_model_args, emit, stderr_progress
from analysis.settings import add_arguments, from_args


def register(sub) -> None:
    p = sub.add_parser(
        "channels", help="iterative structured pruning of MLP channels with a hybrid multi-domain calibration set",
        description="Removes whole MLP intermediate channels (gate/up rows + down columns) in --steps steps, "
                    "re-calibrating the partially pruned model at every step. Provisional recipe: every choice "
                    "is an option (see docs/channels.md). Layers and channels are 0-based.")
    add_model_args(p)
    # the recipe's flags are ChannelConfig fields (analysis.settings)
    add_arguments(p.add_argument_group("calibration"), ChannelConfig, only=(
        "domains", "n_samples", "seq_len", "seed", "sampling", "batch_size", "skip_first_token"))
    add_arguments(p.add_argument_group("pruning"), ChannelConfig, only=(
        "ratio", "steps", "method", "domain_agg", "allocation", "min_keep_frac", "global_norm", "multiple_of",
        "bias_compensation", "head_ratio"))
    e = p.add_argument_group("evaluation")
    add_arguments(e, ChannelConfig, only=("eval_tokens", "eval_window", "eval_domains"))
    e.add_argument("--no-eval", action="store_true", help="skip the perplexity evaluation")
    e.add_argument("--latency", action="store_true", help="measure prefill/decode tokens/s, dense and pruned")
    e.add_argument("--ablation", action="store_true",
                   help="also run hybrid vs each single domain vs one-shot at this ratio (report['ablation'])")
    p.add_argument("--out", required=True, type=out_checkpoint, help="output directory for the pruned model and the report")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from analysis.channels.io import REPORT_FILE, save_channel_pruned
    from analysis.models.channel_checkpoint import read_channels_meta
    from analysis.channels.pipeline import run_ablation, run_channels
    from analysis.store.jsonio import clean_json
    from analysis.store.outdir import check_out_dir
    from analysis.cli.common import load_lm

    cfg = from_args(ChannelConfig, args).validated()          # bad options fail before loading
    out = Path(args.out).expanduser()
    state = check_out_dir(out, args.overwrite, None)                  # before the long run; see outdir
    progress = stderr_progress(args.quiet)
    lm = load_lm(args, progress)
    res = run_channels(lm, cfg, evaluate=not args.no_eval, latency=args.latency, progress=progress)
    report = res.report
    if args.ablation:
        report["ablation"] = run_ablation(lm, cfg, progress=progress)
    path = save_channel_pruned(res.pruned, out, report=report, overwrite=args.overwrite, expected=state)
    summary = {"out": str(path), "report": str(path / REPORT_FILE), "ratio_reached": report["final"]["ratio_reached"],
               "widths": report["final"]["widths"], "params": report["final"]["params"],
               "loader": read_channels_meta(path)["loader"],
               "perplexity": {d: {"before": v["before"], "after": v["after"]}
                              for d, v in (report.get("evaluation") or {}).get("domains", {}).items()}}
    emit(clean_json(summary, fallback=str))
    return 0
