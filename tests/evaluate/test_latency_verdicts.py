"""Honest latency: noise (a busy machine, spreads that never settled) draws no verdict; a verdict names its metric."""
from __future__ import annotations

import pandas as pd

from analysis.evaluate.cost import latency_noise, speed_verdict


def _lat(median: float, spread: float = 0.02, busy: bool = False, converged: bool = True, load: float = 0.2) -> dict:
    s = {"median": median, "p10": median * (1 - spread), "p90": median * (1 + spread), "spread": 2 * spread}
    return {"rows": [{"decode_tokens_per_s": s, "prefill_tokens_per_s": s, "converged": converged}],
            "machine": {"busy": busy, "load_per_core": load, "load_per_core_before": load}, "target_spread": 0.1}


def test_quiet_and_apart_gives_a_named_verdict():
    v = speed_verdict(_lat(40.0), _lat(30.0))
    assert v == {"metric": "decode tok/s", "verdict": "faster", "reason": "p10–p90 ranges apart"}
    assert speed_verdict(_lat(20.0), _lat(30.0), "prefill")["verdict"] == "slower"
    assert speed_verdict(_lat(20.0), _lat(30.0), "prefill")["metric"] == "prefill tok/s"


def test_overlapping_ranges_are_within_noise():
    assert speed_verdict(_lat(31.0, 0.1), _lat(30.0, 0.1))["verdict"] == "within noise"


def test_busy_machine_or_unsettled_spread_is_noise_and_draws_no_verdict():
    busy = _lat(40.0, busy=True, load=12.5)
    assert "busy" in latency_noise(busy) and "12.5" in latency_noise(busy)
    v = speed_verdict(busy, _lat(1.0))                 # 40× "faster" on a busy machine: still no verdict
    assert v["verdict"] == "no verdict" and "busy" in v["reason"]
    assert speed_verdict(_lat(40.0), _lat(30.0, converged=False))["verdict"] == "no verdict"
    assert latency_noise(None) == "not measured" and latency_noise(_lat(30.0)) is None


def test_app_table_and_pareto_fall_back_when_latency_is_noise():
    from app_support.evaluation import _speed_flag, latency_trusted
    from app_support.plots import pareto_chart

    base, mine = {"latency": _lat(30.0)}, {"latency": _lat(40.0, busy=True, load=9.0)}
    assert _speed_flag(mine, base, "p").startswith("no verdict (this plan: the machine was busy")
    assert _speed_flag({"latency": _lat(40.0)}, base, "p") == "faster (decode tok/s)"
    assert not latency_trusted({"original": base, "p": mine}) and latency_trusted({"original": base})
    # parameters as the x axis: fewer is better, so the smaller model with equal perplexity is the only optimum
    df = pd.DataFrame({"plan": ["original", "p"], "parameters": [100, 80], "perplexity": [10.0, 10.0]})
    fig = pareto_chart(df, "parameters", "perplexity", "parameters", "parameters", "perplexity", x_higher_better=False)
    widths = list(fig.data[0].marker.line.width)
    assert widths == [0, 2]
