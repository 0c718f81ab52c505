"""What-if views, physical removal, KV cache after attention drops, save/load of pruned models."""
import os
import threading

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from analysis.models.loading import count_params, load_model, load_pruned, weights_hash, wrap_model
from analysis.models.plan import Plan
from analysis.models.surgery import (DroppedBlock, SaveError, apply_plan, layer_status, prune_copy, pruned_view,
                                     save_pruned, what_if)
from analysis.testing import random_tokens, tiny_model, tiny_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


X = random_tokens(2, 24, seed=3)


def logits(model, x=X):
    with torch.inference_mode():
        return model(x).logits


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def base(request):
    return tiny_model(request.param, layers=6)


def test_view_leaves_base_bit_identical(base):
    h0, ref = weights_hash(base), logits(base)
    cfg0 = base.config.to_dict()
    layers0 = base.model.layers
    attn_idx0 = [layer.self_attn.layer_idx for layer in layers0]
    plan = Plan(drop_attn=[0, 3], drop_mlp=[4], drop_layers=[2])
    with what_if(base, plan) as view:
        out = logits(view)
        assert not torch.equal(out, ref)
        assert len(view.model.layers) == 5 and view.config.num_hidden_layers == 5
        base_ptrs = {p.data_ptr() for p in base.parameters()}
        assert all(p.data_ptr() in base_ptrs for p in view.parameters())      # shared, never copied
        assert count_params(view) < count_params(base)
    assert weights_hash(base) == h0 and torch.equal(logits(base), ref)
    assert base.config.to_dict() == cfg0 and base.model.layers is layers0 and len(layers0) == 6
    assert [layer.self_attn.layer_idx for layer in layers0] == attn_idx0
    assert all("forward" not in layer.__dict__ for layer in layers0)
    assert not any(isinstance(m, DroppedBlock) for m in base.modules())


def test_concurrent_views_do_not_interfere():
    base = tiny_model("llama", layers=4)
    x = X[:1, :12]
    plans = [Plan(drop_attn=[1, 2]), Plan(drop_layers=[0], drop_mlp=[3])]
    refs = [logits(pruned_view(base, p), x) for p in plans]
    ref0 = logits(base, x)
    errors = []

    def worker(i):
        for _ in range(40):
            view = pruned_view(base, plans[i])
            if not torch.equal(logits(view, x), refs[i]):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for _ in range(20):
        if not torch.equal(logits(base, x), ref0):
            errors.append("base")
    for t in threads:
        t.join()
    assert errors == []


def _capture(view, i, mid_norm):
    seen = {}
    layer = view.model.layers[i]
    h1 = layer.register_forward_pre_hook(lambda m, a: seen.__setitem__("resid_pre", a[0]))
    h2 = layer.register_forward_hook(lambda m, a, o: seen.__setitem__("resid_post", o))
    h3 = getattr(layer, mid_norm).register_forward_pre_hook(lambda m, a: seen.__setitem__("resid_mid", a[0]))
    logits(view)
    for h in (h1, h2, h3):
        h.remove()
    return seen


@pytest.mark.parametrize("arch, mid_norm", [("llama", "post_attention_layernorm"),
                                            ("gemma3", "pre_feedforward_layernorm")])
def test_skipped_attention_contributes_exactly_zero(arch, mid_norm):
    base = tiny_model(arch, layers=4)
    seen = _capture(pruned_view(base, Plan(drop_attn=[2])), 2, mid_norm)
    assert torch.equal(seen["resid_mid"], seen["resid_pre"])
    assert not torch.equal(seen["resid_post"], seen["resid_mid"])          # the MLP still runs


@pytest.mark.parametrize("arch, mid_norm", [("llama", "post_attention_layernorm"),
                                            ("gemma3", "pre_feedforward_layernorm")])
def test_skipped_mlp_passes_resid_mid_through(arch, mid_norm):
    base = tiny_model(arch, layers=4)
    ref = _capture(pruned_view(base, None), 2, mid_norm)                   # unpruned: resid_mid of layer 2
    seen = _capture(pruned_view(base, Plan(drop_mlp=[2])), 2, "input_layernorm")
    assert torch.equal(seen["resid_post"], ref["resid_mid"])


def test_skipped_attention_runs_no_norm_or_attention():
    base = tiny_model("llama", layers=4)
    view = pruned_view(base, Plan(drop_attn=[1]))
    layer = view.model.layers[1]
    assert isinstance(layer.self_attn, DroppedBlock) and isinstance(layer.input_layernorm, DroppedBlock)
    called = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: called.append(name))
             for name, m in layer.named_modules() if name]
    logits(view)
    for h in hooks:
        h.remove()
    assert called and all(n == "post_attention_layernorm" or n.startswith("mlp") for n in called)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_physical_removal_matches_view_and_reloads(arch, tmp_path):
    overrides = {"mlp_layer_types": ["dense"] * 6} if arch == "llama" else {}
    base = tiny_model(arch, layers=6, **overrides)
    h0 = weights_hash(base)
    plan = Plan(drop_layers=[1, 4])
    pruned = prune_copy(base, plan)
    assert torch.equal(logits(pruned), logits(pruned_view(base, plan)))
    assert weights_hash(base) == h0
    assert not {p.data_ptr() for p in pruned.parameters()} & {p.data_ptr() for p in base.parameters()}
    assert pruned.config.num_hidden_layers == 4
    for key in ("layer_types", "mlp_layer_types"):
        full = getattr(base.config, key, None)
        if full is not None:
            assert list(getattr(pruned.config, key)) == [full[i] for i in (0, 2, 3, 5)]
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2, 3]
    plm = prune_copy(wrap_model(base, tiny_tokenizer(), "tiny"), plan)
    assert plm.num_layers == 4 and plm.info["plan"]["drop_layers"] == [1, 4] and plm.tokenizer is not None
    out = save_pruned(wrap_model(base, tiny_tokenizer(), "tiny"), plan, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(logits(reloaded), logits(pruned))
    assert (out / "entroscope-plan.json").is_file() and (out / "tokenizer.json").is_file()


def test_apply_plan_in_place_on_owned_model():
    model = tiny_model("llama", layers=4)
    assert apply_plan(model, Plan(drop_attn=[0], drop_mlp=[0], drop_layers=[3])) is model
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert layer_status(model) == [{"layer": 0, "attn": True, "mlp": True}, {"layer": 1, "attn": True, "mlp": True}]


def _keys(path):
    return set(load_file(str(path / "model.safetensors")))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_subblock_plan_save_load_round_trip(arch, tmp_path):
    base = tiny_model(arch, layers=6)
    lm = wrap_model(base, tiny_tokenizer(), "tiny")
    plan = Plan(drop_attn=[0, 3], drop_mlp=[4], drop_layers=[2])
    ref = logits(pruned_view(base, plan))
    out = save_pruned(lm, plan, tmp_path / "sub")
    sd = load_file(str(out / "model.safetensors"))
    # saved structure: layers 0 1 3 4 5 → new 0..4; attention dropped in new 0 and 2, MLP in new 3: every
    # tensor is stored (plain from_pretrained initialises nothing), the output projections are zero
    for i in (0, 2):
        assert not sd[f"model.layers.{i}.self_attn.o_proj.weight"].any()
        assert sd[f"model.layers.{i}.self_attn.q_proj.weight"].any()
    assert not sd["model.layers.3.mlp.down_proj.weight"].any() and sd["model.layers.3.self_attn.o_proj.weight"].any()
    assert not [k for k in sd if k.startswith("model.layers.5.")]
    back = load_pruned(out, device="cpu")
    assert torch.equal(logits(back.model), ref)
    assert back.info["plan"]["drop_layers"] == [2]
    assert [s["attn"] for s in layer_status(back)] == [False, True, False, True, True]
    assert torch.equal(logits(load_model(str(out), device="cpu").model), ref)


def test_v1_checkpoint_without_dropped_weights_still_loads(tmp_path):
    """Checkpoints written before the zeroed format (dropped sub-blocks' weights left out) keep loading."""
    import json

    from safetensors.torch import save_file

    base = tiny_model("llama", layers=4)
    plan = Plan(drop_attn=[1], drop_mlp=[2])
    out = save_pruned(wrap_model(base, tiny_tokenizer(), "tiny"), plan, tmp_path / "v1")
    sd = load_file(str(out / "model.safetensors"))
    gone = ("model.layers.1.self_attn.", "model.layers.1.input_layernorm.", "model.layers.2.mlp.",
            "model.layers.2.post_attention_layernorm.")
    save_file({k: v for k, v in sd.items() if not k.startswith(gone)}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    stored = json.loads((out / "entroscope-plan.json").read_text())
    stored["source"]["checkpoint"]["format"] = "entroscope-pruned-v1"
    (out / "entroscope-plan.json").write_text(json.dumps(stored))
    assert torch.equal(logits(load_pruned(out, device="cpu").model), logits(pruned_view(base, plan)))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cache_generation_after_attention_drops(arch):
    base = tiny_model(arch, layers=6)
    plan = Plan(drop_attn=[0, 4], drop_layers=[2])
    pruned = prune_copy(base, plan)
    prompt = random_tokens(1, 30, seed=5)                    # + 12 new tokens > gemma's sliding window (32)
    with torch.inference_mode():
        cached = pruned.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
        nocache = pruned.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
        viewed = pruned_view(base, plan).generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
        cache = pruned(prompt, use_cache=True).past_key_values
    assert torch.equal(cached, nocache) and torch.equal(viewed, cached)
    status = layer_status(pruned)
    for s, layer_cache in zip(status, cache.layers):
        assert (getattr(layer_cache, "keys", None) is None) == (not s["attn"])
    assert sum(getattr(c, "keys", None) is not None for c in cache.layers) == 3


def test_save_errors_leave_base_untouched(tmp_path):
    base = tiny_model("llama", layers=4)
    h0 = weights_hash(base)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "config.json").write_text("{}")
    with pytest.raises(SaveError, match="already exists"):
        save_pruned(base, Plan(drop_layers=[1]), tmp_path / "exists")
    with pytest.raises(SaveError, match="outside the allowed folder"):
        save_pruned(base, Plan(drop_layers=[1]), tmp_path / ".." / "escape", root=tmp_path)
    (tmp_path / "notckpt").mkdir()
    (tmp_path / "notckpt" / "thesis.txt").write_text("precious")
    with pytest.raises(SaveError, match="did not write"):
        save_pruned(base, Plan(drop_layers=[1]), tmp_path / "notckpt", overwrite=True)
    assert (tmp_path / "notckpt" / "thesis.txt").read_text() == "precious"
    with pytest.raises(SaveError, match="did not write"):           # a config.json alone is not our marker
        save_pruned(base, Plan(drop_layers=[1]), tmp_path / "exists", overwrite=True, root=tmp_path)
    out = save_pruned(base, Plan(drop_layers=[1]), tmp_path / "ours", root=tmp_path)
    out = save_pruned(base, Plan(drop_layers=[2]), tmp_path / "ours", overwrite=True, root=tmp_path)
    assert (out / "model.safetensors").is_file() and (out / ".entroscope-output.json").is_file()
    if os.geteuid() != 0:                                    # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(SaveError, match="not writable"):
                save_pruned(base, Plan(drop_layers=[1]), ro / "out")
        finally:
            ro.chmod(0o700)
    assert weights_hash(base) == h0 and len(base.model.layers) == 4
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
