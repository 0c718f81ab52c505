"""The reference path's one read per point (analysis.measure.onepass.bucket_point) equals its PyTorch forms exactly:
Bucket entropy of every token, the token norms and the block's three dot products, on hostile values and at widths
that take every branch of ATen's sums (leftover vectors, the cascade of long rows)."""
from __future__ import annotations

import platform

import pytest
import torch

from analysis.measure import estimators as E, kernels, onepass

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the fused kernel is x86-only (float → int conversion)")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _states(d: int, seed: int = 0, b: int = 3, n: int = 37):
    g = torch.Generator().manual_seed(seed * 1000 + d)
    x, p, m = (torch.randn(b, n, d, generator=g) * torch.rand(b, n, 1, generator=g).pow(4) * 1e3 for _ in range(3))
    x[:, :, 0] = 2.5                                           # a constant column
    x[0, 3] *= 500.0                                           # a massive token
    x[1, 4, d // 2] = float("nan")
    x[2, 5, d - 1] = float("inf")
    x[2, 6] = 1e-42                                            # denormal squares
    p[0, 1, 0], m[1, 2, d - 1] = float("nan"), -3e38
    return x, p, m


def _point(x, p=None, m=None, strided=False):
    """``bucket_point`` into fresh outputs — or, ``strided``, into views of larger buffers as the capture passes them
    (a column of its ``[N, P]`` entropies and ``[B, P, T]`` norms, the first rows of its ``[3, B', T]`` dots)."""
    b, n, _ = x.shape
    if strided:
        h, norms, dots = torch.full((b, 3), 7.0)[:, 1], torch.full((b, 3, n), 7.0)[:, 1], torch.full((3, b + 2, n), 7.0)[:, :b]
    else:
        h, norms, dots = torch.full((b,), 7.0), torch.full((b, n), 7.0), torch.full((3, b, n), 7.0)
    dots = dots if p is not None else None
    done = onepass.bucket_point(x, 80, E.counts_plogp, h, norms, p, m, dots)
    return done, h, norms, dots


@pytest.mark.parametrize("d", [8, 24, 32, 96, 576, 1536])
@pytest.mark.parametrize("parallel", ["1", "0"])
@pytest.mark.parametrize("strided", [False, True])
def test_one_read_equals_the_pytorch_forms(monkeypatch, d, parallel, strided):
    monkeypatch.setenv("ENTROSCOPE_KERNELS_PARALLEL", parallel)
    x, p, m = _states(d)
    done, h, norms, dots = _point(x, p, m, strided)
    assert done, "the compiled path must run here (CPU, float32, x86)"
    monkeypatch.setenv("ENTROSCOPE_FUSED_KERNELS", "0")             # the PyTorch forms themselves
    assert not _point(x, p, m)[0]
    assert torch.equal(_bits(h), _bits(E.entropy_bucket(x)))
    assert torch.equal(_bits(norms), _bits(torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)))
    for i, (a, b) in enumerate(((p, m), (m, x), (p, x))):
        assert torch.equal(_bits(dots[i]), _bits((a * b).sum(-1))), i
    monkeypatch.setenv("ENTROSCOPE_FUSED_KERNELS", "1")
    done, h2, norms2, none = _point(x, strided=strided)                  # no block: no dots, the same rest
    assert done and none is None and torch.equal(_bits(h2), _bits(h)) and torch.equal(_bits(norms2), _bits(norms))


def test_resid_mid_without_the_dots_is_its_own_point():
    """``mid_out`` without a block's dots still reads ``mid`` itself (not ``x``): its entropy and norms."""
    x, _, m = _states(32)
    h, norms, hm, nm = torch.empty(3), torch.empty(3, 37), torch.empty(3), torch.empty(3, 37)
    assert onepass.bucket_point(x, 80, E.counts_plogp, h, norms, None, m, None, (hm, nm))
    assert torch.equal(_bits(hm), _bits(E.entropy_bucket(m))) and torch.equal(_bits(h), _bits(E.entropy_bucket(x)))
    assert torch.equal(_bits(nm), _bits(torch.linalg.vector_norm(m, dim=-1, dtype=torch.float32)))


def test_one_read_declines_what_it_does_not_cover_and_writes_nothing():
    x, p, m = _states(16)
    for args in ((x[:1],),                                       # one sequence: ATen splits its sum
                 (x[:, :, :13].contiguous(),),                    # a width with a scalar tail
                 (x.to(torch.bfloat16),),                         # not float32
                 (x.transpose(1, 2).contiguous().transpose(1, 2),),   # not contiguous
                 (x, p[:, :5], m[:, :5]),                         # the block's shapes differ
                 (x, p.to(torch.bfloat16), m)):
        done, h, norms, dots = _point(*args)
        assert not done and bool((h == 7).all()) and bool((norms == 7).all())
        assert dots is None or bool((dots == 7).all())


def test_a_width_whose_check_fails_uses_the_pytorch_forms(monkeypatch):
    """Where the once-per-width check against PyTorch fails, the capture computes each statistic apart (and gets
    the same numbers)."""
    from analysis.measure.capture import CaptureConfig, capture
    from analysis.testing import random_tokens, tiny_loaded

    lm = tiny_loaded(layers=2, hidden=32)
    ids = random_tokens(4, 20, seed=2)
    fast = capture(lm, ids, CaptureConfig(batch_size=2))
    monkeypatch.setitem(onepass._POINT_OK, (32, 80, E.counts_plogp), False)
    assert not _point(torch.randn(2, 5, 32))[0]
    slow = capture(lm, ids, CaptureConfig(batch_size=2))
    for a, b in ((fast.entropy["bucket"]["boundary"], slow.entropy["bucket"]["boundary"]),
                 (fast.norm_mid, slow.norm_mid), (fast.cos_layer, slow.cos_layer), (fast.cos_attn, slow.cos_attn)):
        assert torch.equal(_bits(a), _bits(b))


def test_the_check_catches_a_different_summation_order(monkeypatch):
    """The per-width check compares real bits: a kernel that sums its norms in another order fails it."""
    from analysis.measure import kernels_point as KP

    real = kernels._kernels()["point"]

    def reordered(x, *rest):
        real(x, *rest)
        norms = rest[5]                                   # the kernel's arguments: x, p, m, dots, bins, tab, norms, …
        norms[:] = torch.from_numpy(x).double().pow(2).sum(-1).sqrt().float().numpy()
    monkeypatch.setitem(kernels._kernels(), "point", reordered)
    monkeypatch.setattr(onepass, "_POINT_OK", {})
    assert not onepass._point_agrees(576, 80, E.counts_plogp)
    monkeypatch.setattr(onepass, "_POINT_OK", {})
    monkeypatch.setitem(kernels._kernels(), "point", real)
    assert onepass._point_agrees(576, 80, E.counts_plogp) and KP.KERNELS["point"] is real


def test_the_reference_capture_reads_each_block_once(monkeypatch):
    """With every token in one sinks view (the reference path), each block's end is one compiled read: ``resid_mid``
    and ``resid_post``'s Bucket entropies and norms, and the block's dots (the embeddings, one more); the separate
    kernels are not called."""
    from analysis.measure.capture import CaptureConfig, capture
    from analysis.testing import random_tokens, tiny_loaded

    real, used = onepass.bucket_point, []
    monkeypatch.setattr(onepass, "bucket_point", lambda *a, **k: used.append((a, real(*a, **k))) or used[-1][1])
    for name in ("cosine_dots", "bucket_plogp"):
        monkeypatch.setattr(kernels, name, lambda *a, **k: pytest.fail("a separate kernel ran"))
    norm = torch.linalg.vector_norm

    def token_norms(*a, **k):                        # the capture's per-point norms ask for float32; others may run
        assert k.get("dtype") is not torch.float32, "the token norms were computed apart"
        return norm(*a, **k)
    monkeypatch.setattr(torch.linalg, "vector_norm", token_norms)
    lm = tiny_loaded(layers=3, hidden=32)
    capture(lm, random_tokens(4, 40, seed=1), CaptureConfig(batch_size=2, sinks="keep"))
    assert len(used) == 2 * (3 + 1) and all(r for _, r in used)                    # 2 batches × (3 blocks + embeddings)
    # arguments: x, bins, plogp, h, norms, pre, mid, dots, mid_out
    assert sum(a[7] is not None and a[8] is not None for a, _ in used) == 2 * 3    # dots and resid_mid at every block


@pytest.mark.parametrize("b, t", [(2, 8), (8, 256), (3, 100), (8, 9)])
@pytest.mark.parametrize("strided", [False, True])
def test_block_cosines_equal_the_pytorch_means(b, t, strided):
    """The block's three mean cosines in one compiled call are PyTorch's ``(dot / (na·nb).clamp_min(1e-8)).mean(-1)``
    bit for bit: zero norms (the clamp), NaN and infinite values, into column views of larger buffers."""
    g = torch.Generator().manual_seed(b * t)
    dots = torch.randn(3, b, t, generator=g) * 100
    na, nm, nq = (torch.rand(b, t, generator=g) * 30 for _ in range(3))
    na[0, 0], nm[-1, 1], nq[0, 2] = 0.0, float("nan"), float("inf")
    dots[1, 0, 3], dots[2, -1, 4] = float("inf"), -0.0
    if strided:
        outs = tuple(torch.full((b, 3), 7.0)[:, 1] for _ in range(3))
        na, nm, nq = (torch.full((b, 2, t), 7.0).index_copy_(1, torch.tensor([0]), n.unsqueeze(1))[:, 0]
                      for n in (na, nm, nq))
    else:
        outs = tuple(torch.full((b,), 7.0) for _ in range(3))
    assert onepass.block_cosines(dots, na, nm, nq, *outs)
    for k, (x, y) in enumerate(((na, nm), (nm, nq), (na, nq))):
        assert torch.equal(_bits(outs[k]), _bits((dots[k] / (x * y).clamp_min(1e-8)).mean(-1))), k


def test_block_cosines_decline_short_rows_and_a_failed_check(monkeypatch):
    dots, n = torch.randn(3, 2, 7), torch.rand(2, 7)
    outs = tuple(torch.full((2,), 7.0) for _ in range(3))
    assert not onepass.block_cosines(dots, n, n, n, *outs)                   # fewer than 8 tokens
    assert not onepass.block_cosines(dots.to(torch.float64), n, n, n, *outs)
    monkeypatch.setitem(onepass._COS_OK, (2, 9), False)
    assert not onepass.block_cosines(torch.randn(3, 2, 9), *(torch.rand(2, 9),) * 3, *outs)
    assert all(bool((o == 7).all()) for o in outs)


def test_deferred_mid_points_keep_every_statistic(monkeypatch):
    """``resid_mid`` waits for its block's end to be read with ``resid_post``: with cosines on or off, with sampled
    MI states and a short last batch, every statistic equals the capture's PyTorch forms."""
    import dataclasses

    import analysis.measure.recorder as R
    from analysis.measure.capture import CaptureConfig, capture
    from analysis.testing import random_tokens, tiny_loaded

    real = R.get_estimator
    lm = tiny_loaded(layers=3, hidden=32)
    ids = random_tokens(5, 24, seed=4)
    for cosine in (True, False):
        cfg = CaptureConfig(batch_size=2, sinks="keep", cosine=cosine, state_tokens=20)
        fast = capture(lm, ids, cfg)
        with monkeypatch.context() as m:         # no point form (nothing waits) and every statistic in PyTorch
            m.setattr(R, "get_estimator", lambda name: dataclasses.replace(real(name), point=None))
            m.setenv("ENTROSCOPE_FUSED_KERNELS", "0")
            slow = capture(lm, ids, cfg)
        pairs = [(fast.entropy["bucket"][k], slow.entropy["bucket"][k]) for k in ("boundary", "mid")]
        pairs += [(fast.norm_boundary, slow.norm_boundary), (fast.norm_mid, slow.norm_mid),
                  (fast.massive["mid"], slow.massive["mid"]), (fast.states["mid"], slow.states["mid"]),
                  (fast.states["boundary"], slow.states["boundary"])]
        if cosine:
            pairs += [(fast.cos_attn, slow.cos_attn), (fast.cos_mlp, slow.cos_mlp), (fast.cos_layer, slow.cos_layer)]
        for a, b in pairs:
            assert torch.equal(_bits(a), _bits(b))
        assert fast.sinks["mid"].tolist() == slow.sinks["mid"].tolist()
