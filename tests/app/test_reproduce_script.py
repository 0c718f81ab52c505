"""The exported reproduce.sh rebuilds each kept plan from its own run: run the script's commands for real.

A session with two runs (the run on screen has no MI and keeps sinks; the plans were kept on another run, with
MI-PRUN data and sinks excluded): a Fast-Block-Select plan, an MI-PRUN top-k plan and a hand-edited cosine plan.
For each, the script's analyze → select/miprun commands run through the real CLI on a tiny checkpoint and the
plan file they write must drop exactly the kept blocks.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.run import analyze
from analysis.score.criteria import select
from analysis.score.miprun import miprun_select
from analysis.testing import save_tiny_checkpoint
from app_support import commands
from app_support.jobs import make_config
from app_support.state import PlanRecord, RunRecord

DATA = {"source": "builtin", "weights": {"wiki": 1.0}, "n_samples": 4, "seq_len": 48, "seed": 11}
PLAN_RUN_CONFIG = {"estimator": "bucket", "extra_estimators": ["knn"], "granularity": "layer", "k": 5,
                   "sinks": "exclude", "mi": True, "mi.n_tokens": 96, "seed": 11}
SCREEN_RUN_CONFIG = {"estimator": "bucket", "granularity": "attention", "sinks": "keep", "mi": False, "seed": 11}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from analysis.data import load_corpus, sample_windows
    from app_support.data import sample_config

    ckpt = str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-repro"), layers=6))
    lm = load_model(ckpt, device="cpu", dtype="fp32")
    tokens = sample_windows(load_corpus("wiki"), lm.tokenizer, sample_config(DATA))
    model = {"spec": ckpt, "device": "cpu", "dtype": "fp32"}
    runs = {}
    for rid, cfg in (("plan-run", PLAN_RUN_CONFIG), ("screen-run", SCREEN_RUN_CONFIG)):
        res = analyze(lm, tokens, make_config(cfg))
        runs[rid] = RunRecord(rid, res, model, dict(DATA), dict(cfg), tokens=tokens)
    return runs


def _plans(runs) -> dict[str, PlanRecord]:
    r = runs["plan-run"].result
    prot = [0]
    out = {}
    fbs = Plan.from_dict(miprun_select(r, 2, method="both", protect=prot))
    out["fbs"] = PlanRecord("mi-prun-fbs-k2", fbs, "plan-run", "mi-prun", "layer", 2, list(fbs.drop_layers),
                            False, prot, {})
    sel = select(r, "mi-prun", 2, "layer", protected=prot)
    top = Plan.from_selection(sel, r)
    out["mi-topk"] = PlanRecord("mi-prun-layer-k2", top, "plan-run", "mi-prun", "layer", 2, list(sel.blocks),
                                False, prot, {})
    sel = select(r, "cosine", 2, "layer", protected=prot)
    free = [b for b in range(r.num_layers) if b not in prot and b not in sel.blocks]
    edited_blocks = sorted([sel.blocks[0], free[0]])           # one kept, one swapped by hand
    ed = Plan(drop_layers=edited_blocks, source={"criterion": "cosine", "criterion_top_k": list(sel.blocks),
                                                 "edited_by_hand": True})
    out["edited"] = PlanRecord("cosine-layer-k2-edited", ed, "plan-run", "cosine", "layer", 2, edited_blocks,
                               True, prot, {})
    return out


def _run_script(script: str, cwd) -> None:
    """Run the script's analysis and selection commands (not eval/prune: they only consume plan.json)."""
    for line in script.splitlines():
        if not line.startswith("python -m analysis "):
            continue
        argv = shlex.split(line)
        if argv[3] in ("eval", "prune", "sweep"):
            continue
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert proc.returncode == 0, (line, proc.stderr[-2000:])


@pytest.mark.parametrize("which", ["fbs", "mi-topk", "edited"])
def test_exported_script_rebuilds_the_kept_plan(session, tmp_path, which):
    prec = _plans(session)[which]
    script = commands.session_script(session["screen-run"], prec, [0, 1], "wiki", {"window": 32, "max_tokens": 256},
                                     runs=session)
    assert "# (not accepted" not in script, script
    # the plan's own run settings, not the run on screen's
    assert " --mi " in script and "--sinks keep" not in script and "--granularity layer --mi" in script, script
    _run_script(script, tmp_path)
    got = Plan.load(tmp_path / "plan.json")
    assert (got.drop_attn, got.drop_mlp, got.drop_layers) == (prec.plan.drop_attn, prec.plan.drop_mlp,
                                                            prec.plan.drop_layers), script
    if which == "edited":
        src = json.loads((tmp_path / "plan.json").read_text())["source"]
        assert src["edited_by_hand"] is True and src["criterion_top_k"] == prec.plan.source["criterion_top_k"]


def test_select_hand_edits_are_checked(session, tmp_path):
    from analysis.errors import SelectionError
    from analysis.cli.commands.select import apply_edits

    r = session["plan-run"].result
    sel = select(r, "cosine", 2, "layer", protected=[0])
    with pytest.raises(SelectionError, match="protected"):
        apply_edits(sel, [0], [], r.num_layers)
    with pytest.raises(SelectionError, match="not in the criterion"):
        apply_edits(sel, [], [b for b in range(1, r.num_layers) if b not in sel.blocks][:1], r.num_layers)
    with pytest.raises(SelectionError, match="outside"):
        apply_edits(sel, [99], [], r.num_layers)
    free = [b for b in range(1, r.num_layers) if b not in sel.blocks][0]
    assert apply_edits(sel, [free], [sel.blocks[0]], r.num_layers).blocks == sorted([free, sel.blocks[1]])
