"""MI-PRUN cost and quality on the real SmolLM2, measured in one run; with ``--write`` replaces the "MI-PRUN"
section of docs/benchmarks.md (never without it).

With no arguments everything is the product's default, read from the settings dataclasses (never restated
here): the app's model, dtype and calibration windows (``app_support.state``: 32 × 256 wiki tokens), and the
CLI's default analysis (``AnalysisConfig``: one sinks view, Bucket + cosines — the cheapest pass, so the cost in
passes is not flattered) with MI-PRUN switched on (``MIConfig``: its estimator and token counts). Measures, on the same
calibration tokens:

* one analysis pass without MI (the unit every cost is divided by), and the pass with sampled states;
* MI scoring from the cached states (the product's MI estimator and token counts, or ``--n-tokens`` /
  ``--matrix-tokens``) for the block scores of all three granularities and the boundary matrix, and the DPI
  violation rate;
* Fast-Block-Select from the stored matrix, and exhaustive search for n ≤ 4 (gap to the optimum of the
  same objective, over all subsets and within Fast-Block-Select's run partition);
* ground truth by forward passes on the same tokens: drop-one ΔPPL (= SLEB's first step) and a
  SLEB-style greedy search for ``--sleb-n`` layers; their cost relative to MI-PRUN's;
* agreement (Spearman / Kendall / top-k overlap) of MI-PRUN and the other criteria with drop-one ΔPPL,
  and the block-score cost and ΔPPL agreement of the other estimators on the same states.

    .venv/bin/python bench/mi.py                    # the product's defaults (figures: a quiet machine)
    .venv/bin/python bench/mi.py --samples 4 --seq-len 64 --n 2 --other-estimators gaussian   # a quick check

The last line is ``ratio=<MI-PRUN end to end ÷ one analysis pass>`` (the pass keeping states + MI estimates +
Fast-Block-Select, in analysis passes); the load average before and after is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import analysis_config, app_defaults, calib_tokens, describe, loadavg, machine, print_ratio  # noqa: E402
from bench.common import write_section as write_docs  # noqa: E402

SECTION = "## MI-PRUN (bench/mi.py)"


#: estimator variants compared on the same cached states: name -> (estimator, params, token_norm)
VARIANTS = {
    "renyi-debias": ("renyi", {"debias": True}, "none"),
    "renyi-rms-sigma0.5": ("renyi", {"sigma_scale": 0.5}, "rms"),
    "gaussian": ("gaussian", {}, "none"),
    "gaussian-rms": ("gaussian", {}, "rms"),
    "ksg": ("ksg", {}, "none"),
    "cka": ("cka", {}, "none"),
    "cka-rms": ("cka", {}, "rms"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def main() -> None:
    model, data, _ = app_defaults()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=model["spec"])
    ap.add_argument("--dtype", default=model["dtype"])
    ap.add_argument("--samples", type=int, default=data["n_samples"])
    ap.add_argument("--seq-len", type=int, default=data["seq_len"])
    ap.add_argument("--n-tokens", type=int, default=None, help="MI block-score tokens (default: MIConfig's)")
    ap.add_argument("--matrix-tokens", type=int, default=None, help="boundary-matrix tokens (default: MIConfig's)")
    ap.add_argument("--sleb-n", type=int, default=0, help="also run SLEB for this many layers (0: estimate only)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch and BLAS threads (default 0: torch's own choice, as the product runs)")
    ap.add_argument("--n", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    ap.add_argument("--other-estimators", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    ap.add_argument("--write", action="store_true", help="replace this bench's section of docs/benchmarks.md")
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    load0 = loadavg()

    from analysis.evaluate.groundtruth import delta_ppl_details, sleb_select, store_ground_truth
    from analysis.measure.mi_states import StateMI
    from analysis.score.agreement import agreement_matrix
    from analysis.score.blocksearch import exhaustive_select, fast_block_select, maximal_runs, selection_gap
    from analysis.score.miprun import matrix_block_scores, matrix_run_score
    from analysis.models.loading import load_model
    from analysis.run import EXTENSIONS, analyze
    from analysis.score.selection import rank_correlation

    t_start = time.perf_counter()
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    tokens = calib_tokens(lm, args.samples, args.seq_len, seed=data["seed"])
    # the product's analysis (the CLI's defaults), without and with MI-PRUN; "layer" only names the granularity
    # the agreement below is read at (the pass and the MI scores are the same for every granularity)
    mi_over = {k: v for k, v in (("mi.n_tokens", args.n_tokens),) if v is not None}
    plain_cfg = analysis_config(app=False, granularity="layer")
    cfg = analysis_config(app=False, granularity="layer", mi=True, **mi_over)
    if args.matrix_tokens is not None:
        cfg.mi["matrix_tokens"] = args.matrix_tokens
    L = lm.num_layers
    lines = [f"Machine: {machine()}; torch threads {torch.get_num_threads()} (CPU shared with other jobs: "
             f"ratios are from one run, absolute times are noisy).",
             f"Model {args.model} ({L} layers, d={lm.adapter.hidden_size}); calibration: {args.samples} × "
             f"{args.seq_len} wiki tokens (seed {data['seed']}); the pass: {describe(plain_cfg)}; MI-PRUN: "
             f"{cfg.mi.get('estimator')} on {cfg.mi.get('n_tokens')} token states.", ""]

    # 1. analysis pass without MI, then with states + MI ------------------------------------------------
    log("analysis passes")
    analyze(lm, tokens[:2], plain_cfg)                  # warm-up
    t0 = time.perf_counter()
    analyze(lm, tokens, plain_cfg)
    t_pass = time.perf_counter() - t0
    kept: dict = {}
    EXTENSIONS["_bench_keep"] = lambda stats, lm_, cfg: (kept.update(states=stats.states), {})[1]
    cfg.extensions = ("_bench_keep", *cfg.extensions)
    run = analyze(lm, tokens, cfg)
    mi = run.extras["mi"]
    t_capture = run.manifest["timings"]["capture_s"]
    t_blocks, t_matrix = mi["timings"]["block_scores_s"], mi["timings"]["matrix_s"]
    t_mi = mi["timings"]["total_s"]
    lines += ["| step | seconds | × one analysis pass |", "|---|---:|---:|",
              f"| analysis pass (no MI: {describe(plain_cfg)}) | {t_pass:.2f} | 1.00 |",
              f"| analysis pass keeping {mi['states_available']} token states (capture only) | {t_capture:.2f} | "
              f"{t_capture / t_pass:.2f} |",
              f"| MI block scores, 3 granularities ({cfg.mi.get('estimator')}, N={mi['n_tokens']}, {3 * L} pairs) | "
              f"{t_blocks:.2f} | {t_blocks / t_pass:.2f} |",
              f"| boundary MI matrix ({(L + 1) * L // 2} pairs, N={mi['matrix_tokens']}) | {t_matrix:.2f} | "
              f"{t_matrix / t_pass:.2f} |"]

    # 2. Fast-Block-Select and exhaustive search from the stored matrix -------------------------------
    log("Fast-Block-Select / exhaustive")
    s = matrix_block_scores(mi["matrix"])
    rs = matrix_run_score(mi["matrix"])
    prot = run.protected
    fbs_rows, t_fbs_total = [], 0.0
    for n in args.n:
        t0 = time.perf_counter()
        fbs = fast_block_select(s, rs, n, protect=prot, refine=False)    # the reconstruction as outlined
        t_f = time.perf_counter() - t0
        rep = fast_block_select(s, rs, n, protect=prot, repartition=True, refine=False)
        t0 = time.perf_counter()
        fast_block_select(s, rs, n, protect=prot)                         # default: + final exact step
        t_f = max(t_f, time.perf_counter() - t0)
        t_fbs_total = max(t_fbs_total, t_f)
        row = {"n": n, "blocks": fbs.blocks, "objective": fbs.objective, "iterations": fbs.iterations,
               "evaluations": fbs.evaluations, "seconds": t_f, "initial": fbs.initial,
               "rep_blocks": rep.blocks, "rep_objective": rep.objective}
        free = L - len(prot)
        if n <= 4:
            exh = exhaustive_select(rs, L, n, prot)
            part = [k - j + 1 for j, k in maximal_runs(fbs.initial)]
            same = exhaustive_select(rs, L, n, prot, partition=part)
            row.update(exh=exh, same=same, gap=selection_gap(fbs.objective, exh["objective"]),
                       gap_same=selection_gap(fbs.objective, same["objective"]),
                       gap_rep=selection_gap(rep.objective, exh["objective"]))
        row["free"] = free
        fbs_rows.append(row)
    lines.append(f"| Fast-Block-Select from the stored matrix (slowest of n ∈ {args.n}) | {t_fbs_total:.4f} | "
                 f"{t_fbs_total / t_pass:.4f} |")
    exh_t = sum(r["exh"]["seconds"] for r in fbs_rows if "exh" in r)
    if exh_t:
        lines.append(f"| exhaustive search, all n ≤ 4 above | {exh_t:.2f} | {exh_t / t_pass:.2f} |")

    # 3. ground truth by forward passes -----------------------------------------------------------------
    log("drop-one ΔPPL and SLEB")
    t0 = time.perf_counter()
    d = delta_ppl_details(lm, tokens, "layer")
    t_dppl = time.perf_counter() - t0
    store_ground_truth(run, "layer", d["scores"], d)
    t0 = time.perf_counter()
    sl = sleb_select(lm, tokens, args.sleb_n, protect=prot) if args.sleb_n > 0 else None
    t_sleb = time.perf_counter() - t0 if sl else None
    per_eval = t_dppl / d["evaluations"]
    lines.append(f"| drop-one ΔPPL, {d['evaluations']} calibration passes (= SLEB step 1) | {t_dppl:.2f} | "
                 f"{t_dppl / t_pass:.2f} |")
    if sl:
        lines.append(f"| SLEB-style greedy search, n={args.sleb_n} ({sl['evaluations']} passes) | {t_sleb:.2f} | "
                     f"{t_sleb / t_pass:.2f} |")
    mi_total = t_mi + t_fbs_total
    free = L - len(prot)
    lines += ["", f"MI-PRUN end to end after the pass (MI block scores + matrix + Fast-Block-Select): {mi_total:.2f} s = "
              f"{mi_total / t_pass:.2f} analysis passes (independent of n)."]
    if sl:
        lines.append(f"SLEB n={args.sleb_n} (measured) / MI-PRUN = {t_sleb / mi_total:.2f}×.")
    lines.append(f"Drop-one ΔPPL (= SLEB step 1) / MI-PRUN = {t_dppl / mi_total:.2f}×; one calibration pass with a "
                 f"layer removed costs {per_eval:.2f} s = {per_eval / t_pass:.2f} analysis passes on average.")
    est = []
    for n in sorted(set(args.n)):
        evals = 1 + sum(free - t for t in range(n))
        est.append(f"n={n}: {evals} passes ≈ {evals * per_eval:.0f} s ≈ {evals * per_eval / mi_total:.1f}× MI-PRUN")
    lines.append("SLEB-style search cost estimated from that per-pass cost (a lower bound: later steps reuse a "
                 "shorter prefix): " + "; ".join(est) + ".")
    dpi = mi["dpi"]
    lines += [f"DPI violation rate of the Rényi estimates (runs of 2..{L} layers, matrix N={mi['matrix_tokens']}): "
              f"{dpi['rate']:.3f} ({dpi['violations']}/{dpi['windows']}; max excess {dpi['max_excess']:.4f} nats).", ""]

    lines += ["Fast-Block-Select (K=5, |A|=n, protected " + str(prot) + ") vs exhaustive search of the same "
              "objective J = Σ over maximal runs of −MI(H_j, H_{k+1}):", "",
              "| n | FBS blocks | J(FBS) | iters | exact run scores | J(optimum) [blocks] | gap | "
              "optimum within FBS's run partition | gap there | FBS+repartition J |",
              "|---:|---|---:|---:|---:|---|---:|---|---:|---:|"]
    for r in fbs_rows:
        if "exh" in r:
            lines.append(f"| {r['n']} | {r['blocks']} | {r['objective']:.4f} | {r['iterations']} | {r['evaluations']} | "
                         f"{r['exh']['objective']:.4f} {r['exh']['blocks']} | {r['gap']['absolute']:.4f} "
                         f"({100 * r['gap']['relative']:.1f}%) | {r['same']['objective']:.4f} {r['same']['blocks']} | "
                         f"{r['gap_same']['absolute']:.4f} | {r['rep_objective']:.4f} |")
        else:
            lines.append(f"| {r['n']} | {r['blocks']} | {r['objective']:.4f} | {r['iterations']} | {r['evaluations']} | "
                         f"C({r['free']}, {r['n']}) too large | | | | {r['rep_objective']:.4f} |")

    # 4. agreement with ground truth ------------------------------------------------------------------
    log("agreement")
    crit = ["delta-ppl", "mi-prun", "entrodrop", "block-influence", "cosine", "angular", "tail", "random"]
    k = 6
    ag = agreement_matrix(run, crit, "layer", k=k)
    names = ag["criteria"]
    i0 = names.index("delta-ppl")
    lines += ["", f"Agreement with drop-one ΔPPL on the same tokens (layers, unprotected blocks; top-{k} overlap of "
              f"drop orders):", "", "| criterion | Spearman | Kendall | top-6 overlap |", "|---|---:|---:|---:|"]
    for j, nm in enumerate(names):
        if nm != "delta-ppl":
            lines.append(f"| {nm} | {fmt(ag['spearman'][i0][j])} | {fmt(ag['kendall'][i0][j])} | "
                         f"{fmt(ag['topk_overlap'][i0][j], 2)} |")
    fbs6 = next((r for r in fbs_rows if r["n"] == k), None)
    if fbs6:
        gt_order = ag["orders"]["delta-ppl"][:k]
        lines.append(f"| mi-prun Fast-Block-Select n={k} {fbs6['blocks']} | | | "
                     f"{len(set(fbs6['blocks']) & set(gt_order)) / k:.2f} |")
    if sl:
        lines.append(f"| SLEB n={args.sleb_n} {sl['blocks']} vs ΔPPL top-{args.sleb_n} | | | "
                     f"{len(set(sl['blocks']) & set(ag['orders']['delta-ppl'][:args.sleb_n])) / args.sleb_n:.2f} |")

    # 5. other estimators on the same states (layer block scores only) ----------------------------------
    log("other estimators")
    est_rows = []
    gt = np.array(d["scores"], dtype=float)
    free_idx = [i for i in range(L) if i not in prot]
    layer_renyi = np.array(mi["scores"]["layer"])
    est_rows.append((f"{cfg.mi.get('estimator')} (the product's)", t_blocks / 3, rank_correlation(layer_renyi[free_idx], gt[free_idx])))
    for spec in [e for e in args.other_estimators.split(",") if e]:
        name, params, norm = VARIANTS[spec]
        t0 = time.perf_counter()
        smi = StateMI(kept["states"], name, mi["n_tokens"], seed=cfg.seed, token_norm=norm, **params)
        sc = smi.block_scores("layer")
        est_rows.append((spec, time.perf_counter() - t0, rank_correlation(sc[free_idx], gt[free_idx])))
    lines += ["", f"Estimators on the same {mi['n_tokens']} cached token states (layer block scores only, {L} pairs):",
              "(`-rms`: token_norm=\"rms\", each token state divided by its RMS; `sigma0.5`: half the median "
              "bandwidth)", "",
              "| estimator | seconds | × pass | Spearman vs ΔPPL | Kendall vs ΔPPL |", "|---|---:|---:|---:|---:|"]
    for nm, t, rc in est_rows:
        lines.append(f"| {nm} | {t:.2f} | {t / t_pass:.2f} | {fmt(rc['spearman'])} | {fmt(rc['kendall'])} |")
    lines += ["", f"Base calibration PPL {d['base_ppl']:.2f}; most redundant layers by ΔPPL: "
              f"{ag['orders']['delta-ppl'][:k]}; by MI-PRUN ranking: {ag['orders']['mi-prun'][:k]}.",
              f"Total bench wall time {time.perf_counter() - t_start:.0f} s; load average (1/5/15 min) before "
              f"{load0}, after {loadavg()}."]
    text = "\n".join(lines)
    print(text)
    write_docs(SECTION, f"`{' '.join(sys.argv)}`\n\n" + text, args.write)
    # MI-PRUN end to end (pass keeping states + MI estimates + Fast-Block-Select) ÷ one analysis pass
    print_ratio((t_capture + mi_total) / t_pass)


if __name__ == "__main__":
    main()
