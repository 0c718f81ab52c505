"""Class 2 (docs/reliability.md): numbers are checked before work starts. Every numeric setting is a
finite number inside a stated range: settings declared with ``analysis.settings.setting(min=, max=)`` are
checked by the generated argparse types *and* by ``check_ranges`` in every config's ``__post_init__`` (so
the library and the app refuse the same values); hand-written flags (heal, tasks, miprun, eval latency, …)
use the same bounded types. Where a value drives allocation the memory is estimated first; a checkpoint
with non-finite weights or an evaluation with non-finite results is never written. ``NUMBER_CASES`` and
``LIBRARY_CASES`` are the class's catalogue (counted in the docs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.errors import EntroscopeError, ResourceError, SaveError
from analysis.testing import save_tiny_checkpoint
from test_reliability_cli import run_cli


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-n"), layers=4))


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ids-n") / "ids.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    return str(p)


A = ["analyze", "--model", "{tiny}", "--tokens", "{ids}", "--out", "{t}/r.json"]
E = ["eval", "--model", "{tiny}", "--out", "{t}/e.json"]
P = ["prune", "--model", "{tiny}", "--drop-layers", "1", "--out", "{t}/ck", "--heal", "distill"]
S = ["sweep", "--run", "{t}/r.json", "--model", "{tiny}", "--out", "{t}/s.json"]
C = ["channels", "--model", "{tiny}", "--out", "{t}/c"]
G = ["groundtruth", "--model", "{tiny}", "--tokens", "{ids}", "--out", "{t}/g.json"]

#: (command line, the flag and value added, what the one-line usage error says)
NUMBER_CASES = [
    (A, ["--samples", "2000000"], "window count in 1..1000000"),
    (A, ["--samples", "-0"], "window count in 1.."),
    (A, ["--samples", "99999999999999999999999"], "window count in 1.."),
    (A, ["--seq-len", "1e400"], "expected a token count"),
    (A, ["--seq-len", "2000000"], "token count in 1..1048576"),
    (A, ["--batch-size", "100000"], "batch size in 1..65536"),
    (A, ["--k", "20000"], "neighbour count in 1..10000"),
    (A, ["--clip", "nan"], "finite number"),
    (A, ["--clip", "0.5"], "outside [0, 0.5)"),
    (A, ["--clip", "-0.1"], "outside [0, 0.5)"),
    (A, ["--sink-ratio", "inf"], "finite number"),
    (A, ["--sink-ratio", "1"], "outside (1, 1e+06]"),
    (A, ["--sink-ratio=-inf"], "finite number"),
    (A, ["--mi", "--mi-tokens", "0"], "token count in 1..1000000"),
    (A, ["--mi", "--mi-tokens", "5000000"], "token count in 1..1000000"),
    (E, ["--max-tokens", "0"], "token budget in 1.."),
    (E, ["--window", "-5"], "token count in 1.."),
    (E, ["--stride", "1e3"], "expected a token count"),
    (E, ["--batch-size", "nan"], "expected a batch size"),
    (E, ["--latency", "--latency-batch-sizes", "1,0"], "batch size in 1..4096"),
    (E, ["--latency", "--prompt-len", "0"], "token count in 1.."),
    (E, ["--latency", "--repeats", "100000"], "repeat count in 1..10000"),
    (E, ["--tasks", "cloze-wiki", "--task-seed", "-1"], "seed"),
    (E, ["--tasks", "cloze-wiki", "--task-seed", "nan"], "seed"),
    (E, ["--tasks", "cloze-wiki", "--num-fewshot", "-1"], "few-shot count in 0..256"),
    (E, ["--tasks", "cloze-wiki", "--limit", "0"], "example count in 1.."),
    (E, ["--tasks", "cloze-wiki", "--max-gen-toks", "0"], "token count in 1.."),
    (P, ["--heal-lr", "nan"], "finite number"),
    (P, ["--heal-lr", "0"], "outside (0, 10]"),
    (P, ["--heal-lr", "1e400"], "finite number"),
    (P, ["--heal-ridge", "-1"], "outside [0, 1e+06]"),
    (P, ["--heal-ridge", "inf"], "finite number"),
    (P, ["--heal-rank", "0"], "LoRA rank in 1..65536"),
    (P, ["--heal-steps", "0"], "step count in 1.."),
    (P, ["--heal-batch-size", "0"], "batch size in 1.."),
    (P, ["--heal-samples", "0"], "window count in 1.."),
    (P, ["--heal-seq-len", "1"], "token count in 2.."),
    (P, ["--heal-seed", "-3"], "seed"),
    (S, ["--tasks", "cloze-wiki", "--task-seed", str(2**32)], "seed"),
    (C, ["--steps", "0"], "step count in 1..1000"),
    (C, ["--multiple-of", "0"], "width multiple in 1.."),
    (C, ["--eval-tokens", "-1"], "token budget in 1.."),
    (C, ["--head-ratio", "nan"], "[0, 1)"),
    (G, ["--n", "0"], "block count in 1.."),
    (G, ["--batch-size", "0"], "batch size in 1.."),
    (["miprun", "--run", "{t}/r.json", "--n", "-1"], [], "layer count in 0.."),
    (["miprun", "--run", "{t}/r.json", "--n", "1", "--max-combinations", "0"], [], "combination count in 1.."),
    (["load", "{tiny}", "--max-new-tokens", "0"], [], "token count in 1.."),
]


@pytest.mark.parametrize("base,extra,pattern", NUMBER_CASES,
                         ids=[f"{b[0]} {' '.join(x)}" for b, x, _ in NUMBER_CASES])
def test_numbers_are_checked_before_the_model_loads(capsys, tmp_path, monkeypatch, tiny_dir, ids_file,
                                                    base, extra, pattern):
    import analysis.models.loading

    def never(*a, **k):
        raise AssertionError("the model was loaded before the numbers were checked")

    monkeypatch.setattr(analysis.models.loading, "load_model", never)
    (tmp_path / "r.json").write_text("{}")
    argv = [a.format(tiny=tiny_dir, ids=ids_file, t=tmp_path) for a in base + extra]
    code, err = run_cli(capsys, argv)
    assert code == 2, err                                   # a usage error, as documented
    assert "Traceback" not in err and "internal error" not in err
    assert pattern.lower() in err.lower(), err


#: (config class, keyword arguments, what the error names): the library and the app get the same check
LIBRARY_CASES = [
    ("analysis.run:AnalysisConfig", {"k": 0}, "AnalysisConfig.k"),
    ("analysis.run:AnalysisConfig", {"bins": float("nan")}, "AnalysisConfig.bins"),
    ("analysis.run:AnalysisConfig", {"alpha": float("inf")}, "AnalysisConfig.alpha"),
    ("analysis.run:AnalysisConfig", {"batch_size": 2.5}, "whole number"),
    ("analysis.run:AnalysisConfig", {"batch_size": True}, "whole number"),
    ("analysis.run:AnalysisConfig", {"clip": -0.1}, "AnalysisConfig.clip"),
    ("analysis.run:AnalysisConfig", {"seed": -1}, "AnalysisConfig.seed"),
    ("analysis.run:AnalysisConfig", {"mi": {"n_tokens": -4}}, "AnalysisConfig.mi.n_tokens"),
    ("analysis.run:AnalysisConfig", {"sink_ratio": "8"}, "must be a number"),
    ("analysis.data.windows:SampleConfig", {"seq_len": 10**9}, "SampleConfig.seq_len"),
    ("analysis.data.windows:SampleConfig", {"n_samples": -1}, "SampleConfig.n_samples"),
    ("analysis.evaluate.windows:EvalConfig", {"max_tokens": 0}, "EvalConfig.max_tokens"),
    ("analysis.evaluate.windows:EvalConfig", {"batch_size": float("nan")}, "EvalConfig.batch_size"),
    ("analysis.measure.mi_states:MIConfig", {"n_tokens": 0}, "MIConfig.n_tokens"),
    ("analysis.channels.config:ChannelConfig", {"steps": 10**6}, "ChannelConfig.steps"),
    ("analysis.channels.config:ChannelConfig", {"min_keep_frac": float("nan")}, "ChannelConfig.min_keep_frac"),
    # the task and heal libraries state their ranges themselves (before: only the CLI checked them)
    ("analysis.tasks.runner:TaskConfig", {"limit": 0}, "TaskConfig.limit"),
    ("analysis.tasks.runner:TaskConfig", {"num_fewshot": -1}, "TaskConfig.num_fewshot"),
    ("analysis.tasks.runner:TaskConfig", {"seed": 2**32}, "TaskConfig.seed"),
    ("analysis.tasks.runner:TaskConfig", {"max_gen_toks": float("nan")}, "TaskConfig.max_gen_toks"),
    ("analysis.tasks.runner:TaskConfig", {"batch_size": 0}, "TaskConfig.batch_size"),
    ("analysis.heal.registry:DistillHealSettings", {"lr": float("nan")}, "DistillHealSettings.lr"),
    ("analysis.heal.registry:DistillHealSettings", {"rank": 0}, "DistillHealSettings.rank"),
    ("analysis.heal.registry:DistillHealSettings", {"temperature": 0.0}, "DistillHealSettings.temperature"),
    ("analysis.heal.registry:DistillHealSettings", {"steps": 2.5}, "whole number"),
    ("analysis.heal.registry:LinearHealSettings", {"ridge": -1.0}, "LinearHealSettings.ridge"),
    ("analysis.heal.registry:LinearHealSettings", {"batch_size": 0}, "LinearHealSettings.batch_size"),
]


@pytest.mark.parametrize("ref,kwargs,pattern", LIBRARY_CASES, ids=[f"{r.split(':')[1]}{k}" for r, k, _ in LIBRARY_CASES])
def test_configs_refuse_out_of_range_numbers_in_the_library(ref, kwargs, pattern):
    from analysis.registry import resolve

    cls = resolve(ref)
    with pytest.raises(EntroscopeError, match=pattern.replace(".", r"\.")):
        cls(**kwargs)


@pytest.mark.parametrize("method,options,pattern", [
    ("distill", {"lr": float("inf")}, "DistillHealSettings.lr"),
    ("distill", {"steps": -5}, "DistillHealSettings.steps"),
    ("linear", {"ridge": float("nan")}, "LinearHealSettings.ridge"),
])
def test_heal_checks_its_options_before_any_model_work(method, options, pattern):
    """``heal()`` from the library refuses a bad option first: before the calibration tokens are even looked at
    (none are given here, which would be the next error) and before the method runs."""
    from analysis.heal.registry import heal
    from analysis.models.plan import Plan
    from analysis.settings import SettingError
    from analysis.testing import tiny_loaded

    lm = tiny_loaded(layers=2)
    with pytest.raises(SettingError, match=pattern.replace(".", r"\.")):
        heal(lm, Plan(drop_layers=[1]), method, tokens=None, **options)


@pytest.mark.parametrize("ref,settings", [
    ("analysis.run:AnalysisConfig", {"k": 0}), ("analysis.run:AnalysisConfig", {"mi": True, "mi.n_tokens": 0}),
    ("analysis.run:AnalysisConfig", {"alpha": float("nan")}), ("analysis.data.windows:SampleConfig", {"n_samples": -1}),
    ("analysis.evaluate.windows:EvalConfig", {"max_tokens": 0}),
])
def test_the_apps_settings_get_the_same_check(ref, settings):
    from analysis.registry import resolve
    from analysis.settings import build

    with pytest.raises(EntroscopeError):
        build(resolve(ref), settings)                       # how the app builds a config from its widgets


def test_defaults_and_boundaries_are_accepted():
    from analysis.run import AnalysisConfig
    from analysis.settings import SEED_MAX

    assert AnalysisConfig().k > 0
    edge = AnalysisConfig(k=10_000, bins=100_000, clip=-0.0, seed=SEED_MAX, mi={"n_tokens": 1_000_000})
    assert edge.k == 10_000 and edge.seed == SEED_MAX
    assert AnalysisConfig(k=np.int64(5), alpha=np.float32(2.0)).k == 5     # numpy numbers are numbers


def test_memory_is_estimated_before_the_pass(capsys, tmp_path, monkeypatch, tiny_dir, ids_file):
    import analysis.settings as settings

    monkeypatch.setattr(settings, "available_memory", lambda: 1_000_000)      # 1 MB free
    code, err = run_cli(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--mi", "--mi-tokens", "100000",
                                 "--out", str(tmp_path / "r.json"), "--no-cache"])
    assert code == 2 and "needs about" in err and "available" in err and "--mi-tokens" in err, err
    assert not (tmp_path / "r.json").exists()


def test_memory_estimate_grows_with_what_drives_allocation():
    from analysis.run import AnalysisConfig, memory_estimate
    from analysis.settings import build

    base = memory_estimate(AnalysisConfig(), 8, 64, 30, 576)
    mi = memory_estimate(build(AnalysisConfig, {"mi": True, "mi.n_tokens": 100_000}), 8, 64, 30, 576)
    assert mi - base >= 100_000 * 61 * 576 * 4                 # tokens × (2L+1) points × d × 4 bytes
    with pytest.raises(ResourceError, match="needs about"):
        from analysis.settings import check_memory

        check_memory(mi, "The analysis pass", "lower --mi-tokens", available=base)


def test_checkpoint_with_non_finite_weights_is_never_saved(tmp_path):
    from analysis.models.plan import Plan
    from analysis.models.surgery import save_pruned
    from analysis.testing import tiny_model

    model = tiny_model("llama", layers=3)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "layers.0" in n).view(-1)[0] = float("nan")
    with pytest.raises(SaveError, match="NaN or infinite"):
        save_pruned(model, Plan(drop_layers=[1]), tmp_path / "ck")
    assert not (tmp_path / "ck").exists() and not list(tmp_path.iterdir())


def test_evaluation_with_non_finite_results_is_never_written(capsys, tmp_path, monkeypatch, tiny_dir):
    import analysis.evaluate.quality as quality

    real = quality.perplexity

    def nan_ppl(*a, **k):
        r = real(*a, **k)
        return {**r, "perplexity": float("nan"), "nll": float("nan")}

    monkeypatch.setattr(quality, "perplexity", nan_ppl)
    text = tmp_path / "t.txt"
    text.write_text("word " * 600)
    code, err = run_cli(capsys, ["eval", "--model", tiny_dir, "--text", str(text), "--max-tokens", "256",
                                 "--out", str(tmp_path / "e.json"), "--quiet"])
    assert code == 2 and "perplexity=nan" in err and "not a finite number" in err, err
    assert not (tmp_path / "e.json").exists()


def test_sweep_rows_with_non_finite_results_are_skipped_with_the_reason():
    from analysis.cli.commands.sweep import _skip_non_finite

    res = {"rows": [{"criterion": "entrodrop", "k": 0, "perplexity": 10.0, "nll": 2.3},
                    {"criterion": "entrodrop", "k": 1, "perplexity": float("inf"), "nll": 800.0}], "skipped": []}
    _skip_non_finite(res)
    assert [r["k"] for r in res["rows"]] == [0]
    assert res["skipped"][0]["k"] == 1 and "perplexity=inf" in res["skipped"][0]["reason"]
