"""Shared helpers for the bench scripts (run from the repository root with the project venv)."""
from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    return (f"{platform.node()} | {dev} | {os.cpu_count()} cores | torch {torch.__version__} | "
            f"{time.strftime('%Y-%m-%d')}")


def calib_tokens(lm, n: int, t: int, seed: int = 0):
    """Real calibration windows from the wiki domain (random ids if the corpus is unavailable)."""
    import torch

    try:
        from analysis.data import SampleConfig, load_corpus, sample_windows

        return sample_windows(load_corpus("wiki"), lm.tokenizer, SampleConfig(n_samples=n, seq_len=t, seed=seed)).input_ids
    except Exception:  # noqa: BLE001 - benchmarks still run on random tokens
        vocab = lm.model.get_input_embeddings().num_embeddings
        return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def flops_per_token(lm, seq_len: int) -> float:
    """Forward FLOPs per token without the LM head: 2·(non-embedding matmul params) + causal attention."""
    from analysis.models.loading import count_params

    cfg = lm.model.config
    p = count_params(lm.model, non_embedding=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 2 * 2 * cfg.num_attention_heads * head_dim * (seq_len + 1) / 2  # QKᵀ and AV, causal average
    return 2 * p + cfg.num_hidden_layers * attn


def matmul_flops(dtype, device, m: int = 2048, k: int = 576, n: int = 1536, reps: int = 20) -> float:
    """Measured dense matmul FLOP/s at the model's own shapes (the roofline the pass is compared to)."""
    import torch

    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * m * k * n * reps / (time.perf_counter() - t)
