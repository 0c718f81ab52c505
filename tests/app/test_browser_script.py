"""The exported reproduce.sh, downloaded through the page, rebuilds the kept plans (headless Chromium).

The app loads a tiny checkpoint directory (the *Local directory* source: a real path the CLI can load too),
runs the analysis with MI-PRUN, and keeps three plans on the Select page: MI-PRUN's top-k, MI-PRUN's
Fast-Block-Select and a cosine plan edited by hand (one block of its top-k clicked off, another clicked on). For
each, the Export page's ``reproduce.sh`` and ``plan.json`` are downloaded as a user would; the script's
analyze → select/miprun commands run through the real CLI (``test_reproduce_script._run_script``) and the plan
they write must drop exactly the blocks of the downloaded plan.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from browser_helpers import BROWSER_MARKS, keep_plan, OUT, button, choose, fill_text, nav, number, open_app, run_analysis, \
    sample, wait_idle, wait_text
from test_reproduce_script import _run_script

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from analysis.testing import save_tiny_checkpoint

    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-browser") / "tiny-ckpt", layers=6))


def _selected(page) -> int:
    text = page.get_by_test_id("stMetric").filter(has_text="Selected blocks").inner_text()
    return int(re.search(r"Selected blocks\s*(\d+)", text).group(1))


def _selection(page) -> list[int]:
    cap = page.get_by_text(re.compile(r"^Selection: \[")).first.inner_text()
    return [int(b) for b in re.search(r"\[([\d, ]*)\]", cap).group(1).replace(" ", "").split(",") if b]


def _click_bar(page, block: int) -> None:
    bars = page.locator(".js-plotly-plot").first.locator("g.trace.bars g.point path")
    bars.nth(block).click(force=True)
    wait_idle(page)


def _download(page, key: str) -> str:
    with page.expect_download() as dl:
        button(page, key).click()
    return Path(dl.value.path()).read_text()


def test_downloaded_script_rebuilds_mi_prun_and_hand_edited_plans(server, new_page, checkpoint, tmp_path):
    from playwright.sync_api import expect

    from analysis.models.plan import Plan

    page = new_page(viewport=(1500, 1100))
    open_app(page, server.url)
    nav(page, "Model & data")
    page.get_by_text("Local directory", exact=True).click()
    wait_idle(page)
    fill_text(page, "Checkpoint directory (with config.json)", checkpoint)
    sample(page, 8, 64)
    nav(page, "Entropy dynamics")
    page.get_by_text("MI-PRUN", exact=True).first.click()                  # settings are open before the first run
    wait_idle(page)
    run_analysis(page)

    # --- three plans: MI-PRUN top-k, Fast-Block-Select, a hand-edited cosine top-k -------------------------
    nav(page, "Select blocks")
    choose(page, "Criterion", "MI-PRUN −MI(in, out)")
    number(page, "k", 2)
    plans = {"mi-topk": keep_plan(page)}
    button(page, "keep_fbs").click()
    plans["fbs"] = re.match(r"Kept plan (\S+):", wait_text(page, re.compile(r"^Kept plan mi-prun-fbs")).inner_text()) \
        .group(1)
    wait_idle(page)
    choose(page, "Criterion", "LLM-Drop cosine")
    number(page, "k", 2)
    top = _selection(page)
    assert len(top) == 2, top
    _click_bar(page, top[0])                                                 # one block of the top-k off …
    assert _selected(page) == 1
    for b in range(6):                                                       # … and another one on (protected: refused)
        if b not in top:
            _click_bar(page, b)
            if _selected(page) == 2:
                break
    assert _selected(page) == 2
    expect(page.get_by_test_id("stMetric").filter(has_text="Source")).to_contain_text("hand edits")
    plans["edited"] = keep_plan(page)
    assert plans["edited"].endswith("-edited"), plans
    page.screenshot(path=str(OUT / "script-01-plans.png"), full_page=True)

    # --- Export: download reproduce.sh and plan.json of each, run the script's commands ------------------
    nav(page, "Export")
    for which, name in plans.items():
        choose(page, "Plan for the select step", name)
        script = _download(page, "dl_script")
        kept = json.loads(_download(page, f"dl_plan_{name}"))
        (tmp_path / f"{which}.sh").write_text(script)
        assert "# (not accepted" not in script, script
        assert f"--model {checkpoint}" in script and " --mi " in script, script
        cwd = tmp_path / which
        cwd.mkdir()
        _run_script(script, cwd)
        got = Plan.load(cwd / "plan.json")
        want = Plan.from_dict(kept)
        assert (got.drop_attn, got.drop_mlp, got.drop_layers) == (want.drop_attn, want.drop_mlp, want.drop_layers), \
            (which, script)
        if which == "edited":
            src = json.loads((cwd / "plan.json").read_text())["source"]
            assert src["edited_by_hand"] is True and src["criterion_top_k"] == top, src
    page.screenshot(path=str(OUT / "script-02-export.png"), full_page=True)
