"""The repository's evidence: which criterion won where, read from ONE table (``evidence.json`` beside this
module) that ``bench/models.py --write`` regenerates from its ``recommend`` runs, and that the app reads for
its default criterion until the bake-off has run for the loaded model.

The table: ``{"default": {"criterion", "model", "k", "why"}, "source": ..., "models": {model: {"granularity",
"best": {k: label}, "standing": {label: {k: "better than random" | "worse than random" |
"not distinguishable from random"}}, "dppl": {label: {k: [ΔPPL %, lo, hi]}}, "sentence": ...}}}`` (``dppl``: held-out
ΔPPL with its paired interval per row, healed rows as ``label+method``; tables written before it lack it).
"""
from __future__ import annotations

from analysis.store.jsonio import loads_strict

import json
from pathlib import Path

EVIDENCE = Path(__file__).with_name("evidence.json")
FALLBACK = {"criterion": "cosine", "model": None, "k": None, "why": "no evidence table found"}


def load_evidence(path: str | Path | None = None) -> dict:
    """The evidence table (an empty one when the file is missing or unreadable)."""
    try:
        return loads_strict(Path(path or EVIDENCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"default": dict(FALLBACK), "models": {}}


def default_criterion(model: str | None = None, path: str | Path | None = None) -> tuple[str, str]:
    """``(criterion, label)``: the criterion the evidence supports for ``model`` (its own entry when it has
    one, else the repository-wide default), and the sentence that says so."""
    ev = load_evidence(path)
    entry = (ev.get("models") or {}).get(model or "")
    if entry and entry.get("best"):
        ks = sorted(entry["best"], key=int)
        label = entry["best"][ks[-1]]
        crit = label.split("[")[0].split("+")[0]
        return crit, f"default from the repository's evidence on {model}: {label} (k = {ks[-1]})"
    d = ev.get("default") or FALLBACK
    on = f" on {d['model']}" if d.get("model") else ""
    return d["criterion"], f"default from the repository's evidence{on}: {d['criterion']}"


def measured_standing(model: str | None, criterion: str, path: str | Path | None = None) -> str | None:
    """``"on this model: worse than random at k = 3"`` for a criterion's best-known variant, or None."""
    entry = ((load_evidence(path).get("models") or {}).get(model or "")) or {}
    st = entry.get("standing") or {}
    hits = {lab: by_k for lab, by_k in st.items() if lab == criterion or lab.startswith(criterion + "[")}
    if not hits:
        return None
    parts = []
    for lab, by_k in sorted(hits.items()):
        for k, s in sorted(by_k.items(), key=lambda kv: int(kv[0])):
            parts.append(f"{lab} {s} at k = {k}")
    return "on this model: " + "; ".join(parts)


def evidence_entry(rec: dict) -> dict:
    """One model's entry from a ``recommend`` result."""
    best = {str(k): r["label"] + (f"+{r['heal']}" if r["heal"] != "none" else "") for k, r in rec["recommendations"].items()}
    standing: dict = {}
    dppl: dict = {}                              # label (+heal) → k → [ΔPPL %, lo, hi]: what the app's sentences quote
    for row in rec["rows"]:
        if row["heal"] == "none":
            standing.setdefault(row["label"], {})[str(row["k"])] = row["standing"]
        lab = row["label"] + (f"+{row['heal']}" if row["heal"] != "none" else "")
        dppl.setdefault(lab, {})[str(row["k"])] = [round(float(row[x]), 2) for x in ("dppl", "lo", "hi")]
    return {"granularity": rec["granularity"], "best": best, "standing": standing, "dppl": dppl,
            "sentence": rec["sentence"],
            "judging": {k: rec["judging"][k] for k in ("domains", "tokens", "windows")},
            "calibration": rec["calibration"]["windows"]}


def write_evidence(results: list[dict], source: str, path: str | Path | None = None) -> dict:
    """Write the table from ``recommend`` results (one per model). The repository-wide default is the
    criterion recommended most often over models and k (ties: the one with the lowest mean ΔPPL)."""
    models = {r["model"]: evidence_entry(r) for r in results}
    votes: dict[str, list[float]] = {}
    for r in results:
        for rk in r["recommendations"].values():
            votes.setdefault(rk["label"].split("[")[0], []).append(rk["dppl"])
    crit = min(votes, key=lambda c: (-len(votes[c]), sum(votes[c]) / len(votes[c]))) if votes else FALLBACK["criterion"]
    first = next((m for m, e in models.items() if any(v.split("[")[0].split("+")[0] == crit for v in e["best"].values())), None)
    ev = {"default": {"criterion": crit, "model": first, "why": f"recommended most often by `recommend` over "
                                                             f"{len(models)} model(s) and their k"},
          "source": source, "models": models}
    Path(path or EVIDENCE).write_text(json.dumps(ev, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return ev
