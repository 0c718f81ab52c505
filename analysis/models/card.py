"""The Hugging Face model card (``README.md``) written into every saved checkpoint.

YAML front matter (``base_model``, the source model's ``license``, ``tags``, ``library_name:
transformers``, ``model-index`` results) followed by a short text: the source model, the plan (0-based, in
the original model's indices), the criterion and its evidence when the plan carries them, healing, what is
stored and how it loads, and the evaluation with its protocol (perplexity; task accuracy ± stderr).
Built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard` / ``ModelCardData`` / ``EvalResult`` so
the Hub and ``ModelCard.load`` read it.
"""
from __future__ import annotations

from analysis.store.jsonio import loads_strict

import json

#: hub ids and licences (Hub identifiers) of the embedded models
EMBEDDED_UPSTREAM = {
    "smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": ("google/gemma-3-270m", "gemma"),
    "qwen2.5-coder-0.5b": ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "apache-2.0"),
    "qwen2.5-coder-1.5b": ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "apache-2.0"),
}
TAGS = ["entroscope", "pruned", "layer-pruning"]


def upstream(name: str | None, kind: str | None, local_dir: str | None = None) -> tuple[str | None, str | None]:
    """``(base_model hub id or None, licence id or None)`` of the source model: the embedded table, a hub id,
    or the ``base_model`` / ``license`` of a local checkpoint's own model card."""
    if name in EMBEDDED_UPSTREAM:
        return EMBEDDED_UPSTREAM[name]
    if kind == "hub" and name:
        return name, None
    if local_dir:
        from pathlib import Path

        readme = Path(local_dir) / "README.md"
        if readme.is_file():
            try:
                from huggingface_hub import ModelCard

                data = ModelCard.load(readme).data
                base = data.base_model if isinstance(data.base_model, str) else None
                return base, data.license
            except Exception:  # noqa: BLE001 - a card we cannot parse: no upstream metadata, not an error
                return None, None
    return None, None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _protocol_text(protocol: dict | None) -> str:
    if not protocol:
        return "protocol not recorded"
    keys = ("metric", "corpus", "split", "window", "stride", "windows", "tokens_scored", "bos", "dtype")
    return "; ".join(f"{k} {_fmt(protocol[k])}" for k in keys if protocol.get(k) is not None)


def eval_results(evaluation: dict | None, model_name: str) -> list:
    """``EvalResult`` entries: perplexity (with its protocol as the dataset config) and every task's primary
    metric (stderr in its config)."""
    from huggingface_hub import EvalResult

    if not evaluation:
        return []
    out = []
    proto = evaluation.get("protocol") or {}
    if evaluation.get("perplexity") is not None:
        out.append(EvalResult(task_type="text-generation", task_name="perplexity", dataset_type=str(
            proto.get("corpus") or "held-out text"), dataset_name=str(proto.get("corpus") or "held-out text"),
            dataset_split=proto.get("split"), dataset_config=_protocol_text(proto), metric_type="perplexity",
            metric_name="token perplexity", metric_value=round(float(evaluation["perplexity"]), 6)))
    for task, res in ((evaluation.get("tasks") or {}).get("tasks") or {}).items():
        primary = res.get("primary")
        metric = (res.get("metrics") or {}).get(primary) or {}
        if metric.get("value") is None:
            continue
        stderr = metric.get("stderr")
        out.append(EvalResult(task_type="text-generation", task_name=task, dataset_type=task, dataset_name=task,
                              metric_type=primary, metric_name=primary, metric_value=round(float(metric["value"]), 6),
                              metric_config=f"stderr {stderr:.6g}" if stderr is not None else None,
                              metric_args={"stderr": stderr, "n": res.get("n")}))
    return out


def model_card(*, model_name: str, source_kind: str | None = None, local_dir: str | None = None, plan=None,
               original_layers: int | None = None, kept_layers: list[int] | None = None, evaluation: dict | None = None,
               healing: dict | None = None, sizes: dict | None = None, zeroed: dict | None = None) -> str:
    """The README.md text (YAML front matter + Markdown). ``plan``: the stored plan (original 0-based indices,
    its ``source`` carries the criterion); ``evaluation``: an ``eval`` result JSON for this checkpoint."""
    from huggingface_hub import ModelCard, ModelCardData

    base, licence = upstream(model_name, source_kind, local_dir)
    shown = model_name.rstrip("/").split("/")[-1] if source_kind in ("local", "gguf") else model_name  # no local paths
    title = f"{model_name.rstrip('/').split('/')[-1]} pruned with Entroscope"
    results = eval_results(evaluation, title)
    data = ModelCardData(base_model=base, license=licence or "other", library_name="transformers",
                         pipeline_tag="text-generation", tags=TAGS + (["healed"] if healing else []),
                         model_name=title, eval_results=results or None)
    src = plan.source if plan is not None else {}
    lines = [f"# {title}", "",
             f"A pruned copy of **{base or shown}**"
             + (f" (licence: `{licence}`; the source model's terms apply)" if licence else
                " (licence unknown here: the source model's terms apply)") + ".", "",
             "## Plan (0-based, original model's indices)", ""]
    if plan is not None:
        lines += [f"- dropped: {plan.describe()}",
                  f"- layers: {original_layers} → {len(kept_layers) if kept_layers is not None else '?'}"
                  + (f" (kept {kept_layers})" if kept_layers is not None else "")]
    crit = {k: v for k, v in src.items() if k not in ("run_manifest", "checkpoint", "order", "index_base")}
    if crit:
        lines.append(f"- criterion: `{crit.pop('criterion', 'unknown')}`"
                     + (f"; evidence: `{json.dumps(crit, default=str)[:600]}`" if crit else ""))
    run = src.get("run_manifest") or {}
    if run:
        keep = {k: run[k] for k in ("estimator", "estimators", "data", "samples", "seq_len", "boundary") if k in run}
        if keep:
            lines.append(f"- analysis run: `{json.dumps(keep, default=str)[:600]}`")
    if src.get("order"):
        lines.append(f"- criterion's drop order: {list(src['order'])[:32]}")
    if zeroed:
        lines.append(f"- dropped sub-blocks stored with zeroed output projections (saved-layer index: {zeroed}); "
                     "plain transformers still computes them, `python -m analysis load` removes them")
    lines += ["", "## Healing", "", (f"`{healing.get('method')}` — `{json.dumps(healing.get('settings'), default=str)}`"
                                     if healing else "none")]
    lines += ["", "## Evaluation", ""]
    if evaluation:
        if evaluation.get("perplexity") is not None:
            lines.append(f"- perplexity {_fmt(evaluation['perplexity'])}"
                         + (f" (original {_fmt(evaluation['perplexity_original'])})"
                            if evaluation.get("perplexity_original") is not None else "")
                         + f" — {_protocol_text(evaluation.get('protocol'))}")
        for r in results[1 if evaluation.get("perplexity") is not None else 0:]:
            se = (r.metric_args or {}).get("stderr")
            lines.append(f"- {r.task_name}: {r.metric_type} {_fmt(r.metric_value)}" + (f" ± {_fmt(se)}" if se is not None
                                                                                           else ""))
    else:
        lines.append("Not evaluated when saved: run `python -m analysis eval --model <this folder> --out eval.json` "
                     "(and `prune --eval eval.json` to put the numbers here).")
    if sizes:
        lines += ["", "## Size and compute", "",
                  f"- files: {sizes.get('file_bytes', 0) / 2**20:.1f} MiB; parameters stored "
                  f"{sizes.get('params_in_files_and_plain_transformers')}, original {sizes.get('original_params')}",
                  f"- FLOPs/token (≈ 2 × non-embedding parameters run): plain transformers "
                  f"{sizes.get('flops_per_token_plain_transformers')}, Entroscope's loader "
                  f"{sizes.get('flops_per_token_entroscope_loader')}, original {sizes.get('flops_per_token_original')}"]
    lines += ["", "## Loading", "", "```python", "from transformers import AutoModelForCausalLM",
              "model = AutoModelForCausalLM.from_pretrained(\"<this folder>\")   # exact, no remote code", "```", "",
              "`entroscope-plan.json` holds the plan; `entroscope-manifest.json` (when written by `prune`) the "
              "model fingerprint, versions and the command that made this checkpoint.", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def checkpoint_card(model_or_lm, stored_plan, zeroed: dict | None, folder, extra_files: dict | None = None,
                    card: dict | None = None) -> str:
    """The card for a checkpoint being written to ``folder`` by ``save_pruned``: the model's name and source, the
    stored plan (a healed model's plan comes from ``entroscope-heal.json`` in ``extra_files``), the weight files'
    size, and ``card`` extras from the caller (``evaluation``: an ``eval`` result; ``sizes``: parameters/FLOPs;
    ``model_name`` / ``source_kind``)."""
    from pathlib import Path

    from analysis.models.plan import Plan

    card = dict(card or {})
    heal = None
    text = (extra_files or {}).get("entroscope-heal.json")
    if text:
        heal = loads_strict(text)
        if heal.get("plan_in_original_indices") and (stored_plan is None or stored_plan.is_empty):
            stored_plan = Plan.from_dict(heal["plan_in_original_indices"], "entroscope-heal.json")
    ck = (stored_plan.source or {}).get("checkpoint", {}) if stored_plan is not None else {}
    model = getattr(model_or_lm, "model", model_or_lm)
    name = card.get("model_name") or getattr(model_or_lm, "name", None) or ck.get("model") or \
        getattr(model.config, "_name_or_path", None) or "model"
    kind = card.get("source_kind") or getattr(model_or_lm, "source", None)
    n = ck.get("original_num_layers") or getattr(model.config, "num_hidden_layers", None)
    kept = ck.get("kept_layers") if ck.get("kept_layers") is not None else (
        stored_plan.normalized().kept_layers(n) if stored_plan is not None and n else None)
    sizes = dict(card.get("sizes") or {})
    sizes["file_bytes"] = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    sizes.setdefault("params_in_files_and_plain_transformers", sum(p.numel() for p in model.parameters()))
    local = name if kind == "local" else None
    return model_card(model_name=str(name), source_kind=kind, local_dir=local, plan=stored_plan, original_layers=n,
                      kept_layers=kept, evaluation=card.get("evaluation"), healing=heal, sizes=sizes, zeroed=zeroed)
