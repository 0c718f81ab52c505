"""Four real models end to end → ``docs/models.md`` with PNG figures (``docs/figures/models/``), the
held-out evidence produced by the same code as ``python -m analysis recommend`` (:mod:`analysis.recommend`).

Per model: the boundary-entropy curves (Bucket, robust Bucket, KNN, scale-normalised KNN) with sinks
excluded and kept, the boundary with its bootstrap interval, where massive activations appear, and the
bake-off: every registered criterion the run supports (EntroDrop under each estimator, cosine, Block
Influence, tail, drop-one ΔPPL; MI-PRUN with ``--with-mi``) at several k, with and without healing (linear;
for Gemma-3, whose sandwich norms refuse linear healing, ``--heal none,distill``),
calibrated on ``wiki`` (calibration split) and judged on the eval split of the other built-in domains, each
row with a paired-bootstrap interval and read against a band of random choices.

One model per process (only one large model in memory); each writes ``docs/figures/models/<model>.json``.
``--report`` prints the markdown built from the JSON files present; ``--report --write`` regenerates
``docs/models.md`` and the evidence table the app reads (``analysis/recommend/evidence.json``)::

    .venv/bin/python bench/models.py --model smollm2          # defaults: 32 × 256 calibration, 4,096 held-out
    .venv/bin/python bench/models.py --report --write

The bake-off's settings are :class:`analysis.recommend.config.RecommendConfig`'s fields (same flags as the
CLI command, same defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIG = ROOT / "docs" / "figures" / "models"
DOC = ROOT / "docs" / "models.md"
EST = ("bucket", "bucket-robust", "knn", "knn-norm")
LENSES = ("matrix", "logit-lens")     # entropy lenses: EntroDrop under them is a bake-off candidate too
MODES = ("exclude", "keep")
CALIB = "wiki"
ORDER = ["smollm2", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_model(name: str, n: int, t: int, cfg, save=lambda res: None, dtype: str = "fp32") -> dict:
    import torch

    from analysis.data import SampleConfig, load_corpus, sample_windows
    from analysis.measure.boundary import boundary_interval
    from analysis.models.loading import load_model
    from analysis.recommend.bakeoff import recommend
    from analysis.run import AnalysisConfig, analyze
    from analysis.settings import build

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    out = {"model": name, "calib": {"domain": CALIB, "n": n, "t": t}, "runs": {}, "load": {"start": load()}}
    lm = load_model(name, device="cpu", dtype=dtype)
    out["dtype"] = str(lm.dtype).replace("torch.", "")
    out["layers"] = L = lm.num_layers
    log(f"{name}: loaded, {L} layers")
    tokens = sample_windows(load_corpus(CALIB), lm.tokenizer, SampleConfig(n_samples=n, seq_len=t, seed=2024))
    runs = {}
    for mode in MODES:
        # the sinks-excluded run is the bake-off's: it also carries the entropy lenses and, with --with-mi, the
        # MI states, so EntroDrop under every estimator and MI-PRUN (incl. Fast-Block-Select) are candidates
        extra = EST[1:] + (LENSES if mode == "exclude" else ())
        acfg = build(AnalysisConfig, {"estimator": "bucket", "extra_estimators": extra, "granularity": cfg.granularity,
                                      "sinks": mode, "protect": cfg.protect, "batch_size": 4,
                                      "mi": bool(cfg.mi and mode == "exclude")})
        r = analyze(lm, tokens, acfg, cache=True)
        runs[mode] = r
        info = {}
        for e in EST:
            b, _ = r.seq_entropy(e)
            info[e] = {"curve": r.entropy(e)["boundary"].tolist(), "boundary": boundary_interval(b, seed=0)}
        out["runs"][mode] = {"estimators": info, "sinks": r.sinks, "norms": r.norms["boundary"].tolist(),
                             "seconds": r.manifest["timings"]["total_s"]}
        log(f"{name}: analysis sinks={mode} in {out['runs'][mode]['seconds']:.1f} s")
    out["protected"] = list(runs["exclude"].protected)
    save(out)                                           # the curves are written even if the rest does not finish

    last = [0.0]

    def progress(frac: float, msg: str) -> None:
        if frac - last[0] >= 0.05 or frac >= 1:
            last[0] = frac
            log(f"{name}: [{frac:4.0%}] {msg}")

    # the same code as `python -m analysis recommend`, reusing the sinks-excluded run (4 estimators)
    rec = recommend(lm, tokens, cfg, run=runs["exclude"], progress=progress)
    out["recommend"] = rec
    out["load"]["end"] = load()
    out["seconds"] = time.perf_counter() - t0
    log(f"{name}: done in {out['seconds']:.0f} s; load average {out['load']['end']}")
    return out


# ---- figures and report ---------------------------------------------------------------------------------

def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = res["layers"]
    panels = (("bucket", "Bucket (reference)"), ("bucket-robust", "Bucket, robust ranges"),
              ("knn", "KNN"), ("knn-norm", "KNN, scale-normalised"))
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.9), dpi=72)
    x = np.arange(L + 1)
    flagged = _flagged(res)
    for ax, (e, title) in zip(axes, panels):
        for mode, style in (("exclude", "-"), ("keep", "--")):
            est = res["runs"][mode]["estimators"][e]
            ax.plot(x, est["curve"], style, lw=1.6, color="#4C5BD4" if mode == "exclude" else "#999",
                    label=f"sinks {mode}d" if mode == "exclude" else "sinks kept (reference)")
        bi = res["runs"]["exclude"]["estimators"][e]["boundary"]
        if bi["detected"]:
            ax.axvspan(bi["lo"] - 0.3, bi["hi"] + 0.3, color="#2CA58D", alpha=0.18)
            ax.axvline(bi["boundary"], color="#2CA58D", lw=1.2)
        for a, b in flagged:
            ax.axvspan(a - 0.5, b + 0.5, color="#E4572E", alpha=0.08, lw=0)
        ax.set_title(title + ("" if bi["detected"] else " — no compression stage"), fontsize=9)
        ax.set_xlabel("boundary Z^i (0 = embeddings)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("H (nats)", fontsize=8)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{res['model']}: green = boundary with 90 % bootstrap interval (sinks excluded); "
                 f"red shade = boundaries where ≥ half of the windows have a flagged massive-activation token",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _flagged(res: dict, share: float = 0.5) -> list[tuple[int, int]]:
    """Contiguous ranges of boundaries where at least ``share`` of the windows carry a flagged token."""
    s = res["runs"]["keep"]["sinks"]
    c, n = s.get("counts", {}).get("boundary"), s.get("n_sequences")
    hit = [i for i, v in enumerate(c or []) if n and v >= share * n]
    out = []
    for i in hit:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _stage(bi: dict, L: int) -> str:
    if not bi["detected"]:
        return f"none (stage found in {bi['p_detected']:.0%} of resamples)"
    return f"{bi['boundary']} [{bi['lo']}…{bi['hi']}] ({bi['p_detected']:.0%})"


def _sink_text(res: dict) -> str:
    s = res["runs"]["keep"]["sinks"]
    c, p0, n = s["counts"]["boundary"], s["counts_pos0"]["boundary"], s["n_sequences"]
    on = [i for i, v in enumerate(c) if v >= 0.5 * n]
    if not on:
        return "no boundary has a flagged token in at least half of the windows"
    pos0 = sum(p0[i] for i in on) / max(1, sum(c[i] for i in on))
    return (f"flagged tokens in ≥ half of the windows at boundaries {_ranges(on)}; {pos0:.0%} of them at "
            f"position 0; up to {max(c) / n:.1f} per window")


def _ranges(idx: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}–{v}")
            start = None
    return ", ".join(out)


def overlaps_random(row: dict, band: dict | None) -> bool:
    """True when a row's interval overlaps the random band's interval (the cell is not clearly better or worse)."""
    return bool(band) and row["lo"] <= band["hi"] and row["hi"] >= band["lo"]


def bakeoff_table(rec: dict) -> str:
    lvl = round(100 * rec["settings"]["level"])
    lines = [f"| k | criterion | healing | held-out ΔPPL [{lvl} % interval] | paired vs the random median | blocks |",
             "|---|---|---|---|---|---|"]
    for k in rec["ks"]:
        band = rec["random"].get(k) or rec["random"].get(str(k))
        rows = sorted((r for r in rec["rows"] if r["k"] == k), key=lambda r: r["dppl"])
        for r in rows:
            mark = " ≈ random (overlaps the band)" if overlaps_random(r, band) else ""
            lines.append(f"| {k} | {r['label']} | {r['heal']} | {r['dppl']:+.1f} % [{r['lo']:.0f}, {r['hi']:.0f}]{mark} "
                         f"| {r['standing']} | {r['blocks']} |")
        if band:
            lines.append(f"| {k} | *random band* ({band['n_seeds']} seeds, median) | none | {band['dppl']:+.1f} % "
                         f"[{band['lo']:.0f}, {band['hi']:.0f}] (seeds {band['seeds_min']:+.0f} … {band['seeds_max']:+.0f} %) "
                         "| — | — |")
    return "\n".join(lines)


MARKER = re.compile(r"<!--\s*([\w.-]+)[\s:]*(?:start|begin)\s*-->.*?<!--\s*\1[\s:]*end\s*-->",
                    re.S | re.I)


def kept_sections(text: str) -> list[str]:
    """Sections other tools own in docs/models.md, between their own ``<!-- name:start -->`` … ``<!-- name:end -->``
    markers: kept verbatim when the file is regenerated."""
    return [m.group(0) for m in MARKER.finditer(text)]


def report(paths: list[Path], write: bool = False) -> str:
    results = [json.loads(p.read_text()) for p in paths]
    md = [HEADER]
    if DOC.exists():
        md += kept_sections(DOC.read_text(encoding="utf-8"))
    recs, checks = [], {}
    for res in results:
        name, L = res["model"], res["layers"]
        if write:
            figure(res, FIG / f"{name}.png")
        rec = res.get("recommend")
        md.append(f"## {name} ({L} blocks)\n")
        ld = res.get("load") or {}
        md.append(f"Weights in {res.get('dtype', 'float32')}. "
                  f"Calibration: {res['calib']['n']} × {res['calib']['t']} tokens of `{res['calib']['domain']}`. "
                  + (f"Judged on {rec['judging']['tokens']} held-out tokens ({rec['judging']['windows']} windows of "
                     f"{rec['judging']['window']}) of {', '.join(rec['judging']['domains'])} (eval split; no judging "
                     f"window shares {rec['judging']['disjoint']['ngram']} consecutive tokens with calibration), full "
                     f"model {rec['judging']['dense_ppl']:.2f}. " if rec else "The bake-off was not run for this model. ")
                  + (f"Run time {res['seconds'] / 60:.1f} min" if res.get("seconds") else "Run time not recorded")
                  + (f"; load average (1, 5, 15 min) {ld['start']} at the start, {ld.get('end')} at the end"
                     if ld.get("start") else "; load average not recorded") + ".\n")
        if res.get("note"):
            md.append(f"> {res['note']}\n")
        md.append(f"![{name} curves](figures/models/{name}.png)\n")
        md.append("| estimator | boundary, sinks excluded [90 % interval] (share of resamples with a stage) "
                  "| sinks kept |\n|---|---|---|")
        for e in EST:
            md.append(f"| {e} | {_stage(res['runs']['exclude']['estimators'][e]['boundary'], L)} | "
                      f"{_stage(res['runs']['keep']['estimators'][e]['boundary'], L)} |")
        md.append(f"\n**Massive activations:** {_sink_text(res)}.\n")
        if rec:
            recs.append(rec)
            md.append(bakeoff_table(rec) + "\n")
            md.append("**Recommendation** (`python -m analysis recommend`):\n")
            md += [f"- {r['sentence']}" for r in rec["recommendations"].values()]
            md.append("")
        chk = paths[0].parent / f"{name}.check.json"
        if rec and chk.exists():
            checks[name] = (json.loads(chk.read_text()), (rec.get("choice") or {}).get("k"))
            md.append(check_text(checks[name][0]))
    md.append(_findings(recs))
    md.append(_checks_summary(checks))
    text = "\n".join(md)
    if write:
        from analysis.recommend.evidence import write_evidence

        DOC.write_text(text, encoding="utf-8")
        if recs:
            write_evidence(recs, "docs/models.md, written by bench/models.py --report --write")
        print(f"wrote docs/models.md and analysis/recommend/evidence.json ({len(results)} models)")
    return text


def _checks_summary(checks: dict) -> str:
    """Across the models checked on a third text: how often following the recommendation held up (computed)."""
    if not checks:
        return ""
    cells, held, chosen_ok, worse = 0, 0, 0, []
    for name, (c, choice_k) in checks.items():
        for k, e in c["ks"].items():
            lo = e["comparison"]["difference_pp"][0]
            ok = lo <= 0            # the same plan, better, or not distinguishable (the interval reaches 0 or below)
            cells, held = cells + 1, held + ok
            if str(k) == str(choice_k):
                chosen_ok += ok
            if not ok:
                cm = e["comparison"]
                worse.append(f"{name} at k = {k} ({e['recommended']['label']} {cm['recommended']['dppl']:+.0f} % vs "
                             f"{e['best_fixed']} {cm['best_fixed']['dppl']:+.0f} % there"
                             + ("" if str(k) == str(choice_k) else f"; `recommend` chose k = {choice_k}") + ")")
    out = [f"**Followed on a third text** (`bench/recommend_check.py`, {len(checks)} model(s)): the plan `recommend` "
           f"chooses (rec.json's `plan`, the app's pre-selection) is at least as good as the best fixed criterion "
           f"there for **{chosen_ok} of {len(checks)}** models; over every k compared, {held} of {cells}."]
    if worse:
        out.append(" Worse than the best fixed criterion there: " + "; ".join(worse) + ".")
    return "".join(out) + "\n"


def check_text(c: dict) -> str:
    """The recommendation followed on a third text (``bench/recommend_check.py``), as markdown."""
    from bench.recommend_check import verdict

    lvl = round(100 * c["level"])
    out = [f"**Followed on text neither calibration nor judging saw** (`bench/recommend_check.py`): {c['tokens']} tokens "
           f"({c['windows']} windows) of `{c['text']}` ({len(c['files'])} files); load average {c.get('load')}.\n",
           f"| k | recommended | its ΔPPL there [{lvl} %] | best fixed criterion there (lowest unhealed ΔPPL on this "
           f"text), healed the same way | its ΔPPL [{lvl} %] | difference, pp [{lvl} %] (paired) | random median "
           f"(unhealed) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for k, e in c["ks"].items():
        cm, r = e["comparison"], e["recommended"]
        same = e["rows"][r["label"]]["blocks"] == e["rows"][e["best_fixed"]]["blocks"]
        h = "" if cm["heal"] == "none" else f" + {cm['heal']}"
        rnd = f"{e['random_median']:+.1f} %" if e.get("random_median") is not None else "—"
        out.append(f"| {k} | {r['label']}{h} | {cm['recommended']['dppl']:+.1f} % [{cm['recommended']['lo']:.0f}, "
                   f"{cm['recommended']['hi']:.0f}] | {e['best_fixed']}{h} | {cm['best_fixed']['dppl']:+.1f} % "
                   f"[{cm['best_fixed']['lo']:.0f}, {cm['best_fixed']['hi']:.0f}] | [{cm['difference_pp'][0]:+.1f}, "
                   f"{cm['difference_pp'][1]:+.1f}] | {rnd} | {verdict(*cm['difference_pp'], same)} |")
    return "\n".join(out) + "\n"


def _findings(recs: list[dict]) -> str:
    """What the data says, computed from the bake-offs above (no hand-written claims)."""
    if not recs:
        return ""
    out = ["## What the data says\n"]
    for rec in recs:
        for k, r in rec["recommendations"].items():
            ent = [x for x in rec["rows"] if x["k"] == int(k) and x["label"].startswith("entrodrop") and x["heal"] == "none"]
            best_e = min(ent, key=lambda x: x["dppl"]) if ent else None
            out.append(f"- **{rec['model']}**, k = {k}: recommended **{r['label']}**"
                       + (f" + {r['heal']} healing" if r["heal"] != "none" else "")
                       + f" ({r['standing']}); best EntroDrop "
                       + (f"`{best_e['label']}` {best_e['dppl']:+.0f} % ({best_e['standing']})." if best_e else "—."))
    from collections import Counter

    votes = Counter(r["label"].split("[")[0] for rec in recs for r in rec["recommendations"].values())
    out.append(f"\nRecommended most often over {len(recs)} model(s) and their k: "
               + ", ".join(f"**{c}** ({n}×)" for c, n in votes.most_common())
               + ". The app's Select page opens on this default until its own bake-off has run "
                 "(`analysis/recommend/evidence.json`).\n")
    return "\n".join(out)


HEADER = """# Four real models: entropy curves, sinks, boundary and a held-out bake-off

Written by `bench/models.py`, one model per process, at full scale (32 × 256 calibration tokens, ≥ 4,096
held-out tokens). The load average at the start and end of each run is recorded below: held-out perplexities,
intervals and rankings are deterministic and do not depend on the load; the run times do:

    bench/models.py --model smollm2 --with-mi
    bench/models.py --model gemma3-270m --with-mi --heal none,distill --heal-top 2   # linear cannot fold past its sandwich norms
    bench/models.py --model qwen2.5-coder-0.5b --with-mi
    bench/models.py --model qwen2.5-coder-1.5b --with-mi --heal none --dtype bf16   # bf16: native on this CPU; no healing, to finish
    bench/recommend_check.py --model M --write      # each model: the recommendation followed on a third text
    bench/models.py --report --write

Defaults: 32 × 256 calibration tokens of `wiki` (calibration split), ≥ 4,096 held-out tokens judged. Blocks
are 0-based; `Z^0` is the embedding output and `Z^(l+1)` the output of block `l`. **Sinks**: the rule in
`analysis/measure/sinks.py` (token norm > 8 × its window's median token norm, at most 5 % of a window's
tokens, per window and residual point); *excluded* leaves them out of every statistic, *kept* is
EntroDrop's reference (every token). **Boundary**: `analysis/measure/boundary.py` (median-3 smoothed curve,
a real fall then a rise for good; "none" = no compression stage) with a 90 % percentile bootstrap over
windows (200 resamples). **Bake-off** (`analysis/recommend/`, the same code as `python -m analysis
recommend`): attention sub-blocks, EntroDrop's fixed protection {0, 1, L−1} for every criterion, the
analysis with sinks excluded; k = a quarter and a half of the unprotected blocks; judged on the eval split
of the built-in domains calibration did not use, never on calibration text; each row's interval is a
paired bootstrap over judging windows of the per-window log-likelihood difference to the full model; the
random band is the median of 5 seeded random choices with the interval pooled over seeds and resamples.
A cell marked **≈ random** has an interval that overlaps the random band's (which includes the spread over
seeds); the *paired vs the random median* column compares the row with the band's median on the same
resampled windows.
"""


def main() -> None:
    from analysis.recommend.config import RecommendConfig
    from analysis.settings import add_arguments, from_args

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="one embedded model (one per process)")
    ap.add_argument("--n", type=int, default=32, help="calibration windows")
    ap.add_argument("--t", type=int, default=256, help="tokens per calibration window")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "auto"),
                    help="model dtype (fp32 by default; bf16 where the CPU runs it natively makes the largest model affordable)")
    ap.add_argument("--report", action="store_true", help="print the markdown built from the JSON files present")
    ap.add_argument("--dir", default=str(FIG), help="where the per-model JSON files go (default docs/figures/models; "
                                                   "a check run with tiny sizes should write elsewhere)")
    ap.add_argument("--write", action="store_true",
                    help="with --report: regenerate docs/models.md, its figures and analysis/recommend/evidence.json")
    add_arguments(ap.add_argument_group("bake-off (RecommendConfig)"), RecommendConfig)
    args = ap.parse_args()
    out_dir = Path(args.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.write and out_dir.resolve() != FIG.resolve():
        ap.error("--write regenerates docs/models.md from docs/figures/models only (leave --dir out)")
    if args.model:
        cfg = from_args(RecommendConfig, args)
        cfg.validate()

        def save(res: dict) -> None:
            (out_dir / f"{args.model}.json").write_text(json.dumps(res, default=float))

        save(run_model(args.model, args.n, args.t, cfg, save, dtype=args.dtype))
    if args.report or not args.model:
        paths = sorted(out_dir.glob("*.json"), key=lambda p: ORDER.index(p.stem) if p.stem in ORDER else 99)
        text = report([p for p in paths if p.stem != "summary" and not p.stem.endswith(".check")], write=args.write)
        if not args.write:
            print(text)


if __name__ == "__main__":
    main()
