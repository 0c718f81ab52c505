"""Exports: plan and evaluation JSON/CSV, mergekit passthrough YAML, llama.cpp routes, and a reproduction
manifest (model fingerprint, data protocol, plan, library versions, the exact CLI command).

mergekit slices *whole* layers, so the YAML refuses plans with attention or MLP sub-block drops
(:class:`~analysis.errors.SelectionError`; ``prune`` then skips it with one line). It names the model's real
source (the checkpoint directory that was loaded, Entroscope's cached safetensors copy of an embedded GGUF,
or the hub id) and its actual dtype. mergekit 0.1.5 only rewrites ``num_hidden_layers``, so for models with
per-layer config fields (``layer_types``: Qwen2, Gemma-3, …) :func:`write_mergekit` also writes a folder with
the pruned ``config.json`` and links to the source's files, which the slices read. llama.cpp: the
pruned checkpoint converts with ``convert_hf_to_gguf.py`` (every plan), a GGUF model's whole layers also go
with ``llama-quantize --prune-layers``; plans that would change a Gemma layer's position-derived
attention type are refused with the reason (:func:`llama_cpp_routes`).
"""
from __future__ import annotations

import csv
import io
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from analysis.errors import SelectionError
from analysis.models.plan import Plan
from analysis.store.jsonio import clean_json, dumps, library_versions


# ---- JSON / CSV ---------------------------------------------------------------------------------------
def to_json(obj, indent: int = 1) -> str:
    """JSON text with numpy values converted, NaN/inf written as null and ``schema_version`` first."""
    return dumps(obj, indent=indent, default=str)


def write_json(obj, path: str | Path) -> Path:
    from analysis.store.outdir import write_text_atomic

    return write_text_atomic(path, to_json(obj))


def plan_json(plan: Plan) -> str:
    return plan.to_json()


def _flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}, "c": [1, 2]}`` → ``{"a.b": 1, "c": "[1, 2]"}`` (lists as JSON text)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(clean_json(list(v)))
        else:
            out[key] = clean_json(v)
    return out


def rows_to_csv(rows: Sequence[dict], path: str | Path | None = None, skip: Sequence[str] = ("plan.source",)) -> str:
    """CSV of result rows (nested dicts flattened with dots; columns in first-seen order)."""
    flat = [{k: v for k, v in _flatten(r).items() if not any(k.startswith(s) for s in skip)} for r in rows]
    cols: list[str] = []
    for r in flat:
        cols.extend(c for c in r if c not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(flat)
    text = buf.getvalue()
    if path is not None:
        from analysis.store.outdir import write_text_atomic

        write_text_atomic(path, text)
    return text


def evaluation_rows(result: dict) -> list[dict]:
    """Rows of a sweep (its ``rows``) or a single evaluation (one row without the protocol)."""
    if "rows" in result and isinstance(result["rows"], list):
        return result["rows"]
    return [{k: v for k, v in result.items() if k not in ("protocol",)}]


# ---- whole-layer tool exports ---------------------------------------------------------------------------
def _whole_layers(plan: Plan, tool: str) -> list[int]:
    n = plan.normalized()
    if n.drop_attn or n.drop_mlp:
        raise SelectionError(f"{tool} can only remove whole layers, but this plan drops sub-blocks "
                             f"({n.describe()})", hint="use a layer-granularity plan, or save it with `prune`")
    return n.drop_layers


def kept_ranges(num_layers: int, dropped: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous kept layer ranges as half-open ``(start, end)`` pairs."""
    drop, ranges, start = set(dropped), [], None
    for i in range(num_layers + 1):
        keep = i < num_layers and i not in drop
        if keep and start is None:
            start = i
        elif not keep and start is not None:
            ranges.append((start, i))
            start = None
    return ranges


#: torch dtype → mergekit's ``dtype`` value
MERGEKIT_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def model_source(lm) -> tuple[str, str]:
    """``(source, how)`` for tools that read the model's weights: the local checkpoint directory that was
    loaded (for an embedded or ``.gguf`` model, Entroscope's cached fp32 safetensors copy of it), or the hub
    id. A model that only exists in memory has none (:class:`SelectionError`)."""
    from analysis.models.embedded import EMBEDDED, gguf_cache_dir

    kind, name = getattr(lm, "source", None), getattr(lm, "name", "")
    if kind == "local":
        return str(Path(name).expanduser().resolve()), "local checkpoint directory"
    if kind in ("embedded", "gguf"):
        gguf = EMBEDDED[name].gguf_path() if kind == "embedded" else Path(name).expanduser()
        cache = gguf_cache_dir(gguf).resolve()
        return str(cache), f"Entroscope's fp32 safetensors copy of {gguf.name} ({'embedded ' + name if kind == 'embedded' else 'GGUF file'})"
    if kind == "hub":
        return name, "model hub id"
    raise SelectionError(f"Model {name!r} was built in memory, so there is no checkpoint for mergekit to read",
                         hint="save it with save_pretrained (or `prune`) and load that directory")


#: mergekit only rewrites ``num_hidden_layers``; these per-layer fields would then disagree with it
def per_layer_fields(config, num_layers: int) -> list[str]:
    """Config fields with one entry per decoder layer (``layer_types``, …) that a whole-layer plan must
    slice too. mergekit 0.1.5 copies the source config and only sets ``num_hidden_layers``, so with any of
    these transformers refuses its config ("num_hidden_layers must equal the number of layer_types")."""
    return sorted(k for k, v in config.to_dict().items()
                  if k != "architectures" and isinstance(v, (list, tuple)) and len(v) == num_layers)


def mergekit_yaml(plan: Plan, model_id: str, num_layers: int, dtype: str = "float32",
                  reproduces: str | None = None, config_dir: str | None = None,
                  per_layer: Sequence[str] = ()) -> str:
    """mergekit passthrough config keeping the layers a whole-layer plan does not drop.

    ``model_id``: a local checkpoint directory or hub id (:func:`model_source`); ``dtype``: the model's own
    dtype (``float32`` / ``bfloat16`` / ``float16``, or a torch dtype). ``layer_range`` is half-open, as in
    mergekit: ``[a, b]`` keeps layers a … b-1. ``per_layer``: the model's per-layer config fields
    (:func:`per_layer_fields`); mergekit cannot slice them, so the slices then read ``config_dir`` (written by
    :func:`write_mergekit`: the pruned config next to links to the source's weights and tokenizer), or,
    without one, the header says that mergekit will stop before writing ``config.json`` and how to get it.
    """
    plan.validate(num_layers)
    drop = _whole_layers(plan, "mergekit passthrough")
    dtype = MERGEKIT_DTYPES.get(str(dtype), str(dtype))
    if dtype not in MERGEKIT_DTYPES.values():
        raise SelectionError(f"Unknown dtype {dtype!r} for mergekit", hint="float32, bfloat16 or float16")
    kept = num_layers - len(drop)
    lines = ["# mergekit passthrough config written by Entroscope",
             f"# Reproduces: {reproduces or model_id} with whole decoder layers {drop} removed (0-based),",
             f"#   {num_layers} -> {kept} layers; the result equals `python -m analysis prune --drop-layers "
             f"{','.join(map(str, drop))}` of the same model.",
             "# layer_range is half-open: [a, b] keeps layers a .. b-1."]
    source = model_id
    if per_layer and config_dir:
        source = config_dir
        lines += [f"# This model's config has per-layer fields ({', '.join(per_layer)}), which mergekit 0.1.5 cannot",
                  "#   slice (it only sets num_hidden_layers, and transformers then refuses the config). So the",
                  f"#   slices read {config_dir}: the pruned config.json (what `prune` writes) beside",
                  f"#   links to {model_id}'s weights and tokenizer; the layer indices below are the original ones."]
    elif per_layer:
        lines += [f"# WARNING: this model's config has per-layer fields ({', '.join(per_layer)}) that mergekit 0.1.5",
                  "#   cannot slice: mergekit-yaml writes the weights, then stops before config.json",
                  "#   (\"num_hidden_layers must equal the number of layer_types\"). Write this file with",
                  "#   `python -m analysis prune ... --mergekit FILE`, which also writes the config folder it needs."]
    lines += ["# Run: mergekit-yaml THIS_FILE OUTPUT_DIR", "slices:"]
    for a, b in kept_ranges(num_layers, drop):
        lines += ["  - sources:", f"      - model: {json.dumps(source)}", f"        layer_range: [{a}, {b}]"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}"]
    return "\n".join(lines) + "\n"


def mergekit_for(lm, plan: Plan, config_dir: str | None = None) -> str:
    """:func:`mergekit_yaml` for a loaded model: its real source, its actual dtype, its per-layer fields."""
    source, how = model_source(lm)
    return mergekit_yaml(plan, source, lm.num_layers, lm.dtype, reproduces=f"{lm.name} ({how})",
                         config_dir=config_dir, per_layer=per_layer_fields(lm.model.config, lm.num_layers))


def mergekit_config_dir(path: str | Path) -> Path:
    """Where :func:`write_mergekit` puts the config folder for the YAML ``path``: ``<stem>-mergekit-source``."""
    path = Path(path).expanduser()
    return path.with_name(path.stem + "-mergekit-source")


def _local_source(lm) -> Path | None:
    """The local directory holding the model's weights (a hub id: its files in the local hub cache), or None."""
    source, _ = model_source(lm)
    if getattr(lm, "source", None) != "hub":
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached locally (or no hub client): no folder to link to
        return None


def write_mergekit(lm, plan: Plan, path: str | Path, overwrite: bool = False, root: str | Path | None = None) -> dict:
    """Write the mergekit YAML for ``plan`` to ``path``; for a model with per-layer config fields also the
    config folder it reads (:func:`mergekit_config_dir`: the pruned ``config.json`` and links to every other
    file of the source), so that ``mergekit-yaml`` runs unedited. Returns ``{"yaml", "config_dir", "note"}``."""
    from analysis.store.outdir import atomic_dir, check_out_dir, write_text_atomic

    plan.validate(lm.num_layers)
    _whole_layers(plan, "mergekit passthrough")
    per_layer = per_layer_fields(lm.model.config, lm.num_layers)
    src = _local_source(lm) if per_layer else None
    if not per_layer or src is None:
        write_text_atomic(path, mergekit_for(lm, plan))
        note = None if not per_layer else (f"mergekit 0.1.5 cannot slice {', '.join(per_layer)} and the model's "
                                           "files are not on this machine to build the config folder from")
        return {"yaml": str(path), "config_dir": None, "note": note}
    folder = mergekit_config_dir(path)
    state = check_out_dir(folder, overwrite, root)
    from analysis.models.surgery import KV_MARK, pruned_view

    config = pruned_view(lm.model, plan.normalized()).config
    if KV_MARK in vars(config):
        delattr(config, KV_MARK)
    with atomic_dir(folder, overwrite, root, state) as tmp:
        config.save_pretrained(tmp)
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in ("config.json", "README.md") and not f.name.startswith("."):
                (tmp / f.name).symlink_to(f.resolve())
    write_text_atomic(path, mergekit_for(lm, plan, str(folder.resolve())))
    return {"yaml": str(path), "config_dir": str(folder),
            "note": f"mergekit reads {folder.name}/ (pruned config.json + links to the source files): "
                    f"mergekit 0.1.5 cannot slice {', '.join(per_layer)} itself"}


# ---- llama.cpp ---------------------------------------------------------------------------------------------
#: model types whose llama.cpp loader derives each layer's attention type from its index: sliding window
#: unless ``i % period == period - 1`` (``hparams.set_swa_pattern(period)``; the sliding layers also get a
#: fixed RoPE base). llama.cpp's ``convert_hf_to_gguf.py`` writes no per-layer pattern for them.
LLAMA_CPP_POSITION_PATTERN = {"gemma3_text": 6, "gemma3": 6, "gemma2": 2}
#: placeholders in printed commands (never a path of the machine that wrote them)
LLAMA_CPP_DIR = "<your-llama.cpp>"
CHECKPOINT_PLACEHOLDER = "<pruned-checkpoint>"


def llama_cpp_prune_layers(plan: Plan) -> str:
    """Comma list of dropped layer ids for llama.cpp ``llama-quantize --prune-layers``."""
    return ",".join(str(i) for i in _whole_layers(plan, "llama.cpp --prune-layers"))


def llama_cpp_layer_problem(config, plan: Plan, num_layers: int) -> str | None:
    """Why llama.cpp would run the pruned model with other layer types than ours, or None.

    For Gemma-2/3 llama.cpp decides sliding window vs global attention (and the RoPE base) by the layer's
    *position*, so removing layers shifts the pattern unless every kept layer's type equals the type of
    its new position (e.g. a run of ``period`` consecutive layers is dropped)."""
    period = LLAMA_CPP_POSITION_PATTERN.get(getattr(config, "model_type", None))
    types = list(getattr(config, "layer_types", None) or [])
    if not period or len(types) != num_layers:
        return None
    kept = plan.normalized().kept_layers(num_layers)
    wrong = [(j, i) for j, i in enumerate(kept)
             if types[i] != ("full_attention" if j % period == period - 1 else "sliding_attention")]
    if not wrong:
        return None
    shown = ", ".join(f"{i}->{j}" for j, i in wrong[:4]) + (" …" if len(wrong) > 4 else "")
    return (f"llama.cpp gives each {config.model_type} layer its attention type (sliding window or global) and "
            f"RoPE base by position (global at index % {period} == {period - 1}), and its converter writes no "
            f"per-layer pattern; this plan moves layers whose type would then change ({shown}, original->new), "
            "so neither --prune-layers nor converting the pruned checkpoint gives this model in llama.cpp")


def _gguf_file(lm) -> Path | None:
    kind = getattr(lm, "source", None)
    if kind == "embedded":
        from analysis.models.embedded import EMBEDDED

        return EMBEDDED[lm.name].gguf_path()
    if kind == "gguf":
        return Path(lm.name).expanduser()
    return None


def llama_cpp_routes(plan: Plan, lm, checkpoint: str = CHECKPOINT_PLACEHOLDER) -> dict:
    """Every llama.cpp route for ``plan`` with the exact commands (placeholders, no local paths):

    * ``convert``: convert the pruned transformers checkpoint (``checkpoint``) with llama.cpp's
      ``convert_hf_to_gguf.py`` at f32 (exact; then quantise from it). Works for sub-block plans too: the
      zeroed projections add exactly nothing (they are still computed).
    * ``prune_layers`` / ``command``: ``llama-quantize --prune-layers`` on the model's own GGUF (whole-layer
      plans of a GGUF model; ``COPY`` keeps its tensor types).
    * ``refused``: the reason when llama.cpp cannot run this plan's model as ours (position-dependent
      layer types, :func:`llama_cpp_layer_problem`); the commands are then None.
    """
    norm = plan.normalized()
    n = lm.num_layers
    problem = llama_cpp_layer_problem(lm.model.config, norm, n)
    period = LLAMA_CPP_POSITION_PATTERN.get(getattr(lm.model.config, "model_type", None))
    if problem:
        return {"refused": problem, "convert": None, "prune_layers": None, "command": None,
                "hint": f"drop whole runs of {period} consecutive layers (the pattern then stays aligned), or use "
                        "the transformers checkpoint"}
    conv = f"{LLAMA_CPP_DIR}/convert_hf_to_gguf.py"
    convert = (shlex.join(["python", conv, checkpoint, "--outtype", "f32", "--outfile", "pruned-f32.gguf"])
               + " && " + shlex.join(["llama-quantize", "pruned-f32.gguf", "pruned-Q8_0.gguf", "Q8_0"]))
    out = {"refused": None, "convert": convert, "prune_layers": None, "command": None,
           "note": "convert_hf_to_gguf.py reads the pruned checkpoint (exact at f32); Q8_0 is an example type."}
    gguf = _gguf_file(lm)
    if not (norm.drop_attn or norm.drop_mlp) and gguf is not None:
        ids = llama_cpp_prune_layers(norm)
        out.update(prune_layers=ids, command=shlex.join(["llama-quantize", "--prune-layers", ids, gguf.name,
                                                         "pruned.gguf", "COPY"]))
        out["note"] = (f"--prune-layers removes whole layers (0-based ids) from {gguf.name} (the model's own GGUF; "
                       "Entroscope keeps the embedded ones in its cache). COPY keeps its tensor types: it is already "
                       "quantised, so another type there needs --allow-requantize and quantises twice; for "
                       "another type, quantise from the f32 conversion of the checkpoint instead.")
    return out


def llama_cpp_command(plan: Plan, lm=None, out: str = "pruned.gguf", checkpoint: str = CHECKPOINT_PLACEHOLDER) -> str:
    """The llama.cpp command line for ``plan`` (see :func:`llama_cpp_routes`): ``llama-quantize --prune-layers``
    on the model's GGUF when it has one and the plan drops whole layers, else the conversion of the pruned
    checkpoint. Refused (:class:`SelectionError`) when llama.cpp would change the layers' types."""
    if lm is None:
        ids = llama_cpp_prune_layers(plan)
        return shlex.join(["llama-quantize", "--prune-layers", ids, "model.gguf", out, "COPY"])
    routes = llama_cpp_routes(plan, lm, checkpoint)
    if routes["refused"]:
        raise SelectionError(routes["refused"], hint=routes["hint"])
    return routes["command"] or routes["convert"]


LLAMA_CPP_NOTE = ("llama-quantize --prune-layers removes whole decoder layers only (0-based ids, as here) from a GGUF; "
                  "COPY keeps the tensor types (an already-quantised GGUF needs --allow-requantize for another type). "
                  "Converting the pruned checkpoint with convert_hf_to_gguf.py works for every plan, sub-blocks "
                  "included; Gemma-2/3 plans that shift the sliding/global layer pattern are refused (llama.cpp "
                  "derives each layer's type from its position).")


# ---- lm-eval's own CLI -------------------------------------------------------------------------------------
def lm_eval_command(checkpoint: str | Path, tasks: str = "cloze-wiki", limit: int | None = None,
                    device: str = "cpu") -> str:
    """lm-eval's own ``lm_eval`` command on a saved checkpoint with Entroscope's local tasks.

    ``--include_path`` is this installation's task folder (``analysis/tasks/configs``); its ``utils.py``
    imports ``analysis``, so outside the checkout ``PYTHONPATH`` must name the folder holding ``analysis/``
    (the command sets it)."""
    from analysis.tasks.runner import CONFIG_DIR

    configs = CONFIG_DIR.resolve()
    argv = ["lm_eval", "--include_path", str(configs), "--model", "hf", "--model_args",
            f"pretrained={checkpoint},dtype=float32", "--tasks", tasks, "--device", device]
    if limit:
        argv += ["--limit", str(limit)]
    return f"PYTHONPATH={shlex.quote(str(configs.parents[2]))} " + shlex.join(argv)


# ---- reproduction ---------------------------------------------------------------------------------------
def cli_command(argv: Sequence[str] | None = None) -> str | None:
    """The exact command line as ``python -m analysis ...``: ``argv``, or this process's arguments when it
    was started as ``python -m analysis`` (None when called from Python with no argv)."""
    if argv is None:
        if not sys.argv or not sys.argv[0].replace("\\", "/").endswith("analysis/__main__.py"):
            return None
        argv = sys.argv[1:]
    return shlex.join(["python", "-m", "analysis", *argv])


def reproduction_manifest(lm=None, plan: Plan | None = None, data: dict | None = None,
                          argv: Sequence[str] | None = None, results: dict | None = None) -> dict:
    """Everything needed to redo a result: model fingerprint, data protocol, plan, versions, command."""
    return clean_json({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": lm.manifest() if lm is not None else None,
        "data": data,
        "plan": plan.to_dict() if plan is not None else None,
        "versions": library_versions(),
        "command": cli_command(argv),
        "results": results,
    })
