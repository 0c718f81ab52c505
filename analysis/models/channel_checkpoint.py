"""Reading the channel-pruned checkpoint format (``entroscope-channels.json``).

A width-pruned model whose MLPs keep different numbers of channels per layer (or carry a compensation bias
the architecture has no config flag for) cannot be rebuilt by plain ``from_pretrained``: its
``config.json`` holds one ``intermediate_size``. :mod:`analysis.channels` writes the per-layer widths and
biases into ``entroscope-channels.json``; :func:`build_channel_pruned` builds the model with those shapes and
loads the weights strictly. :func:`analysis.models.loading.load_model` calls it for such directories.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from analysis.errors import EntroscopeError, ModelLoadError
from analysis.models.adapters import adapter_for
from analysis.models.surgery import load_weights_into

CHANNELS_FILE = "entroscope-channels.json"
FORMAT = "entroscope-channels-v1"


def read_channels_meta(path: str | Path) -> dict | None:
    """The parsed ``entroscope-channels.json`` of a checkpoint directory, or None when it has none."""
    from analysis.store.jsonio import read_json

    f = Path(path).expanduser() / CHANNELS_FILE
    return read_json(f, kind="channel-checkpoint metadata") if f.is_file() else None


def needs_channel_loader(meta: dict | None) -> bool:
    """True when plain ``from_pretrained`` cannot rebuild the shapes (per-layer widths or extra biases)."""
    return meta is not None and meta.get("loader") != "standard"


def _empty_linear(in_f: int, out_f: int, bias: bool, dtype) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


def build_channel_pruned(path: str | Path, meta: dict, dtype: torch.dtype = torch.float32):
    """(model, tokenizer or None) of a directory whose ``entroscope-channels.json`` is ``meta``.

    The model is built on the CPU with the per-layer MLP widths and biases of ``meta``, then every weight is
    loaded strictly (:func:`~analysis.models.surgery.load_weights_into`). Any failure is one ModelLoadError.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if meta.get("format") != FORMAT:
        raise ModelLoadError(f"{CHANNELS_FILE} in {p} has an unknown format {meta.get('format')!r}")
    try:
        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
        from transformers.initialization import no_init_weights
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            adapter = adapter_for(model)
            spec = adapter.spec
            widths, biases = meta["intermediate_sizes"], meta["mlp_bias"]
            if len(widths) != adapter.num_layers:
                raise ModelLoadError(f"{CHANNELS_FILE} lists {len(widths)} layers, config.json has "
                                     f"{adapter.num_layers}")
            hidden = int(config.hidden_size)
            for i, (w, (bg, bu, bd)) in enumerate(zip(widths, biases)):
                mlp = adapter.mlp(i)
                setattr(mlp, spec.gate_proj, _empty_linear(hidden, w, bg, dtype))
                setattr(mlp, spec.up_proj, _empty_linear(hidden, w, bu, dtype))
                setattr(mlp, spec.down_proj, _empty_linear(w, hidden, bd, dtype))
                if hasattr(mlp, "intermediate_size"):
                    mlp.intermediate_size = int(w)
        load_weights_into(model, p, CHANNELS_FILE)
        tok = None
        if any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except EntroscopeError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line
        raise ModelLoadError(f"Could not load channel-pruned checkpoint {p}: {str(exc).splitlines()[0][:300]}") \
            from exc
    return model, tok
