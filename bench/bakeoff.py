"""The bake-off (``python -m analysis recommend``, the Select page's "which criterion?") costed in analysis passes.

One analysis pass of the product's default analysis (the app's, ``bench.common.analysis_config``) on the same
calibration windows is the unit. Then the bake-off runs once with nothing cached (a fresh ``ENTROSCOPE_RUNS``
folder, ``cache=False``), and its stages — the analysis it makes, drop-one ΔPPL, judging every plan on held-out
text, healing — are timed from its progress messages (a stage ends at its last message; the first one also
counts reading the held-out judging windows) and divided by that unit.

Every setting is the CLI's own default (read from ``python -m analysis recommend``'s parser and
``RecommendConfig``); flags after ``--`` go to that parser unchanged. The last line is
``ratio=<bake-off seconds ÷ one analysis pass>``; the load average before and after is printed. ``--write``
replaces the "Bake-off cost" section of docs/benchmarks.md (only then).

    .venv/bin/python bench/bakeoff.py                                   # the product's defaults
    .venv/bin/python bench/bakeoff.py --samples 4 --seq-len 64 -- --k 2 --heldout-tokens 512 --window 128 \\
        --delta-ppl-windows 2 --heal none                               # a quick check
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import analysis_config, cli_args, describe, loadavg, machine, print_ratio, write_section  # noqa: E402

SECTION = "## Bake-off cost (bench/bakeoff.py)"


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the CLI's")
    ap.add_argument("--dtype", default=None, help="default: the CLI's")
    ap.add_argument("--samples", type=int, default=None, help="calibration windows (default: the recommend command's)")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the CLI's (SampleConfig)")
    ap.add_argument("--write", action="store_true", help="replace this bench's section of docs/benchmarks.md")
    args = ap.parse_args(own)
    try:
        from analysis.recommend.bakeoff import recommend
        from analysis.recommend.config import RecommendConfig
    except ImportError:
        print("analysis.recommend is not in this tree: nothing to cost", file=sys.stderr)
        sys.exit(2)
    from analysis.cli.common import tokens_from_args
    from analysis.models.loading import load_model
    from analysis.run import analyze
    from analysis.settings import from_args

    load0 = loadavg()
    cli = cli_args("recommend", "--corpus", "wiki", "--out", os.devnull, *passthrough)
    for key in ("model", "dtype", "samples", "seq_len"):
        if getattr(args, key) is not None:
            setattr(cli, key, getattr(args, key))
    cfg = from_args(RecommendConfig, cli)
    os.environ["ENTROSCOPE_RUNS"] = tempfile.mkdtemp(prefix="bench-bakeoff-")   # nothing cached
    lm = load_model(cli.model, device=cli.device, dtype=cli.dtype)
    tokens = tokens_from_args(cli, lm)
    n, t = tokens.input_ids.shape

    # the unit: one analysis pass of the product's default analysis on the same windows
    acfg = analysis_config(app=True)
    analyze(lm, tokens.input_ids[:2], acfg)                                    # warm-up
    t0 = time.perf_counter()
    analyze(lm, tokens, acfg)
    unit = time.perf_counter() - t0

    last: dict[str, float] = {}               # stage -> time of its latest progress message (its work done)

    def progress(frac: float, msg: str) -> None:
        stage = msg.split(":", 1)[0]
        last.pop(stage, None)                 # re-insert: dict order = order of the stages' last messages
        last[stage] = time.perf_counter()

    t0 = time.perf_counter()
    rec = recommend(lm, tokens, cfg, progress=progress, cache=False)
    total = time.perf_counter() - t0
    # a stage's cost: from the previous stage's last message to its own last one (reported when work is done)
    stages: dict[str, float] = {}
    prev = t0
    for name, end in last.items():
        stages[name] = end - prev
        prev = end
    stages["the rest (windows, tables, bootstrap, recommendation)"] = t0 + total - prev
    plans = len({(r["label"], r["k"]) for r in rec["rows"]})
    head = (f"model={cli.model} dtype={cli.dtype} calibration {n}×{t} wiki; bake-off: {cfg.granularity}, k={rec['ks']}, "
            f"estimators {','.join(cfg.estimators)}, heal {','.join(cfg.heal)}, {plans} plans judged on "
            f"{rec['judging']['windows']} held-out windows × {cfg.window} tokens; unit: one pass of {describe(acfg)} "
            f"= {unit:.2f} s; threads={torch.get_num_threads()}; load (1/5/15 min) before {load0}, after {loadavg()}")
    rows = ["| stage | seconds | analysis passes |", "|---|---:|---:|"]
    rows += [f"| {name} | {s:.2f} | {s / unit:.2f} |" for name, s in stages.items()]
    rows.append(f"| **bake-off, end to end** | {total:.2f} | {total / unit:.2f} |")
    print(machine())
    print(head)
    print("\n".join(rows))
    write_section(SECTION, f"{machine()}\n\n`{' '.join(sys.argv)}` — {head}\n\n" + "\n".join(rows), args.write)
    print_ratio(total / unit)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
