"""The compiled kernels (analysis.measure.kernels) equal their PyTorch forms exactly.

Bucket counts: on the values that make float → int conversion and ranges tricky — NaN, ±inf, huge and denormal
ranges, constant columns, ties on bin edges, sequences with no kept token, strided views and given (robust) ranges.
The k-th neighbour: ties at rank k, ±0, ±inf, NaN and denormal distances, every k."""
from __future__ import annotations

import platform

import pytest
import torch

from analysis.measure import estimators as E, kernels, sinks as S

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the fused kernel is x86-only (float → int conversion)")


def _hostile(seed: int, b: int = 3, n: int = 37, d: int = 29):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g) * 4
    x[:, :, 0] = 2.5                                           # constant column
    x[:, :, 1] = torch.round(x[:, :, 1])                       # ties, some on bin edges
    x[0, 3, 2] = 1e30                                          # one massive value stretches a range
    x[0, :, 3] = torch.linspace(0, 1, n) * 1e-39               # a denormal range (scale overflows to inf)
    x[1, 4, 4] = float("nan")
    x[1, 5, 5], x[2, 6, 5] = float("inf"), float("-inf")
    x[2, :, 6] = float("inf")                                  # a column of +inf
    x[2, 7, 7] = -3e38
    x[1, :, 8] = torch.arange(n, dtype=torch.float32) * 2.0 ** 20   # exact multiples: bin-edge ties
    # a range whose scale differs by one ulp between reciprocal(r)·bins (PyTorch's bins / r) and a true division,
    # and a value that the difference moves across a bin edge (80 bins: bin 0 against bin 1)
    r = torch.tensor(0.904680073261261, dtype=torch.float32)
    x[:, :, 9] = 0.0
    x[:, 1, 9], x[:, 2, 9] = r, r / 80
    keep = torch.rand(b, n, generator=g) > 0.2
    keep[:, 1:3] = True
    keep[2] = False                                            # a sequence that keeps no token
    keep[1, 4] = True                                          # the NaN token is kept
    return x, keep


def _torch_form(monkeypatch, fn, *args):
    monkeypatch.setenv("ENTROSCOPE_FUSED_KERNELS", "0")
    try:
        return fn(*args)
    finally:
        monkeypatch.setenv("ENTROSCOPE_FUSED_KERNELS", "1")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bins", [80, 7, 1])
@pytest.mark.parametrize("parallel", ["1", "0"])
def test_fused_counts_equal_the_pytorch_form_on_hostile_values(monkeypatch, seed, bins, parallel):
    """Both drivers (sequences split over threads, and serial) give the PyTorch form's entropies bit for bit."""
    monkeypatch.setenv("ENTROSCOPE_KERNELS_PARALLEL", parallel)
    x, keep = _hostile(seed)
    assert kernels.bucket_counts(x, bins) is not None, "the fused path must run here (CPU, float32, x86)"
    views = {"whole": (x, keep), "strided": (x[:, 1:], keep[:, 1:]), "one-sequence": (x[:1], keep[:1])}
    for name, (xv, kv) in views.items():
        for label, fn, args in (("plain", E.entropy_bucket, (xv, bins)),
                                ("masked", S.entropy_bucket_masked, (xv, kv, bins)),
                                ("masked-all", S.entropy_bucket_masked, (xv, torch.ones_like(kv), bins)),
                                ("robust", S.entropy_bucket_robust_masked, (xv, kv, bins))):
            got = fn(*args)
            want = _torch_form(monkeypatch, fn, *args)
            assert got.shape == want.shape, (name, label)
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=f"{name} {label} bins={bins}")


def test_fused_counts_are_the_histogram():
    """Counts directly: every kept token lands in exactly one bin of every dimension, the max in the last."""
    x = torch.tensor([[[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [4.0, 5.0]]])   # [1, 4, 2]
    c = kernels.bucket_counts(x, 4)
    assert c.tolist() == [[[1, 1, 1, 1], [4, 0, 0, 0]]]                  # constant column: all in bin 0
    keep = torch.tensor([[True, True, False, True]])
    assert kernels.bucket_counts(x, 4, keep).tolist() == [[[1, 1, 0, 1], [3, 0, 0, 0]]]


def test_the_pytorch_form_is_used_where_the_kernel_does_not_apply(monkeypatch):
    x = torch.randn(2, 9, 5)
    assert kernels.bucket_counts(x.double(), 80) is None                       # not float32
    assert kernels.bucket_counts(x.to(torch.bfloat16), 80) is None
    monkeypatch.setenv("ENTROSCOPE_FUSED_KERNELS", "0")
    assert kernels.bucket_counts(x, 80) is None


def test_the_parallel_driver_runs_on_a_thread_safe_layer():
    """With two intra-op threads and several sequences the sequences are split over threads, on numba's OpenMP or
    TBB layer, never on ``workqueue`` (which aborts on the concurrent launches the app makes)."""
    import numba

    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: the serial driver runs")
    x = torch.randn(4, 20, 8)
    assert kernels._parallel(x)
    kernels.bucket_counts(x, 80)
    assert numba.threading_layer() in ("omp", "tbb")


def test_concurrent_callers_get_their_own_counts():
    """Analyses run from several threads at once (app sessions): each call's counts are its own."""
    from concurrent.futures import ThreadPoolExecutor

    xs = [torch.randn(3, 50, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    want = [kernels.bucket_counts(x, 80) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: kernels.bucket_counts(x, 80), xs * 4))
    for i, g in enumerate(got):
        assert torch.equal(g, want[i % len(xs)])


def test_warm_compiles_every_variant_an_analysis_uses():
    """``make setup`` warms the kernels: after ``warm()`` the serial and split kernels hold signatures for whole
    and strided states, and the reference path's one read for the capture's column views (numba then serves them
    from its on-disk cache in later processes)."""
    from analysis.measure.kernels_numba import KERNELS
    from analysis.measure.kernels_point import KERNELS as POINT
    from analysis.measure.warm import warm

    assert warm() == "compiled kernels ready"
    for name in ("plain", "masked") + (("plain_par", "masked_par") if kernels._safe_layer() else ()):
        layouts = {sig[0].layout for sig in KERNELS[name].signatures}
        assert {"C", "A"} <= layouts, (name, layouts)
    for name in ("point", "point_par"):              # norms (argument 6): whole and a column view
        assert {sig[6].layout for sig in POINT[name].signatures} >= {"C", "A"}, name
    assert {sig[4].layout for sig in POINT["cosines"].signatures} >= {"C", "A"}


def _distance_rows(seed: int):
    """Fused-distance-like matrices ``[B, N, N]``: random, rounded (ties everywhere), masked columns (+inf),
    a NaN, ±0 pairs, denormals; the diagonal -inf as in knn_radii."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for trial in range(40):
        b, n = 1 + trial % 3, 2 + (trial * 7) % 60
        d2 = torch.randn(b, n, n, generator=g).abs() + (trial % 4)
        if trial % 3 == 0:
            d2 = torch.round(d2 * 3)
        if trial % 5 == 0:
            d2[:, :, : n // 3] = float("inf")
        if trial % 7 == 0:
            d2[0, 0, n - 1] = float("nan")
        if trial % 11 == 0:
            d2[:, :, 0], d2[:, :, n - 1] = -0.0, 0.0
        if trial % 13 == 0:
            d2 = d2 * 1e-40
        if trial % 17 == 0:
            d2[:, :, -2:] = float("-inf")                     # several -inf: ranks 0..2 tied at -inf
        d2.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        out.append(d2)
    return out


@pytest.mark.parametrize("split", [True, False])
def test_kth_smallest_is_topks_last_column(split):
    """Values and columns equal ``torch.topk(d2, k + 1, largest=False)[..., k]`` bit for bit, ties included."""
    tied_rows = 0
    for d2 in _distance_rows(0):
        n = d2.shape[-1]
        for k in sorted({0, 1, min(5, n - 1), n - 1}):
            got = kernels.kth_smallest(d2, k, split=split)
            assert got is not None
            top = torch.topk(d2, k + 1, dim=-1, largest=False)
            want_v, want_i = top.values[..., k].contiguous(), top.indices[..., k]
            assert torch.equal(got[0].view(torch.int32), want_v.view(torch.int32)), (tuple(d2.shape), k)
            assert torch.equal(got[1], want_i), (tuple(d2.shape), k)
            tied_rows += int((d2 == want_v.unsqueeze(-1)).sum(-1).gt(1).sum())
    assert tied_rows > 100          # the fallback to topk's own choice is exercised, not just the kernel


def test_knn_uses_the_kernel_and_matches_topk(monkeypatch):
    """KNN entropy through the kernel equals it through topk, on repeated states (ties) and massive tokens."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 48, 16, generator=g)
    x[:, 10:30] = x[:, 2:3]                                    # a state repeated more than k times
    x[0, 0] *= 300.0
    keep = torch.rand(3, 48, generator=g) > 0.1
    calls = []
    real = kernels.kth_smallest
    monkeypatch.setattr(kernels, "kth_smallest", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = [E.entropy_knn(x, k=5), S.entropy_knn_masked(x, keep, k=5), E.entropy_knn(x, k=5, dedup=True)]
    assert calls, "the compiled selection must run on the CPU"
    monkeypatch.setenv("ENTROSCOPE_FUSED_KERNELS", "0")
    want = [E.entropy_knn(x, k=5), S.entropy_knn_masked(x, keep, k=5), E.entropy_knn(x, k=5, dedup=True)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_plogp_cells_equal_counts_then_pytorch_plogp(seed):
    """The kernel's looked-up ``p log p`` cells are the PyTorch form applied to the kernel's counts, cell for cell and
    bit for bit — every token (``n`` = T) and kept tokens (``n`` = each sequence's kept count, 1 where none)."""
    x, keep = _hostile(seed)
    b, n, d = x.shape
    cells = kernels.bucket_plogp(x, 80, E.counts_plogp)
    assert cells is not None and cells.dtype == torch.float32 and cells.shape == (b, d, 80)
    want = E.counts_plogp(kernels.bucket_counts(x, 80).view(-1), n).view(b, d, 80)
    assert torch.equal(cells.view(torch.int32), want.view(torch.int32))
    for kv in (keep, torch.ones_like(keep)):
        cells = kernels.bucket_plogp(x, 80, S._table_plogp, kv)
        counts = kernels.bucket_counts(x, 80, kv)
        want = S._cells_plogp(counts, kv.sum(1).clamp_min(1).to(torch.float32).view(-1, 1, 1))
        assert torch.equal(cells.view(torch.int32), want.view(torch.int32))


def test_plogp_table_is_refused_where_pytorch_loops_disagree(monkeypatch):
    """A ``p log p`` form whose value for a count depends on where PyTorch computes it (vector loop or scalar tail)
    gets no table: the kernel declines and the estimators count, then run the form itself — same result."""
    def fickle(c: torch.Tensor, n: int) -> torch.Tensor:          # differs on one-element tensors (the scalar loop)
        v = E.counts_plogp(c, n)
        return v + 1 if c.numel() == 1 else v

    assert kernels.plogp_table(fickle, 37) is None
    x, _ = _hostile(0)
    assert kernels.bucket_plogp(x, 80, fickle) is None
    table = kernels.plogp_table(E.counts_plogp, 37)
    assert table is not None and table.shape == (38,) and kernels.plogp_table(E.counts_plogp, 37) is table  # cached
    monkeypatch.setattr(kernels, "plogp_table", lambda plogp, n: None)   # every table refused: counts + PyTorch
    monkeypatch.setattr(kernels, "_ROWS", {})
    assert kernels.bucket_plogp(x, 80, E.counts_plogp) is None
    got = E.entropy_bucket(x)
    monkeypatch.undo()
    assert torch.equal(got, E.entropy_bucket(x))


@pytest.mark.parametrize("d", [8, 13, 32, 100, 576, 1536, 4099])
@pytest.mark.parametrize("parallel", ["1", "0"])
def test_cosine_dots_equal_pytorch_row_sums(monkeypatch, d, parallel):
    """The block's three token dot products equal PyTorch's ``(a * b).sum(-1)`` bit for bit — every branch of ATen's
    summation (scalar tail, leftover vectors, the level cascade at long rows) and hostile values — from token 0
    and from token 1 (``--sinks first``)."""
    monkeypatch.setenv("ENTROSCOPE_KERNELS_PARALLEL", parallel)
    g = torch.Generator().manual_seed(d)
    p, m, q = (torch.randn(3, 9, d, generator=g) * torch.rand(3, 9, 1, generator=g).pow(4) * 1e3 for _ in range(3))
    p[0, 1, 0], m[1, 2, d - 1], q[2, 3, d // 2] = float("nan"), float("inf"), -3e38
    p[1, 4] = 1e-42                                                  # denormal products
    for t0 in (0, 1):
        got = kernels.cosine_dots(p, m, q, t0)
        assert got is not None and got.shape == (3, 3, 9 - t0)
        for i, (a, b) in enumerate(((p, m), (m, q), (p, q))):
            want = (a[:, t0:] * b[:, t0:]).sum(-1)
            assert torch.equal(got[i].view(torch.int32), want.view(torch.int32)), (d, t0, i)


def test_cosine_dots_decline_what_they_do_not_cover():
    x = torch.randn(2, 5, 16)
    assert kernels.cosine_dots(x.to(torch.bfloat16), x, x) is None               # not float32
    assert kernels.cosine_dots(x.transpose(1, 2).contiguous().transpose(1, 2), x, x) is None   # not contiguous
    assert kernels.cosine_dots(x, x[:, :4], x[:, :4]) is None                     # shapes differ


def test_capture_uses_the_compiled_cosines(monkeypatch):
    """A real capture takes the compiled path for every block's cosines (the bit-identity of the result is
    ``test_kernels_identical``'s capture test)."""
    from analysis.measure.capture import CaptureConfig, capture
    from analysis.testing import random_tokens, tiny_loaded

    real, used = kernels.cosine_dots, []
    monkeypatch.setattr(kernels, "cosine_dots", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    lm = tiny_loaded(layers=3, hidden=32)
    capture(lm, random_tokens(4, 40, seed=1), CaptureConfig(batch_size=2, sinks="first"))
    assert len(used) == 2 * 3 and all(u is not None for u in used)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("parallel", ["1", "0"])
def test_both_views_in_one_call_equal_each_view(monkeypatch, seed, parallel):
    """Bucket's two sinks views from one call are each view's own kernel, and the PyTorch forms, bit for bit: the
    sequences counted once for both (every token kept, finite ranges: ``finite`` with ``mixed``'s first sequence and
    ``ones``) and those counted again (hostile values, excluded tokens, none kept)."""
    monkeypatch.setenv("ENTROSCOPE_KERNELS_PARALLEL", parallel)
    x, keep = _hostile(seed)
    g = torch.Generator().manual_seed(seed)
    finite = torch.randn(3, 37, 29, generator=g) * 3
    finite[:, :, 1] = torch.round(finite[:, :, 1])              # bin-edge ties
    finite[:, :, 2] = -0.0                                       # a constant column of -0
    finite[1, 5, 3] = 1e30                                       # a massive value, kept
    mixed = torch.ones_like(keep)
    mixed[1:, 0] = False                                         # sequence 0 keeps every token, the others not
    for xv, kv in ((x, keep), (x[:, 1:], keep[:, 1:]), (x, torch.ones_like(keep)), (x, torch.zeros_like(keep)),
                   (finite, mixed), (finite, torch.ones_like(keep)), (finite[:, 1:], mixed[:, 1:])):
        both = kernels.bucket_plogp_views(xv, 80, E.counts_plogp, S._table_plogp, kv)
        assert both is not None
        assert torch.equal(both[0].view(torch.int32), kernels.bucket_plogp(xv, 80, E.counts_plogp).view(torch.int32))
        assert torch.equal(both[1].view(torch.int32), kernels.bucket_plogp(xv, 80, S._table_plogp, kv).view(torch.int32))
        h_all, h_kept = S.entropy_bucket_views(xv, kv)
        torch.testing.assert_close(h_all, _torch_form(monkeypatch, E.entropy_bucket, xv), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(h_kept, _torch_form(monkeypatch, S.entropy_bucket_masked, xv, kv), rtol=0, atol=0,
                                   equal_nan=True)


def test_capture_computes_buckets_two_views_in_one_call(monkeypatch):
    """With both sinks views (the app's default), Bucket's two views come from one compiled call per point (the
    values' identity to the frozen kernels is ``test_kernels_identical``'s capture test)."""
    from analysis.measure.capture import CaptureConfig, capture
    from analysis.testing import random_tokens, tiny_loaded

    real, used = kernels.bucket_plogp_views, []
    monkeypatch.setattr(kernels, "bucket_plogp_views", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    lm = tiny_loaded(layers=3, hidden=32)
    stats = capture(lm, random_tokens(4, 40, seed=1), CaptureConfig(batch_size=2, sinks="exclude", alt_view=True))
    assert len(used) == 2 * (2 * 3 + 1) and all(u is not None for u in used)      # 2 batches × 7 points
    assert stats.entropy_alt is not None and stats.alt_mode == "keep"


def test_sink_bookkeeping_is_the_same_batched_or_per_point():
    """With no view excluding sinks (``keep``, ``first``) the sink rule runs once per batch over every point; with one
    (``exclude``) it runs at each point. Sink counts, massive-activation ratios and the first sequence's flags are the
    same either way, bit for bit — including three identical massive tokens where the rule's cap keeps two (a tie)."""
    from analysis.measure.capture import CaptureConfig, capture
    from analysis.testing import random_tokens, tiny_loaded

    lm = tiny_loaded(layers=3, hidden=32)

    def massive(mod, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, 4:7] = h[:, 4:5] * 500.0                      # three identical massive states: a tie at the cap (2 of 40)
        h[:, 9] *= 300.0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    for i in (1, 2):
        lm.adapter.layers[i].register_forward_hook(massive)
    ids = random_tokens(5, 40, seed=7)
    runs = {m: capture(lm, ids, CaptureConfig(batch_size=2, sinks=m)) for m in ("keep", "first", "exclude")}
    ref = runs["exclude"]
    assert int(ref.sinks["boundary"].sum()) > 0
    for m in ("keep", "first"):
        for k in ref.sinks:
            assert torch.equal(runs[m].sinks[k], ref.sinks[k]), (m, k)
        for k in ref.massive:
            assert torch.equal(runs[m].massive[k].view(torch.int32), ref.massive[k].view(torch.int32)), (m, k)
        assert torch.equal(runs[m].first_flags, ref.first_flags), m


def test_sixteen_bit_cells_hold_the_longest_sequence_and_longer_ones_decline(monkeypatch):
    """The kernels count into 16-bit cells: a sequence of ``MAX_TOKENS`` tokens all in one bin counts exactly; a longer
    one is left to the PyTorch form (same result)."""
    n = kernels.MAX_TOKENS
    x = torch.zeros(1, n, 3)
    x[0, :, 1] = torch.arange(n, dtype=torch.float32)                 # a spread column beside two constant ones
    counts = kernels.bucket_counts(x, 80)
    assert counts[0, 0, 0] == n and counts[0, 2, 0] == n and int(counts[0, 1].sum()) == n
    xs, keep = _hostile(0)
    monkeypatch.setattr(kernels, "MAX_TOKENS", xs.shape[1] - 1)
    assert kernels.bucket_counts(xs, 80) is None and kernels.bucket_plogp(xs, 80, E.counts_plogp) is None
    assert kernels.bucket_plogp_views(xs, 80, E.counts_plogp, S._table_plogp, keep) is None
    got = (E.entropy_bucket(xs), S.entropy_bucket_masked(xs, keep))
    monkeypatch.undo()
    torch.testing.assert_close(got[0], E.entropy_bucket(xs), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(got[1], S.entropy_bucket_masked(xs, keep), rtol=0, atol=0, equal_nan=True)


def test_reused_cells_are_one_buffer_per_thread_and_fresh_cells_are_not():
    """``reuse=True`` fills this thread's scratch buffer (no new pages per point: a new 1.5 MB buffer per point cost
    ≈ 18,000 page faults per batch); another thread gets its own; without ``reuse`` every call has new cells. The
    values are the same either way."""
    import threading

    x, keep = _hostile(1)
    fresh = kernels.bucket_plogp(x, 80, E.counts_plogp)
    a = kernels.bucket_plogp(x, 80, E.counts_plogp, reuse=True)
    a_bits = a.clone()
    b = kernels.bucket_plogp(x, 80, S._table_plogp, keep, reuse=True)
    assert b.data_ptr() == a.data_ptr()                              # the same buffer, overwritten
    assert torch.equal(a_bits.view(torch.int32), fresh.view(torch.int32))
    assert torch.equal(b.view(torch.int32), kernels.bucket_plogp(x, 80, S._table_plogp, keep).view(torch.int32))
    assert kernels.bucket_plogp(x, 80, E.counts_plogp).data_ptr() != fresh.data_ptr()
    other = []
    t = threading.Thread(target=lambda: other.append(kernels.bucket_plogp(x, 80, E.counts_plogp, reuse=True)))
    t.start()
    t.join()
    assert other[0].data_ptr() != a.data_ptr()
    both = kernels.bucket_plogp_views(x, 80, E.counts_plogp, S._table_plogp, keep, reuse=True)
    assert both[0].data_ptr() == a.data_ptr() and both[1].data_ptr() != a.data_ptr()
