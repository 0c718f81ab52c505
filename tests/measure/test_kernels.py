"""The fused Bucket counts (analysis.measure.kernels) equal the PyTorch form exactly, on the values that make
float → int conversion and ranges tricky: NaN, ±inf, huge and denormal ranges, constant columns, ties on bin
edges, sequences with no kept token, strided views and given (robust) ranges."""
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
