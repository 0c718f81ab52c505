"""One source of truth for settings (analysis.settings): the CLI's flags are generated from the config
dataclasses, and the app's exported ``analyze`` command rebuilds exactly the config the app ran, for every
setting (this is what caught the dropped MI settings and the seed)."""
from __future__ import annotations

import dataclasses
import shlex

import pytest

from analysis.cli.commands.analyze import config_from_args
from analysis.cli.common import tokens_from_args  # noqa: F401 - the module that adds the sampling flags
from analysis.cli.main import build_parser
from analysis.data.windows import SampleConfig
from analysis.run import AnalysisConfig
from analysis.measure.mi_states import MIConfig
from analysis.settings import add_arguments, build, defaults, from_args, specs, to_argv, to_settings
from app_support import commands
from app_support.data import sample_config
from app_support.jobs import make_config
from app_support.state import default_analysis

#: fields no CLI flag or app widget sets, and why (a new field must be added to the settings or here)
INTERNAL = {
    AnalysisConfig: {"protect_extra": "the app adjusts protection after the run; select --protect",
                     "sink_max_frac": "a library knob of the sink rule",
                     "state_tokens": "derived: = mi.n_tokens when MI is on",
                     "extensions": "derived: ('mi',) when MI is on"},
    MIConfig: {"matrix_tokens": "derived: = n_tokens", "params": "estimator parameters (library)",
               "sub_blocks": "library knob", "seed": "None: AnalysisConfig.seed"},
    SampleConfig: {"add_bos": "follows the tokenizer"},
}


def _other(spec, value):
    """A valid value different from ``value`` for this setting."""
    choices = spec.choices()
    if spec.kind in ("bool", "switch"):
        return not value
    if spec.kind == "tuple":
        return tuple(c for c in choices if c not in value)[:2]
    if choices:
        return next(c for c in choices if c != value)
    if spec.kind == "int":
        return value + 3 if spec.meta.get("max") is None or value + 3 <= spec.meta["max"] else value - 3
    return round(value * 1.5 + 0.25, 4)


def _analyze_cli(argv: list[str]):
    """(AnalysisConfig, SampleConfig) that the real CLI parser builds from an ``analyze`` command line."""
    ns = build_parser().parse_args(argv)
    return config_from_args(ns), from_args(SampleConfig, ns)


def _analysis_cases():
    """One case per AnalysisConfig setting (nested MI ones with MI on): the app's settings with it changed."""
    base = default_analysis()
    for spec in specs(AnalysisConfig):
        s = dict(base, mi=True) if spec.nested else dict(base)
        s[spec.key] = _other(spec, s.get(spec.key, spec.default))
        if spec.key == "extra_estimators":        # the primary estimator is dropped from the extra ones
            s["extra_estimators"] = tuple(e for e in s["extra_estimators"] if e != s["estimator"])
        yield pytest.param(s, id=spec.key)


class _Rec:
    model = {"spec": "smollm2", "device": "auto", "dtype": "fp32"}

    def __init__(self, config: dict, data: dict | None = None):
        self.config = config
        self.data = {"source": "builtin", "weights": {"wiki": 1.0}, "n_samples": 32, "seq_len": 256, "seed": 2024,
                     "mode": "random", **(data or {})}


def test_every_field_is_a_setting_or_named_internal():
    for cls, internal in INTERNAL.items():
        shown = {s.name for s in specs(cls) if not s.nested}
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields - shown == set(internal), cls.__name__
    assert {s.key for s in specs(AnalysisConfig) if s.nested} == {"mi.estimator", "mi.n_tokens", "mi.token_norm"}


@pytest.mark.parametrize("settings", _analysis_cases())
def test_exported_analyze_command_rebuilds_the_app_config_for_every_setting(settings):
    """Each setting changed alone: the app's config → its reproduce command → the real CLI → the same config."""
    rec = _Rec({**settings, "seed": 7}, {"seed": 7})
    argv = commands.analyze_argv(rec)
    assert commands.accepts(argv)
    cli_cfg, _ = _analyze_cli(shlex.split(commands.shell(argv))[3:])
    app_cfg = make_config(rec.config)
    assert dataclasses.asdict(cli_cfg) == dataclasses.asdict(app_cfg)
    assert cli_cfg.seed == 7                                  # the seed reaches AnalysisConfig.seed
    if app_cfg.mi:                                            # and every MI setting reaches the config
        assert cli_cfg.mi == app_cfg.mi and cli_cfg.extensions == ("mi",)
        assert cli_cfg.state_tokens == cli_cfg.mi["n_tokens"] == cli_cfg.mi["matrix_tokens"]


def test_every_setting_changed_at_once_round_trips_through_the_cli():
    flat = {}
    for spec in specs(AnalysisConfig):
        flat[spec.key] = _other(spec, spec.default)
    flat["skip_first_token"], flat["sinks"] = True, "first"        # the legacy flag implies --sinks first
    flat["extra_estimators"] = tuple(e for e in flat["extra_estimators"] if e != flat["estimator"])
    cfg = build(AnalysisConfig, flat)
    assert to_settings(cfg) == flat
    argv = ["analyze", "--corpus", "wiki", *to_argv(cfg), "--out", "r.json"]
    assert dataclasses.asdict(_analyze_cli(argv)[0]) == dataclasses.asdict(cfg)
    assert dataclasses.asdict(_analyze_cli(["analyze", "--corpus", "wiki", "--out", "r.json"])[0]) == \
        dataclasses.asdict(AnalysisConfig())                   # no flags: the dataclass defaults


@pytest.mark.parametrize("key", [s.key for s in specs(SampleConfig, app=True)])
def test_exported_sampling_flags_rebuild_the_app_windows_for_every_field(key):
    spec = next(s for s in specs(SampleConfig) if s.key == key)
    data = {key: _other(spec, sample_config({}).__dict__[spec.name])}
    rec = _Rec(dict(default_analysis()), data)
    app_sample = sample_config(rec.data)
    cli_cfg, cli_sample = _analyze_cli(commands.analyze_argv(rec))
    assert cli_sample == app_sample
    assert cli_cfg.seed == app_sample.seed                     # one --seed for windows and MI subsample


def test_token_file_runs_export_the_seed_without_sampling_flags():
    rec = _Rec({**default_analysis(), "mi": True, "seed": 11}, {"source": "tokens", "filename": "ids.npy", "seed": 11})
    argv = commands.analyze_argv(rec)
    assert "--samples" not in argv and "--seq-len" not in argv
    assert _analyze_cli(argv)[0].seed == 11


def test_to_argv_writes_only_non_defaults_in_field_order_and_one_shared_flag_once():
    assert to_argv(AnalysisConfig()) == [] and to_argv(SampleConfig()) == []
    cfg = build(AnalysisConfig, {"k": 7, "estimator": "knn", "mi": True, "mi.n_tokens": 512, "seed": 3})
    assert to_argv(cfg) == ["--estimator", "knn", "--k", "7", "--mi", "--mi-tokens", "512", "--seed", "3"]
    assert to_argv(SampleConfig(seed=3), cfg).count("--seed") == 1
    with pytest.raises(ValueError, match="--seed"):
        to_argv(SampleConfig(seed=4), cfg)                     # one flag cannot carry two seeds
    assert "--mi-tokens" not in to_argv(build(AnalysisConfig, {"mi.n_tokens": 512}))   # MI off: no MI flags


def test_app_defaults_are_the_dataclass_defaults():
    d = default_analysis()
    assert d == {**defaults(AnalysisConfig, app=True), "both_views": True}
    assert d["extra_estimators"] == ()            # KNN is opt-in (issue 28); the Select page offers the re-run
    assert d["k"] == AnalysisConfig().k and d["mi.n_tokens"] == MIConfig().n_tokens
    assert dataclasses.asdict(make_config({})) == dataclasses.asdict(AnalysisConfig())
    with pytest.raises(KeyError, match="mi_tokens"):
        make_config({"mi_tokens": 512})                        # an old or misspelt key is not silently ignored


# ---- the generated flags are the flags the CLI had --------------------------------------------------------
#: ``analyze``'s estimator and sampling flags before they were generated: flag → (default, choices)
OLD_ANALYZE_FLAGS = {
    "--estimator": ("bucket", {"bucket", "bucket-robust", "knn", "knn-norm", "renyi", "matrix", "logit-lens"}),
    "--also": ("", None), "--k": (25, None), "--bins": (80, None), "--alpha": (4.0, None),
    "--knn-dedup": (False, None), "--granularity": ("attention", {"attention", "mlp", "layer"}),
    "--protect": ("fixed", {"fixed", "auto", "none"}), "--skip-first-token": (False, None),
    "--sinks": ("exclude", {"exclude", "keep", "first"}), "--sink-ratio": (8.0, None), "--clip": (0.02, None),
    "--batch-size": (8, None), "--mi": (False, None), "--mi-estimator": ("renyi", {"renyi", "gaussian", "ksg", "cka"}),
    "--mi-token-norm": ("none", {"none", "rms"}), "--mi-tokens": (256, None),
    "--samples": (None, None), "--seq-len": (None, None), "--sampling": ("random", {"random", "consecutive"}),
    "--seed": (2024, None), "--both-views": (False, None), "--lens-positions": (16, None),
}
OTHER_ANALYZE_FLAGS = {"-h", "--help", "--model", "--device", "--dtype", "--device-map", "--max-memory",
                       "--offload-folder", "--trust-remote-code", "--offline", "--corpus", "--text", "--tokens",
                       "--text-field", "--split", "--no-cache", "--out", "--overwrite", "--quiet"}


def _analyze_parser():
    sub = next(a for a in build_parser()._actions if isinstance(getattr(a, "choices", None), dict))  # noqa: SLF001
    return sub.choices["analyze"]


def test_generated_analyze_flags_equal_the_old_flag_set():
    actions = {o: a for a in _analyze_parser()._actions for o in a.option_strings}  # noqa: SLF001
    assert set(actions) == set(OLD_ANALYZE_FLAGS) | OTHER_ANALYZE_FLAGS
    for flag, (default, choices) in OLD_ANALYZE_FLAGS.items():
        a = actions[flag]
        assert a.default == default, flag
        assert (set(a.choices) if a.choices else None) == choices, flag
        assert a.help, flag


@pytest.mark.parametrize("flag,bad,message", [
    ("--k", "0", "expected a neighbour count in 1..10000, got 0"), ("--batch-size", "x", "expected a batch size, got 'x'"),
    ("--bins", "1", "expected a bin count in 2..100000, got 1"), ("--alpha", "0", "0 is outside (0, 1000]"),
    ("--alpha", "nan", "expected a finite number"), ("--mi-tokens", "-1", "expected a token count in 1..1000000, got -1"),
    ("--seed", "-1", "expected a seed (a whole number) in 0..4294967295"),
    ("--samples", "0", "expected a window count in 1..1000000, got 0"),
])
def test_generated_flags_refuse_bad_values_with_the_old_messages(flag, bad, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["analyze", "--corpus", "wiki", "--out", "r.json", flag, bad])
    assert exc.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_add_arguments_and_from_args_on_a_plain_parser():
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p, SampleConfig, defaults={"n_samples": None})
    ns = p.parse_args(["--seq-len", "64", "--sampling", "consecutive"])
    assert ns.samples is None                                   # left to the command …
    assert from_args(SampleConfig, ns) == SampleConfig(seq_len=64, mode="consecutive")   # … = the dataclass default
    assert "(default 2024)" in p.format_help() and "(default 256; with --tokens" in p.format_help()


def test_exported_eval_and_sweep_commands_rebuild_the_app_eval_config():
    from analysis.cli.commands.eval import eval_config
    from analysis.evaluate.windows import EvalConfig
    from app_support.evaluation import eval_cfg

    settings = {"window": 128, "max_tokens": 2048, "prompt_len": 64, "new_tokens": 16, "repeats": 3}
    for argv in (commands.eval_argv(_Rec.model, "plan.json", "wiki", settings),
                 commands.sweep_argv(_Rec.model, ["entrodrop"], 4, "layer", "wiki", settings)):
        assert commands.accepts(argv)
        assert eval_config(build_parser().parse_args(argv)) == eval_cfg(settings)     # batch size included
    assert eval_config(build_parser().parse_args(["eval", "--out", "e.json"])) == EvalConfig()


#: ``channels`` and ``eval`` flags before they were generated: flag → default
OLD_CHANNELS_FLAGS = {
    "--domains": "wiki:1,code:1,news:1", "--samples": 64, "--seq-len": 256, "--seed": 2024, "--sampling": "random",
    "--batch-size": 8, "--skip-first-token": False, "--ratio": 0.25, "--steps": 4, "--method": "act_weight",
    "--agg": "pooled", "--allocation": "uniform", "--min-keep-frac": 0.1, "--global-norm": "none",
    "--multiple-of": 64, "--bias-compensation": False, "--head-ratio": 0.0, "--eval-tokens": 4096,
    "--eval-window": 512, "--eval-domains": None,
}
OLD_EVAL_FLAGS = {"--max-tokens": None, "--window": None, "--stride": None, "--batch-size": 1}


@pytest.mark.parametrize("command,old", [("channels", OLD_CHANNELS_FLAGS), ("eval", OLD_EVAL_FLAGS)])
def test_generated_channels_and_eval_flags_keep_their_names_and_defaults(command, old):
    sub = next(a for a in build_parser()._actions if isinstance(getattr(a, "choices", None), dict))  # noqa: SLF001
    actions = {o: a for a in sub.choices[command]._actions for o in a.option_strings}  # noqa: SLF001
    for flag, default in old.items():
        assert actions[flag].default == default, flag


def test_every_channel_setting_round_trips_through_the_cli():
    from analysis.channels.config import ChannelConfig

    assert {f.name for f in dataclasses.fields(ChannelConfig)} == {s.name for s in specs(ChannelConfig, cli=True)}
    flat = {s.key: _other(s, s.default) for s in specs(ChannelConfig) if s.kind not in ("text", "tuple")}
    flat.update(domains={"wiki": 2.0, "math": 1.0}, eval_domains=("code", "news"), ratio=0.5, head_ratio=0.25,
                min_keep_frac=0.2)
    cfg = build(ChannelConfig, flat).validated()
    argv = ["channels", "--out", "c", *to_argv(cfg)]
    assert "--domains" in argv and argv[argv.index("--domains") + 1] == "wiki:2,math:1"
    assert from_args(ChannelConfig, build_parser().parse_args(argv)).validated() == cfg
    assert from_args(ChannelConfig, build_parser().parse_args(["channels", "--out", "c"])).validated() == \
        ChannelConfig().validated()
