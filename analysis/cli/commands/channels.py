"""``python -m analysis channels``: iterative structured (MLP channel) pruning with a hybrid multi-domain
calibration set (:mod:`analysis.channels.pipeline`). Writes the pruned model and ``channels-report.json`` to --out."""
from __future__ import annotations

import argparse
import json
import sys

from analysis.settings import finite_float, positive_int, seed_int
from analysis.cli.common import add_model_args, stderr_progress


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    return v                                  # range (NaN included) checked by ChannelConfig.validated


def register(sub) -> None:
    from analysis.channels.pipeline import ALLOCATIONS, DOMAIN_AGGS, GLOBAL_NORMS, METHODS

    p = sub.add_parser(
        "channels", help="iterative structured pruning of MLP channels with a hybrid multi-domain calibration set",
        description="Removes whole MLP intermediate channels (gate/up rows + down columns) in --steps steps, "
                    "re-calibrating the partially pruned model at every step. Provisional recipe: every choice "
                    "is an option (see docs/channels.md). Layers and channels are 0-based.")
    add_model_args(p)
    g = p.add_argument_group("calibration")
    g.add_argument("--domains", default="wiki:1,code:1,news:1",
                   help="domain weights, e.g. wiki:1,code:1,news:1 (built-in: wiki news code docs dialogue math)")
    g.add_argument("--samples", type=positive_int, default=64, help="calibration windows in total (default 64)")
    g.add_argument("--seq-len", type=positive_int, default=256, help="tokens per window (default 256)")
    g.add_argument("--seed", type=seed_int, default=2024)
    g.add_argument("--sampling", choices=["random", "consecutive"], default="random")
    g.add_argument("--batch-size", type=positive_int, default=8, help="windows per calibration forward")
    g.add_argument("--skip-first-token", action="store_true", help="leave position 0 out of the statistics")
    s = p.add_argument_group("pruning")
    s.add_argument("--ratio", type=_ratio, default=0.25, help="fraction of the original MLP channels removed")
    s.add_argument("--steps", type=positive_int, default=4, help="T: calibrate/score/prune rounds (1 = one-shot)")
    s.add_argument("--method", choices=list(METHODS), default="act_weight")
    s.add_argument("--agg", choices=list(DOMAIN_AGGS), default="pooled", help="how per-domain scores combine")
    s.add_argument("--allocation", choices=list(ALLOCATIONS), default="uniform")
    s.add_argument("--min-keep-frac", type=finite_float(0, 1), default=0.1, help="global allocation: per-layer floor")
    s.add_argument("--global-norm", choices=list(GLOBAL_NORMS), default="none")
    s.add_argument("--multiple-of", type=positive_int, default=64, help="round kept widths (1 = no rounding)")
    s.add_argument("--bias-compensation", action="store_true", help="FLAP-style down_proj bias for pruned channels")
    s.add_argument("--head-ratio", type=_ratio, default=0.0,
                   help="also remove this fraction of KV groups (with their query heads) per layer; 0 = off")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-tokens", type=positive_int, default=4096, help="held-out tokens per domain")
    e.add_argument("--eval-window", type=positive_int, default=512, help="tokens per perplexity window")
    e.add_argument("--eval-domains", default=None, help="comma-separated (default: the calibration domains)")
    e.add_argument("--no-eval", action="store_true", help="skip the perplexity evaluation")
    e.add_argument("--latency", action="store_true", help="measure prefill/decode tokens/s, dense and pruned")
    e.add_argument("--ablation", action="store_true",
                   help="also run hybrid vs each single domain vs one-shot at this ratio (report['ablation'])")
    p.add_argument("--out", required=True, help="output directory for the pruned model and the report")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from analysis.channels.pipeline import (REPORT_FILE, ChannelConfig, run_ablation, run_channels,
                            save_channel_pruned, to_jsonable)
    from analysis.store.outdir import check_out_dir
    from analysis.cli.common import load_lm

    cfg = ChannelConfig(domains=args.domains, n_samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                        sampling=args.sampling, batch_size=args.batch_size, skip_first_token=args.skip_first_token,
                        method=args.method, domain_agg=args.agg, ratio=args.ratio, steps=args.steps,
                        allocation=args.allocation, min_keep_frac=args.min_keep_frac, global_norm=args.global_norm,
                        multiple_of=args.multiple_of, bias_compensation=args.bias_compensation,
                        head_ratio=args.head_ratio, eval_domains=args.eval_domains, eval_tokens=args.eval_tokens,
                        eval_window=args.eval_window).validated()          # bad options fail before loading
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
               "loader": json.loads((path / "entroscope-channels.json").read_text())["loader"],
               "perplexity": {d: {"before": v["before"], "after": v["after"]}
                              for d, v in (report.get("evaluation") or {}).get("domains", {}).items()}}
    print(json.dumps(to_jsonable(summary)), file=sys.stdout)
    return 0
