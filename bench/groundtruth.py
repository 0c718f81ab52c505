"""Ground-truth cost: drop-one ΔPPL over L layers with prefix reuse ÷ L separate evaluations (target ≤ 0.6).

Separate evaluations: one :func:`analysis.evaluate.quality.perplexity` call per plan (the pruned model run from the
embeddings) on the same calibration windows; drop-one: :func:`analysis.evaluate.groundtruth.delta_ppl_details`
(the sweep's trie walk: the original once, each plan from its dropped block on, fed the original's residual
stream there). Losses must be bit-identical. Also prints the work of a SLEB search at n = 4 in passes
(layer forwards / L) before (the previous scheme: the original in full every step, every candidate from
min(candidate, first removed layer)) and after (the trie walk), counted from the schedules.

    .venv/bin/python bench/groundtruth.py                       # the product's defaults (figures: a quiet machine)
    .venv/bin/python bench/groundtruth.py --samples 2 --seq-len 64 --rounds 1     # a quick check

Model, dtype, windows (count, length, seed) and batch size default to ``python -m analysis groundtruth``'s own,
read from its parser (8 windows × SampleConfig's seq-len, batch 8). The last line is ``ratio=<CPU-time ratio of
this process over interleaved rounds>`` (on a machine shared with other jobs wall time drifts with their load);
the wall-time ratio and the load average before and after are printed above it.
"""
from __future__ import annotations

import argparse
import os
import time

from common import cli_args, loadavg, machine, print_ratio

import torch
from analysis.evaluate.groundtruth import delta_ppl_details, plan_cost
from analysis.evaluate import EvalConfig, perplexity
from analysis.models.loading import load_model
from analysis.cli.common import tokens_from_args
from analysis.models.plan import Plan


def old_step_passes(L: int, removed: list[int], cands: list[int], with_base: bool) -> float:
    """Layer forwards / L of the previous plan_losses: the original in full, then every plan from its first
    dropped layer (one earlier if no kept layer follows) to the end."""
    work = L
    for u in cands:
        drop = set(removed) | {u}
        start = min(drop)
        kept = [i for i in range(L) if i not in drop]
        if not [i for i in kept if i >= start]:
            start -= 1
        work += len([i for i in kept if i >= start])
    return work / L


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the CLI's")
    ap.add_argument("--samples", type=int, default=None, help="default: the CLI groundtruth command's")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the CLI's (SampleConfig)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the CLI groundtruth command's")
    ap.add_argument("--dtype", default=None, help="default: the CLI's")
    ap.add_argument("--sleb-n", type=int, default=None, help="default: the CLI groundtruth command's --n")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is per process)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = loadavg()
    print(machine())
    # the product's command: python -m analysis groundtruth --corpus wiki (its defaults), then this bench's flags
    cli = cli_args("groundtruth", "--corpus", "wiki", "--out", os.devnull)
    for key in ("model", "samples", "seq_len", "batch_size", "dtype"):
        if getattr(args, key) is not None:
            setattr(cli, key, getattr(args, key))
    args.sleb_n = cli.n if args.sleb_n is None else args.sleb_n
    args.model, args.dtype, args.batch_size = cli.model, cli.dtype, cli.batch_size
    lm = load_model(cli.model, device=cli.device, dtype=cli.dtype)
    L = lm.num_layers
    ids = tokens_from_args(cli, lm).input_ids
    args.samples, args.seq_len = ids.shape
    cfg = EvalConfig(batch_size=args.batch_size, bos=False)
    plans = [Plan(drop_layers=[i]) for i in range(L)]
    perplexity(lm, ids[: args.batch_size], cfg=cfg)                        # warm-up
    # interleaved rounds (separate, reuse, reuse, separate, …) so that load drift on a shared machine hits
    # both; wall time and CPU time of this process (less sensitive to other jobs) are both reported
    t_single = t_reuse = c_single = c_reuse = 0.0
    for r in range(args.rounds):
        for what in (("single", "reuse") if r % 2 == 0 else ("reuse", "single")):
            t, c = time.perf_counter(), time.process_time()
            if what == "single":
                single = [perplexity(lm, ids, plan=p, cfg=cfg)["nll"] for p in plans]
                t_single += time.perf_counter() - t
                c_single += time.process_time() - c
            else:
                d = delta_ppl_details(lm, ids, "layer", batch_size=args.batch_size)
                t_reuse += time.perf_counter() - t
                c_reuse += time.process_time() - c
    same = all(a == b for a, b in zip(single, d["loss"]))
    sep = plan_cost(lm, plans, reuse=False)
    ours = plan_cost(lm, [None] + plans)
    print(f"{args.model}: {L} layers, {args.samples} × {args.seq_len} calibration tokens, batch {args.batch_size}, "
          f"{args.dtype}")
    print(f"{args.rounds} interleaved rounds; CPU time: separate {c_single:.1f} s, reuse {c_reuse:.1f} s, ratio "
          f"{c_reuse / c_single:.3f}; wall-time ratio {t_reuse / t_single:.3f}")
    print(f"L separate evaluations {t_single:7.2f} s ({sep['layer_forwards']} layer forwards, {sep['heads']} LM heads)")
    print(f"drop-one with reuse    {t_reuse:7.2f} s ({ours['layer_forwards']} layer forwards, {ours['heads']} LM heads, "
          f"incl. the full model)   layer-work ratio {ours['layer_forwards'] / sep['layer_forwards']:.3f}")
    print(f"losses bit-identical to the separate evaluations: {same}")
    # SLEB n: cost in passes, before (previous scheme) and after (trie walk), from the schedules
    n, removed, before, after = args.sleb_n, [], 0.0, 0.0
    order = sorted(range(L), key=lambda i: d["loss"][i])                   # any removal order: costs only
    for step in range(n):
        cands = [u for u in range(L) if u not in removed]
        before += old_step_passes(L, removed, cands, step == 0) + (L / L if step == 0 else 0)
        pl = [Plan(drop_layers=sorted(removed + [u])) for u in cands]
        after += plan_cost(lm, ([None] if step == 0 else []) + pl)["passes"]
        removed.append(order[step])
    evals = 1 + sum(L - t for t in range(n))
    print(f"SLEB n={n}: {evals} calibration-loss evaluations; layer work before {before:.1f} passes, after "
          f"{after:.1f} passes ({after / before:.2f}×); separate evaluations would be "
          f"{1 + sum((L - t) * (L - t - 1) / L for t in range(n)):.1f} passes (+ one LM head per evaluation "
          "in every scheme)")
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(c_reuse / c_single)   # CPU time of this process (wall-time ratio above)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
