"""Loading models: embedded short names, hub ids, local directories and ``.gguf`` files, as a
:class:`LoadedModel` (the model, its tokenizer and adapter, and where it came from).

Embedded models and GGUF files go through the fp32 cache of :mod:`analysis.models.embedded`; local
directories written by Entroscope with dropped sub-blocks (:mod:`analysis.models.surgery`) or per-layer
channel widths (:mod:`analysis.models.channel_checkpoint`) are rebuilt with their exact shapes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis.errors import DataError, ModelLoadError, UnsupportedArchitectureError, is_oom, oom_error
from analysis.models.adapters import Adapter, adapter_for
from analysis.models.channel_checkpoint import build_channel_pruned, needs_channel_loader, read_channels_meta
from analysis.models.device import (DTYPES, budget_device_map, dtype_name, parse_max_memory, resolve_device,
                                    resolve_dtype)
from analysis.models.embedded import DEFAULT_MODEL, EMBEDDED, REBUILT, cache_root, gguf_checkpoint, is_installed
from analysis.models.integrity import check_config_against_headers, check_loading_info, hub_snapshot
from analysis.models.surgery import load_subblock_checkpoint, saved_plan
from analysis.store.inputs import check_input_file


@dataclass
class LoadedModel:
    """A model ready for analysis, with where it came from."""

    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    name: str                     # what the user asked for (short name, hub id, path)
    source: str                   # embedded | hub | local | gguf | memory
    fingerprint: str              # GGUF sha256, or hash of config + weight file names/sizes
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    from_cache: bool = False
    info: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def manifest(self) -> dict:
        cfg = self.model.config
        return {
            "name": self.name, "source": self.source, "fingerprint": self.fingerprint,
            "model_type": cfg.model_type, "architecture": (getattr(cfg, "architectures", None) or [None])[0],
            "num_layers": self.num_layers, "hidden_size": int(cfg.hidden_size),
            "params": count_params(self.model), "device": str(self.device), "dtype": dtype_name(self.dtype),
            **({"device_map": self.info["device_map"]} if "device_map" in self.info else {}),
        }


def count_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    """Parameter count (tied weights counted once); ``non_embedding`` excludes embeddings and LM head."""
    seen, total = set(), 0
    emb_ids = set()
    if non_embedding:
        for m in (model.get_input_embeddings(), model.get_output_embeddings()):
            if m is not None:
                emb_ids.update(id(p) for p in m.parameters())
    for p in model.parameters():
        if id(p) in seen or id(p) in emb_ids:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): detects any mutation."""
    h = hashlib.sha256()
    for name, t in list(model.state_dict(keep_vars=True).items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).cpu().numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dir_fingerprint(path: Path) -> str:
    """Cheap hash of a checkpoint directory: config and the names, sizes and modification times of its
    weight files (a checkpoint rewritten in place gets a new fingerprint, so cached results never mix)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".pt") or f.name == "config.json"):
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
            if f.name == "config.json":
                h.update(f.read_bytes())
    return h.hexdigest()


def _classify(spec: str) -> str:
    if spec in EMBEDDED:
        return "embedded"
    if spec.lower().endswith(".gguf"):
        return "gguf"
    if os.path.lexists(os.path.expanduser(spec)):  # a folder, or a file / FIFO / device named as a model
        return "local"
    if os.path.sep in spec and (spec.startswith((".", "/", "~")) or os.path.exists(os.path.dirname(spec))):
        return "local"
    return "hub"


def _check_folder_files(folder: Path) -> None:
    """Every file of a checkpoint folder that transformers may open is a regular file (a FIFO named config.json
    would block the load forever): refused with its name, by ``stat`` only."""
    import stat as st

    for entry in os.scandir(folder):
        try:
            mode = entry.stat().st_mode
        except OSError:
            continue                # a dangling link: reported by the loader if it is needed
        if not (st.S_ISREG(mode) or st.S_ISDIR(mode)):
            check_input_file(entry.path, f"file {entry.name} of the model directory", expect=None)


def _check_causal(config, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None):
        raise ModelLoadError(
            f"{name} is a {config.model_type!r} model, not a causal (decoder-only) language model",
            hint="Entroscope needs an AutoModelForCausalLM checkpoint")


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str | torch.dtype = "fp32",
    trust_remote_code: bool = False,
    offline: bool | None = None,
    device_map: str | dict | None = None,
    progress=None,
    max_memory: dict | str | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load a causal LM by short name, hub id, local directory or ``.gguf`` path.

    Args:
        spec: ``smollm2`` (default), ``gemma3-270m``, ``qwen2.5-coder-0.5b``, a hub id, a directory or a GGUF file.
        device: ``auto`` (cuda → mps → cpu) or an explicit torch device.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        trust_remote_code: run the checkpoint's own Python code. Off unless asked for explicitly.
        offline: never touch the network (defaults to ``HF_HUB_OFFLINE``).
        device_map: passed to transformers/accelerate (e.g. ``"auto"`` for multi-GPU or CPU/disk offload);
            ``device`` is then ignored.
        progress: optional ``callback(fraction, message)``.
        max_memory: accelerate's per-device budget with ``device_map`` (``{0: "10GiB", "cpu": "4GiB"}`` or
            the CLI form ``"0=10GiB,cpu=4GiB"``, see :func:`parse_max_memory`); what does not fit goes to
            disk under ``offload_folder``. Given without ``device_map`` it implies ``device_map="auto"``.
        offload_folder: where disk-offloaded weights go (default: a per-model folder in the cache).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    spec = (spec or DEFAULT_MODEL).strip()
    kind = _classify(spec)
    if isinstance(max_memory, str):
        max_memory = parse_max_memory(max_memory)
    if max_memory and device_map is None:
        device_map = "auto"
    dev = resolve_device(device) if device_map is None else None
    dt = resolve_dtype(dtype, dev if dev is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    from_cache = False
    if kind in ("embedded", "gguf"):
        load_dir, fingerprint, from_cache = gguf_checkpoint(spec, kind == "embedded", progress)
        local_only = True
    elif kind == "local":
        load_dir = Path(os.path.expanduser(spec))
        try:                        # a FIFO, device or file given as the folder (or inside it) is named as such
            check_input_file(load_dir, "model directory", directory=True)
            _check_folder_files(load_dir)
        except DataError as exc:
            raise ModelLoadError(exc.message, exc.hint) from None
        if not (load_dir / "config.json").is_file():
            raise ModelLoadError(f"{spec} has no config.json, so it is not a transformers checkpoint directory")
        fingerprint = dir_fingerprint(load_dir)
        local_only = True
        channels = read_channels_meta(load_dir)       # width-pruned with per-layer widths
        if needs_channel_loader(channels):
            return _load_channel_pruned(load_dir, channels, device, dtype)
    else:
        load_dir = spec
        fingerprint = f"hub:{spec}"
        local_only = offline

    if progress:
        progress(0.5, f"Loading {spec} ({'cached ' if from_cache else ''}{kind})")
    try:
        config = AutoConfig.from_pretrained(str(load_dir), trust_remote_code=trust_remote_code,
                                            local_files_only=local_only)
        _check_causal(config, spec)
        kwargs = dict(dtype=dt, trust_remote_code=trust_remote_code, local_files_only=local_only)
        if device_map is not None:  # accelerate: multi-GPU, CPU and disk offload
            kwargs["device_map"] = device_map
            kwargs["offload_folder"] = str(offload_folder or cache_root() / "offload" / hashlib.sha256(
                f"{spec}|{fingerprint}".encode()).hexdigest()[:16])
            if max_memory:
                kwargs["max_memory"] = max_memory
                if device_map == "auto":
                    kwargs["device_map"] = budget_device_map(config, max_memory, dt, trust_remote_code)
        tok = AutoTokenizer.from_pretrained(str(load_dir), trust_remote_code=trust_remote_code,
                                            local_files_only=local_only)
        if kind == "local":         # config vs weights from the safetensors headers: before any allocation
            check_config_against_headers(load_dir, config, str(spec))
        snapshot = hub_snapshot(spec) if kind == "hub" else None
        if snapshot is not None:    # a hub id already in the hub cache: the same check, before any allocation
            check_config_against_headers(snapshot, config, str(spec))
        # dirs saved with sub-block drops (entroscope-plan.json)
        model = load_subblock_checkpoint(load_dir, dt) if kind == "local" else None
        if model is None and kind == "hub":
            model = AutoModelForCausalLM.from_pretrained(str(load_dir), **kwargs)
            if snapshot is None and (snapshot := hub_snapshot(spec)) is not None:   # downloaded just now
                try:
                    check_config_against_headers(snapshot, config, str(spec))
                except ModelLoadError as exc:
                    raise ModelLoadError(exc.message, hint="the checkpoint on the hub is incomplete or was edited "
                                                           "(refused after the download, before any use)") from None
        elif model is None:                          # local files: config and weights must agree exactly
            model, info = AutoModelForCausalLM.from_pretrained(str(load_dir), output_loading_info=True,
                                                               ignore_mismatched_sizes=True, **kwargs)
            check_loading_info(model, info, str(spec if kind == "local" else load_dir))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated into a user-facing message below
        if is_oom(exc):
            raise oom_error(exc, f"loading {spec}") from exc
        raise _load_error(spec, kind, exc, offline) from exc

    if device_map is None:
        model.to(dev)
    else:
        dev = next(model.parameters()).device
    model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    if progress:
        progress(1.0, f"Loaded {spec}")
    lm = LoadedModel(model=model, tokenizer=tok, adapter=adapter, name=spec, source=kind,
                     fingerprint=fingerprint, device=dev, dtype=dt,
                     load_seconds=time.perf_counter() - t0, from_cache=from_cache)
    if kind in ("embedded", "gguf") and str(load_dir) in REBUILT:
        lm.info["cache_rebuilt"] = REBUILT[str(load_dir)]     # a corrupted cache entry was rebuilt: why
    if device_map is not None:      # recorded in every run manifest: where the modules went
        placed = getattr(model, "hf_device_map", None) or {}
        lm.info["device_map"] = {
            "requested": device_map if isinstance(device_map, str) else "custom",
            "max_memory": {str(k): v for k, v in (max_memory or {}).items()} or None,   # bytes or "10GiB"
            "modules_per_device": {str(d): sum(1 for v in placed.values() if str(v) == str(d))
                                   for d in dict.fromkeys(str(v) for v in placed.values())}}
    return lm


def _load_channel_pruned(load_dir: Path, meta: dict, device: str, dtype: str | torch.dtype) -> LoadedModel:
    """A LoadedModel around :func:`~analysis.models.channel_checkpoint.build_channel_pruned`."""
    dt, dev = resolve_dtype(dtype), resolve_device(device)
    t0 = time.perf_counter()
    model, tok = build_channel_pruned(load_dir, meta, dt)
    if tok is not None and tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    lm = LoadedModel(model=model, tokenizer=tok, adapter=adapter_for(model), name=str(load_dir), source="local",
                     fingerprint=dir_fingerprint(load_dir), device=dev, dtype=dt,
                     load_seconds=time.perf_counter() - t0)
    lm.info["channels"] = meta
    return lm


def load_pruned(path: str | os.PathLike, device: str = "auto", dtype: str | torch.dtype = "fp32") -> LoadedModel:
    """Load a directory written by :func:`~analysis.models.surgery.save_pruned` (sub-block plans restored)."""
    lm = load_model(str(path), device=device, dtype=dtype, offline=True)
    plan = saved_plan(path)
    if plan is not None:
        lm.info["plan"] = plan.to_dict()
    return lm


def _load_error(spec: str, kind: str, exc: Exception, offline: bool) -> ModelLoadError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = str(exc).lower()
    if "trust_remote_code" in low or "remote code" in low:
        return ModelLoadError(
            f"{spec} needs its own Python code to load (trust_remote_code)",
            hint="only enable --trust-remote-code for checkpoints you trust; it runs their code")
    if isinstance(exc, UnsupportedArchitectureError):
        return exc
    if kind == "hub":
        return ModelLoadError(
            f"Could not load {spec!r}: not an embedded name ({', '.join(EMBEDDED)}), not a local directory, "
            f"and not reachable on the model hub{' (offline mode)' if offline else ''}",
            hint=msg[:200])
    return ModelLoadError(f"Could not load {spec}: {msg[:300]}")


def wrap_model(model: torch.nn.Module, tokenizer, name: str = "in-memory") -> LoadedModel:
    """Wrap a model already in memory (tests, notebooks) as a LoadedModel."""
    model.eval()
    model.requires_grad_(False)
    p = next(model.parameters())
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(model), name=name, source="memory",
                       fingerprint=f"config:{h[:24]}", device=p.device, dtype=p.dtype)


def describe(spec: str) -> dict:
    """What a user needs to know before loading: parameters, layers and a memory estimate per dtype."""
    if spec in EMBEDDED:
        e = EMBEDDED[spec]
        installed = is_installed(spec)
        params = e.params_m * 1e6
        out = {"name": spec, "title": e.title, "layers": e.layers, "params": int(params), "licence": e.licence,
               "installed": installed, "package": e.package}
    else:
        out = {"name": spec, "params": None}
        try:
            from transformers import AutoConfig, AutoModelForCausalLM

            cfg = AutoConfig.from_pretrained(os.path.expanduser(spec), local_files_only=True)
            with torch.device("meta"):
                m = AutoModelForCausalLM.from_config(cfg)
            out.update(layers=cfg.num_hidden_layers, params=count_params(m), model_type=cfg.model_type)
        except Exception as exc:  # noqa: BLE001 - description only
            out["note"] = f"size unknown until loaded ({type(exc).__name__})"
    if out.get("params"):
        out["memory_gb"] = {k: round(out["params"] * torch.tensor([], dtype=v).element_size() / 1e9 * 1.2, 2)
                            for k, v in DTYPES.items()}
    return out
