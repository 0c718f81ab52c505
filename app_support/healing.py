"""Healing on the Prune & compare and Export pages, on top of :mod:`analysis.heal`.

The heal choice of each kept plan lives in ``st.session_state["es.heal"][plan name]`` as
``{"method", "options", "corpus"}`` (kept across reloads by the session store); healed models are cached
process-wide (:func:`healed_cache`, so a reload does not heal again) keyed by everything they depend on
(model fingerprint, plan blocks, method, options, calibration), at most :data:`MAX_HEALED` at a time.
The cached base model is never modified: ``linear`` gives a view sharing its weights, ``distill`` a
trained pruned copy. The functions below run inside jobs (no session): they take their stores as
arguments.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import streamlit as st

from . import state

METHODS = ("none", "linear", "distill")
DISTILL_DEFAULTS = {"steps": 30, "rank": 8, "lr": 5e-4}
CALIB = {"samples": 32, "seq_len": 256}
MAX_HEALED = 4


def choices() -> dict:
    return st.session_state.setdefault("es.heal", {})


def choice(plan_name: str) -> dict:
    return choices().get(plan_name) or {"method": "none", "options": {}, "corpus": "wiki"}


def calib_corpus(data_spec: dict | None) -> str:
    """Healing calibration text: the run's built-in domains as a mix (uploads / hub data: wiki)."""
    spec = data_spec or {}
    if spec.get("source", "builtin") != "builtin":
        return "wiki"
    w = {k: float(v) for k, v in (spec.get("weights") or {"wiki": 1}).items() if float(v) > 0}
    if len(w) == 1:
        return next(iter(w))
    return ",".join(f"{k}:{v:g}" for k, v in w.items()) or "wiki"


def heal_widgets(plan_names: list[str], data_spec: dict | None) -> None:
    """One Heal choice per plan (and the distillation options), stored in ``es.heal``."""
    if not plan_names:
        return
    with st.expander("Heal the pruned models", expanded=False, icon=":material/healing:"):
        st.caption("linear: ReplaceMe-style map fitted by least squares on calibration activations and folded "
                   "into the projection before each removed run (training-free, one forward pass). distill: short "
                   "KL distillation from the original with LoRA merged back (slow on a CPU). Healed rows appear "
                   "next to the unhealed ones; the cached model is never modified.")
        cols = st.columns(min(4, len(plan_names)))
        corpus = calib_corpus(data_spec)
        d1, d2, d3 = st.columns(3)
        steps = d1.number_input("Distill steps", 1, 2000, key=state.wkey("heal.steps", DISTILL_DEFAULTS["steps"]))
        rank = d2.number_input("LoRA rank", 1, 256, key=state.wkey("heal.rank", DISTILL_DEFAULTS["rank"]))
        lr = d3.number_input("Learning rate", 1e-6, 1e-1, format="%.0e",
                             key=state.wkey("heal.lr", DISTILL_DEFAULTS["lr"]))
        state.sync("heal.steps", "heal.rank", "heal.lr")
        changed = False
        for i, name in enumerate(plan_names):
            method = cols[i % len(cols)].selectbox(f"Heal · {name}", METHODS, key=f"heal_method_{name}",
                                                   index=METHODS.index(choice(name)["method"]))
            opts = {"steps": int(steps), "rank": int(rank), "lr": float(lr)} if method == "distill" else {}
            new = {"method": method, "options": opts, "corpus": corpus}
            if choices().get(name) != new:
                choices()[name] = new
                changed = True
        if changed:               # stored now, so an F5 right after choosing finds it
            from . import session_store

            session_store.save()


class _HealedCache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key, healed) -> None:
        with self.lock:
            self.items[key] = healed
            while len(self.items) > MAX_HEALED:
                self.items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def healed_cache() -> _HealedCache:
    """Process-wide healed models (the most recently used :data:`MAX_HEALED`)."""
    return _HealedCache()


def healed_model(lm, plan, ch: dict, progress=None, stop=None, cache: _HealedCache | None = None):
    """The :class:`~analysis.heal.Healed` model for a plan and heal choice (cached process-wide; a heal
    stopped part way is returned but not cached)."""
    from analysis.heal import heal
    from analysis.heal.models import heal_tokens

    cache = cache if cache is not None else healed_cache()
    key = state.stable_hash({"fp": lm.fingerprint, "dtype": str(lm.dtype), "plan": plan.to_dict(),
                             "method": ch["method"], "options": ch.get("options"), "corpus": ch.get("corpus"),
                             "calib": CALIB})
    healed = cache.get(key)
    if healed is None:
        tokens = heal_tokens(lm, ch.get("corpus") or "wiki", CALIB["samples"], CALIB["seq_len"])
        healed = heal(lm, plan, ch["method"], tokens, progress=progress, stop=stop, **(ch.get("options") or {}))
        healed.settings.update(calibration_corpus=ch.get("corpus") or "wiki", calibration_seed=2024)
        if not (healed.report or {}).get("stopped"):
            cache.put(key, healed)
    return healed


def evaluate_healed(lm, healed, settings: dict, data, with_latency: bool = True, store: dict | None = None,
                    progress=None) -> dict:
    """What :func:`app_support.evaluation.evaluate_plan` returns, for a healed model."""
    import analysis.evaluate as ev
    from analysis.heal import compare, healed_lm

    from .evaluation import eval_cfg

    hl = healed_lm(lm, healed)
    key = state.stable_hash({"fp": hl.fingerprint, "settings": settings, "lat": with_latency,
                             "data": data if isinstance(data, str) else state.stable_hash(data)})
    store = st.session_state.setdefault("es.evals", {}) if store is None else store
    if key in store:
        return store[key]
    c = compare(lm, healed.model, data, eval_cfg(settings), progress=progress)
    out = {"perplexity": c["perplexity"], "perplexity_original": c["perplexity_original"], "kl": c["kl"],
           "top1": c["top1"], "protocol": c["protocol"], "params": ev.param_report(lm, healed.plan),
           "healing": healed.describe()}
    if with_latency:
        out["latency"] = ev.latency(hl, None, prompt_len=int(settings["prompt_len"]),
                                    new_tokens=int(settings["new_tokens"]), repeats=int(settings["repeats"]), warmup=1)
    store[key] = out
    return out


def generate(lm, healed, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` by the healed model (same protocol as the pruned one)."""
    from analysis.evaluate import greedy_continuation

    enc = lm.tokenizer(prompt, return_tensors="pt")
    ids = greedy_continuation(healed.model, lm.tokenizer, enc["input_ids"].to(lm.device),
                              enc["attention_mask"].to(lm.device), max_new_tokens)
    return lm.tokenizer.decode(ids, skip_special_tokens=True)


def heal_argv(ch: dict | None) -> list[str]:
    """CLI flags reproducing a heal choice (for eval / prune in the reproduce script)."""
    if not ch or ch.get("method", "none") == "none":
        return []
    argv = ["--heal", ch["method"], "--heal-corpus", ch.get("corpus") or "wiki",
            "--heal-samples", str(CALIB["samples"]), "--heal-seq-len", str(CALIB["seq_len"])]
    for k, v in (ch.get("options") or {}).items():
        argv += [f"--heal-{k.replace('_', '-')}", str(v)]
    return argv


def healed_name(plan_name: str, method: str) -> str:
    return f"{plan_name} + {method}"


def drops_of(name: str, plans: dict) -> str:
    """The "drops" cell of a comparison row (healed rows: the plan's drops plus the healing)."""
    if name == "original":
        return "nothing"
    if name in plans:
        return plans[name].plan.describe()
    base, _, method = name.rpartition(" + ")
    return f"{plans[base].plan.describe()}, healed: {method}" if base in plans else "?"
