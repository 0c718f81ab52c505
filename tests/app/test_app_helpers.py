"""Unit tests of the app's helpers (no Streamlit script run): clicks → blocks, CLI commands, figures."""
from __future__ import annotations

import numpy as np
import pytest

from app_support import commands, plots
from app_support.selecting import points_to_blocks, toggle


@pytest.fixture(scope="module")
def tiny_run():
    from analysis.run import AnalysisConfig, analyze
    from analysis.testing import random_tokens, tiny_loaded

    lm = tiny_loaded("llama", layers=6, hidden=32)
    return analyze(lm, random_tokens(4, 40), AnalysisConfig(extra_estimators=("knn",), k=5))


def test_points_to_blocks_uses_customdata_then_x():
    pts = [{"customdata": 3, "x": 99}, {"customdata": [5], "x": 5}, {"x": 7.0}, {"x": "bad"}, {"customdata": 3}]
    assert points_to_blocks(pts) == [3, 5, 7]
    assert points_to_blocks([]) == []


def test_toggle_adds_removes_and_refuses_protected():
    new, refused = toggle([2, 4], [4, 6, 0], protected=[0, 1, 7])
    assert new == [2, 6]
    assert refused == [0]


def test_figures_have_zero_based_axes(tiny_run):
    r = tiny_run
    figs = [plots.entropy_curves(r, "bucket", 2, [0, 1, 5]),
            plots.delta_h_bars(r, "bucket", "attention", [0, 1, 5], r.seq_cos("attention").mean(0)),
            plots.score_bars(r.delta_h(), [2, 3], [0, 1, 5], "ΔH", [2, 3, 4]),
            plots.norms_chart(r), plots.estimator_comparison(r, ["bucket", "knn"])]
    for f in figs:
        assert "0-based" in f.layout.xaxis.title.text
    bars = figs[2].data[0]
    assert list(bars.customdata) == list(range(6))
    assert bars.marker.color[0] == plots.C_PROTECTED and bars.marker.color[2] == plots.C_SELECTED
    assert bars.text[0] == plots.LOCK


def test_domain_heatmap_rows_per_domain(tiny_run):
    import dataclasses

    r = dataclasses.replace(tiny_run, domains=["wiki", "code", "wiki", "code"])
    fig, labels = plots.domain_heatmap(r, "bucket")
    assert labels == ["wiki (n=2)", "code (n=2)"]
    z = np.array(fig.data[0].z)
    assert z.shape == (2, r.num_layers + 1) and np.nanmax(z) <= 1.0


class _Rec:
    model = {"spec": "smollm2", "device": "auto", "dtype": "fp32"}
    data = {"source": "builtin", "weights": {"wiki": 1.0, "code": 2.0}, "n_samples": 32, "seq_len": 256,
            "seed": 2024, "mode": "random"}
    config = {"estimator": "bucket", "extra_estimators": ["knn"], "granularity": "attention", "protect": "auto",
              "k": 25, "bins": 80, "alpha": 4.0, "batch_size": 8, "skip_first_token": True, "mi": True}   # settings keys


def test_cli_commands_are_accepted_by_the_real_parser():
    argv = commands.analyze_argv(_Rec())
    assert commands.accepts(argv)
    text = commands.shell(argv)
    assert "--corpus wiki:1,code:2" in text and "--also knn" in text and "--mi" in text
    assert "--skip-first-token" in text and "--protect auto" in text
    assert not commands.accepts(["analyze", "--no-such-flag"])


def test_session_script_lines_all_accepted():
    from analysis.models.plan import Plan

    from app_support.state import PlanRecord

    plan = Plan(drop_attn=[3, 4], source={"criterion": "entrodrop"})
    prec = PlanRecord("p1", plan, "rid", "entrodrop", "attention", 2, [3, 4], False, [0, 1, 29],
                      {"estimator": "bucket"})
    script = commands.session_script(_Rec(), prec, [0, 1, 29], "wiki", {"window": 256, "max_tokens": 4096},
                                     {"criteria": ["entrodrop", "random"], "kmax": 4, "granularity": "attention"})
    cmds = [ln for ln in script.splitlines() if ln.startswith("python") or "not accepted" in ln]
    assert [c.split()[3] for c in cmds] == ["analyze", "select", "eval", "prune", "sweep"]
    assert not any("not accepted" in c for c in cmds), script
    assert "--protect 0,1,29" in script and "--plan plan.json" in script


@pytest.mark.parametrize("mi", [False, True])
def test_exported_analyze_command_reproduces_the_app_config_field_by_field(mi):
    """The app's reproduce script builds exactly the AnalysisConfig the app ran (MI settings and seed included)."""
    from dataclasses import asdict

    from analysis.cli.main import build_parser
    from analysis.cli.commands.analyze import config_from_args
    from app_support.jobs import make_config

    class Rec(_Rec):
        data = {**_Rec.data, "seed": 7}
        config = {**_Rec.config, "skip_first_token": False, "sinks": "exclude", "mi": mi, "mi.estimator": "ksg",
                  "mi.n_tokens": 256, "extra_estimators": ["knn"], "protect": "auto"}

    app_cfg = make_config({**Rec.config, "seed": Rec.data["seed"]})
    cli_cfg = config_from_args(build_parser().parse_args(commands.analyze_argv(Rec())))
    assert asdict(cli_cfg) == asdict(app_cfg)
    assert cli_cfg.seed == 7
    if mi:
        assert cli_cfg.mi["estimator"] == "ksg" and cli_cfg.mi["n_tokens"] == cli_cfg.state_tokens == 256


def test_app_errors_speak_of_the_app_not_of_cli_flags():
    """Hints written for the CLI become the place of the same setting in the app; CLI-only remedies are dropped."""
    from analysis.errors import DataError, SelectionError
    from app_support.widgets import app_message

    m = app_message(SelectionError("This run has no MI data", hint="run the analysis with --mi"))
    assert "MI-PRUN" in m and "--" not in m
    m = app_message(DataError("too short", hint="use a longer seq-len or a smaller --k"))
    assert "KNN k" in m and "--k" not in m
    assert app_message(DataError("x", hint="compute it with `python -m analysis groundtruth --into R.json`")) == "x"
    assert app_message(DataError("x", hint="e.g. --max-memory cpu=2GiB")) == "x"      # no app counterpart
    assert app_message(DataError("x", hint="use bf16")) == "x (use bf16)"
    m = app_message(SelectionError("x", hint="relax the protection (--protect none) or unprotect some blocks"))
    assert "Protected blocks" in m and "--protect" not in m
