"""Ground truth with prefix reuse (analysis.evaluate.groundtruth.plan_losses on the sweep's trie walk): every loss is
bit-identical to a separate evaluation of the plan, and the walk does less layer work."""
import math

import pytest

from analysis.indices import GRANULARITY_KEY
from analysis.evaluate.groundtruth import _plan_for, delta_ppl_details, plan_cost, plan_losses, sleb_select
from analysis.evaluate import EvalConfig, perplexity
from analysis.models.plan import Plan
from analysis.testing import random_tokens, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")


def _separate(lm, ids, plan, bs):
    return perplexity(lm, ids, plan=plan, cfg=EvalConfig(batch_size=bs, bos=False))["nll"]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("granularity", ["layer", "attention", "mlp"])
def test_drop_one_bit_identical_to_separate_evaluations(arch, granularity):
    lm = tiny_loaded(arch, layers=5, hidden=32)
    ids = random_tokens(5, 20, seed=4)
    d = delta_ppl_details(lm, ids, granularity, batch_size=2)
    assert _separate(lm, ids, None, 2) == d["base_loss"]
    for i in range(5):
        plan = _plan_for({GRANULARITY_KEY[granularity]: [i]})
        assert _separate(lm, ids, plan, 2) == d["loss"][i]          # exact, not approx
    assert d["cost_passes"] < 5 + 1                               # less than 1 + L separate passes


def test_arbitrary_plans_and_duplicates_bit_identical():
    lm = tiny_loaded("qwen2", layers=6, hidden=32)
    ids = random_tokens(4, 17, seed=1)
    plans = [Plan(drop_layers=[3]), None, Plan(drop_attn=[1], drop_mlp=[4]), Plan(drop_layers=[1, 2, 5]),
             Plan(drop_layers=[3]), Plan(drop_layers=[5]), Plan(drop_layers=[0, 1, 2, 3, 4])]
    losses = plan_losses(lm, ids, plans, batch_size=3)
    for p, lo in zip(plans, losses):
        assert lo == _separate(lm, ids, p, 3)
    assert losses[0] == losses[4]


def test_sleb_steps_bit_identical_and_cheaper_than_separate():
    lm = tiny_loaded("llama", layers=6, hidden=32)
    ids = random_tokens(4, 16, seed=2)
    res = sleb_select(lm, ids, 2, protect=[0], batch_size=4)
    assert res["base_loss"] == _separate(lm, ids, None, 4)
    removed = []
    for step in res["steps"]:
        for c in step["candidates"]:
            plan = Plan(drop_layers=sorted(removed + [c["unit"][1]]))
            assert c["ppl"] == math.exp(_separate(lm, ids, plan, 4))
        removed.append(step["removed"][1])
    # separate evaluations: 1 + 5 + 4 plans of 5 or 4 layers; the walk does strictly less layer work
    separate = 6 + 5 * 5 + 4 * 4
    assert res["cost_passes"] * 6 < separate


def test_plan_cost_counts_the_trie():
    lm = tiny_loaded("llama", layers=4, hidden=32)
    drop_one = [None] + [Plan(drop_layers=[i]) for i in range(4)]
    c = plan_cost(lm, drop_one)
    # original: 4 layers; drop i runs layers i+1..3 (drop 3 reruns layer 2 to have a layer to run)
    assert c["layer_forwards"] == 4 + 3 + 2 + 1 + 1 and c["heads"] == 5
    sep = plan_cost(lm, drop_one, reuse=False)
    assert sep["layer_forwards"] == 4 + 4 * 3 and sep["heads"] == 5


def test_stop_keeps_the_windows_done_and_matches_a_run_on_those_windows():
    lm = tiny_loaded("llama", layers=4, hidden=32)
    ids = random_tokens(6, 20, seed=2)
    calls = []

    def stop_after_first_batch():
        calls.append(1)
        return True                                               # polled between batches: one batch runs

    stopped = delta_ppl_details(lm, ids, "layer", batch_size=2, should_stop=stop_after_first_batch)
    whole = delta_ppl_details(lm, ids[:2], "layer", batch_size=2)
    assert stopped["stopped"] and not whole["stopped"]
    assert stopped["windows"] == [2, 20] and stopped["tokens"] == whole["tokens"] == 2 * 19
    assert stopped["loss"] == whole["loss"] and stopped["base_loss"] == whole["base_loss"]


def test_a_stopped_sweep_scores_every_plan_on_the_batches_done():
    from analysis.evaluate import sweep

    lm = tiny_loaded("llama", layers=4, hidden=32)
    ids = random_tokens(6, 20, seed=3)
    orders = {"tail": [3, 2, 1, 0]}
    calls = []
    res = sweep(lm, orders, ["tail"], range(0, 3), data=ids, cfg=EvalConfig(batch_size=2, bos=False),
                should_stop=lambda: calls.append(1) or len(calls) > 1)
    full = sweep(lm, orders, ["tail"], range(0, 3), data=ids[:4], cfg=EvalConfig(batch_size=2, bos=False))
    assert res["stopped"] and not full["stopped"]
    assert [r["perplexity"] for r in res["rows"]] == [r["perplexity"] for r in full["rows"]]
    assert res["protocol"]["tokens_scored"] == full["protocol"]["tokens_scored"]
    assert len(calls) == 2                                        # polled between batches only
