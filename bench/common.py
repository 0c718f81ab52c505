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


# ---- product defaults, load, the ratio line and docs writes (every bench uses these) ----------------------

def app_defaults() -> tuple[dict, dict, dict]:
    """The app's defaults: ``(model settings, data settings, analysis settings)``, read from their one source
    (``app_support.state``: ``DEFAULT_MODEL``, ``DEFAULT_DATA`` and :func:`default_analysis`, which is
    ``AnalysisConfig``'s app-shown defaults plus the Entropy page's own)."""
    from app_support.state import DEFAULT_DATA, DEFAULT_MODEL, default_analysis

    return dict(DEFAULT_MODEL), dict(DEFAULT_DATA), default_analysis()


def analysis_config(app: bool = True, **overrides):
    """The product's ``AnalysisConfig``: the app's default (``app=True``) or the CLI's (the dataclass defaults),
    with ``overrides`` (flat setting keys, as :func:`analysis.settings.build` takes them)."""
    from analysis.run import AnalysisConfig
    from analysis.settings import build

    base = app_defaults()[2] if app else {}
    return build(AnalysisConfig, {**base, **overrides})


def describe(cfg) -> str:
    """One line naming what an ``AnalysisConfig`` computes in its pass."""
    est = "+".join(dict.fromkeys((cfg.estimator, *cfg.extra_estimators)))
    other = getattr(cfg, "both_views", None)
    other = (not getattr(cfg, "one_view", True)) if other is None else other       # trees before both_views
    views = f"sinks={cfg.sinks}" + ("+other view" if other else "")
    return f"{est}+cosine {views}" + (f" mi.n_tokens={cfg.state_tokens}" if cfg.state_tokens else "")


def loadavg() -> str:
    """The 1/5/15-minute load average, for the record (figures under load are not comparable)."""
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def print_ratio(value: float) -> None:
    """The last line of every bench: ``ratio=<value>`` (what the integrator collects)."""
    print(f"ratio={value:.3f}" if value == 0 or abs(value) >= 0.01 else f"ratio={value:.3e}", flush=True)


def write_section(section: str, text: str, write: bool) -> None:
    """Replace (or append) only ``section`` of docs/benchmarks.md, and only when asked (``--write``)."""
    import re
    from pathlib import Path

    if not write:
        print(f"(not written to docs/benchmarks.md; pass --write to replace its section {section!r})", file=sys.stderr)
        return
    path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    body = section + "\n\n" + text.strip() + "\n"
    pat = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(lambda _: body + "\n", old) if pat.search(old) else old.rstrip() + "\n\n" + body
    path.write_text(new)
    print(f"wrote section {section!r} of docs/benchmarks.md", file=sys.stderr)


def cli_args(*argv: str):
    """The product CLI's namespace for ``argv`` (``python -m analysis …``): its own default for every flag not given."""
    from analysis.cli.main import build_parser

    return build_parser().parse_args(list(argv))
