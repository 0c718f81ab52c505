"""Does following ``recommend`` pay off on text that neither calibration nor judging saw? (issue 23)

``bench/models.py`` calibrates on ``wiki`` and judges on the eval split of the other built-in domains. This
script takes that bake-off (``docs/figures/models/<model>.json``), rebuilds every candidate's plan at every k
from its stored blocks, and measures them again on a *third* text, one of your choice that no built-in domain
contains (default: the licence texts shipped with the OS, ``/usr/share/common-licenses``, legal English). Per k
it reports every criterion's held-out ΔPPL there with a 90 % paired bootstrap interval over windows, the random
band, and whether the recommended choice (criterion and healing) is at least as good as the best *fixed*
criterion on this text: the recommendation's interval against the best fixed criterion's, paired.

Healing: the recommended plan is healed with its method on the same calibration windows as the bake-off; the
best fixed criterion's plan is healed with the same method, so the comparison is like for like.

    .venv/bin/python bench/recommend_check.py --model smollm2            # prints; --write stores <model>.check.json

``bench/models.py --report`` shows the stored checks under each model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIG = ROOT / "docs" / "figures" / "models"
DEFAULT_TEXT = "/usr/share/common-licenses"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_texts(spec: str) -> tuple[list[str], list[str]]:
    """A file or a folder (every regular file directly in it, sorted; links followed, duplicates by content once)."""
    p = Path(spec)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    seen, texts, names = set(), [], []
    for f in files:
        try:
            t = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if t.strip() and t not in seen:
            seen.add(t)
            texts.append(t)
            names.append(f.name)
    if not texts:
        raise SystemExit(f"no readable text in {spec}")
    return texts, names


def paired(dense, rows: dict, ntok, level: float, n_boot: int, seed: int) -> dict:
    from analysis.recommend.stats import interval, log_ratio, pct, resamples

    idx = resamples(len(dense), n_boot, seed)
    out = {}
    for name, v in rows.items():
        b = pct(log_ratio(dense, v, ntok, idx))
        lo, hi = interval(b, level)
        out[name] = {"dppl": float(pct(log_ratio(dense, v, ntok))), "lo": lo, "hi": hi, "boot": b}
    return out


def check(model: str, text: str, tokens: int, window: int, level: float, n_boot: int, fig: Path = FIG) -> dict:
    import torch

    from analysis.data import SampleConfig, load_corpus, sample_windows
    from analysis.evaluate.windows import EvalConfig, EvalWindows, batch_windows, prepare_eval
    from analysis.heal.registry import heal
    from analysis.models.loading import load_model
    from analysis.models.plan import Plan
    from analysis.recommend.judge import NLLCache, model_nll, plans_nll, tokens_per_window

    res = json.loads((fig / f"{model}.json").read_text())
    rec = res["recommend"]
    gkey = {"attention": "drop_attn", "mlp": "drop_mlp", "layer": "drop_layers"}[rec["granularity"]]
    torch.set_grad_enabled(False)
    lm = load_model(model, device="cpu", dtype={"bfloat16": "bf16"}.get(res.get("dtype"), "fp32"))  # as the bake-off ran
    texts, names = read_texts(text)
    w = prepare_eval(lm, texts, EvalConfig(window=window, max_tokens=tokens, batch_size=1), "all")
    rows_ = [(ids[0], first) for ids, first in w.batches]
    windows = EvalWindows(batch_windows(rows_, 4), {**w.meta, "corpus": text})
    ntok = tokens_per_window(windows)
    log(f"{model}: {windows.n_windows} windows of {window} tokens from {len(texts)} files of {text}")
    cal = res["calib"]
    calib = sample_windows(load_corpus(cal["domain"]), lm.tokenizer,
                           SampleConfig(n_samples=cal["n"], seq_len=cal["t"], seed=2024)).input_ids
    out = {"model": model, "text": text, "files": names, "windows": windows.n_windows, "tokens": int(ntok.sum()),
           "level": level, "ks": {}}
    for k in rec["ks"]:
        unhealed = {r["label"]: r["blocks"] for r in rec["rows"] if r["k"] == k and r["heal"] == "none"}
        plans = {lab: Plan(**{gkey: b}) for lab, b in unhealed.items()}
        rk = rec["recommendations"][str(k)]
        rand = [Plan(**{gkey: b}) for b in _random_blocks(rec, k)]
        cache = NLLCache("check", enabled=False)
        vals = plans_nll(lm, [Plan()] + list(plans.values()) + rand, windows, cache)
        dense, per = vals[0], dict(zip(plans, vals[1:1 + len(plans)]))
        rvals = vals[1 + len(plans):]
        table = paired(dense, per, ntok, level, n_boot, 0)
        best_fixed = min(table, key=lambda lab: table[lab]["dppl"])
        entry = {"rows": {lab: {x: v for x, v in t.items() if x != "boot"} | {"blocks": unhealed[lab]}
                          for lab, t in table.items()},
                 "random_median": float(np.median([paired(dense, {"r": v}, ntok, level, 200, 0)["r"]["dppl"]
                                                   for v in rvals])) if rvals else None,
                 "recommended": {"label": rk["label"], "heal": rk["heal"]}, "best_fixed": best_fixed}
        heal_m = rk["heal"]
        compare = {"recommended": per[rk["label"]], "best fixed": per[best_fixed]}
        if heal_m != "none":
            log(f"{model}: k={k}: {heal_m} healing of {rk['label']} and of {best_fixed}")
            healed = {}
            for lab in dict.fromkeys([rk["label"], best_fixed]):
                h = heal(lm, plans[lab], heal_m, tokens=calib)
                healed[lab] = model_nll(h.model, windows, lm.device)
                del h
            compare = {"recommended": healed[rk["label"]], "best fixed": healed[best_fixed]}
        pt = paired(dense, compare, ntok, level, n_boot, 0)
        diff = pt["recommended"]["boot"] - pt["best fixed"]["boot"]
        lo, hi = float(np.quantile(diff, (1 - level) / 2)), float(np.quantile(diff, 1 - (1 - level) / 2))
        entry["comparison"] = {"heal": heal_m, "recommended": {x: v for x, v in pt["recommended"].items() if x != "boot"},
                               "best_fixed": {x: v for x, v in pt["best fixed"].items() if x != "boot"},
                               "difference_pp": [lo, hi],
                               "verdict": verdict(lo, hi, unhealed[rk["label"]] == unhealed[best_fixed])}
        out["ks"][str(k)] = entry
        c = entry["comparison"]
        log(f"{model}: k={k}: recommended {rk['label']}+{heal_m} {c['recommended']['dppl']:+.1f} % "
            f"[{c['recommended']['lo']:.0f}, {c['recommended']['hi']:.0f}] vs best fixed here {best_fixed}+{heal_m} "
            f"{c['best_fixed']['dppl']:+.1f} % [{c['best_fixed']['lo']:.0f}, {c['best_fixed']['hi']:.0f}]: {c['verdict']}")
    out["load"] = [round(x, 2) for x in os.getloadavg()]
    return out


def verdict(lo: float, hi: float, same: bool) -> str:
    """The recommendation against the best fixed criterion on this text, from the paired interval of the difference."""
    if same:
        return "the same plan as the best fixed criterion here"
    if hi < 0:
        return "better than the best fixed criterion here"
    if lo > 0:
        return "worse than the best fixed criterion here"
    return "not distinguishable from the best fixed criterion here (the difference's interval includes 0)"


def _random_blocks(rec: dict, k: int) -> list[list[int]]:
    """The random band's block choices at ``k``: as the bake-off stored them, else (a rec.json written before
    it stored them) re-drawn exactly as it drew them (the same seeded keys)."""
    from analysis.score.criteria import get_criterion, random_key, rank_blocks

    bands = rec.get("random") or {}                # JSON keys are strings; a rec dict in memory has ints
    band = bands.get(str(k)) or bands.get(k) or {}
    if band.get("blocks"):
        return [sorted(int(b) for b in bl) for bl in band["blocks"]]

    st, L = rec["settings"], rec["num_layers"]
    out = []
    for s in range(st["seeds"]):
        order = rank_blocks(random_key(L, seed=st["seed"] + s), get_criterion("random").redundant, rec["protected"])
        out.append(sorted(int(b) for b in order[:k]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", default=DEFAULT_TEXT, help="a text file or a folder of text files no built-in domain has")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens measured")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--level", type=float, default=0.90)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--dir", default=str(FIG), help="where bench/models.py wrote <model>.json")
    ap.add_argument("--write", action="store_true", help=f"store {FIG}/<model>.check.json (shown by bench/models.py --report)")
    a = ap.parse_args()
    out = check(a.model, a.text, a.tokens, a.window, a.level, a.n_boot, Path(a.dir))
    ok = all(e["comparison"]["difference_pp"][0] <= 0 for e in out["ks"].values())   # never distinguishably worse
    if a.write:
        (Path(a.dir) / f"{a.model}.check.json").write_text(json.dumps(out, indent=1))
    print(f"ratio={1.0 if ok else 0.0}")


if __name__ == "__main__":
    main()
