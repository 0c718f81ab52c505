"""Capture identities on tiny random models of every supported architecture."""
import threading

import pytest
import torch

from analysis.measure.capture import CaptureConfig, capture
from analysis.measure.estimators import entropy_bucket
from analysis.testing import random_tokens, tiny_loaded

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]


def _states(lm, ids, **kw):
    cfg = CaptureConfig(estimators={"bucket": {}}, batch_size=2, state_tokens=ids.numel(), **kw)
    return capture(lm, ids, cfg)


@pytest.mark.parametrize("arch", ARCHS)
def test_boundaries_match_hidden_states(arch):
    lm = tiny_loaded(arch, layers=3)
    ids = random_tokens(2, 16)
    st = _states(lm, ids)
    # all tokens kept (sorted positions per sequence) -> states rows = (seq, pos) in order
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    for l in range(3):  # hidden_states[l] == resid_pre[l] (the last entry is after the final norm)
        torch.testing.assert_close(st.states["boundary"][:, l].view(2, 16, -1), hs[l].float())


@pytest.mark.parametrize("arch", ARCHS)
def test_resid_post_equals_next_resid_pre(arch):
    lm = tiny_loaded(arch, layers=3)
    ids = random_tokens(2, 12)
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw, i=i: seen.__setitem__(("pre", i), (a or (kw["hidden_states"],))[0]), with_kwargs=True)
             for i, layer in enumerate(lm.adapter.layers)]
    hooks += [layer.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("post", i), o[0] if isinstance(o, tuple) else o))
              for i, layer in enumerate(lm.adapter.layers)]
    with torch.no_grad():
        lm.adapter.base(input_ids=ids)
    for h in hooks:
        h.remove()
    for l in range(2):
        assert torch.equal(seen[("post", l)], seen[("pre", l + 1)])


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_zeroed_attention_gives_mid_equal_pre(arch):
    lm = tiny_loaded(arch, layers=2)
    torch.nn.init.zeros_(lm.adapter.attn(1).o_proj.weight)
    st = _states(lm, random_tokens(2, 16))
    torch.testing.assert_close(st.states["mid"][:, 1], st.states["boundary"][:, 1])
    assert not torch.allclose(st.states["mid"][:, 0], st.states["boundary"][:, 0])
    # the attention ΔH of the zeroed block is exactly zero
    assert torch.equal(st.entropy["bucket"]["mid"][:, 1], st.entropy["bucket"]["boundary"][:, 1])


def test_gemma_mid_includes_post_attention_norm():
    lm = tiny_loaded("gemma3", layers=2)
    layer = lm.adapter.layers[0]
    torch.nn.init.normal_(layer.post_attention_layernorm.weight, std=2.0)
    out = {}
    h = layer.self_attn.register_forward_hook(lambda m, a, o: out.__setitem__("attn", o[0]))
    ids = random_tokens(2, 16)
    st = _states(lm, ids)
    h.remove()
    pre = st.states["boundary"][:, 0].view(2, 16, -1)
    expected = pre + layer.post_attention_layernorm(out["attn"]).float()
    torch.testing.assert_close(st.states["mid"][:, 0].view(2, 16, -1), expected)


def test_entropies_are_per_sequence_of_the_captured_states():
    lm = tiny_loaded("llama", layers=2)
    ids = random_tokens(3, 20)
    st = _states(lm, ids)
    b = st.states["boundary"][:, 2].view(3, 20, -1)
    torch.testing.assert_close(st.entropy["bucket"]["boundary"][:, 2], entropy_bucket(b))


def test_batch_size_does_not_change_results():
    lm = tiny_loaded("qwen2", layers=3)
    ids = random_tokens(5, 24)
    a = capture(lm, ids, CaptureConfig(estimators={"knn": {"k": 4}}, batch_size=1))
    b = capture(lm, ids, CaptureConfig(estimators={"knn": {"k": 4}}, batch_size=4))
    torch.testing.assert_close(a.entropy["knn"]["mid"], b.entropy["knn"]["mid"], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(a.cos_layer, b.cos_layer)


def test_stop_keeps_finished_batches_and_hooks_removed():
    lm = tiny_loaded("llama", layers=2)
    ids = random_tokens(6, 16)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2  # two batches, then stop

    st = capture(lm, ids, CaptureConfig(batch_size=2), should_stop=stop)
    assert st.n_done == 4 and not st.completed and st.entropy["bucket"]["mid"].shape[0] == 4
    for layer in lm.adapter.layers:
        assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_hooks_ignore_other_threads():
    """A forward in another thread (another app session) during capture must not write into our stats."""
    lm = tiny_loaded("llama", layers=2)
    ids = random_tokens(4, 16)
    ref = capture(lm, ids, CaptureConfig(batch_size=1))
    stop = threading.Event()

    def other():
        while not stop.is_set():
            with torch.no_grad():
                lm.model(random_tokens(1, 16, seed=9))

    t = threading.Thread(target=other)
    t.start()
    try:
        got = capture(lm, ids, CaptureConfig(batch_size=1))
    finally:
        stop.set()
        t.join()
    torch.testing.assert_close(got.entropy["bucket"]["boundary"], ref.entropy["bucket"]["boundary"])


def test_nonfinite_activations_are_counted():
    lm = tiny_loaded("llama", layers=2)
    with torch.no_grad():
        lm.adapter.layers[1].mlp.down_proj.weight.fill_(float("inf"))
    st = capture(lm, random_tokens(2, 16), CaptureConfig())
    assert st.nonfinite["boundary"] > 0


@pytest.mark.parametrize("skip", [False, True])
def test_cosines_and_norms_match_direct_computation(skip):
    from analysis.measure.estimators import mean_cosine, rms_norm

    lm = tiny_loaded("qwen3", layers=3)
    ids = random_tokens(2, 16)
    st = _states(lm, ids, skip_first_token=skip)
    t = 15 if skip else 16  # the kept states are exactly the positions the statistics use
    for l in range(3):
        pre = st.states["boundary"][:, l].reshape(2, t, -1)
        mid = st.states["mid"][:, l].reshape(2, t, -1)
        post = st.states["boundary"][:, l + 1].reshape(2, t, -1)
        torch.testing.assert_close(st.cos_attn[:, l], mean_cosine(pre, mid))
        torch.testing.assert_close(st.cos_mlp[:, l], mean_cosine(mid, post))
        torch.testing.assert_close(st.cos_layer[:, l], mean_cosine(pre, post))
        torch.testing.assert_close(st.norm_mid[:, l], rms_norm(mid))
        torch.testing.assert_close(st.norm_boundary[:, l + 1], rms_norm(post))


def test_last_token_pairwise_cosines_for_angular_distance():
    lm = tiny_loaded("llama", layers=3)
    ids = random_tokens(5, 12)
    st = capture(lm, ids, CaptureConfig(batch_size=2, state_tokens=ids.numel()))    # batches of 2, 2, 1
    last = st.states["boundary"].view(5, 12, 4, -1)[:, -1]                          # [N, L+1, d]
    u = last / last.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(st.last_cos, (u @ u.transpose(1, 2)).clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_preview_shows_the_finished_sequences_and_progress_moves_within_a_batch(monkeypatch):
    import analysis.measure.capture as cap

    monkeypatch.setattr(cap, "PROGRESS_EVERY_S", 0.0)
    lm = tiny_loaded("llama", layers=4)
    ids = random_tokens(6, 16)
    previews, reports = [], []
    full = capture(lm, ids, CaptureConfig(batch_size=2), progress=lambda f, m: reports.append((f, m)),
                   preview=previews.append, preview_every_s=0.0)
    # one preview after every batch but the last, each the exact prefix of the final statistics
    assert [p.n_done for p in previews] == [2, 4]
    for p in previews:
        torch.testing.assert_close(p.entropy["bucket"]["boundary"], full.entropy["bucket"]["boundary"][: p.n_done])
        assert p.states is None
    fracs = [f for f, _ in reports]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    within = [m for f, m in reports if "block" in m]
    assert within and len(fracs) > 3                              # more often than once per batch
    assert any(0 < f < 2 / 6 for f in fracs)                      # inside the first batch
