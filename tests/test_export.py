"""Exports that run unedited: mergekit for architectures with per-layer config fields (checked with the real
mergekit when it is installed), llama.cpp routes that keep each layer's type or refuse, and prune never
aborting because an optional export cannot express a plan."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from analysis.cli.main import main
from analysis.export import llama_cpp_routes, mergekit_for, per_layer_fields, write_mergekit
from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.testing import save_tiny_checkpoint, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("mergekit_check", ROOT / "bench" / "mergekit_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MERGEKIT = _bench().mergekit_binary()
needs_mergekit = pytest.mark.skipif(MERGEKIT is None, reason="mergekit-yaml not installed (set ENTROSCOPE_MERGEKIT "
                                                             "to it or its virtual env)")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Tiny local checkpoints: llama (no per-layer fields), qwen2 and gemma3 (layer_types)."""
    root = tmp_path_factory.mktemp("src")
    return {a: load_model(str(save_tiny_checkpoint(root / a, a, layers=6)), device="cpu", dtype="fp32")
            for a in ("llama", "qwen2", "gemma3")}


def test_per_layer_fields():
    assert per_layer_fields(tiny_config("llama", layers=6), 6) == []
    assert per_layer_fields(tiny_config("qwen2", layers=6), 6) == ["layer_types"]
    assert per_layer_fields(tiny_config("gemma3", layers=6), 6) == ["layer_types"]


def test_mergekit_yaml_reads_a_pruned_config_folder_when_needed(local, tmp_path):
    plain = yaml.safe_load(mergekit_for(local["llama"], Plan(drop_layers=[1, 2])))
    assert plain["slices"][0]["sources"][0]["model"] == local["llama"].name     # no folder needed
    assert write_mergekit(local["llama"], Plan(drop_layers=[1]), tmp_path / "l.yaml")["config_dir"] is None
    assert "WARNING" in mergekit_for(local["qwen2"], Plan(drop_layers=[1]))    # text only: says it would stop
    res = write_mergekit(local["gemma3"], Plan(drop_layers=[1, 2]), tmp_path / "g.yaml")
    folder = Path(res["config_dir"])
    cfg = json.loads((folder / "config.json").read_text())
    src = json.loads((Path(local["gemma3"].name) / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4 and cfg["layer_types"] == [src["layer_types"][i] for i in (0, 3, 4, 5)]
    assert (folder / "model.safetensors").resolve() == (Path(local["gemma3"].name) / "model.safetensors").resolve()
    doc = yaml.safe_load((tmp_path / "g.yaml").read_text())
    assert [s["sources"][0]["layer_range"] for s in doc["slices"]] == [[0, 1], [3, 6]]
    assert {s["sources"][0]["model"] for s in doc["slices"]} == {str(folder.resolve())}


@needs_mergekit
@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_real_mergekit_output_equals_our_checkpoint(local, tmp_path, arch):
    """mergekit 0.1.5 stops without config.json on the plain YAML; with ours it rebuilds our checkpoint exactly."""
    lm = local[arch]
    plain = tmp_path / "plain.yaml"
    plain.write_text(mergekit_for(lm, Plan(drop_layers=[1, 2])))
    run = subprocess.run([MERGEKIT, str(plain), str(tmp_path / "bad"), "--quiet"], capture_output=True, text=True)
    assert run.returncode != 0 and "layer_types" in run.stderr and not (tmp_path / "bad" / "config.json").exists()
    res = _bench().check(lm.name, [1, 2], tmp_path, MERGEKIT)
    assert res["config_folder"] and res["tensors_equal"] and res["logits_equal"], res


def test_llama_cpp_routes_keep_layer_types_or_refuse(local):
    g = local["gemma3"]                               # tiny gemma3: layer_types, llama.cpp's fixed period is 6
    assert "by position" in llama_cpp_routes(Plan(drop_layers=[1]), g)["refused"]
    q = llama_cpp_routes(Plan(drop_layers=[1], drop_mlp=[3]), local["qwen2"], "ck")
    assert q["refused"] is None and q["command"] is None and "convert_hf_to_gguf.py' ck --outtype f32" in q["convert"]


def test_llama_cpp_gemma3_pattern_aligned_plans_pass():
    from analysis.export import llama_cpp_layer_problem

    cfg = tiny_config("gemma3", layers=12)
    cfg.layer_types = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(12)]
    assert llama_cpp_layer_problem(cfg, Plan(drop_layers=[2, 3, 4, 5, 6, 7]), 12) is None   # a whole period
    assert llama_cpp_layer_problem(cfg, Plan(drop_mlp=[5]), 12) is None                     # nothing moves
    assert "11->10" in llama_cpp_layer_problem(cfg, Plan(drop_layers=[0]), 12)


def test_subblock_plan_with_mergekit_still_saves(local, tmp_path, capsys):
    out, yml = tmp_path / "sub", tmp_path / "m.yaml"
    assert main(["prune", "--model", local["llama"].name, "--drop-attn", "1", "--mergekit", str(yml),
                 "--out", str(out), "--quiet"]) == 0
    io = capsys.readouterr()
    assert [ln for ln in io.err.splitlines() if ln.startswith("mergekit:")] == [
        next(ln for ln in io.err.splitlines() if "mergekit: not written" in ln)]
    assert (out / "config.json").is_file() and not yml.exists()
    size = json.loads(io.out.strip().splitlines()[-1])["size"]
    assert size["params_entroscope_loader"] < size["params_in_files_and_plain_transformers"] == size["original_params"]
    assert size["flops_per_token_entroscope_loader"] < size["flops_per_token_plain_transformers"]
    assert size["file_bytes"] > 0 and "zeroed" in size["note"]


@pytest.mark.slow
def test_lm_eval_own_cli_runs_our_tasks_on_our_checkpoint_outside_the_checkout(local, tmp_path, capsys):
    """The `lm_eval` console script, started outside the checkout with the command `prune` prints, finds our
    local tasks and gives the accuracy and perplexity Entroscope's own lm-eval path gives."""
    import os
    import sys

    from analysis.tasks import TaskConfig, evaluate_checkpoint_hf

    out = tmp_path / "ck"
    assert main(["prune", "--model", local["llama"].name, "--drop-layers", "2", "--drop-mlp", "4", "--out", str(out),
                 "--quiet"]) == 0
    cmd = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["lm_eval"]
    assert "--include_path" in cmd and cmd.startswith("PYTHONPATH=")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = subprocess.run(["bash", "-c", cmd + " --limit 3 --output_path res"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    raw = json.loads(next((work / "res").rglob("results_*.json")).read_text())["results"]["cloze-wiki"]
    ours = evaluate_checkpoint_hf(out, "cloze-wiki", TaskConfig(limit=3))["tasks"]["cloze-wiki"]["metrics"]
    assert raw["acc,none"] == ours["acc"]["value"]
    assert raw["perplexity,none"] == pytest.approx(ours["perplexity"]["value"], rel=1e-4)
