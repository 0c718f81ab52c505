"""Architecture adapters: where the decoder layers, attention, MLP and norms live.

One table row per supported ``model_type`` (data, not code, in the spirit of Inseq's model_config.yaml).
Names follow TransformerLens for the residual stream inside decoder layer ``l`` (0-based)::

    resid_pre[l]  = input of layer l                              # [batch, pos, d_model]
    attn_out[l]   = attention sub-block's contribution            # Gemma: post_attention_layernorm(attn)
    resid_mid[l]  = resid_pre[l] + attn_out[l]                    # input of the MLP's pre-norm
    mlp_out[l]    = MLP sub-block's contribution                  # Gemma: post_feedforward_layernorm(mlp)
    resid_post[l] = resid_mid[l] + mlp_out[l] = resid_pre[l + 1]

``mid_norm`` is the module whose *input* is ``resid_mid`` (Llama: ``post_attention_layernorm``;
Gemma-3's sandwich norms: ``pre_feedforward_layernorm``), so a forward pre-hook on it captures resid_mid
without touching the layer's code.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from analysis.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """Attribute names for one family of decoder-only models."""

    family: str
    layers: str = "model.layers"            # path from the CausalLM to the ModuleList of decoder layers
    base: str = "model"                     # path to the base model (embeddings → layers → final norm, no LM head)
    attn: str = "self_attn"
    mlp: str = "mlp"
    input_norm: str = "input_layernorm"
    mid_norm: str = "post_attention_layernorm"   # module whose input is resid_mid
    post_attn_norm: str | None = None            # sandwich norm applied to attention output (Gemma)
    post_mlp_norm: str | None = None             # sandwich norm applied to MLP output (Gemma)
    o_proj: str = "o_proj"                       # attention output projection (zeroed to store a dropped attention)
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    needs_bos: bool = False                 # Gemma must see <bos> or its perplexity is 2.5-4.5x too high


_LLAMA = ArchSpec(family="llama")
_GEMMA3 = ArchSpec(
    family="gemma3",
    mid_norm="pre_feedforward_layernorm",
    post_attn_norm="post_attention_layernorm",
    post_mlp_norm="post_feedforward_layernorm",
    needs_bos=True,
)

#: model_type (config.model_type) -> spec. Llama, Mistral, Qwen2 and Qwen3 share the Llama layout
#: (Qwen3 adds q_norm/k_norm inside attention, which does not change the residual points).
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": ArchSpec(family="mistral"),
    "qwen2": ArchSpec(family="qwen2"),
    "qwen3": ArchSpec(family="qwen3"),
    "gemma3_text": _GEMMA3,
}


def get_path(obj, path: str):
    """Follow a dotted attribute path (``model.layers``)."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Adapter:
    """Uniform access to one loaded model's decoder structure."""

    model: nn.Module
    spec: ArchSpec

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def layers(self) -> nn.ModuleList:
        return get_path(self.model, self.spec.layers)

    @property
    def base(self) -> nn.Module:
        """The base model: embeddings, decoder layers and final norm, without the LM head."""
        return get_path(self.model, self.spec.base)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def attn(self, i: int) -> nn.Module:
        return getattr(self.layers[i], self.spec.attn)

    def mlp(self, i: int) -> nn.Module:
        return getattr(self.layers[i], self.spec.mlp)

    def input_norm(self, i: int) -> nn.Module:
        return getattr(self.layers[i], self.spec.input_norm)

    def mid_norm(self, i: int) -> nn.Module:
        return getattr(self.layers[i], self.spec.mid_norm)

    def layer_types(self) -> list[str]:
        """Per-layer attention type ("full_attention" / "sliding_attention"), when the config has it."""
        lt = getattr(self.model.config, "layer_types", None)
        return list(lt) if lt else ["full_attention"] * self.num_layers


def spec_for(model: nn.Module) -> ArchSpec:
    """Find the spec for a loaded model or raise a clear error naming the architecture."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if config is not None and getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(
            f"{arch} ({model_type}) is an encoder-decoder model; Entroscope analyses decoder-only causal LMs"
        )
    supported = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedArchitectureError(
        f"Unsupported architecture {arch} (model_type={model_type!r}): no adapter finds its decoder layers, "
        f"attention, MLP and norms",
        hint=f"supported model types: {supported}",
    )


def adapter_for(model: nn.Module) -> Adapter:
    """Adapter for ``model``; validates that the expected sub-modules exist."""
    spec = spec_for(model)
    adapter = Adapter(model=model, spec=spec)
    try:
        layer = adapter.layers[0]
        for name in (spec.attn, spec.mlp, spec.input_norm, spec.mid_norm):
            getattr(layer, name)
    except (AttributeError, IndexError) as exc:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} ({adapter.model_type}) does not have the expected layout: {exc}"
        ) from exc
    return adapter
