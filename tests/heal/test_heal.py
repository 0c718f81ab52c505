"""Healing after pruning (analysis.heal) on tiny random models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from analysis.heal import HEAL_METHODS, HealError, compare, heal, healed_lm, save_healed
from analysis.heal.linear import NormalEquations, fit_maps, fold, gaps
from analysis.models.loading import weights_hash
from analysis.models.plan import Plan
from analysis.models.surgery import pruned_view
from analysis.testing import random_tokens, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def linear_gap_model(hidden: int = 32, seed: int = 0):
    """A tiny Llama whose layer 2 is exactly linear in the MLP output of layer 1.

    The residual stream is split into two halves: embeddings, attention outputs of layers 0-1 and the MLP
    output of layer 0 live in the first half; the MLP output M of layer 1 lives in the second half. Layer 2
    has a zero attention and an MLP that is a plain linear map ``x ↦ x P A`` (P keeps the second half) with
    an identity pre-norm, so resid_post[2] − resid_mid[1] = M + M A = M (I + A): dropping layer 2 leaves a
    gap that one linear map on M closes exactly.
    """
    lm = tiny_loaded("llama", layers=4, hidden=hidden, seed=seed)
    m, h = lm.model.model, hidden // 2
    with torch.no_grad():
        m.embed_tokens.weight[:, h:] = 0
        for i in (0, 1):
            m.layers[i].self_attn.o_proj.weight[h:] = 0
        m.layers[0].mlp.down_proj.weight[h:] = 0
        m.layers[1].mlp.down_proj.weight[:h] = 0
        m.layers[2].self_attn.o_proj.weight.zero_()
        lin = nn.Linear(hidden, hidden, bias=False)
        a = torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(5)) / hidden ** 0.5
        a[:h] = 0                                             # rows: only the second half of x matters
        lin.weight.copy_(a.T)                                 # lin(x) = x A
    lin.requires_grad_(False)
    m.layers[2].mlp = lin
    m.layers[2].post_attention_layernorm = nn.Identity()
    return lm


def test_registry_semantics():
    for name in ("none", "linear", "distill"):
        m = HEAL_METHODS[name]
        assert m.needs and m.changes and m.granularities
    with pytest.raises(HealError, match="Unknown healing method"):
        heal(tiny_loaded(), Plan(drop_layers=[1]), "magic", random_tokens(2, 8))
    with pytest.raises(HealError, match="no option"):
        heal(tiny_loaded(), Plan(drop_layers=[1]), "linear", random_tokens(2, 8), steps=3)
    with pytest.raises(HealError, match="calibration tokens"):
        heal(tiny_loaded(), Plan(drop_layers=[1]), "linear", None)


def test_gaps():
    assert gaps(Plan(drop_layers=[2, 3]), 6) == [(4, 7)]
    assert gaps(Plan(drop_mlp=[2], drop_attn=[3]), 6) == [(5, 6)]
    assert gaps(Plan(drop_layers=[0], drop_attn=[4]), 6) == [(0, 1), (8, 8)]
    assert gaps(Plan(), 6) == []


def test_linear_recovers_exactly_linear_gap():
    lm = linear_gap_model()
    plan = Plan(drop_layers=[2])
    ids = random_tokens(3, 24, seed=3)
    before = _state(lm.model)
    unhealed = (_logits(pruned_view(lm.model, plan), ids) - _logits(lm.model, ids)).abs().max()
    healed = heal(lm, plan, "linear", random_tokens(8, 24), ridge=1e-9)
    err = (_logits(healed.model, ids) - _logits(lm.model, ids)).abs().max()
    assert unhealed > 1e-2                                     # dropping layer 2 really hurts
    assert err < 1e-4, err                                     # fp32 precision
    assert healed.report["gaps"][0]["folded_into"] == "layers.1.mlp.down_proj"
    assert healed.report["gaps"][0]["relative_residual"] < 1e-8
    assert _same_state(lm.model, before)                       # base model untouched


def test_nothing_dropped_is_identity():
    lm = tiny_loaded(layers=4)
    ids = random_tokens(2, 16)
    h = heal(lm, Plan(), "linear", random_tokens(2, 16))
    assert h.report["gaps"] == []
    assert torch.equal(_logits(h.model, ids), _logits(lm.model, ids))
    d = heal(lm, Plan(), "distill", random_tokens(2, 16))
    assert torch.equal(_logits(d.model, ids), _logits(lm.model, ids))


def test_fold_algebra_down_and_o_proj():
    """Folding T into a projection equals multiplying that sub-block's output by T."""
    lm = tiny_loaded(layers=3, hidden=32)
    t = torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.randn(5, 64)
    view = pruned_view(lm.model, Plan())
    fold(view, [0, 1, 2], 3, t)                                # MLP of layer 1 → its down_proj
    old, new = lm.model.model.layers[1].mlp.down_proj, view.model.layers[1].mlp.down_proj
    assert torch.allclose(new(x), (old(x).double() @ t).float(), atol=1e-4)
    fold(view, [0, 1, 2], 4, t)                                # attention of layer 2 → o_proj
    x2 = torch.randn(5, 32)
    old, new = lm.model.model.layers[2].self_attn.o_proj, view.model.layers[2].self_attn.o_proj
    assert torch.allclose(new(x2), (old(x2).double() @ t).float(), atol=1e-4)
    assert new is not old and lm.model.model.layers[2].self_attn.o_proj is old


def test_linear_subblock_drops_and_layer0():
    lm = tiny_loaded(layers=5)
    tok, ev = random_tokens(16, 32), random_tokens(2, 32, seed=9)
    h = heal(lm, Plan(drop_mlp=[2], drop_attn=[4]), "linear", tok)
    assert [g["folded_into"] for g in h.report["gaps"]] == ["layers.2.self_attn.o_proj", "layers.3.mlp.down_proj"]
    assert compare(lm, h.model, ev)["perplexity"] > 0
    with pytest.raises(HealError, match="layer 0"):
        heal(lm, Plan(drop_layers=[0, 1]), "linear", tok)
    part = heal(lm, Plan(drop_layers=[0, 3]), "linear", tok)   # layer-0 gap left unhealed, the other folded
    assert len(part.report["gaps"]) == 1 and "layer 0" in part.report["not_applied"][0]["reason"]


def test_linear_refuses_gemma_sandwich_norms():
    lm = tiny_loaded("gemma3", layers=4)
    with pytest.raises(HealError, match="sandwich norm"):
        heal(lm, Plan(drop_layers=[2]), "linear", random_tokens(2, 16))


def test_accumulator_memory_does_not_grow():
    lm = tiny_loaded(layers=4)
    plan = Plan(drop_layers=[2])
    small, _, n1 = fit_maps(lm, plan, random_tokens(2, 16))
    large, _, n2 = fit_maps(lm, plan, random_tokens(24, 16))
    (e1,), (e2,) = small.values(), large.values()
    assert (n1, n2) == (2, 24) and e2.rows == 12 * e1.rows
    assert e1.nbytes == e2.nbytes == 2 * 64 * 64 * 8
    held = [v for v in vars(e2).values() if isinstance(v, torch.Tensor)]
    assert sum(v.numel() for v in held) == 2 * 64 * 64          # nothing per token is kept
    eq = NormalEquations(4, 4)
    for _ in range(50):
        eq.update(torch.randn(7, 4), torch.randn(7, 4))
    assert eq.nbytes == 2 * 16 * 8 and eq.rows == 350


def test_healed_checkpoint_roundtrip(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_loaded(layers=5)
    plan = Plan(drop_layers=[2, 3])
    h = heal(lm, plan, "linear", random_tokens(16, 32))
    out = save_healed(lm, h, tmp_path / "healed")
    re = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    ev = random_tokens(2, 32, seed=4)
    assert re.config.num_hidden_layers == 3
    assert torch.allclose(_logits(re, ev), _logits(h.model, ev), atol=1e-5)
    a, b = compare(lm, h.model, ev), compare(lm, re.eval(), ev)
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-6)
    assert (out / "entroscope-heal.json").is_file()


def test_subblock_healed_checkpoint_loads(tmp_path):
    from analysis.models.loading import load_pruned

    lm = tiny_loaded(layers=5)
    h = heal(lm, Plan(drop_mlp=[2]), "linear", random_tokens(8, 32))
    out = save_healed(lm, h, tmp_path / "sub")
    re = load_pruned(out, device="cpu")
    ev = random_tokens(2, 32, seed=4)
    assert torch.allclose(_logits(re.model, ev), _logits(h.model, ev), atol=1e-5)


def test_distill_reduces_kl_and_merges():
    lm = tiny_loaded(layers=4)
    before = weights_hash(lm.model)
    plan = Plan(drop_layers=[2])
    tok = random_tokens(8, 32)
    unhealed = compare(lm, pruned_view(lm.model, plan), tok)["kl"]
    seen = []
    h = heal(lm, plan, "distill", tok, steps=30, lr=3e-3, progress=lambda f, m: seen.append(f))
    assert compare(lm, h.model, tok)["kl"] < 0.8 * unhealed
    assert h.report["kl_last"] < h.report["kl_first"]
    names = [n for n, _ in h.model.named_modules()]
    assert not any("lora" in n.lower() for n in names)
    assert all(type(m).__module__.startswith(("torch", "transformers")) for m in h.model.modules())
    assert seen[-1] == 1.0
    assert weights_hash(lm.model) == before


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_distill_trains_when_the_caller_turned_autograd_off(context):
    """bench/models.py (and any caller) may run under no_grad / inference_mode: distillation still trains."""
    lm = tiny_loaded(layers=4)
    tok = random_tokens(4, 16)
    ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    plan = Plan(drop_layers=[2])
    unhealed = compare(lm, pruned_view(lm.model, plan), tok)["kl"]
    with ctx:
        h = heal(lm, plan, "distill", tok, steps=3, lr=3e-3)
        assert not torch.is_grad_enabled()              # the caller's mode is restored
    assert compare(lm, h.model, tok)["kl"] != unhealed    # the adapters were trained and merged


def test_distill_stop_flag():
    import threading

    lm = tiny_loaded(layers=4)
    ev = threading.Event()
    calls = []

    def progress(f, m):
        calls.append(f)
        if len(calls) == 3:
            ev.set()

    h = heal(lm, Plan(drop_layers=[2]), "distill", random_tokens(4, 16), steps=40, progress=progress, stop=ev)
    assert h.report["steps"] == 3 and h.report["stopped"]


def test_what_if_leaves_base_bit_identical():
    lm = tiny_loaded(layers=5)
    state = _state(lm.model)
    ids = random_tokens(2, 16)
    ref = _logits(lm.model, ids)
    for method in ("linear", "distill"):
        opts = {"steps": 2} if method == "distill" else {}
        h = heal(lm, Plan(drop_layers=[2]), method, random_tokens(4, 16), **opts)
        hl = healed_lm(lm, h)
        assert hl.fingerprint != lm.fingerprint and hl.model is not lm.model
        _logits(hl.model, ids)
    assert _same_state(lm.model, state)
    assert torch.equal(_logits(lm.model, ids), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_loss_value_and_gradient_match_the_whole_tensor_formula(dtype, temperature):
    """Row-blocked KL with its closed-form gradient = autograd through the whole-tensor log-softmax formula."""
    from analysis.heal.distill import kl_loss

    g = torch.Generator().manual_seed(3)
    t = (torch.randn(2, 13, 501, generator=g) * 3).to(dtype)      # 26 rows: not a multiple of the row block
    s0 = (torch.randn(2, 13, 501, generator=g) * 3).to(dtype)
    s_ref, s_new = s0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    lt = torch.log_softmax(t.float() / temperature, -1)
    ls = torch.log_softmax(s_ref.float() / temperature, -1)
    ref = (lt.exp() * (lt - ls)).sum(-1).mean() * temperature ** 2
    ref.backward()
    got = kl_loss(t, s_new, temperature)
    got.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5) and got.item() > 0
    assert s_new.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(s_new.grad.float(), s_ref.grad.float(), rtol=tol, atol=tol * s_ref.grad.abs().max().item())
    assert kl_loss(t, t.clone().requires_grad_(True), temperature).item() == pytest.approx(0, abs=1e-6)
