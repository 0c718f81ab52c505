"""KNN (k = 25) attention ΔH per layer against EntroDrop's reference formula, on SmolLM2 (issue 19).

One analysis pass over the EntroDrop protocol sample (wiki, 128 windows × 256 tokens, seed 2024) computes,
per sequence and hook point:

* ``knn``          — this project's estimator (fused-matmul ranking, exact k-th distance);
* ``ref64``        — the reference formula on an exact float64 distance matrix (identical states exactly
  0 apart; checked against the coordinate-by-coordinate ``torch.cdist`` on the first batch);
* ``cdist32``      — (``--extra``) EntroDrop's code literally: float32 ``torch.cdist`` of each [N, d] sequence;
* ``fused-old``    — the previous estimator (square root of the k-th smallest fused squared distance);
* ``knn-dedup``    — the ``--knn-dedup`` option (distinct states only).

Prints ΔH per layer, the relative difference to ``ref64`` and whether the drop orders agree.

    .venv/bin/python bench/knn_reference.py [--samples 128] [--seq-len 256] [--batch-size 8] [--extra ...]

Windows default to ``SampleConfig``'s (the CLI's: wiki, 128 × 256, seed 2024) and k to ``AnalysisConfig``'s.
The last line is ``ratio=<largest relative |ΔH(knn) − ΔH(ref64)| over layers>``; the load average is printed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis.data import SampleConfig, load_corpus, sample_windows  # noqa: E402
from analysis.measure.estimators import ESTIMATORS, EstimatorInfo, _sq_dists, entropy_knn, register_estimator  # noqa: E402
from analysis.models.loading import load_model  # noqa: E402
from bench.common import loadavg, print_ratio  # noqa: E402
from analysis.run import AnalysisConfig, analyze  # noqa: E402


def _formula(r: torch.Tensor, n: int, d: int, k: int) -> torch.Tensor:
    return (d * torch.log(r + 1e-10).mean(-1) + d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
            + math.log(n) - math.log(k))


def ref64(x, k=25):
    """The formula on an exact float64 distance matrix: float64 ``torch.cdist`` (its matmul form has ~1e-8
    rounding noise on the diagonal block of identical rows), with exactly 0 where two rows are identical
    (grouped by ``torch.unique``). Same values as the coordinate-by-coordinate cdist, ~50× faster."""
    x64 = x.double()
    dist = torch.cdist(x64, x64)                                                # [B, N, N]
    for b in range(x.shape[0]):
        inv = torch.unique(x[b], dim=0, return_inverse=True)[1]                 # [N] group of identical rows
        dist[b].masked_fill_(inv.unsqueeze(0) == inv.unsqueeze(1), 0.0)
    r = torch.topk(dist, k + 1, largest=False).values
    return _formula(r[..., -1], x.shape[1], x.shape[2], k).float()


def ref64_slow(x, k=25):  # coordinate by coordinate (used by --check on the first batch)
    x = x.double()
    r = torch.topk(torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist"), k + 1, largest=False).values
    return _formula(r[..., -1], x.shape[1], x.shape[2], k).float()


def cdist32(x, k=25):  # EntroDrop's estimate_entropy_knn_pytorch on each [N, d] sequence
    x = x.float()
    out = [_formula(torch.topk(torch.cdist(s, s), k + 1, largest=False).values[:, -1], *s.shape, k) for s in x]
    return torch.stack(out)


def fused_old(x, k=25):
    r2 = torch.topk(_sq_dists(x), k + 1, dim=-1, largest=False).values[..., k]
    return _formula(r2.clamp_min(0).sqrt(), x.shape[1], x.shape[2], k)


def order(dh: np.ndarray, protected) -> list[int]:
    return [int(i) for i in np.argsort(dh, kind="stable") if int(i) not in protected]


def main() -> None:
    sc, ac = SampleConfig(), AnalysisConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=sc.n_samples)
    ap.add_argument("--seq-len", type=int, default=sc.seq_len)
    ap.add_argument("--batch-size", type=int, default=ac.batch_size)
    ap.add_argument("--stop-file", default=None,
                    help="if this file appears, stop after the current batch and report the windows done so far")
    ap.add_argument("--extra", default="",
                    help="more estimators in the same pass besides knn and ref64: cdist32, fused-old, knn-dedup")
    args = ap.parse_args()
    load0 = loadavg()
    extra = ("ref64", *(e for e in args.extra.split(",") if e))
    fns = {"ref64": ref64, "cdist32": cdist32, "fused-old": fused_old,
           "knn-dedup": lambda x, k=25: entropy_knn(x, k=k, dedup=True)}
    for name in extra:
        if name not in ESTIMATORS:
            register_estimator(EstimatorInfo(name, name, fns[name], {"k": 25}))
    lm = load_model("smollm2", device="cpu")
    tokens = sample_windows(load_corpus("wiki"), lm.tokenizer,
                            SampleConfig(n_samples=args.samples, seq_len=args.seq_len, seed=sc.seed))
    reps = np.array([int(torch.bincount(r).max()) for r in tokens.input_ids])
    print(f"tokens={args.samples}x{args.seq_len} windows with a token repeated > 25 times: {(reps > 25).sum()} "
          f"(most repeats {reps.max()}) threads={torch.get_num_threads()}", flush=True)
    first = tokens.input_ids[:args.batch_size]
    with torch.inference_mode():  # the fast reference equals the coordinate-by-coordinate one (layer 0 input)
        emb = lm.model.get_input_embeddings()(first.to(lm.device)).float()
        fast, slow = ref64(emb), ref64_slow(emb)
    print(f"ref64 vs coordinate-wise cdist on the first batch's embeddings: max |diff| "
          f"{(fast - slow).abs().max():.2e} (values {slow.min():.1f}..{slow.max():.1f})", flush=True)
    t0 = time.perf_counter()
    r = analyze(lm, tokens, AnalysisConfig(estimator="knn", extra_estimators=extra, batch_size=args.batch_size,
                                           sinks="keep"),   # the reference: every token
                progress=lambda f, msg: print(f"[{time.perf_counter() - t0:6.0f}s {f * 100:5.1f}%] {msg}", flush=True),
                should_stop=lambda: bool(args.stop_file) and os.path.exists(args.stop_file))
    n_done = r.n_sequences
    print(f"analysis pass {time.perf_counter() - t0:.0f}s over {n_done} windows "
          f"({(reps[:n_done] > 25).sum()} with a token repeated > 25 times)")
    dh = {n: r.delta_h("attention", n) for n in ("knn", *extra)}
    rel = {n: np.abs(dh[n] - dh["ref64"]) / np.abs(dh["ref64"]) for n in dh}
    shown = [n for n in dh if n != "ref64"]
    print("layer " + " ".join(f"{n:>12s}" for n in dh) + "".join(f"  rel({n})" for n in shown if n != "knn-dedup"))
    for i in range(r.num_layers):
        print(f"{i:5d} " + " ".join(f"{dh[n][i]:12.4f}" for n in dh)
              + "".join(f"  {rel[n][i]:.2e}" for n in shown if n != "knn-dedup"))
    prot = set(r.protected)
    for n in shown[1:]:
        same = order(dh["knn"], prot) == order(dh[n], prot)
        print(f"max rel vs ref64: {n:10s} {rel[n].max():.3e}  (layer {int(rel[n].argmax())}); "
              f"drop order same as knn: {same}")
    print(f"drop order knn == ref64: {order(dh['knn'], prot) == order(dh['ref64'], prot)}")
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    print_ratio(float(rel["knn"].max()))


if __name__ == "__main__":
    main()
