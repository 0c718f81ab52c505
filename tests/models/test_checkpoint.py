"""Checkpoints that plain transformers loads exactly (zeroed output projections for dropped sub-blocks),
mergekit YAML that runs as written, and the llama.cpp command."""
import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from analysis.cli.main import main
from analysis.errors import SaveError, SelectionError
from analysis.export import kept_ranges, llama_cpp_command, mergekit_for, mergekit_yaml, model_source
from analysis.models.loading import count_params, load_model, load_pruned, wrap_model
from analysis.models.plan import Plan
from analysis.models.surgery import DroppedBlock, layer_status, pruned_view, save_pruned
from analysis.testing import random_tokens, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]
PLANS = {"attention": Plan(drop_attn=[1, 4]), "mlp": Plan(drop_mlp=[0, 3]),
         "mixed": Plan(drop_attn=[0, 3], drop_mlp=[3, 4], drop_layers=[2])}
X = random_tokens(2, 40, seed=5)          # longer than gemma's sliding window (32)


def logits(model, x=X):
    with torch.inference_mode():
        return model(x).logits


def plain_load(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def n_dropped(model):
    return sum(isinstance(m, DroppedBlock) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", list(PLANS))
def test_plain_from_pretrained_equals_pruned_view(arch, kind, tmp_path):
    base = tiny_model(arch, layers=6)
    plan = PLANS[kind]
    ref = logits(pruned_view(base, plan))
    out = save_pruned(wrap_model(base, tiny_tokenizer(), "tiny"), plan, tmp_path / "ck")
    plain = plain_load(out)
    assert torch.equal(logits(plain), ref)                        # bit-identical, no new weights
    assert n_dropped(plain) == 0
    ours = load_model(str(out), device="cpu").model                 # Entroscope still removes them physically
    assert torch.equal(logits(ours), ref)
    assert count_params(ours) < count_params(plain) and n_dropped(ours) > 0
    cfg = AutoConfig.from_pretrained(out)                            # drops recorded in transformers' form
    saved_drops = {j: sorted(c.skip) for j, c in enumerate(cfg.per_layer_config) if c.skip}
    status = layer_status(ours)
    assert saved_drops == {s["layer"]: sorted((["self_attn"] if not s["attn"] else []) + (["mlp"] if not s["mlp"] else []))
                           for s in status if not (s["attn"] and s["mlp"])}
    assert ours.config.to_dict().get("per_layer_config") in (None, {})   # physical now: no stale metadata


def test_projection_biases_are_zeroed_too(tmp_path):
    base = wrap_model(tiny_model("llama", layers=4, attention_bias=True, mlp_bias=True), tiny_tokenizer()).model
    for p in base.parameters():                                     # non-zero biases everywhere
        if p.ndim == 1:
            p.data.add_(0.1)
    plan = Plan(drop_attn=[1], drop_mlp=[2])
    out = save_pruned(base, plan, tmp_path / "ck")
    sd = load_file(str(out / "model.safetensors"))
    assert not sd["model.layers.1.self_attn.o_proj.bias"].any() and not sd["model.layers.2.mlp.down_proj.bias"].any()
    assert torch.equal(logits(plain_load(out)), logits(pruned_view(base, plan)))


def test_gemma_sandwich_norms_map_zero_to_zero():
    base = tiny_model("gemma3", layers=2)
    layer = base.model.layers[0]
    for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm):
        norm.weight.data.normal_()                                   # any learned scale
        assert not norm(torch.zeros(1, 3, 64)).any()


def test_inexact_plans_are_refused_with_the_reason(tmp_path):
    class Scaled(nn.Linear):
        pass

    base = tiny_model("llama", layers=3)
    old = base.model.layers[1].self_attn.o_proj
    base.model.layers[1].self_attn.o_proj = Scaled(old.in_features, old.out_features, bias=False)
    with pytest.raises(SaveError, match="not a plain torch Linear"):
        save_pruned(base, Plan(drop_attn=[1]), tmp_path / "a")
    save_pruned(base, Plan(drop_layers=[1]), tmp_path / "ok")        # whole layers need no zeroing

    class Shift(nn.Module):
        def forward(self, x):
            return x + 1

    gemma = tiny_model("gemma3", layers=3)
    for layer in gemma.model.layers:
        layer.post_feedforward_layernorm = Shift()
    with pytest.raises(SaveError, match="does not map zero to zero"):
        save_pruned(gemma, Plan(drop_mlp=[0]), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pruning_a_pruned_model_again_keeps_earlier_drops(tmp_path):
    base = tiny_model("gemma3", layers=6)
    first = save_pruned(wrap_model(base, tiny_tokenizer(), "t"), Plan(drop_attn=[1], drop_mlp=[3]), tmp_path / "a")
    lm = load_pruned(first, device="cpu")                           # attention 1 and MLP 3 physically gone
    plan = Plan(drop_attn=[4], drop_layers=[0])
    out = save_pruned(lm, plan, tmp_path / "b")
    ref = logits(pruned_view(lm, plan))
    assert torch.equal(logits(plain_load(out)), ref)                 # missing tensors written as zeros
    assert torch.equal(logits(load_model(str(out), device="cpu").model), ref)
    assert Plan.load(out / "entroscope-plan.json").drop_attn == [1, 4]


def test_edited_projection_is_kept_not_removed(tmp_path, caplog):
    base = tiny_model("llama", layers=4)
    out = save_pruned(base, Plan(drop_attn=[2]), tmp_path / "ck", tokenizer=tiny_tokenizer())
    sd = load_file(str(out / "model.safetensors"))
    sd["model.layers.2.self_attn.o_proj.weight"] = torch.full_like(sd["model.layers.2.self_attn.o_proj.weight"], 0.01)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})  # e.g. fine-tuned after export
    with caplog.at_level(logging.WARNING, logger="analysis.models.checkpoint"):
        ours = load_model(str(out), device="cpu").model
    assert "is not zero; keeping it" in caplog.text
    assert torch.allclose(logits(ours), logits(plain_load(out)), atol=1e-5)
    assert all(s["attn"] for s in layer_status(ours))


# ---- mergekit / llama.cpp ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("src") / "model"
    tiny_model("qwen2", layers=6).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return load_model(str(d), device="cpu", dtype="fp32")


def check_passthrough_schema(text: str, num_layers: int, dropped: list[int]) -> dict:
    """mergekit's documented passthrough form: slices → sources → model + half-open layer_range."""
    doc = yaml.safe_load(text)
    assert set(doc) == {"slices", "merge_method", "dtype"} and doc["merge_method"] == "passthrough"
    assert doc["dtype"] in ("float32", "bfloat16", "float16")
    kept = []
    for sl in doc["slices"]:
        assert set(sl) == {"sources"} and len(sl["sources"]) == 1
        src = sl["sources"][0]
        assert set(src) == {"model", "layer_range"} and isinstance(src["model"], str)
        a, b = src["layer_range"]
        assert 0 <= a < b <= num_layers
        kept += range(a, b)                                          # half-open: a .. b-1
    assert kept == [i for i in range(num_layers) if i not in dropped]
    return doc


def test_mergekit_yaml_names_the_real_source_and_dtype(local_lm, tmp_path):
    text = mergekit_for(local_lm, Plan(drop_layers=[0, 3, 4]))
    doc = check_passthrough_schema(text, 6, [0, 3, 4])
    src = doc["slices"][0]["sources"][0]["model"]
    assert src == model_source(local_lm)[0] and (__import__("pathlib").Path(src) / "config.json").is_file()
    assert doc["dtype"] == "float32"
    assert text.startswith("# mergekit passthrough config written by Entroscope")
    assert "Reproduces:" in text and "[0, 3, 4]" in text and "half-open" in text
    assert kept_ranges(6, [0, 3, 4]) == [(1, 3), (5, 6)]
    bf = mergekit_yaml(Plan(drop_layers=[1]), "org/model", 4, torch.bfloat16)
    assert check_passthrough_schema(bf, 4, [1])["dtype"] == "bfloat16"
    with pytest.raises(SelectionError, match="whole layers"):
        mergekit_for(local_lm, Plan(drop_attn=[1]))
    with pytest.raises(SelectionError, match="built in memory"):
        model_source(wrap_model(tiny_model("llama", layers=2), tiny_tokenizer()))


def test_llama_cpp_command(local_lm):
    cmd = llama_cpp_command(Plan(drop_layers=[4, 2]), local_lm)   # a safetensors model: convert the checkpoint
    assert "'<your-llama.cpp>/convert_hf_to_gguf.py' '<pruned-checkpoint>' --outtype f32" in cmd
    assert model_source(local_lm)[0] not in cmd                     # no local paths in printed commands
    assert "convert_hf_to_gguf.py" in llama_cpp_command(Plan(drop_mlp=[1]), local_lm)   # zeroed: exact in GGUF too


def test_cli_prune_records_drops_and_writes_runnable_exports(local_lm, tmp_path, capsys):
    src = local_lm.name
    out = tmp_path / "sub"
    assert main(["prune", "--model", src, "--drop-attn", "1", "--drop-mlp", "4", "--out", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["zeroed_subblocks"] == {"1": ["attn"], "4": ["mlp"]} and "command" not in summary["llama_cpp"]
    assert str(out) in summary["llama_cpp"]["convert"]
    manifest = json.loads((out / "entroscope-manifest.json").read_text())
    assert manifest["results"]["checkpoint"]["zeroed_subblocks"] == {"1": ["attn"], "4": ["mlp"]}
    plain_load(out)
    yml = tmp_path / "m.yaml"
    assert main(["prune", "--model", src, "--drop-layers", "2,3", "--out", str(tmp_path / "w"), "--quiet", "--dtype", "fp32",
                 "--mergekit", str(yml)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "prune_layers" not in summary["llama_cpp"] and "convert_hf_to_gguf.py" in summary["llama_cpp"]["convert"]
    doc = check_passthrough_schema(yml.read_text(), 6, [2, 3])
    folder = tmp_path / "m-mergekit-source"        # qwen2 has layer_types: mergekit reads the pruned config
    assert doc["slices"][0]["sources"][0]["model"] == str(folder.resolve()) and doc["dtype"] == "float32"
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 4


# ---- the real embedded model ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_subblock_checkpoints_load_exactly_with_plain_transformers(smollm2, tmp_path):
    ids = torch.tensor([smollm2.tokenizer.encode("Entropy falls, then rises, through the layers of a model.")])
    for name, plan in {"attention": Plan(drop_attn=[20, 25]), "mlp": Plan(drop_mlp=[18, 22]),
                       "mixed": Plan(drop_attn=[21], drop_mlp=[24], drop_layers=[27])}.items():
        ref = logits(pruned_view(smollm2, plan), ids)
        out = save_pruned(smollm2, plan, tmp_path / name)
        plain = plain_load(out)
        assert torch.equal(logits(plain, ids), ref), name
        n_plain = count_params(plain)
        del plain
        ours = load_model(str(out), device="cpu").model
        assert torch.equal(logits(ours, ids), ref) and count_params(ours) < n_plain, name
        del ours


@pytest.mark.slow
def test_smollm2_exports_point_at_the_cached_checkpoint(smollm2):
    from pathlib import Path

    text = mergekit_for(smollm2, Plan(drop_layers=[20, 21]))
    doc = check_passthrough_schema(text, 30, [20, 21])
    src = Path(doc["slices"][0]["sources"][0]["model"])
    assert (src / "config.json").is_file() and (src / "model.safetensors").is_file()
    assert doc["dtype"] == {torch.float32: "float32", torch.bfloat16: "bfloat16"}[smollm2.dtype]
    cmd = llama_cpp_command(Plan(drop_layers=[20, 21]), smollm2)
    assert cmd == "llama-quantize --prune-layers 20,21 SmolLM2-135M-Instruct.Q4_1.gguf pruned.gguf COPY"
