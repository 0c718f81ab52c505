"""Fast-Block-Select vs the exhaustive optimum of the same objective, per model and MI estimator.

For each model: one analysis pass keeping token states, then for every MI estimator the (L+1)×(L+1)
boundary MI matrix on the same states; from it Fast-Block-Select as reconstructed (``refine=False``),
with ``repartition=True``, and the default (``refine=True``: final exact step, a DP over run lengths)
against :func:`analysis.score.blocksearch.exhaustive_select` for n = 2..4 (protected: the run's). Prints a
markdown table of relative gaps and the search cost (seconds, distinct run scores); the default must be
within 5 % of the optimum (it is exact by construction). The last line is ``ratio=<worst default gap>``.

    .venv/bin/python bench/fbs_gap.py [--models smollm2,gemma3-270m] [--samples 8] [--seq-len 128]

The pass is the app's default analysis with MI-PRUN's state sampling, the matrix on ``MIConfig``'s token count
(``--matrix-tokens`` overrides); the load average is printed.
"""
from __future__ import annotations

import argparse
import time

from common import analysis_config, calib_tokens, loadavg, machine, print_ratio

import torch

ESTIMATORS = {"renyi": {}, "renyi-debias": {"debias": True}, "gaussian": {}, "ksg": {}, "cka": {}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--matrix-tokens", type=int, default=None, help="default: MIConfig's matrix tokens")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--n", type=int, nargs="+", default=[2, 3, 4])
    args = ap.parse_args()
    load0 = loadavg()
    mi_cfg = analysis_config(app=True, granularity="layer", mi=True)
    args.matrix_tokens = args.matrix_tokens or mi_cfg.mi["matrix_tokens"]
    from analysis.score.blocksearch import exhaustive_select, fast_block_select, selection_gap
    from analysis.measure.mi_states import StateMI
    from analysis.score.miprun import matrix_block_scores, matrix_run_score
    from analysis.models.loading import load_model
    from analysis.run import EXTENSIONS, analyze

    print(machine())
    rows, worst = [], 0.0
    for name in args.models.split(","):
        lm = load_model(name, device="cpu", dtype="fp32")
        tokens = calib_tokens(lm, args.samples, args.seq_len)
        kept = {}
        EXTENSIONS["_gap_keep"] = lambda stats, lm_, cfg: (kept.update(states=stats.states), {})[1]
        cfg = analysis_config(app=True, granularity="layer")
        cfg.state_tokens, cfg.extensions = args.matrix_tokens, ("_gap_keep",)
        run = analyze(lm, tokens, cfg)
        prot = list(run.protected)
        L = lm.num_layers
        for est in args.estimators.split(","):
            base = est.split("-")[0]
            smi = StateMI(kept["states"], base, n_tokens=args.matrix_tokens, **ESTIMATORS[est])
            t = time.perf_counter()
            mat = smi.boundary_matrix()
            t_mat = time.perf_counter() - t
            s, rs = matrix_block_scores(mat), matrix_run_score(mat)
            for n in args.n:
                exh = exhaustive_select(rs, L, n, prot)
                raw = fast_block_select(s, rs, n, protect=prot, refine=False)
                rep = fast_block_select(s, rs, n, protect=prot, refine=False, repartition=True)
                t = time.perf_counter()
                dft = fast_block_select(s, rs, n, protect=prot)
                t_dft = time.perf_counter() - t
                g = {k: selection_gap(v.objective, exh["objective"]) for k, v in
                     (("raw", raw), ("rep", rep), ("dft", dft))}
                worst = max(worst, g["dft"]["relative"])
                rows.append(f"| {name} | {est} | {n} | {exh['objective']:.4f} {exh['blocks']} | "
                            f"{100 * g['raw']['relative']:.1f} % | {100 * g['rep']['relative']:.1f} % | "
                            f"**{100 * g['dft']['relative']:.1f} %** {dft.blocks} | {1000 * t_dft:.1f} ms, "
                            f"{dft.evaluations} run scores | {1000 * exh['seconds']:.0f} ms | {t_mat:.1f} s |")
            print(f"{name} {est}: matrix {t_mat:.1f} s", flush=True)
        kept.clear()
        del lm
    print(f"\n{args.samples} × {args.seq_len} wiki tokens, matrix on {args.matrix_tokens} token states; gaps "
          "relative to |J(optimum)|\n")
    print("| model | estimator | n | J(optimum) [blocks] | FBS as reconstructed | + repartition | default "
          "(refine) [blocks] | default search cost | exhaustive | matrix |")
    print("|---|---|---:|---|---:|---:|---|---|---:|---:|")
    print("\n".join(rows))
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(worst)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
