"""``--heal`` options shared by the ``prune``, ``eval`` and ``sweep`` commands, and healed sweep rows."""
from __future__ import annotations

import sys

from analysis.heal.models import heal_tokens, recovered
from analysis.heal.registry import HEAL_METHODS, DistillHealSettings, LinearHealSettings, get_heal_method, settings_spec

#: CLI option -> method parameter
_OPTIONS = {"heal_ridge": "ridge", "heal_steps": "steps", "heal_rank": "rank", "heal_lr": "lr",
            "heal_batch_size": "batch_size", "heal_init": "init", "heal_skip_first_token": "skip_first_token"}


def add_heal_args(p) -> None:
    from analysis.settings import bounded_int, seed_int

    g = p.add_argument_group("healing (repair the pruned model; the base model is never modified)")
    g.add_argument("--heal", default="none", choices=list(HEAL_METHODS),
                   help="linear: ReplaceMe-style map folded into the projection before each gap (training-free); "
                        "distill: short KL distillation with LoRA merged back")
    g.add_argument("--heal-corpus", default="wiki", help="calibration text for healing: built-in domain or mix")
    g.add_argument("--heal-samples", type=bounded_int(1, 100_000, "a window count"), default=32,
                   help="calibration windows (default 32)")
    g.add_argument("--heal-seq-len", type=bounded_int(2, 1_048_576, "a token count"), default=256,
                   help="tokens per window (default 256)")
    g.add_argument("--heal-seed", type=seed_int, default=2024)
    lin, dis = (lambda n: settings_spec(LinearHealSettings, n).arg_type()), \
        (lambda n: settings_spec(DistillHealSettings, n).arg_type())      # ranges stated once, in the library
    g.add_argument("--heal-ridge", type=lin("ridge"), default=None, help="linear: ridge towards identity (default 1e-4)")
    g.add_argument("--heal-skip-first-token", action="store_const", const=True, default=None,
                   help="linear: leave position 0 (the attention-sink token with a massive activation) out of the "
                        "fit; helps when the dropped run creates that activation (docs/healing.md)")
    g.add_argument("--heal-steps", type=dis("steps"), default=None, help="distill: optimizer steps (default 50)")
    g.add_argument("--heal-rank", type=dis("rank"), default=None, help="distill: LoRA rank (default 8)")
    g.add_argument("--heal-lr", type=dis("lr"), default=None, help="distill: learning rate (default 5e-4)")
    g.add_argument("--heal-batch-size", type=lin("batch_size"), default=None, help="windows per step / batch")
    g.add_argument("--heal-init", choices=["none", "linear"], default=None,
                   help="distill: start from the bare pruned model (none) or the linear-healed one")


def heal_options(args) -> dict:
    """The given method options that the chosen method takes (others are ignored with a warning)."""
    m = get_heal_method(args.heal)
    opts = {}
    for cli, name in _OPTIONS.items():
        v = getattr(args, cli, None)
        if v is None:
            continue
        if name in m.params:
            opts[name] = v
        else:
            print(f"warning: --{cli.replace('_', '-')} does not apply to --heal {args.heal}", file=sys.stderr)
    return opts




def heal_from_args(args, lm, plan, progress=None, tokens=None):
    """Heal ``plan`` as the CLI arguments say; None for ``--heal none``."""
    from analysis.heal.registry import heal

    if getattr(args, "heal", "none") == "none":
        return None
    if tokens is None:
        tokens = heal_tokens(lm, args.heal_corpus, args.heal_samples, args.heal_seq_len, args.heal_seed)
    healed = heal(lm, plan, args.heal, tokens, progress=progress, **heal_options(args))
    healed.settings["calibration_corpus"] = args.heal_corpus
    healed.settings["calibration_seed"] = args.heal_seed
    for s in healed.report.get("not_applied") or []:
        print(f"warning: {args.heal} healing left {s['gap']} unhealed: {s['reason']}", file=sys.stderr)
    return healed






def heal_sweep_rows(lm, rows: list[dict], args, windows, cfg, progress=None) -> tuple[list[dict], list[dict]]:
    """One healed row next to every sweep row that drops something (``heal`` column), same protocol; and the
    rows healing does not apply to, with the reason (as the sweep's ``skipped``)."""
    from analysis.evaluate.quality import perplexity
    from analysis.models.plan import Plan
    from analysis.heal.models import healed_lm

    tokens = heal_tokens(lm, args.heal_corpus, args.heal_samples, args.heal_seq_len, args.heal_seed)
    nll0 = next((r["nll"] for r in rows if Plan.from_dict(r["plan"]).is_empty), None)
    if nll0 is None:
        nll0 = perplexity(lm, windows, None, cfg)["nll"]
    cache: dict[str, dict] = {}
    out, skipped = [], []
    todo = [r for r in rows if not Plan.from_dict(r["plan"]).is_empty]
    for i, row in enumerate(todo):
        plan = Plan.from_dict(row["plan"])
        key = plan.describe()
        if key not in cache:
            try:
                h = heal_from_args(args, lm, plan, tokens=tokens)
                res = perplexity(healed_lm(lm, h), windows, None, cfg)
                cache[key] = {"perplexity": res["perplexity"], "nll": res["nll"],
                              "heal_seconds": h.report.get("seconds"), "heal_passes": h.report.get("passes")}
            except Exception as exc:  # noqa: BLE001 - an EntroscopeError becomes a skipped row
                from analysis.errors import EntroscopeError

                if not isinstance(exc, EntroscopeError):
                    raise
                cache[key] = {"error": str(exc)}
        if progress:
            progress((i + 1) / len(todo), f"healing ({args.heal}) {i + 1}/{len(todo)} plans")
        if "error" in cache[key]:
            skipped.append({"criterion": row["criterion"], "k": row["k"], "heal": args.heal,
                            "reason": cache[key]["error"]})
            continue
        healed_row = {**row, **cache[key], "heal": args.heal, "latency": None}
        healed_row["recovered_fraction"] = recovered(nll0, row["nll"], healed_row["nll"])
        out.append(healed_row)
    return out, skipped
