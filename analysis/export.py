"""Exports: plan and evaluation JSON/CSV, mergekit passthrough YAML, llama.cpp ``--prune-layers``, and a
reproduction manifest (model fingerprint, data protocol, plan, library versions, the exact CLI command).

mergekit and llama.cpp can only remove *whole* layers, so those two exports refuse plans with
attention or MLP sub-block drops (:class:`~analysis.errors.SelectionError`). Both name the model's real
source (the checkpoint directory that was loaded, Entroscope's cached safetensors copy of an embedded GGUF,
or the hub id) and the mergekit YAML its actual dtype.
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


def mergekit_yaml(plan: Plan, model_id: str, num_layers: int, dtype: str = "float32",
                  reproduces: str | None = None) -> str:
    """mergekit passthrough config keeping the layers a whole-layer plan does not drop.

    ``model_id``: a local checkpoint directory or hub id (:func:`model_source`); ``dtype``: the model's own
    dtype (``float32`` / ``bfloat16`` / ``float16``, or a torch dtype). ``layer_range`` is half-open, as in
    mergekit: ``[a, b]`` keeps layers a … b-1.
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
             "# layer_range is half-open: [a, b] keeps layers a .. b-1.",
             "# Run: mergekit-yaml THIS_FILE OUTPUT_DIR",
             "slices:"]
    for a, b in kept_ranges(num_layers, drop):
        lines += ["  - sources:", f"      - model: {json.dumps(model_id)}", f"        layer_range: [{a}, {b}]"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}"]
    return "\n".join(lines) + "\n"


def mergekit_for(lm, plan: Plan) -> str:
    """:func:`mergekit_yaml` for a loaded model: its real source and its actual dtype."""
    source, how = model_source(lm)
    return mergekit_yaml(plan, source, lm.num_layers, lm.dtype, reproduces=f"{lm.name} ({how})")


def llama_cpp_prune_layers(plan: Plan) -> str:
    """Comma list of dropped layer ids for llama.cpp ``llama-quantize --prune-layers``."""
    return ",".join(str(i) for i in _whole_layers(plan, "llama.cpp --prune-layers"))


def llama_cpp_command(plan: Plan, lm=None, out: str = "pruned.gguf") -> str:
    """The exact llama.cpp command(s) that remove the plan's whole layers from a GGUF.

    ``llama-quantize --prune-layers`` removes *whole* decoder layers only (sub-block plans are refused).
    For a model loaded from a GGUF (embedded or a ``.gguf`` file) it reads that file with type ``COPY``
    (tensors copied as they are, nothing requantised); otherwise the checkpoint is first converted with
    llama.cpp's ``convert_hf_to_gguf.py``.
    """
    ids = llama_cpp_prune_layers(plan)
    kind = getattr(lm, "source", None)
    if kind in ("embedded", "gguf"):
        from analysis.models.embedded import EMBEDDED

        gguf = EMBEDDED[lm.name].gguf_path() if kind == "embedded" else Path(lm.name).expanduser().resolve()
        return shlex.join(["llama-quantize", "--prune-layers", ids, str(gguf), out, "COPY"])
    src = model_source(lm)[0] if lm is not None else "MODEL_DIR"
    return (shlex.join(["python", "convert_hf_to_gguf.py", src, "--outtype", "f32", "--outfile", "model-f32.gguf"])
            + " && " + shlex.join(["llama-quantize", "--prune-layers", ids, "model-f32.gguf", out, "COPY"]))


LLAMA_CPP_NOTE = ("llama-quantize --prune-layers removes whole decoder layers only (0-based ids, as here); "
                  "attention or MLP sub-block plans have no llama.cpp form. COPY keeps the tensor types; "
                  "put a quantisation type (e.g. Q8_0) there to quantise while pruning.")


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
