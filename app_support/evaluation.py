"""Comparisons for the Prune & compare page, on top of :mod:`analysis.evaluate`.

Every plan is evaluated on a view / copy of the cached model (the cached model is never modified).
Results are kept in ``st.session_state["es.evals"]`` keyed by everything they depend on (model
fingerprint, plan blocks, evaluation settings), so revisiting the page or re-running is instant.
"""
from __future__ import annotations

import math

import streamlit as st

from . import state

DEFAULT_EVAL = {"data": None, "window": 256, "max_tokens": 4096, "prompt_len": 64, "new_tokens": 16, "repeats": 3}
#: Latency repeats grow from ``repeats`` until the p10–p90 spread is within 10 % of the median, up to this
#: many repeats or this many seconds per model.
LATENCY_MAX_REPEATS, LATENCY_CAP_S = 15, 15.0


def plan_key(plan) -> list:
    n = plan.normalized()
    return [n.drop_attn, n.drop_mlp, n.drop_layers]


def eval_data(name: str | None, spec: dict | None):
    """What :func:`analysis.evaluate.prepare_eval` gets: a built-in domain name, or the held-out texts of
    the calibration upload / hub dataset."""
    if name and name != "(calibration source)":
        return name
    from .data import eval_texts

    if spec and spec.get("source") in ("upload", "hub"):
        return eval_texts(spec)
    w = [k for k, v in ((spec or {}).get("weights") or {"wiki": 1}).items() if float(v) > 0]
    return w[0] if w else "wiki"


def eval_cfg(settings: dict):
    from analysis.evaluate import EvalConfig

    return EvalConfig(window=int(settings["window"]), max_tokens=int(settings["max_tokens"]), batch_size=4)


def evaluate_plan(lm, plan, settings: dict, data, with_latency: bool = True, progress=None,
                  store: dict | None = None) -> dict:
    """Quality (perplexity, KL, top-1 vs the original), parameters, KV bytes and latency for one plan
    (``plan=None``: the original model). Cached in ``store`` (default: the session's ``es.evals``; a job
    passes its own dict). ``progress(frac, text)`` is told the windows done."""
    import analysis.evaluate as ev

    key = state.stable_hash({"fp": lm.fingerprint, "dtype": str(lm.dtype), "plan": plan_key(plan) if plan else None,
                             "settings": settings, "data": data if isinstance(data, str) else
                             state.stable_hash(data), "lat": with_latency})
    store = st.session_state.setdefault("es.evals", {}) if store is None else store
    if key in store:
        return store[key]
    cfg = eval_cfg(settings)
    out: dict = {}
    if plan is None or plan.is_empty:
        ppl = ev.perplexity(lm, data, None, cfg, progress=progress)
        out.update(perplexity=ppl["perplexity"], nll=ppl["nll"], kl=0.0, top1=1.0, protocol=ppl["protocol"])
    else:
        agr = ev.agreement(lm, plan, data, cfg, progress=progress)
        out.update(perplexity=agr["perplexity_pruned"], perplexity_original=agr["perplexity_original"],
                   kl=agr["kl"], top1=agr["top1"], protocol=agr["protocol"])
    pr = ev.param_report(lm, plan)
    out["params"] = pr
    if with_latency:
        if progress:
            progress(1.0, "latency (repeats until the spread is tight)")
        lat = ev.latency(lm, plan, prompt_len=int(settings["prompt_len"]), new_tokens=int(settings["new_tokens"]),
                         repeats=int(settings["repeats"]), warmup=1,
                         max_repeats=max(LATENCY_MAX_REPEATS, int(settings["repeats"])), time_cap_s=LATENCY_CAP_S,
                         progress=progress)
        out["latency"] = lat
    store[key] = out
    return out


def _range(summary: dict) -> str:
    if "p10" not in (summary or {}):
        return "—"
    return f"{summary['p10']:.0f}–{summary['p90']:.0f}"


def _dec_or_pre(res: dict | None) -> dict:
    row0 = (((res or {}).get("latency") or {}).get("rows") or [{}])[0]
    return row0.get("decode_tokens_per_s") or row0.get("prefill_tokens_per_s") or {}


def _speed_flag(mine_res: dict | None, base_res: dict | None, name: str) -> str:
    """The speed verdict, naming its metric: "faster (decode tok/s)" only when both latencies can be read and their
    p10–p90 ranges are apart; "within noise" when they overlap; "no verdict: <why>" when the load or the spread
    says the numbers are noise (:func:`analysis.evaluate.cost.speed_verdict`)."""
    from analysis.evaluate.cost import speed_verdict

    if name == "original" or not mine_res or not base_res:
        return "—"
    mine, base = mine_res.get("latency"), base_res.get("latency")
    metric = "decode" if (((mine or {}).get("rows") or [{}])[0]).get("decode_tokens_per_s") else "prefill"
    v = speed_verdict(mine, base, metric)
    if v["verdict"] == "no verdict":
        return f"no verdict ({v['reason']})"
    return f"{v['verdict']} ({v['metric']})"


def latency_trusted(results: dict) -> bool:
    """True when every plan's latency can be read (no busy machine, spreads converged): only then are speed
    verdicts and the speed axis of the Pareto view drawn from it."""
    from analysis.evaluate.cost import latency_noise

    return all(latency_noise((r or {}).get("latency")) is None for r in results.values())


def comparison_row(name: str, drops: str, res: dict, base: dict | None) -> dict:
    lat = res.get("latency") or {}
    row0 = (lat.get("rows") or [{}])[0]
    pre = row0.get("prefill_tokens_per_s") or {}
    dec = row0.get("decode_tokens_per_s") or {}
    ppl = res["perplexity"]
    base_ppl = base["perplexity"] if base else ppl
    return {
        "plan": name, "drops (0-based)": drops,
        "perplexity": round(ppl, 3) if math.isfinite(ppl) else ppl,
        "Δ perplexity %": round(100 * (ppl / base_ppl - 1), 2) if base_ppl and math.isfinite(ppl) else None,
        "KL (nats/token)": round(res["kl"], 5), "top-1 agreement": round(res["top1"], 4),
        "prefill tok/s (median)": round(pre.get("median", float("nan")), 1),
        "prefill tok/s (p10–p90)": _range(pre),
        "decode tok/s (median)": round(dec.get("median", float("nan")), 1),
        "decode tok/s (p10–p90)": _range(dec),
        "speed vs original": _speed_flag(res, base, name),
        "parameters": res["params"]["total"],
        "params removed %": round(100 * res["params"]["removed_fraction"], 2),
        "layers": res["params"]["layers"], "attention layers": res["params"]["attention_layers"],
        "KV bytes/token": lat.get("kv_bytes_per_token"),
    }


def protocol_text(p: dict) -> str:
    """One line describing how perplexity was measured."""
    if not p:
        return ""
    return (f"{p.get('metric', 'perplexity')} on {p.get('corpus')} ({p.get('split') or 'given tokens'} split), "
            f"{p.get('windows')} disjoint windows of {p.get('window')} tokens, {p.get('tokens_scored'):,} tokens "
            f"scored, remainder {p.get('remainder')}, BOS {'on' if p.get('bos') else 'off'}, {p.get('dtype')}")


def latency_text(lat: dict) -> str:
    if not lat:
        return ""
    rows = lat.get("rows") or [{}]
    done = rows[0].get("repeats_done", lat.get("repeats"))
    tight = all(r.get("converged", True) for r in rows)
    return (f"Latency on {lat.get('device')} ({lat.get('dtype')}): batch 1, prompt {lat.get('prompt_len')} random "
            f"tokens, {lat.get('new_tokens')} greedy decode steps with KV cache; median and p10–p90 of {done} "
            f"repeats after {lat.get('warmup')} warm-up (repeats are added until the p10–p90 spread is within "
            f"{100 * lat.get('target_spread', 0.1):.0f} % of the median{'' if tight else ' — not reached in time'}). "
            "Pruned models are physically pruned copies, so dropped blocks cost nothing. A plan is called faster or "
            "slower (the verdict names the throughput it reads) only when the machine was quiet before and after the "
            "repeats, the spreads settled, and its p10–p90 range does not overlap the original's; otherwise the "
            "table says \"no verdict\" and the Pareto view uses parameters instead of speed.")


def busy_warning(results: dict) -> str | None:
    """A warning when any latency was measured on a busy machine (load average above 0.8 per core)."""
    loads = [((r or {}).get("latency") or {}).get("machine") or {} for r in results.values()]
    busy = [m.get("load_per_core") for m in loads if m.get("busy")]
    if not busy:
        return None
    return (f"The machine was busy while latency was measured (load {max(x or 0 for x in busy):.1f} per core): "
            "other work slows some repeats, so these speeds are noise: no plan is called faster or slower and the Pareto "
            "view uses parameters instead. Re-run the comparison on a quiet machine for speed verdicts.")


# ---- jobs: the comparison and the generation (app_support.jobs) ---------------------------------------------

def _data_key(data):
    return data if isinstance(data, str) else state.stable_hash(data)


class StoppedMidway(Exception):
    """Raised from a step's progress callback when Stop was pressed: the library calls it after every window
    batch, so one long evaluation ends within one batch. The step's partial sums are dropped (never cached,
    never shown as a result); the steps already finished are kept."""


def stoppable(job, tick):
    """``tick`` that ends the step with :class:`StoppedMidway` when ``job`` was asked to stop; the exception
    carries the progress message of the batch just done (e.g. ``windows 24/64``): where the step stopped."""

    def cb(f: float, msg: str) -> None:
        if job.should_stop():
            raise StoppedMidway(msg)
        tick(f, msg)

    return cb


def comparison_job(lms: dict, chosen: list[str], plans: dict, settings: dict, data, task_settings: dict,
                   heal_choices: dict, evals: dict, task_evals: dict):
    """The comparison of the original and the ``chosen`` plans (then each plan's healed model) as a
    :class:`~app_support.jobs.Job`, keyed by everything it depends on. ``lms[name]``: each plan's model
    (``"original"`` included). ``evals`` / ``task_evals``: copies of the session's caches (the job fills
    them; the page copies them back). The result (and, while it runs or after Stop, ``job.partial``) is
    ``{"names", "results", "settings", "tasks", "interrupted"}``. Stop is checked between evaluation windows
    (and between healing steps): it keeps the models already evaluated; the model being evaluated is left
    out and named in ``interrupted`` (``{"name", "at"}``: where it stopped), never shown as a result."""
    from . import healing
    from .jobs import Job
    from .tasks import evaluate_plan_tasks

    todo = ["original", *chosen]
    heal_todo = [n for n in chosen if (heal_choices.get(n) or {}).get("method", "none") != "none"]
    key = state.stable_hash({"kind": "comparison", "fp": {n: [lms[n].fingerprint, str(lms[n].dtype)] for n in todo},
                             "plans": {n: plan_key(plans[n].plan) for n in chosen}, "settings": settings,
                             "data": _data_key(data), "tasks": task_settings,
                             "heal": {n: heal_choices.get(n) for n in heal_todo}})
    steps = len(todo) + len(heal_todo)
    healed_cache = healing.healed_cache()

    def work(job):
        out = job.partial
        out.update(names=[*todo, *(healing.healed_name(n, heal_choices[n]["method"]) for n in heal_todo)],
                   results={}, settings=dict(settings), tasks={}, interrupted=None,
                   plans={n: plan_key(plans[n].plan) for n in chosen},     # what each row measured (model card)
                   heal={n: heal_choices.get(n) for n in heal_todo})
        for i, name in enumerate(todo):
            if job.should_stop():
                return out

            def tick(f: float, msg: str, i: int = i, name: str = name) -> None:
                job.progress(min((i + min(f, 1.0)) / steps, 1.0), f"model {i + 1}/{steps} · {name}: {msg}",
                             stage="evaluate")
            tick(0.0, "starting")
            plan_ = None if name == "original" else plans[name].plan
            try:
                out["results"][name] = evaluate_plan(lms[name], plan_, settings, data, progress=stoppable(job, tick),
                                                     store=evals)
            except StoppedMidway as exc:
                out["interrupted"] = {"name": name, "at": str(exc)}
                return out
            if task_settings.get("tasks"):
                if job.should_stop():                  # its quality is done, its task accuracy never started
                    out["interrupted"] = {"name": name, "at": "task accuracy"}
                    return out
                tick(1.0, "task accuracy (lm-evaluation-harness)")
            try:
                out["tasks"][name] = evaluate_plan_tasks(lms[name], plan_, task_settings, store=task_evals,
                                                         progress=stoppable(job, tick))
            except StoppedMidway as exc:          # its quality is kept; its task accuracy is not a result
                out["interrupted"] = {"name": name, "at": str(exc)}
                return out
        for j, name in enumerate(heal_todo):
            i = len(todo) + j
            ch = heal_choices[name]

            def tick(f: float, msg: str, i: int = i, name: str = name) -> None:
                job.progress(min((i + min(f, 1.0) * 0.5) / steps, 1.0), f"model {i + 1}/{steps} · {name}: {msg}",
                             stage="heal")

            def tick2(f: float, msg: str, i: int = i, name: str = name) -> None:
                job.progress(min((i + 0.5 + min(f, 1.0) * 0.5) / steps, 1.0),
                             f"model {i + 1}/{steps} · {name}: {msg}", stage="heal-eval")
            if job.should_stop():
                return out
            tick(0.0, f"healing ({ch['method']})")
            healed = healing.healed_model(lms[name], plans[name].plan, ch, progress=tick, stop=job.should_stop,
                                          cache=healed_cache)
            hname = healing.healed_name(name, ch["method"])
            if job.should_stop():                      # stopped part way through healing: not a result
                out["interrupted"] = {"name": hname, "at": "healing"}
                return out
            try:
                res = dict(healing.evaluate_healed(lms[name], healed, settings, data, with_latency=False, store=evals,
                                                   progress=stoppable(job, tick2)))
            except StoppedMidway as exc:
                out["interrupted"] = {"name": hname, "at": str(exc)}
                return out
            res["latency"] = (out["results"].get(name) or {}).get("latency")
            out["results"][hname] = res
        return out

    job = Job(key, work, kind="comparison", label="the comparison")
    job.evals, job.task_evals = evals, task_evals
    return job


def generation_job(lm, plan_name: str, plan, prompt: str, n_new: int, heal_choice: dict):
    """Side-by-side greedy generation (original, pruned, and healed when a heal is chosen) as a Job;
    its result is what the page stores in ``es.generations``."""
    from . import healing
    from .jobs import Job

    key = state.stable_hash([state.stable_hash([lm.fingerprint, plan_key(plan), prompt, int(n_new)]), heal_choice])
    healed_cache = healing.healed_cache()

    def work(job):
        import analysis.evaluate as ev

        job.progress(0.05, "generating with the original and the pruned model (greedy, KV cache)", stage="gen")
        g = ev.generate_pair(lm, plan, prompt, int(n_new))
        if heal_choice["method"] != "none" and not job.should_stop():
            healed = healing.healed_model(lm, plan, heal_choice, stop=job.should_stop, cache=healed_cache,
                                          progress=lambda f, m: job.progress(0.5 + 0.4 * f, m, stage="heal"))
            if not job.should_stop():
                job.progress(0.9, "generating with the healed model", stage="gen-healed")
                g["healed"] = healing.generate(lm, healed, prompt, int(n_new))
                g["healed_method"] = heal_choice["method"]
        job.progress(1.0, "done")
        return g

    job = Job(key, work, kind="generation", label="the generation")
    job.plan_name = plan_name
    return job
