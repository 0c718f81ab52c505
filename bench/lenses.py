"""Entropy lenses and massive activations per embedded model: the section of docs/models.md between
``<!-- lenses:start -->`` and ``<!-- lenses:end -->``.

For every installed embedded model: one analysis pass on wiki windows with Bucket, matrix-based (von Neumann,
α = 1) and logit-lens entropy, each with sinks excluded and kept (same pass); the shape of every curve in
words (cliff / two stages / rise), and Pearson r between the change of log(largest / median token norm) and the
change of each entropy curve across depth, with a 95 % bootstrap interval over windows.

    .venv/bin/python bench/lenses.py                                  # every installed model, 32 × 256, prints
    .venv/bin/python bench/lenses.py --write                          # … and writes the docs/models.md section
    .venv/bin/python bench/lenses.py --model smollm2 --n 4 --t 64     # a quick check
    .venv/bin/python bench/lenses.py --model smollm2 --n 8 --t 128 --tour app_support/tour/smollm2.json

Runs are kept under docs/figures/lenses/<model>.json (``--report`` rebuilds the section from them).
``--tour PATH`` also saves the (first) model's run JSON for the Home page's guided tour.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "models.md"
FIG = ROOT / "docs" / "figures" / "lenses"
START, END = "<!-- lenses:start -->", "<!-- lenses:end -->"
ESTS = ("bucket", "matrix", "logit-lens")
ORDER = ["smollm2", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def run_model(name: str, n: int, t: int, positions: int):
    from analysis.measure.estimators import LENS_POSITIONS  # noqa: F401
    from analysis.models.loading import load_model
    from analysis.data import SampleConfig, load_corpus, sample_windows
    from analysis.run import AnalysisConfig, analyze

    lm = load_model(name, dtype="fp32")
    tokens = sample_windows(load_corpus("wiki"), lm.tokenizer, SampleConfig(n_samples=n, seq_len=t, seed=2024))
    cfg = AnalysisConfig(estimator="bucket", extra_estimators=("matrix", "logit-lens"), lens_positions=positions,
                         both_views=True)       # the lesson needs sinks kept *and* excluded
    return analyze(lm, tokens, cfg)


def _shape(r, est: str, view: str) -> str:
    import numpy as np

    from analysis.measure.boundary import robust_boundary
    from app_support.story import cliff

    c = np.asarray(r.entropy(est, view=view)["boundary"], dtype=float)
    if not np.isfinite(c).all():
        return "non-finite"
    cl = cliff(c)
    b, det = robust_boundary(c)
    lo, hi = float(c.min()), float(c.max())
    rng = f" [{lo:.3g} … {hi:.3g}]"
    if cl is not None:
        kind = "cliff" if cl["down"] else "jump"
        return f"{kind} at block {cl['block']} ({cl['step']:+.3g}, {cl['share']:.0%} of range){rng}"
    if det:
        return f"two stages, boundary {b}{rng}"
    steps = np.diff(c)
    up, down = steps[steps > 0].sum(), -steps[steps < 0].sum()
    trend = "rises" if up > 3 * down else "falls" if down > 3 * up else "up and down"
    return f"no stage, {trend}{rng}"


def section(runs: dict) -> str:
    import math

    from analysis.score.massive import norm_entropy_correlation
    from analysis.score.result import view_label
    from app_support.story import onset_text, sink_facts

    out = [START, "## Entropy lenses and massive activations", "",
           "Written by `bench/lenses.py` (one analysis pass per model: Bucket, matrix-based α = 1 prompt entropy and "
           "logit-lens next-token entropy, each with sinks excluded *and* kept in the same pass). "
           + ", ".join(f"{m}: {r.n_sequences} × {r.manifest.get('data', {}).get('seq_len', '?')} wiki tokens"
                       for m, r in runs.items()) + "; the logit lens decodes "
           + ", ".join(f"{(r.manifest.get('estimator_params', {}).get('logit-lens') or {}).get('lens_positions')}"
                       for r in runs.values()) + " seeded positions per window. Ranges: matrix ≤ log N, "
           "logit lens ≤ log V. A *cliff* is one block that covers ≥ 50 % of the curve's range.", "",
           "| model | sinks | Bucket | matrix (α = 1) | logit lens |", "|---|---|---|---|---|"]
    for m, r in runs.items():
        for v in r.sink_views:
            cells = [_shape(r, e, v) if r.has_view(e, v) else "—" for e in ESTS]
            out.append(f"| {m} | {view_label(v)} | " + " | ".join(cells) + " |")
    out += ["", "Massive activations and their link to each curve: Pearson r between the *change* of "
            "log(largest / median token norm) and the *change* of entropy from one residual boundary to the next "
            "(Queipo-de-Llano et al. 2025 report r ≈ −0.9 with the BOS token kept), 95 % bootstrap interval over "
            "windows (1,000 resamples).", "",
            "| model | where | " + " | ".join(f"r {e}, kept" for e in ESTS) + " | "
            + " | ".join(f"r {e}, excluded" for e in ESTS) + " |",
            "|---|---|" + "---|" * (2 * len(ESTS))]
    for m, r in runs.items():
        cells = []
        for v in ("keep", "exclude"):
            for e in ESTS:
                if not r.has_view(e, v):
                    cells.append("—")
                    continue
                c = norm_entropy_correlation(r, e, v, form="changes", n_boot=1000, seed=0)
                cells.append("n/a" if not math.isfinite(c["r"]) else f"{c['r']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]")
        where = onset_text(sink_facts(r)) or "no token flagged in most windows"
        out.append(f"| {m} | {where} | " + " | ".join(cells) + " |")
    out += ["", "Regenerate: `.venv/bin/python bench/lenses.py --write` (every installed embedded model, 32 × 256 "
            "windows; `--n/--t/--positions` to change the sample).", END]
    return "\n".join(out)


def write_section(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    if START in doc and END in doc:
        doc = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: text, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="embedded model (repeatable; default: every installed one)")
    ap.add_argument("--n", type=int, default=32, help="calibration windows")
    ap.add_argument("--t", type=int, default=256, help="tokens per window")
    ap.add_argument("--positions", type=int, default=16, help="logit lens: positions decoded per window")
    ap.add_argument("--write", action="store_true", help=f"write the section into {DOC.relative_to(ROOT)}")
    ap.add_argument("--report", action="store_true", help="rebuild the section from the saved runs only")
    ap.add_argument("--tour", help="also save the first model's run JSON here (the Home page's guided tour)")
    args = ap.parse_args()
    from analysis.models.embedded import EMBEDDED, is_installed
    from analysis.score.result import AnalysisResult

    FIG.mkdir(parents=True, exist_ok=True)
    names = args.model or [m for m in ORDER if m in EMBEDDED and is_installed(m)]
    runs = {}
    for name in names:
        path = FIG / f"{name}.json"
        if args.report:
            if path.exists():
                runs[name] = AnalysisResult.load(path)
            continue
        print(f"[lenses] {name}: {args.n} × {args.t}", file=sys.stderr, flush=True)
        r = run_model(name, args.n, args.t, args.positions)
        r.save(path)
        runs[name] = r
        if args.tour and len(runs) == 1:
            Path(args.tour).parent.mkdir(parents=True, exist_ok=True)
            Path(args.tour).write_text(json.dumps(r.to_dict()))
    text = section(runs)
    print(text)
    if args.write:
        write_section(text)
        print(f"[lenses] wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
