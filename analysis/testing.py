"""Tiny random models and a byte-level tokenizer for tests, demos and benchmarks (no downloads)."""
from __future__ import annotations

import functools

import torch

TINY_VOCAB = 260  # 256 bytes + <s>, </s>, <pad>, <unk>


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level tokenizer (one token per UTF-8 byte) with BOS/EOS/PAD, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # ByteLevel maps each byte to a printable character; give byte b the id b
    b2u = bytes_to_unicode()
    vocab = {b2u[i]: i for i in range(256)}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258, "<unk>": 259})
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = bl
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_config(arch: str = "llama", layers: int = 4, hidden: int = 64, **overrides):
    """Config for a tiny random model of a supported architecture."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=True)
    if arch == "llama":
        cfg = LlamaConfig(**common)
    elif arch == "mistral":
        cfg = MistralConfig(**common, sliding_window=None)
    elif arch == "qwen2":
        cfg = Qwen2Config(**common)
    elif arch == "qwen3":
        cfg = Qwen3Config(**common, head_dim=16)
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(**common, head_dim=16, sliding_window=32,
                               layer_types=["sliding_attention" if (i + 1) % 3 else "full_attention"
                                            for i in range(layers)])
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(arch: str = "llama", layers: int = 4, hidden: int = 64, seed: int = 0, **overrides):
    """A tiny random causal LM in eval mode (weights scaled up a little so blocks do something)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, layers, hidden, **overrides)
    cfg._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    model.requires_grad_(False)
    return model


def tiny_loaded(arch: str = "llama", layers: int = 4, hidden: int = 64, seed: int = 0, **overrides):
    """A :class:`~analysis.models.loading.LoadedModel` around :func:`tiny_model` with :func:`tiny_tokenizer`."""
    from analysis.models.loading import wrap_model

    return wrap_model(tiny_model(arch, layers, hidden, seed, **overrides), tiny_tokenizer(), name=f"tiny-{arch}")


def random_tokens(n: int = 4, t: int = 32, seed: int = 0) -> torch.LongTensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, t), generator=g)


def save_tiny_checkpoint(path, arch: str = "llama", layers: int = 4):
    """A tiny random model and its tokenizer saved as a local checkpoint directory (``path``, returned)."""
    tiny_model(arch, layers=layers).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
