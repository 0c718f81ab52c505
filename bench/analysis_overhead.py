"""Analysis pass ÷ bare forward over the same tokens, every path measured in one run (issue 28 targets: the
product's default path ≤ 1.10, the reference path ≤ 1.05).

Bare forward = the base model (embeddings → decoder layers → final norm, no LM head) under
``torch.inference_mode``: exactly the computation the analysis rides on. Batches alternate
(bare, analysis, bare, analysis, …) so machine noise hits both sides alike.

Every path is an ``AnalysisConfig`` built from the product's own defaults (never restated here):

* ``reference``  — ``python -m analysis analyze --sinks keep``: the CLI's default estimator and the cosines over
  every token, EntroDrop's semantics;
* ``reference + other view`` — the same with ``--both-views`` (the sinks-excluded view in the same pass);
* ``default``    — the app's default analysis (``app_support.state.default_analysis``), as the Entropy page runs it;
* ``default, primary view only`` — the same without the other sinks view (its cost is the difference);
* ``+ <estimator>`` — the primary-view default plus one more registered estimator (``--extra``, default: KNN, which
  the app computes only when asked since issue 28, and the lenses ``matrix`` and ``logit-lens``), each measured
  separately;
* ``cli default`` — ``python -m analysis analyze`` with no analysis flags;
* ``default, PyTorch kernels`` — the default path with the compiled kernels of :mod:`analysis.measure.kernels` off
  (``ENTROSCOPE_FUSED_KERNELS=0``: Bucket counts and KNN's k-th neighbour in their PyTorch forms); the
  difference is what they save.

Model, dtype, device, windows and batch size default to the app's (``DEFAULT_MODEL``, ``DEFAULT_DATA``,
``AnalysisConfig``). The last line is ``ratio=<default path ÷ bare>``; the load average before and after is
printed. ``--repeats N`` measures every path in N rounds and reports the median round's ratio with the range (on a
shared machine the ratio drifts by several hundredths between rounds). Each path also reports ``1 + hooks ÷ bare``:
the seconds spent inside the capture's hooks (its statistics, timed in the pass; on the CPU only) over the bare
forwards' — the pass's own work, which the drift between one forward and the next does not reach (it leaves out any
slowing of the forward itself by the hooks, which the ratio includes). ``--write`` replaces the "Analysis pass overhead" section of
docs/benchmarks.md (only then).

    .venv/bin/python bench/analysis_overhead.py                      # the product's defaults (figures: quiet machine)
    .venv/bin/python bench/analysis_overhead.py --samples 8 --seq-len 64 --paths reference,default   # a quick check
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import analysis_config, app_defaults, calib_tokens, describe, loadavg, machine, print_ratio, write_section  # noqa: E402

SECTION = "## Analysis pass overhead (bench/analysis_overhead.py)"


def paths(extra: list[str]) -> dict:
    """name -> AnalysisConfig of every measured path, from the product's defaults."""
    app = analysis_config(app=True)
    out = {
        "reference": analysis_config(app=False, sinks="keep", both_views=False),
        "reference + other view": analysis_config(app=False, sinks="keep", both_views=True),
        "default": app,
        "default, primary view only": analysis_config(app=True, both_views=False),
    }
    for name in extra:
        if name not in (app.estimator, *app.extra_estimators):
            out[f"+ {name}"] = analysis_config(app=True, both_views=False,
                                               extra_estimators=(*app.extra_estimators, name))
    out["cli default"] = analysis_config(app=False)
    for name in FORMS:
        out[name] = analysis_config(app=True)
    return out


#: the default path again with the compiled kernels off (Bucket counts and p log p, and KNN's k-th neighbour, in their
#: PyTorch forms, as before issue 28's kernels), in the same run
FORMS = {"default, PyTorch kernels": {"ENTROSCOPE_FUSED_KERNELS": "0"}}


def main() -> None:
    model, data, _ = app_defaults()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=model["spec"])
    ap.add_argument("--dtype", default=model["dtype"])
    ap.add_argument("--device", default=model["device"])
    ap.add_argument("--samples", type=int, default=data["n_samples"])
    ap.add_argument("--seq-len", type=int, default=data["seq_len"])
    ap.add_argument("--batch-size", type=int, default=None, help="default: the analysis's own batch size")
    ap.add_argument("--extra", default="knn,matrix,logit-lens",
                    help="opt-in estimators measured one at a time on the primary-view default ('' for none)")
    ap.add_argument("--paths", default="", help="only these paths (comma list of names; default: all), e.g. "
                    "'reference,default, PyTorch kernels'")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure every path this many times over (rounds of all batches, one after another) and "
                         "report the median round with the range: on a shared machine the ratio drifts by several "
                         "hundredths between rounds")
    ap.add_argument("--write", action="store_true", help="replace this bench's section of docs/benchmarks.md")
    args = ap.parse_args()

    from analysis.measure.capture import CaptureConfig, capture
    from analysis.models.loading import load_model

    load0 = loadavg()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    ids = calib_tokens(lm, args.samples, args.seq_len, seed=data["seed"])
    base = lm.adapter.base
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    cfgs = paths([e for e in args.extra.split(",") if e])
    if args.paths:
        want = [p.strip() for p in re.split(r",(?! )", args.paths)]     # names may hold ", " themselves
        cfgs = {k: v for k, v in cfgs.items() if k in want or k.lstrip("+ ") in want}
    ccfgs: dict[str, CaptureConfig] = {}
    for name, cfg in cfgs.items():
        if args.batch_size:
            cfg.batch_size = args.batch_size
        ccfgs[name] = cfg.capture_config()
    batch_size = args.batch_size or next(iter(cfgs.values())).batch_size

    def bare(batch):
        with torch.inference_mode():
            base(input_ids=batch.to(lm.device), use_cache=False)
        sync()

    hooks = [0.0]                                    # seconds inside the capture's hooks, summed

    def timed(f):
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                hooks[0] += time.perf_counter() - t
        return g

    import analysis.measure.capture as cap
    # on a GPU the hooks only queue their work (timing it would need a sync per hook, which changes the pass): CPU only
    inside = [] if lm.device.type == "cuda" else [
        mock.patch.object(cap._Recorder, m, timed(getattr(cap._Recorder, m)))
        for m in ("layer_pre", "layer_mid", "layer_post", "start_batch", "end_batch")]
    inside += [mock.patch.object(cap, "_pairwise_cos", timed(cap._pairwise_cos))] if inside else []

    def analysed(batch, ccfg, env=None):
        ccfg.batch_size = len(batch)
        with mock.patch.dict(os.environ, env or {}):      # a FORMS path: its variables for this call only
            for p in inside:
                p.start()
            try:
                capture(lm, batch, ccfg)
                sync()
            finally:
                for p in inside:
                    p.stop()

    batches = list(ids.split(batch_size))
    bare(batches[0])  # warm-up
    for name, c in ccfgs.items():
        analysed(batches[0], c, FORMS.get(name))
    rounds = []                                      # per round: name -> (bare s, analysis s, per-batch ratios)
    for _ in range(max(1, args.repeats)):
        times = {name: [] for name in ccfgs}
        bare_t = {name: [] for name in ccfgs}
        hook_t = {name: 0.0 for name in ccfgs}
        for batch in batches:
            for name, c in ccfgs.items():
                t = time.perf_counter()
                bare(batch)
                bare_t[name].append(time.perf_counter() - t)
                hooks[0] = 0.0
                t = time.perf_counter()
                analysed(batch, c, FORMS.get(name))
                times[name].append(time.perf_counter() - t)
                hook_t[name] += hooks[0]
        rounds.append({name: (sum(bare_t[name]), sum(times[name]),
                              [a / b for a, b in zip(times[name], bare_t[name])], hook_t[name]) for name in ccfgs})
    load1 = loadavg()
    per = {name: [r[name][1] / r[name][0] for r in rounds] for name in ccfgs}       # each round's ratio
    ratios = {name: statistics.median(v) for name, v in per.items()}
    head = (f"model={args.model} dtype={args.dtype} device={lm.device} tokens={args.samples}x{args.seq_len} "
            f"batch={batch_size} threads={torch.get_num_threads()} rounds={len(rounds)} "
            f"load(1/5/15 min) before={load0} after={load1}")
    rows = ["| path | computes | bare s | analysis s | ratio | median per batch |" + (" rounds (min–max) |" if len(rounds) > 1 else "")
            + " 1 + hooks ÷ bare |",
            "|---|---|---|---|---|---|" + ("---|" if len(rounds) > 1 else "") + "---|"]
    print(machine())
    print(head)
    for name in ccfgs:
        bare_s = sum(r[name][0] for r in rounds)
        ana_s = sum(r[name][1] for r in rounds)
        med = statistics.median(x for r in rounds for x in r[name][2])
        spread = f"{min(per[name]):.3f}–{max(per[name]):.3f}" if len(rounds) > 1 else ""
        inner = 1 + sum(r[name][3] for r in rounds) / bare_s if inside else float("nan")
        print(f"{name:28s} {describe(cfgs[name]):44s} bare {bare_s:7.2f}s  analysis {ana_s:7.2f}s  "
              f"ratio {ratios[name]:.3f} (median per-batch {med:.3f})" + (f" rounds {spread}" if spread else "")
              + f"  1 + hooks/bare {inner:.3f}")
        rows.append(f"| {name} | {describe(cfgs[name])} | {bare_s:.2f} | {ana_s:.2f} | {ratios[name]:.3f} | {med:.3f} |"
                    + (f" {spread} |" if spread else "") + f" {inner:.3f} |")
    write_section(SECTION, f"{machine()}\n\n`{' '.join(sys.argv)}` — {head}\n\n" + "\n".join(rows), args.write)
    print_ratio(ratios.get("default", next(iter(ratios.values()))))


if __name__ == "__main__":
    main()
