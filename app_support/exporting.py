"""Export helpers: chart HTML, static figures (PNG/SVG/PDF), whole-layer tool configs and the pruned checkpoint,
via :mod:`analysis.export`, :mod:`analysis.figures` and :mod:`analysis.models.surgery`."""
from __future__ import annotations

import functools
from pathlib import Path

#: Hub ids of the embedded models (what mergekit / llama.cpp users point at).
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m",
           "qwen2.5-coder-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}


def fig_html(fig, caption: str = "") -> str:
    """Self-contained interactive HTML of a chart (plotly.js inlined, works offline) with its caption."""
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    if caption:
        import html as _h

        html = html.replace("<body>", f"<body><p style=\"font-family:sans-serif\">{_h.escape(caption)}</p>", 1)
    return html


@functools.lru_cache(maxsize=1)
def png_export_works() -> bool:
    """True when plotly can write PNG here (the ``kaleido`` package and its browser both work)."""
    import importlib.util

    if importlib.util.find_spec("kaleido") is None:
        return False
    try:
        import plotly.graph_objects as go

        go.Figure().to_image(format="png", width=10, height=10)
        return True
    except Exception:  # noqa: BLE001 - a capability probe: any failure means HTML only; the reason is logged
        import logging

        logging.getLogger("entroscope.app").warning("PNG/SVG/PDF chart export is not available here (plotly's "
                                                    "kaleido probe failed); offering HTML only", exc_info=True)
        return False


def model_ref(spec: str) -> str:
    return HUB_IDS.get(spec, spec)


def mergekit_yaml(plan, lm) -> str:
    """mergekit passthrough YAML naming the loaded model's real source (checkpoint directory, cached safetensors
    copy of an embedded GGUF, or hub id) and its dtype."""
    from analysis.export import mergekit_for

    return mergekit_for(lm, plan)


def llama_cpp_list(plan) -> str:
    from analysis.export import llama_cpp_prune_layers

    return llama_cpp_prune_layers(plan)


def llama_cpp_routes(plan, lm) -> dict:
    """llama.cpp routes with exact commands (placeholders, no server paths), or the reason it is refused."""
    from analysis.export import llama_cpp_routes as routes

    return routes(plan, lm)


def llama_cpp_cmd(plan, lm) -> str:
    """The exact ``llama-quantize --prune-layers …`` command line (whole layers only)."""
    from analysis.export import llama_cpp_command

    return llama_cpp_command(plan, lm)


FIGURE_FORMATS = ("png", "svg", "pdf")


def figures_zip(result, sweep: dict | None = None, formats=FIGURE_FORMATS) -> bytes:
    """Every chart of a run (and the session's last sweep) as static files in a zip: ``<name>.<fmt>``.

    Rendered with matplotlib (:mod:`analysis.figures`), so it works offline without a browser engine."""
    import io
    import zipfile

    from analysis.figures import all_figures, figure_bytes

    figs = all_figures(result, None, sweep if sweep and sweep.get("rows") else None)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, fig in figs.items():
            for fmt in formats:
                z.writestr(f"{name}.{fmt}", figure_bytes(fig, fmt))
    return buf.getvalue()


def session_zip(runs: dict, plans: dict, script: str, comparison: dict | None = None, tables: dict | None = None,
                charts: dict | None = None, sweep: dict | None = None, formats=("png", "svg")) -> bytes:
    """The whole session in one zip: every run (JSON and static figures of *that* run), every kept plan, the
    comparison (raw results, table and static charts incl. the Pareto view), the tables, every interactive chart
    of the session as self-contained HTML (comparison, Pareto, ground truth …), the last sweep and the
    reproduce script.

    ``runs``: ``{run_id: RunRecord}``; ``plans``: ``{name: PlanRecord}``; ``comparison``: the Prune & compare
    page's last comparison (``{"names", "results", ...}``); ``tables``/``charts``: the session's registered
    ``{name: (DataFrame | figure, caption)}``."""
    import io
    import json
    import zipfile

    from analysis.figures import comparison_figures, figure_bytes, run_figures, sweep_figures
    from analysis.store.jsonio import clean_json

    from .evaluation import comparison_row, latency_trusted

    buf = io.BytesIO()
    listing = []

    def put(name: str, data, what: str) -> None:
        z.writestr(name, data)
        listing.append(f"{name}  —  {what}")

    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        put("reproduce.sh", script, "the CLI commands that rebuild the plans from their own runs")
        for rid, rec in (runs or {}).items():
            put(f"runs/{rid}.json", json.dumps(clean_json(rec.result.to_dict()), indent=1),
                f"run {rid} ({getattr(rec, 'label', '')}): curves, per-sequence values, settings")
            put(f"runs/{rid}.settings.json", json.dumps(clean_json({"model": rec.model, "data": rec.data,
                                                                    "analysis": rec.config}), indent=1),
                f"the model, data and analysis settings of run {rid}")
            for name, fig in run_figures(rec.result).items():
                for fmt in formats:
                    put(f"figures/{rid}/{name}.{fmt}", figure_bytes(fig, fmt), f"static chart of run {rid}")
        for name, prec in (plans or {}).items():
            put(f"plans/{name}.plan.json", json.dumps(clean_json({**prec.plan.to_dict(), "run_id": prec.run_id}),
                                                      indent=1), f"plan {name!r} (from run {prec.run_id})")
        results = (comparison or {}).get("results") or {}
        if results:
            put("evaluations/comparison.json", json.dumps(clean_json(comparison), indent=1),
                "the comparison's raw results (perplexity protocol, KL/top-1, latency with machine load)")
            base = results.get("original")
            rows = [comparison_row(n, "", results[n], base) for n in comparison.get("names", results) if n in results]
            for name, fig in comparison_figures(rows, latency_trusted(results)).items():
                for fmt in formats:
                    put(f"figures/comparison/{name}.{fmt}", figure_bytes(fig, fmt), "static comparison chart")
        if sweep and sweep.get("rows"):
            put("evaluations/sweep.json", json.dumps(clean_json(sweep), indent=1), "the last sweep")
            for name, fig in sweep_figures(sweep).items():
                for fmt in formats:
                    put(f"figures/sweep/{name}.{fmt}", figure_bytes(fig, fmt), "static sweep chart")
        for name, (df, caption) in (tables or {}).items():
            put(f"tables/{name}.csv", df.to_csv(index=False), caption or name)
        for name, (fig, caption) in (charts or {}).items():
            put(f"charts/{name}.html", fig_html(fig, caption), "interactive chart (offline HTML): " + (caption or name))
        z.writestr("CONTENTS.txt", "Entroscope session export (block indices 0-based)\n\n" + "\n".join(listing) + "\n")
    return buf.getvalue()


#: server-side settings (environment variables; never settable from the browser)
EXPORT_ROOT_ENV = "ENTROSCOPE_EXPORT_ROOT"             # where per-session export folders live
SERVER_PATHS_ENV = "ENTROSCOPE_EXPORT_SERVER_PATHS"    # "1": let the browser type server folders (single user)


def export_root() -> Path:
    """The one folder under which the app writes checkpoints (``$ENTROSCOPE_EXPORT_ROOT``, default
    ``<cache>/exports``)."""
    import os

    from analysis.models.embedded import cache_root

    return Path(os.environ.get(EXPORT_ROOT_ENV) or cache_root() / "exports").expanduser()


def server_paths_allowed() -> bool:
    import os

    return os.environ.get(SERVER_PATHS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def session_folder(session_id: str) -> Path:
    """This browser session's private export folder (``<export root>/session-<random id>``)."""
    import re

    if not re.fullmatch(r"[0-9a-f]{8,64}", session_id or ""):
        raise ValueError(f"bad session id {session_id!r}")
    return export_root() / f"session-{session_id}"


def zip_bytes(folder: str | Path) -> bytes:
    """The checkpoint folder as a zip (stored, not compressed: weights don't compress), for a download."""
    import io
    import zipfile

    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                z.write(p, f"{folder.name}/{p.relative_to(folder)}")
    return buf.getvalue()


def card_evaluation(comparison: dict | None, plan_name: str, plan, heal_choice: dict | None = None) -> dict | None:
    """The Prune & compare results of ``plan_name`` for its model card, as ``prune --eval`` puts them there: the
    perplexity with its protocol (and the original's on the same tokens) and, unhealed, the task accuracy with
    its standard error. None when the comparison did not measure this very plan (same blocks, same healing) to
    the end: a stopped model's partial sums are never a result, and a plan kept again under the same name with
    other blocks is not the one measured."""
    from .evaluation import plan_key
    from .healing import healed_name

    if not comparison or plan_key(plan) != (comparison.get("plans") or {}).get(plan_name):
        return None
    method = (heal_choice or {}).get("method", "none")
    if method != "none":
        if (comparison.get("heal") or {}).get(plan_name) != heal_choice:
            return None
        row, tasks = (comparison.get("results") or {}).get(healed_name(plan_name, method)), None
    else:
        row, tasks = (comparison.get("results") or {}).get(plan_name), (comparison.get("tasks") or {}).get(plan_name)
    if not row or row.get("perplexity") is None:
        return None
    out = {k: row[k] for k in ("perplexity", "perplexity_original", "kl", "top1", "protocol") if k in row}
    if tasks:
        out["tasks"] = tasks
    out["source"] = "Entroscope app, Prune & compare"
    return out


def save_checkpoint(lm, plan, root: str, name: str, overwrite: bool, healed=None, card: dict | None = None) -> Path:
    """Save the pruned model (``healed``: the healed one, with its settings) under ``root/name`` (refuses
    paths outside ``root``). ``card``: model-card extras (``{"evaluation": card_evaluation(...)}``)."""
    from analysis.errors import DataError
    from analysis.models.surgery import save_pruned

    root = (root or "").strip()
    name = (name or "").strip()
    if not root:
        raise DataError("Choose an output folder")
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"Invalid checkpoint folder name {name!r}", hint="a plain folder name, e.g. smollm2-pruned")
    root_p = Path(root).expanduser()
    if healed is not None:
        from analysis.heal import save_healed

        return save_healed(lm, healed, root_p / name, overwrite=overwrite, root=root_p, card=card)
    return save_pruned(lm, plan, root_p / name, overwrite=overwrite, root=root_p, card=card)


def dir_listing(path: Path) -> list[dict]:
    return [{"file": p.name, "MB": round(p.stat().st_size / 2**20, 2)} for p in sorted(Path(path).iterdir())
            if p.is_file()]
