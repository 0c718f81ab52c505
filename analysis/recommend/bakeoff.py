"""The bake-off: every registered criterion that the run supports, at several k, with and without healing,
judged on held-out text of other domains against the dense model and a random band (paired bootstrap over
windows), and a recommendation per k with a sentence that says why and how sure.

Cost: one analysis pass scores every criterion (from the results cache when it ran before); drop-one ΔPPL
walks its plans as a trie; every judged plan starts from the residual stream of the longest prefix it
shares with the plan before it (:mod:`analysis.models.prefix`); per-window results are cached on disk, so a
stopped bake-off resumes where it stopped.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from analysis.errors import SelectionError
from analysis.models.plan import RECOMMENDATION_KIND as KIND  # rec.json is a plan file too
from analysis.models.plan import Plan
from analysis.recommend.config import RecommendConfig, auto_ks, parse_ks
from analysis.recommend.judge import (NLLCache, Stopped, calibration_domains, check_disjoint, judging_domains,
                                      judging_windows, model_nll, plans_nll, row_key, tokens_per_window,
                                      windows_hash)
from analysis.recommend.stats import paired_table

Progress = Callable[[float, str], None]

#: stages and their share of the progress bar
_STAGES = {"analysis": (0.0, 0.35), "ground truth": (0.35, 0.45), "judging": (0.45, 0.8), "healing": (0.8, 1.0)}


@dataclass
class Candidate:
    label: str                       # e.g. "entrodrop[knn]", "cosine", "mi-prun[fbs]"
    criterion: str
    params: dict = field(default_factory=dict)


class _Clock:
    """Maps a stage's own fraction onto the whole bar and adds the time left (from the time spent so far)."""

    def __init__(self, progress: Progress | None):
        self.progress, self.t0 = progress, time.perf_counter()

    def stage(self, name: str) -> Progress:
        lo, hi = _STAGES[name]

        def cb(frac: float, msg: str) -> None:
            if self.progress is None:
                return
            f = lo + (hi - lo) * max(0.0, min(1.0, frac))
            spent = time.perf_counter() - self.t0
            left = spent / f * (1 - f) if f > 0.02 else None
            msg = re.sub(r" · about [^·]* left", "", msg)            # one time left: the whole bake-off's
            self.progress(f, f"{name}: {msg}" + (f" · about {_dur(left)} left" if left is not None else ""))

        return cb


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def candidates(run, granularity: str) -> tuple[list[Candidate], list[dict]]:
    """Every registered criterion the run can score at ``granularity`` (EntroDrop under each of the run's
    estimators; random is the band, not a candidate) and the ones skipped, with the reason."""
    from analysis.score.criteria import CRITERIA, scores_for

    out, skipped = [], []
    for name in CRITERIA:
        c = CRITERIA[name]
        if c.stochastic:
            continue
        if granularity not in c.granularities:
            skipped.append({"criterion": name, "reason": f"does not score {granularity} blocks"})
            continue
        variants = [({"estimator": e}, f"{name}[{e}]") for e in run.estimators] if "estimator" in c.params else [({}, name)]
        for params, label in variants:
            try:
                s = scores_for(run, name, granularity, **params)
            except SelectionError as exc:
                skipped.append({"criterion": label, "reason": str(exc)})
                continue
            if not np.isfinite(s).any():
                skipped.append({"criterion": label, "reason": "no finite scores"})
                continue
            out.append(Candidate(label, name, params))
    if granularity == "layer" and (run.extras.get("mi") or {}).get("matrix"):
        out.append(Candidate("mi-prun[fbs]", "mi-prun", {"method": "fast"}))
    return out, skipped


def plan_for(run, cand: Candidate, k: int, granularity: str, protected: list[int]) -> Plan:
    from analysis.score.criteria import select

    if cand.label == "mi-prun[fbs]":
        from analysis.score.miprun import miprun_select

        d = miprun_select(run, k, protect=protected)
        src = {k_: v for k_, v in d["source"].items() if k_ != "run_manifest"}
        return Plan(d["drop_attn"], d["drop_mlp"], d["drop_layers"], {**src, "criterion": "mi-prun[fbs]"})
    sel = select(run, cand.criterion, k, granularity, protected=protected, **cand.params)
    plan = Plan.from_selection(sel, None)
    plan.source.pop("run_manifest", None)
    plan.source["params"] = dict(cand.params)
    return plan


def _analysis(lm, tokens, cfg: RecommendConfig, progress, should_stop):
    """One analysis pass with every estimator compared (and MI states with ``cfg.mi``), from the results cache
    when it ran before."""
    from analysis.run import AnalysisConfig, analyze
    from analysis.settings import build

    est = tuple(dict.fromkeys(cfg.estimators))
    acfg = build(AnalysisConfig, {"estimator": est[0], "extra_estimators": est[1:], "granularity": cfg.granularity,
                                  "sinks": cfg.sinks, "protect": cfg.protect, "batch_size": cfg.batch_size,
                                  "mi": cfg.mi})
    return analyze(lm, tokens, acfg, progress=progress, should_stop=should_stop, cache=True)


#: why a stopped bake-off ended while healing (the Stopped message; judged plans stay cached)
STOPPED_HEALING = "stopped while healing; run it again to resume (judged plans are cached)"


def recommend(lm, tokens, cfg: RecommendConfig | None = None, run=None, progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None, cache: bool = True, partial: bool = False) -> dict:
    """Run the bake-off for ``lm`` calibrated on ``tokens`` (a TokenSet; its domains are never judged on) and
    return the table, the random band, a recommendation per k and the recommended ``plan`` (see module doc).

    ``run``: an :class:`~analysis.score.result.AnalysisResult` of ``lm`` on ``tokens`` to reuse (else one
    analysis pass is made, from the results cache when it ran before). ``should_stop()`` true → :class:`Stopped`
    (what was measured is cached; a new call resumes). With ``partial=True`` a stop while healing returns the
    finished rows instead (every unhealed plan, the healed rows done) with ``"stopped"`` saying why; a complete
    result has ``"stopped": None``."""
    from analysis.heal.registry import HealError, heal

    cfg = cfg or RecommendConfig()
    cfg.validate()
    t0 = time.perf_counter()
    clock = _Clock(progress)
    ids = tokens.input_ids if hasattr(tokens, "input_ids") else tokens
    # ---- judging text first: a bad choice of domains fails before any model pass ----
    calib_domains = calibration_domains(tokens)
    domains = judging_domains(cfg.heldout, calib_domains)
    overlap = sorted(set(domains) & set(calib_domains))
    windows, labels = judging_windows(lm, domains, cfg.heldout_tokens, cfg.window, cfg.batch_size)
    disjoint = check_disjoint(ids, windows)
    W = windows.n_windows
    if W < 2:
        raise SelectionError(f"only {W} judging window: the bootstrap needs several",
                             hint="raise --heldout-tokens or lower --window")
    ntok = tokens_per_window(windows)
    nll_cache = NLLCache(windows_hash(lm, windows), enabled=cache)
    # ---- one analysis pass scores every criterion ----
    if run is None:
        run = _analysis(lm, tokens, cfg, clock.stage("analysis"), should_stop)
    if run.manifest.get("completed") is False:
        raise Stopped("stopped during the analysis pass; run it again to resume (the pass is cached)")
    L = run.num_layers
    from analysis.score.selection import protected_blocks

    protected = list(run.protected) if cfg.protect == run.protect else protected_blocks(L, cfg.protect, run.boundary)
    unprotected = L - len(protected)
    max_k = max(1, unprotected // 2)
    ks = parse_ks(cfg.ks, max_k) or auto_ks(unprotected)
    # ---- drop-one ΔPPL on (a subset of) the calibration windows, if the run has none ----
    have_gt = bool(((run.extras.get("criteria_scores") or {}).get("delta-ppl") or {}).get(cfg.granularity))
    if cfg.delta_ppl_windows > 0 and not have_gt:
        from analysis.evaluate.groundtruth import delta_ppl_details, store_ground_truth

        sub = ids[: cfg.delta_ppl_windows]
        d = delta_ppl_details(lm, sub, cfg.granularity, batch_size=cfg.batch_size,
                              progress=clock.stage("ground truth"))
        store_ground_truth(run, cfg.granularity, d["scores"], d)
    cands, skipped = candidates(run, cfg.granularity)
    # ---- plans: candidates and random seeds at every k ----
    plans: dict[tuple[str, int], Plan] = {}
    for k in ks:
        for c in cands:
            try:
                plans[(c.label, k)] = plan_for(run, c, k, cfg.granularity, protected)
            except SelectionError as exc:
                skipped.append({"criterion": c.label, "k": k, "reason": str(exc)})
        for s in range(cfg.seeds):
            from analysis.score.criteria import select

            sel = select(run, "random", k, cfg.granularity, protected=protected, seed=cfg.seed + s)
            plans[(f"random#{cfg.seed + s}", k)] = Plan.from_selection(sel, None)
    for p in plans.values():
        p.source.pop("run_manifest", None)
        p.validate(L)
    # ---- judge: per-window NLL of the dense model and every plan (trie walk, cached) ----
    keys = list(plans)
    total = W                                # the walk's progress, counted in windows
    done = [0]
    judge_cb = clock.stage("judging")

    def tick(b: int) -> None:
        done[0] += b
        judge_cb(done[0] / total, f"{done[0]}/{total} windows × {len(plans) + 1} plans")

    vals = plans_nll(lm, [Plan()] + [plans[k] for k in keys], windows, nll_cache, tick=tick, should_stop=should_stop)
    dense, per_plan = vals[0], dict(zip(keys, vals[1:]))
    # ---- tables per k (unhealed), then healing of the best few, then the final tables ----
    heal_rows: dict[tuple[str, int, str], np.ndarray] = {}
    heal_methods = [h for h in cfg.heal if h != "none"]
    tables = {k: _table(cfg, dense, ntok, per_plan, heal_rows, k) for k in ks}
    stopped = None                                  # why the healing was cut short (partial=True)
    if heal_methods:
        todo = [(k, lab) for k in ks for lab in _best(tables[k], cfg.heal_top)]
        heal_cb = clock.stage("healing")
        n_h = len(todo) * len(heal_methods)
        i = 0
        try:
            for k, lab in todo:
                for m in heal_methods:
                    plan = plans[(lab, k)]
                    key = row_key(plan, m)
                    got = nll_cache.get(key, W)
                    if got is None:
                        if should_stop and should_stop():
                            raise Stopped(STOPPED_HEALING)
                        heal_cb(i / n_h, f"{m} healing of {lab} at k = {k}")
                        try:
                            healed = heal(lm, plan, m, tokens=ids, stop=should_stop)
                        except HealError as exc:          # e.g. linear on Gemma-3's sandwich norms: a row skipped
                            if should_stop and should_stop():   # … but a heal cut short by Stop is not "skipped"
                                raise Stopped(STOPPED_HEALING) from exc
                            skipped.append({"criterion": lab, "k": k, "heal": m, "reason": str(exc)})
                            i += 1
                            continue
                        got = model_nll(healed.model, windows, lm.device, should_stop=should_stop)
                        del healed
                        nll_cache.put(key, got.tolist())
                        nll_cache.save()
                    heal_rows[(lab, k, m)] = got
                    i += 1
                    heal_cb(i / n_h, f"{m} healing: {i}/{n_h} plans")
        except Stopped as exc:
            if not partial:
                raise
            stopped = str(exc)
        tables = {k: _table(cfg, dense, ntok, per_plan, heal_rows, k) for k in ks}
    # ---- rows, recommendations, the plan ----
    rows, recs = [], {}
    for k in ks:
        t = tables[k]
        for name, r in t["rows"].items():
            lab, _, h = name.partition("+")
            h = h or "none"
            plan = plans[(lab, k)]
            rows.append({"label": lab, "criterion": plan.source.get("criterion", lab), "k": k, "heal": h,
                         "blocks": plan.to_dict()[_gkey(cfg.granularity)], "dppl": r["dppl"], "lo": r["lo"],
                         "hi": r["hi"], "vs_random": r.get("vs_random"), "standing": standing(r),
                         "indistinguishable": sorted(o for o, pr in t["pairs"].get(name, {}).items()
                                                     if not pr["distinguishable"])})
        recs[k] = _recommend_k(k, t, plans, cfg)
    for r in recs.values():                          # provenance: eval/prune --plan refuse it on another model
        r["plan"]["source"]["run_manifest"] = {"model": (run.manifest or {}).get("model")}
    choice = _choose(recs, cfg.max_dppl)
    base_ppl = float(np.exp(dense.sum() / ntok.sum()))
    return {
        "kind": KIND, "model": lm.name, "fingerprint": lm.fingerprint, "num_layers": L,
        "granularity": cfg.granularity, "ks": ks, "protected": protected, "max_k": max_k,
        "calibration": {"domains": calib_domains, "windows": list(ids.shape),
                        "data": tokens.to_manifest() if hasattr(tokens, "to_manifest") else None},
        "judging": {"domains": domains, "split": "eval", "windows": W, "tokens": int(ntok.sum()),
                    "window": cfg.window, "per_domain": windows.meta.get("domains"), "disjoint": disjoint,
                    "shared_domains": overlap, "dense_ppl": base_ppl},
        "rows": rows, "random": {k: _band(tables[k]["random"], plans, k, cfg) for k in ks}, "recommendations": recs,
        "choice": choice, "plan": recs[choice["k"]]["plan"] if choice else None,
        "sentence": recs[choice["k"]]["sentence"] if choice else "no recommendation",
        "skipped": skipped, "settings": asdict(cfg), "run_manifest": _slim(run.manifest), "stopped": stopped,
        "seconds": time.perf_counter() - t0,
    }


def _band(band: dict | None, plans: dict, k: int, cfg) -> dict | None:
    """The random band at ``k`` with the blocks each seed dropped (what a re-check on other text re-uses)."""
    if band is None:
        return None
    seeds = [f"random#{cfg.seed + s}" for s in range(cfg.seeds)]
    return {**band, "blocks": [plans[(lab, k)].to_dict()[_gkey(cfg.granularity)] for lab in seeds]}


def _gkey(g: str) -> str:
    from analysis.indices import GRANULARITY_KEY

    return GRANULARITY_KEY[g]


def _slim(m: dict) -> dict:
    return {k: m.get(k) for k in ("model", "data", "config", "n_sequences", "completed", "timings") if k in m}


def _table(cfg, dense, ntok, per_plan, heal_rows, k) -> dict:
    rows = {lab: v for (lab, kk), v in per_plan.items() if kk == k and not lab.startswith("random#")}
    rows.update({f"{lab}+{m}": v for (lab, kk, m), v in heal_rows.items() if kk == k})
    rnd = {lab: v for (lab, kk), v in per_plan.items() if kk == k and lab.startswith("random#")}
    return paired_table(dense, rows, ntok, rnd, cfg.n_boot, cfg.level, cfg.seed)


def _best(t: dict, n: int) -> list[str]:
    unhealed = {k: r for k, r in t["rows"].items() if "+" not in k}
    return sorted(unhealed, key=lambda k: unhealed[k]["dppl"])[:n]


def standing(r: dict) -> str:
    v = r.get("vs_random")
    if not v:
        return "no random band"
    return "better than random" if v["better"] else "worse than random" if v["worse"] else "not distinguishable from random"


def fmt(r: dict) -> str:
    return f"{r['dppl']:+.0f} % [{r['lo']:.0f}, {r['hi']:.0f}]"


def _recommend_k(k: int, t: dict, plans: dict, cfg) -> dict:
    rows = t["rows"]
    best = min(rows, key=lambda n: rows[n]["dppl"])
    lab, _, heal = best.partition("+")
    heal = heal or "none"
    r = rows[best]

    def same_plan(o: str) -> bool:                   # another criterion that chose the very same plan
        lo_, _, ho = o.partition("+")
        return (ho or "none") == heal and row_key(plans[(lo_, k)]) == row_key(plans[(lab, k)])

    same = sorted(o for o in rows if o != best and same_plan(o))
    alike = [o for o, pr in t["pairs"].get(best, {}).items() if not pr["distinguishable"] and o not in same]

    # next to it: the best unhealed row of each other family (EntroDrop, MI-PRUN, the other fixed criteria)
    def family(n: str) -> str:
        return next((f for f in ("entrodrop", "mi-prun") if n.startswith(f)), "other")

    others = []
    for fam in ("other", "entrodrop", "mi-prun"):
        fr = {n: x for n, x in rows.items() if family(n) == fam and "+" not in n and n != best and n not in same}
        if fr and (fam != family(best) or "+" in best):
            b = min(fr, key=lambda n: fr[n]["dppl"])
            others.append(f"{b} {fmt(fr[b])}")
    band = t["random"]
    name = lab + (f" + {heal} healing" if heal != "none" else "")
    sentence = f"{name}, k = {k}: {fmt(r)}"
    if others:
        sentence += " vs " + ", ".join(others)
    if band:
        sentence += f", random {band['dppl']:+.0f} % [{band['lo']:.0f}, {band['hi']:.0f}]"
    how = standing(r)
    if how != "better than random":
        sentence += f" — {how}"
    if same:
        sentence += f"; {', '.join(same)} chose the same blocks"
    if alike:
        sentence += f"; not distinguishable from {', '.join(sorted(alike))}"
    sentence += f" (held-out ΔPPL, {round(100 * cfg.level)} % paired bootstrap over {t['n_windows']} windows)."
    plan = plans[(lab, k)]
    p = plan.to_dict()
    p["source"] = {**p["source"], "criterion": plan.source.get("criterion", lab), "label": lab, "heal": heal,
                   "recommended_by": "analysis.recommend", "held_out_dppl": [r["dppl"], r["lo"], r["hi"]]}
    return {"label": lab, "heal": heal, "dppl": r["dppl"], "lo": r["lo"], "hi": r["hi"], "standing": how,
            "indistinguishable": sorted(alike), "same_blocks": same, "sentence": sentence, "plan": p}


def _choose(recs: dict, max_dppl: float) -> dict | None:
    """The largest k whose recommended plan's upper bound is under ``max_dppl`` %, else the smallest k."""
    if not recs:
        return None
    ok = [k for k, r in recs.items() if r["hi"] <= max_dppl]
    k = max(ok) if ok else min(recs)
    why = (f"the largest k whose upper bound is under {max_dppl:g} %" if ok else
           f"no k stays under {max_dppl:g} %; the smallest k compared")
    return {"k": k, "label": recs[k]["label"], "heal": recs[k]["heal"], "why": why}
