"""Task accuracy through lm-eval: our in-memory wrapper vs lm-eval's own `hf` model, local task data held out
from calibration, reproducibility, and the refusals (hub tasks offline, HumanEval without opt-in)."""
import json
import textwrap

import pytest
import torch

from analysis.cli.main import main
from analysis.errors import DataError
from analysis.models.loading import weights_hash
from analysis.models.plan import Plan
from analysis.models.surgery import save_pruned
from analysis.tasks import TaskConfig, check_tasks, evaluate_checkpoint_hf, evaluate_tasks, flat_columns, parse_tasks
from analysis.tasks import data as task_data
from analysis.testing import tiny_loaded, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

_TUTILS = '''
import json, datasets
def load(path, **_):
    rows = [json.loads(l) for l in open(path)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows[4:]),
                                 "train": datasets.Dataset.from_list(rows[:4])})
'''


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """A tiny local multiple-choice task (short contexts) in its own include folder."""
    d = tmp_path_factory.mktemp("tinytask")
    g = torch.Generator().manual_seed(0)
    words = ["cat", "dog", "sun", "sea", "red", "sky", "owl", "fig"]
    rows = []
    for i in range(24):
        ctx = " ".join(words[int(j)] for j in torch.randint(0, 8, (6,), generator=g))
        rows.append({"context": ctx, "choices": [words[(i + k) % 8] for k in range(4)], "label": i % 4})
    (d / "tiny.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "tutils.py").write_text(_TUTILS)
    (d / "tiny.yaml").write_text(textwrap.dedent(f"""\
        task: tiny-mc
        custom_dataset: !function tutils.load
        dataset_kwargs:
          path: {d / 'tiny.jsonl'}
        output_type: multiple_choice
        test_split: test
        fewshot_split: train
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: label
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
          - metric: acc_norm
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
        """))
    return d


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded("llama", layers=4, hidden=32, seed=3)


def _snapshot(model):
    ids = torch.arange(40).unsqueeze(0)
    with torch.inference_mode():
        logits = model(ids).logits.clone()
    kinds = [type(layer.self_attn).__name__ for layer in model.model.layers]
    return weights_hash(model), len(model.model.layers), kinds, logits


def test_wrapper_matches_lm_eval_hf_on_saved_checkpoint(lm, tiny_task, tmp_path):
    plan = Plan(drop_layers=[1])
    before = _snapshot(lm.model)
    cfg = TaskConfig(limit=20, include_path=[str(tiny_task)])
    ours = evaluate_tasks(lm, ["tiny-mc", "cloze-news"], plan, TaskConfig(limit=3, include_path=[str(tiny_task)]))
    ours_mc = evaluate_tasks(lm, ["tiny-mc"], plan, cfg)
    after = _snapshot(lm.model)
    assert before[:3] == after[:3] and torch.equal(before[3], after[3])  # the cached base model never changes

    out = tmp_path / "ckpt"
    save_pruned(lm, plan, out)
    tiny_tokenizer().save_pretrained(out)
    ref = evaluate_checkpoint_hf(out, ["tiny-mc", "cloze-news"], TaskConfig(limit=3, include_path=[str(tiny_task)]))
    ref_mc = evaluate_checkpoint_hf(out, ["tiny-mc"], cfg)

    a, b = ours_mc["tasks"]["tiny-mc"], ref_mc["tasks"]["tiny-mc"]
    assert a["n"] == b["n"] == 20
    assert 0 < a["metrics"]["acc"]["value"] < 1  # a tiny random model: neither all right nor all wrong
    for m in ("acc", "acc_norm"):
        assert a["metrics"][m]["value"] == b["metrics"][m]["value"]
        assert a["metrics"][m]["stderr"] == pytest.approx(b["metrics"][m]["stderr"])
    ca, cb = ours["tasks"]["cloze-news"]["metrics"], ref["tasks"]["cloze-news"]["metrics"]
    assert ca["acc"]["value"] == cb["acc"]["value"]
    assert ca["perplexity"]["value"] == pytest.approx(cb["perplexity"]["value"], rel=1e-4)
    assert ca["perplexity"]["value"] > 1
    cols = flat_columns(ours)
    assert {"cloze-news/acc", "cloze-news/acc_stderr", "cloze-news/perplexity", "tiny-mc/acc"} <= set(cols)


def test_limit_and_seed_make_runs_reproducible(lm, tiny_task):
    cfg = TaskConfig(limit=6, seed=7, num_fewshot=2, include_path=[str(tiny_task)])
    r1 = evaluate_tasks(lm, "tiny-mc", None, cfg)
    r2 = evaluate_tasks(lm, "tiny-mc", None, cfg)
    assert r1["tasks"] == r2["tasks"]
    assert r1["tasks"]["tiny-mc"]["n"] == 6
    assert r1["config"]["seed"] == 7 and r1["config"]["limit"] == 6 and r1["config"]["lm_eval"]


def test_cloze_items_come_from_held_out_paragraphs():
    from analysis.data import load_corpus

    corpus = load_corpus("docs")
    items = task_data.read_rows(task_data.task_files("cloze-docs")["test"])
    assert len(items) >= 50
    for it in items[:50]:
        assert it["target"].startswith(" ") and it["target"][1:].isalpha()
        assert any(it["context"] + it["target"] in doc for doc in corpus.eval)
        assert not any(it["context"] in doc for doc in corpus.calib)


def test_math_task_is_the_held_out_split_of_the_math_domain():
    from analysis.data import load_corpus

    files = task_data.task_files("math-champ")
    test, train = task_data.read_rows(files["test"]), task_data.read_rows(files["train"])
    assert len(test) == len(load_corpus("math").eval) and not {r["id"] for r in test} & {r["id"] for r in train}
    calib_text = "\n".join(load_corpus("math").calib)
    assert not any(f"Problem: {r['problem']}\n" in calib_text for r in test)
    assert task_data.short_answer("100 (i.e., all numbers)") == "100"
    assert task_data.short_answer("3 is the only possible value") == "3"


def test_math_exact_match_scoring():
    from analysis.tasks.scoring import math_results

    doc = {"answer": "2^(n-1)", "answer_full": "2^(n-1)"}
    assert math_results(doc, [" 2^(n - 1).\nProblem: ..."])["exact_match"] == 1.0
    assert math_results(doc, [" 2^n"])["exact_match"] == 0.0
    assert math_results(doc, [""])["exact_match"] == 0.0


def test_humaneval_needs_the_opt_in():
    with pytest.raises(DataError, match="executes model-written code.*--allow-code-execution"):
        check_tasks(["cloze-wiki", "humaneval"], TaskConfig())
    check_tasks(["humaneval"], TaskConfig(allow_code_execution=True))  # opted in: accepted


def test_hub_task_offline_gives_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="'hellaswag' is not a local task.*offline.*HF_HUB_OFFLINE"):
        check_tasks(["cloze-wiki", "hellaswag"])


def test_parse_tasks():
    assert parse_tasks("cloze-wiki, math-champ,cloze-wiki") == ["cloze-wiki", "math-champ"]
    with pytest.raises(DataError, match="no task given"):
        parse_tasks(" , ")
    with pytest.raises(DataError, match="bad task name"):
        parse_tasks("cloze wiki;rm")


@pytest.mark.parametrize("argv,match", [
    (["--tasks", "hellaswag"], "hellaswag.*offline"),
    (["--tasks", "cloze-wiki,humaneval"], "humaneval.*--allow-code-execution"),
])
def test_cli_refusals_are_one_line(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "e.json"
    # the model is never loaded: tasks are checked first
    rc = main(["eval", "--model", str(tmp_path / "no-such-model"), "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not out.exists()
    import re

    assert re.search(match, err)


def test_cli_eval_and_sweep_with_tasks(lm, tmp_path, capsys):
    d = tmp_path / "model"
    save_pruned(lm, None, d)
    tiny_tokenizer().save_pretrained(d)
    out, csv = tmp_path / "e.json", tmp_path / "e.csv"
    rc = main(["eval", "--model", str(d), "--device", "cpu", "--dtype", "fp32", "--drop-layers", "2",
               "--corpus", "news", "--max-tokens", "256", "--tasks", "cloze-news", "--limit", "2",
               "--out", str(out), "--csv", str(csv), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    t = res["tasks"]["tasks"]["cloze-news"]
    assert t["n"] == 2 and t["primary"] == "acc" and set(t["metrics"]) == {"acc", "perplexity"}
    assert res["tasks"]["config"]["limit"] == 2
    header = csv.read_text().splitlines()[0].split(",")
    assert "cloze-news/acc" in header and "cloze-news/acc_stderr" in header and "perplexity" in header
    # same numbers as the library call on the same plan
    direct = evaluate_tasks(lm, "cloze-news", Plan(drop_layers=[2]), TaskConfig(limit=2))
    assert direct["tasks"]["cloze-news"]["metrics"]["perplexity"]["value"] == pytest.approx(
        t["metrics"]["perplexity"]["value"], rel=1e-5)


def test_hub_task_names_pass_through_when_the_hub_is_reachable(monkeypatch):
    import analysis.tasks.runner as runner

    monkeypatch.setattr(runner, "hub_offline_reason", lambda: None)  # pretend the hub is reachable
    with pytest.raises(DataError, match="unknown task 'no-such-task'"):  # hellaswag itself is accepted
        check_tasks(["hellaswag", "no-such-task"])


def test_cli_sweep_gives_accuracy_per_plan(lm, tmp_path, capsys):
    from analysis.models.loading import load_model
    from analysis.run import AnalysisConfig, analyze
    from analysis.testing import random_tokens

    d = tmp_path / "model"
    save_pruned(lm, None, d)
    tiny_tokenizer().save_pretrained(d)
    run = analyze(load_model(str(d), device="cpu"), random_tokens(4, 24),
                  AnalysisConfig(estimator="bucket", granularity="layer"))
    run.save(tmp_path / "run.json")
    out, csv = tmp_path / "sweep.json", tmp_path / "sweep.csv"
    rc = main(["sweep", "--run", str(tmp_path / "run.json"), "--model", str(d), "--device", "cpu",
               "--criteria", "entrodrop,random", "--k", "0,1", "--corpus", "news", "--window", "64",
               "--max-tokens", "128", "--tasks", "cloze-news", "--limit", "2", "--out", str(out), "--csv", str(csv),
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["tasks"]["cloze-news"]["n"] == 2 for r in rows)
    assert rows[0]["cloze-news/perplexity"] == rows[2]["cloze-news/perplexity"]  # k = 0 is the same plan
    assert rows[1]["cloze-news/perplexity"] != rows[0]["cloze-news/perplexity"]
    header = csv.read_text().splitlines()[0].split(",")
    assert "cloze-news/acc" in header and not any(c.startswith("tasks.") for c in header)


def test_progress_is_told_before_every_model_call_and_can_end_the_evaluation(lm):
    """``progress`` hears of every lm-eval model call; what it raises (the app's Stop) ends the evaluation there, and
    the base model is left as it was (the plan's view is undone)."""
    before = _snapshot(lm.model)
    told: list[str] = []
    cfg = TaskConfig(limit=3, batch_size=1)
    full = evaluate_tasks(lm, "cloze-news", Plan(drop_layers=[1]), cfg, progress=lambda f, m: told.append(m))
    assert len(told) >= 3 and told[:3] == [f"task accuracy: model call {i}" for i in (1, 2, 3)]

    class Stop(Exception):
        pass

    def stop_at_2(f, msg):
        if msg.endswith("call 2"):
            raise Stop(msg)

    with pytest.raises(Stop, match="model call 2"):
        evaluate_tasks(lm, "cloze-news", Plan(drop_layers=[1]), cfg, progress=stop_at_2)
    after = _snapshot(lm.model)
    assert after[:3] == before[:3] and torch.equal(after[3], before[3])
    again = evaluate_tasks(lm, "cloze-news", Plan(drop_layers=[1]), cfg)           # no progress: lm-eval's own HFLM
    assert again["tasks"] == full["tasks"]
