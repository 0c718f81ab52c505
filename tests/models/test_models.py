"""Model loading: local directories, error messages, adapters."""
import json

import pytest
import torch

from analysis.models.adapters import adapter_for
from analysis.errors import ModelLoadError, UnsupportedArchitectureError
from analysis.models.device import resolve_device
from analysis.models.loading import count_params, describe, load_model, weights_hash
from analysis.testing import save_tiny_checkpoint, tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), layers=2)


def test_load_local_directory(tiny_dir):
    lm = load_model(str(tiny_dir), device="cpu")
    assert lm.source == "local" and lm.num_layers == 2 and lm.adapter.spec.family == "llama"
    assert lm.manifest()["params"] == count_params(lm.model)
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_load_local_bf16(tiny_dir):
    lm = load_model(str(tiny_dir), device="cpu", dtype="bf16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16


def test_unknown_hub_id_offline_is_clear():
    with pytest.raises(ModelLoadError, match="not an embedded name"):
        load_model("no-such-org/no-such-model", offline=True)


def test_missing_directory_and_bad_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope") + "/", device="cpu")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOTAGGUF" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_non_causal_model_is_refused(tmp_path):
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=260).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal"):
        load_model(str(tmp_path))


def test_remote_code_model_needs_opt_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "my_custom_lm", "architectures": ["MyLM"],
        "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyLM"}}))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(str(tmp_path))


def test_unsupported_architecture_names_it(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260))
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel.*gpt2"):
        adapter_for(m)


def test_bad_device_and_dtype():
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        load_model("smollm2", dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_weights_hash_detects_change():
    m = tiny_model("llama", layers=1)
    h = weights_hash(m)
    assert weights_hash(m) == h
    with torch.no_grad():
        m.model.norm.weight[0] += 1
    assert weights_hash(m) != h


def test_describe_embedded_before_loading():
    d = describe("smollm2")
    assert d["layers"] == 30 and d["params"] > 1e8 and d["memory_gb"]["fp32"] > d["memory_gb"]["bf16"]


@pytest.mark.slow
def test_real_smollm2_loads_from_cache_fast(smollm2):
    import time

    t = time.perf_counter()
    again = load_model("smollm2", device="cpu")
    assert again.from_cache and again.num_layers == 30
    assert time.perf_counter() - t < 60  # generous: the benchmark measures the real figure
    ids = again.tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = again.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in again.tokenizer.decode(out[0])


def test_auto_dtype_on_cpu_follows_the_instruction_set_not_a_timing():
    from analysis.models.device import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("flags : fpu sse2 avx2 fma\n")
    assert not cpu_has_native_bf16("")
