"""Two more entropy lenses on the residual stream, registered as estimators (``--also matrix,logit-lens``).

**matrix** — matrix-based (von Neumann, Rényi order α = 1) prompt entropy, as Skean et al. 2025 ("Layer by
Layer", arXiv 2502.02013) define it. For one sequence's token states ``X [N, d]``:

1. centre over the tokens, ``Z = X − mean_t X``;
2. unit-normalise every row, ``z_t ← z_t / ‖z_t‖`` (a row equal to the mean stays 0);
3. Gram matrix ``K = Z Zᵀ`` (its non-zero eigenvalues are those of ``ZᵀZ``; the smaller one is decomposed);
4. trace-normalise, ``p_i = λ_i(K) / tr K`` (``tr K`` = number of non-zero rows);
5. ``H_1 = −Σ_i p_i log p_i`` (α = 1 written explicitly: the Shannon limit of ``1/(1−α)·log Σ p_i^α``).

``0 ≤ H_1 ≤ log rank K ≤ log(N − 1) < log N``: identical token states give 0 (every centred row is 0), N
orthogonal directions give the maximum. The arithmetic is float64 (the centring of identical states must
give exact zeros up to 1e-12 of the states' scale, :data:`ZERO_ROW`). Unlike the reference code we do not
clamp negative inner products to 0. ``dataset`` entropy (the same quantity over the per-sequence mean states)
is :func:`dataset_entropy`.

**logit-lens** — Entropy-Lens (Ali et al. 2025, arXiv 2502.16570): decode a residual state through the
model's final norm and unembedding (with Gemma's final-logit soft-capping) and take the Shannon entropy of
the next-token distribution, ``H = −Σ_v p_v log p_v`` with ``p = softmax(W_U · norm(x))``, ``0 ≤ H ≤ log V``.
Per sequence the mean over ``lens_positions`` token positions, drawn once with a fixed seed (the same
positions at every residual point, so the curve compares like with like); the cost is
``positions × V × d`` per point and sequence, bounded whatever the window length.

Both have sink-masked forms ``fn(x, keep, ...)`` (``--sinks exclude``): masked tokens are neither centred on
nor counted (matrix), and masked positions leave the mean (logit lens).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from analysis.errors import SelectionError
from analysis.measure.estimators import LENS_POSITIONS, as_float32
#: logit lens: seed of the position sample
LENS_SEED = 0
#: matrix: a centred row shorter than this × the sequence's largest state norm counts as 0 (identical states)
ZERO_ROW = 1e-9
#: logit lens: rows decoded per chunk (bounds the [rows, V] logits in memory)
LENS_CHUNK = 64


# ---- matrix-based (von Neumann) entropy ---------------------------------------------------------------
def _spectrum_entropy(z: Tensor) -> Tensor:
    """``z [B, N, d]`` float64 rows (unit or zero) → ``H_1`` of the trace-normalised Gram spectrum, ``[B]``."""
    b, n, d = z.shape
    k = z @ z.transpose(1, 2) if n <= d else z.transpose(1, 2) @ z              # [B, m, m], m = min(N, d)
    lam = torch.linalg.eigvalsh(k).clamp_min(0)                                 # [B, m] ascending, ≥ 0
    tr = lam.sum(-1, keepdim=True)
    p = lam / tr.clamp_min(1e-300)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)                           # α = 1: −Σ p log p
    return torch.where(tr.squeeze(-1) > 0, h, torch.zeros_like(h))


def entropy_matrix_masked(x: Tensor, keep: Tensor) -> Tensor:
    """Matrix-based α = 1 entropy of each sequence's kept token states: ``x [B, N, d], keep [B, N] → [B]`` nats."""
    x = as_float32(x).double()
    km = keep.unsqueeze(-1)
    cnt = keep.sum(1).clamp_min(1).to(x.dtype).view(-1, 1, 1)
    mu = torch.where(km, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1, keepdim=True) / cnt
    z = torch.where(km, x - mu, torch.zeros((), dtype=x.dtype, device=x.device))   # [B, N, d]
    norm = z.norm(dim=-1, keepdim=True)                                           # [B, N, 1]
    scale = torch.where(km, x.norm(dim=-1, keepdim=True), torch.zeros((), dtype=x.dtype, device=x.device))
    tiny = ZERO_ROW * scale.amax(dim=1, keepdim=True).clamp_min(1e-300)
    z = torch.where(norm > tiny, z / norm.clamp_min(1e-300), torch.zeros((), dtype=x.dtype, device=x.device))
    bad = (~torch.isfinite(x).all(-1) & keep).any(-1)                             # [B] NaN/inf never turns finite
    z = torch.where(bad.view(-1, 1, 1), torch.zeros((), dtype=x.dtype, device=x.device), z)
    h = _spectrum_entropy(z)
    return torch.where(bad, torch.full_like(h, math.nan), h).to(torch.float32)


def entropy_matrix(x: Tensor) -> Tensor:
    """Matrix-based α = 1 (von Neumann) prompt entropy of every sequence: ``x [B, N, d] → [B]`` nats."""
    return entropy_matrix_masked(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))


def dataset_entropy(means: Tensor) -> Tensor:
    """Dataset entropy (Skean et al.): the matrix-based α = 1 entropy of the per-sequence mean states.

    ``means [N, P, d]`` (N sequences, P residual points) → ``[P]`` nats, ``0 ≤ H ≤ log N``."""
    x = as_float32(means).transpose(0, 1)                                         # [P, N, d]
    return entropy_matrix(x)


# ---- the logit lens -----------------------------------------------------------------------------------
def lens_head(lm):
    """``hidden [..., d] → logits [..., V]``: the model's final norm, unembedding and final-logit soft-cap."""
    from analysis.models.forward import softcap_logits

    norm = getattr(lm.adapter.base, "norm", None)
    out = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if norm is None or out is None:
        raise SelectionError("The logit lens needs the model's final norm and LM head, and this model exposes "
                             f"neither `{type(lm.adapter.base).__name__}.norm` nor an output embedding",
                             hint="drop logit-lens from --estimator/--also for this model")
    config = lm.model.config
    return lambda h: softcap_logits(out(norm(h)), config)


@functools.lru_cache(maxsize=32)
def sample_positions(b: int, t: int, m: int, seed: int = LENS_SEED) -> Tensor:
    """``[b, min(m, t)]`` sorted token positions per sequence, the same for a given ``(b, t, m, seed)``."""
    m = min(m, t)
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(t, generator=g)[:m] for _ in range(b)]).sort(dim=1).values


def _next_token_entropy(h: Tensor, head) -> Tensor:
    """``h [R, d]`` residual states → ``[R]`` entropy of softmax(head(h)), float32, in chunks of rows."""
    out = []
    for s in range(0, h.shape[0], LENS_CHUNK):
        logp = torch.log_softmax(as_float32(head(h[s:s + LENS_CHUNK])), dim=-1)    # [r, V]
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)


def entropy_logit_lens_masked(x: Tensor, keep: Tensor, head=None, lens_positions: int = LENS_POSITIONS,
                              seed: int = LENS_SEED, memo: dict | None = None) -> Tensor:
    """Mean next-token entropy of the sampled kept positions of each sequence (NaN when none is kept): ``[B]``.

    ``memo``: a dict the caller keeps for one residual point (the same ``x``); the per-position entropies are
    decoded once there and reused by the other sinks view, which only changes the mask."""
    if head is None:
        raise SelectionError("the logit lens needs the model's head (capture binds it)")
    b, t, d = x.shape
    pos = sample_positions(b, t, int(lens_positions), int(seed)).to(x.device)      # [B, m]
    m = pos.shape[1]
    key = ("logit-lens", tuple(x.shape), int(lens_positions), int(seed), id(head))
    h = memo.get(key) if memo is not None else None
    if h is None:
        picked = torch.gather(x, 1, pos.unsqueeze(-1).expand(b, m, d))            # [B, m, d]
        h = _next_token_entropy(picked.reshape(b * m, d), head).view(b, m)        # [B, m]
        if memo is not None:
            memo[key] = h
    k = torch.gather(keep, 1, pos).to(torch.float32)                              # [B, m]
    cnt = k.sum(1)
    return torch.where(cnt > 0, (h * k).sum(1) / cnt.clamp_min(1), torch.full_like(cnt, math.nan))


def entropy_logit_lens(x: Tensor, head=None, lens_positions: int = LENS_POSITIONS, seed: int = LENS_SEED,
                       memo: dict | None = None) -> Tensor:
    """Mean next-token entropy (nats) of ``lens_positions`` seeded positions per sequence through the head: ``[B]``."""
    return entropy_logit_lens_masked(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device), head,
                                     lens_positions, seed, memo)
