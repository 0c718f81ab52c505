"""Class 3 of issue 25: every JSON the tool reads goes through one strict, validated reader
(:func:`analysis.store.jsonio.read_json` and the pydantic schemas of :mod:`analysis.store.schemas`).

Each parametrized case is one hostile file; the catalogue counts in docs/reliability.md ("Class 3") are the
number of cases here."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from analysis.cli.main import main
from analysis.errors import DataError
from analysis.models.plan import Plan
from analysis.score.result import AnalysisResult
from analysis.store.jsonio import SCHEMA_VERSION, dumps, read_json
from analysis.store.schemas import read_eval, read_sweep

ROOT = Path(__file__).resolve().parents[2]

RUN = {"num_layers": 2, "estimator": "bucket", "granularity": "attention", "protect": "none",
       "per_seq": {"bucket": {"boundary": [[1.0, 2.0, 3.0], [1.5, 2.5, 3.5]], "mid": [[1.2, 2.2], [1.1, 2.1]]}},
       "boundary": 0, "protected": [], "manifest": {"model": {"num_layers": 2}}}
PLAN = {"drop_attn": [1], "drop_mlp": [], "drop_layers": [],
        "source": {"criterion": "entrodrop", "granularity": "attention", "k": 1, "protected": [0],
                   "run_manifest": {"model": {"num_layers": 2}}}}
EVAL = {"perplexity": 12.5, "perplexity_original": 10.0, "kl": 0.1, "top1": 0.9, "tokens": 100,
        "plan": {"drop_attn": [1], "drop_mlp": [], "drop_layers": [], "source": {}}}
SWEEP = {"rows": [{"criterion": "entrodrop", "k": 0, "perplexity": 10.0, "params_removed_fraction": 0.0},
                  {"criterion": "entrodrop", "k": 1, "perplexity": 12.0, "params_removed_fraction": 0.05}]}


def _write(tmp_path, name, text: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _mut(d: dict, fn) -> str:
    d = copy.deepcopy(d)
    fn(d)
    return json.dumps(d)


READERS = {"run": AnalysisResult.load, "plan": Plan.load, "eval": read_eval, "sweep": read_sweep}

# ---- (kind, file text, message) -----------------------------------------------------------------------------
BAD = [
    # duplicate keys: which value is meant is ambiguous
    ("run", json.dumps(RUN)[:-1] + ', "num_layers": 3}', "'num_layers' appears twice"),
    ("plan", '{"drop_layers": [1], "drop_layers": [0], "source": {}}', "'drop_layers' appears twice"),
    ("plan", '{"drop_layers": [1], "source": {"k": 1, "k": 2}}', "'k' appears twice"),
    ("eval", '{"perplexity": 3.0, "perplexity": 2.0}', "'perplexity' appears twice"),
    # non-standard numbers
    ("run", json.dumps(RUN).replace("1.2", "NaN", 1), "NaN, which is not standard JSON"),
    ("run", json.dumps(RUN).replace("1.2", "Infinity", 1), "Infinity, which is not standard JSON"),
    ("run", json.dumps(RUN).replace("1.2", "-Infinity", 1), "-Infinity, which is not standard JSON"),
    ("run", json.dumps(RUN).replace("1.2", "1e999", 1), "1e999 overflows to infinity"),
    ("eval", '{"perplexity": NaN}', "NaN, which is not standard JSON"),
    ("sweep", json.dumps(SWEEP).replace("12.0", "Infinity"), "Infinity, which is not standard JSON"),
    # schema versions
    ("run", _mut(RUN, lambda d: d.update(schema_version=SCHEMA_VERSION + 1)), "written by a newer Entroscope"),
    ("plan", _mut(PLAN, lambda d: d.update(schema_version=99)), "schema version 99"),
    ("eval", _mut(EVAL, lambda d: d.update(schema_version="1")), "schema_version must be a positive integer"),
    ("sweep", _mut(SWEEP, lambda d: d.update(schema_version=0)), "schema_version must be a positive integer"),
    # degenerate values
    ("run", _mut(RUN, lambda d: d["per_seq"].update(bucket={"boundary": [[None] * 3] * 2, "mid": [[None] * 2] * 2})),
     "every bucket entropy in per_seq is null"),
    ("run", _mut(RUN, lambda d: d.update(norms={"boundary": [1.0, 2.0], "mid": [1.0, 2.0]})),
     "norms.boundary has 2 values; num_layers=2 needs 3"),
    ("run", _mut(RUN, lambda d: d.update(extras={"mi": {"scores": {"layer": [1.0]}}})),
     "extras.mi.scores.layer has 1 values; num_layers=2 needs 2"),
    ("run", _mut(RUN, lambda d: d.update(extras={"mi": {"matrix": [[0.0, 1.0], [1.0, 0.0]]}})),
     "extras.mi.matrix must be a 3×3 matrix"),
    ("run", _mut(RUN, lambda d: d.update(extras={"mi": {"scores": {"layer": ["a", 1.0]}}})),
     "extras.mi.scores.layer must hold numbers"),
    ("run", _mut(RUN, lambda d: d["manifest"]["model"].update(num_layers=30)),
     "num_layers is 2 but its own manifest.model records 30 layers"),
    # plans that contradict their own source
    ("plan", _mut(PLAN, lambda d: d.update(drop_attn=[2])), "drop_attn holds block(s) [2], but its source run's "
                                                            "model has 2 layers"),
    ("plan", _mut(PLAN, lambda d: d.update(drop_attn=[0])), "drops block(s) [0] that its own source lists as protected"),
    ("plan", _mut(PLAN, lambda d: d.update(drop_attn=[], drop_mlp=[1])),
     "source is a attention-granularity selection (drop_attn) but the plan fills drop_mlp only"),
    # eval / sweep values no measurement can give
    ("eval", _mut(EVAL, lambda d: d.update(perplexity=None)), "perplexity is null"),
    ("eval", _mut(EVAL, lambda d: d.update(perplexity=0.5)), "a perplexity is at least 1"),
    ("eval", _mut(EVAL, lambda d: d.update(top1=1.5)), "an agreement rate lies in [0, 1]"),
    ("eval", _mut(EVAL, lambda d: d.update(kl=-1.0)), "a KL divergence is never negative"),
    ("eval", _mut(EVAL, lambda d: d.update(plan={"drop_layers": ["1"]})), "must hold integers"),
    ("sweep", _mut(SWEEP, lambda d: [r.update(perplexity=None) for r in d["rows"]]), "every perplexity is null"),
    ("sweep", _mut(SWEEP, lambda d: d["rows"][0].update(k=-1)), "rows[0].k"),
    ("sweep", _mut(SWEEP, lambda d: d["rows"][0].update(params_removed_fraction=3)), "params_removed_fraction"),
    ("sweep", _mut(SWEEP, lambda d: d.update(rows=[])), "has no rows"),
    # numbers as strings or booleans: refused, not coerced (pydantic's lax mode took "12" for 12.0)
    ("eval", _mut(EVAL, lambda d: d.update(perplexity="12")), "perplexity"),
    ("eval", _mut(EVAL, lambda d: d.update(kl="0.1")), "kl"),
    ("eval", _mut(EVAL, lambda d: d.update(top1=True)), "top1"),
    ("eval", _mut(EVAL, lambda d: d.update(perplexity_original="10")), "perplexity_original"),
    ("sweep", _mut(SWEEP, lambda d: d["rows"][1].update(perplexity="12")), "rows[1].perplexity"),
    ("sweep", _mut(SWEEP, lambda d: d["rows"][0].update(params_removed_fraction="0")), "params_removed_fraction"),
    ("run", _mut(RUN, lambda d: d["per_seq"]["bucket"]["mid"][0].__setitem__(0, "1.2")), "per_seq"),
    ("run", _mut(RUN, lambda d: d.update(norms={"boundary": [1.0, "2", 3.0], "mid": [1.0, 2.0]})), "norms"),
    # not JSON objects at all / not UTF-8
    ("eval", "[1, 2]", "expected a JSON object"),
    ("sweep", '{"rows": [', "not valid sweep JSON (line 1"),
    ("run", json.dumps(RUN).replace("bucket", "caf\u00e9").encode("latin-1"), "not UTF-8"),
]


@pytest.mark.parametrize("kind,text,pattern", BAD, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD)])
def test_hostile_json_is_refused_naming_the_problem(tmp_path, kind, text, pattern):
    path = _write(tmp_path, f"{kind}.json", text)
    with pytest.raises(DataError, match=re.escape(pattern)) as info:
        READERS[kind](path)
    assert path in str(info.value)                       # the message names the file


GOOD = [("run", RUN), ("plan", PLAN), ("eval", EVAL), ("sweep", SWEEP)]


@pytest.mark.parametrize("kind,d", GOOD)
def test_files_without_a_version_load_as_version_1_and_current_ones_round_trip(tmp_path, kind, d, recwarn):
    READERS[kind](_write(tmp_path, "old.json", json.dumps(d)))               # no schema_version: version 1
    READERS[kind](_write(tmp_path, "v1.json", json.dumps({**d, "schema_version": 1})))
    assert not recwarn.list


def test_every_written_file_carries_the_schema_version(tmp_path):
    r = AnalysisResult.load(_write(tmp_path, "r.json", json.dumps(RUN)))
    r.save(tmp_path / "saved-run.json")
    Plan.from_dict(PLAN).save(tmp_path / "saved-plan.json")
    from analysis.export import write_json

    write_json(EVAL, tmp_path / "saved-eval.json")
    for name in ("saved-run.json", "saved-plan.json", "saved-eval.json"):
        d = json.loads((tmp_path / name).read_text())
        assert list(d)[0] == "schema_version" and d["schema_version"] == SCHEMA_VERSION, name
    assert json.loads(dumps({"a": float("nan")})) == {"schema_version": SCHEMA_VERSION, "a": None}


def test_a_null_secondary_curve_is_a_named_warning(tmp_path):
    d = copy.deepcopy(RUN)
    d["per_seq"]["knn"] = {"boundary": [[None] * 3] * 2, "mid": [[None] * 2] * 2}
    r = AnalysisResult.load(_write(tmp_path, "r.json", json.dumps(d)))
    assert any(w.startswith("NullCurve: every knn entropy is null") for w in r.warnings)
    s = copy.deepcopy(SWEEP)
    s["rows"] += [{"criterion": "cosine", "k": 1, "perplexity": None}]
    _, notes = read_sweep(_write(tmp_path, "s.json", json.dumps(s)))
    assert notes == ["NullCurve: every perplexity of criterion 'cosine' is null (non-finite when measured); "
                     "it is not drawn"]


def test_figures_cli_reads_through_the_strict_reader(tmp_path, capsys):
    s = copy.deepcopy(SWEEP)
    s["rows"] += [{"criterion": "cosine", "k": 1, "perplexity": None}]
    path = _write(tmp_path, "s.json", json.dumps(s))
    assert main(["figures", "--sweep", path, "--out", str(tmp_path / "f"), "--formats", "png", "--quiet"]) == 0
    assert "warning: NullCurve" in capsys.readouterr().err
    bad = _write(tmp_path, "e.json", '{"perplexity": 2.0, "perplexity": 3.0}')
    assert main(["figures", "--eval", bad, "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "'perplexity' appears twice" in err and "unexpected" not in err


def test_read_json_adopts_a_pydantic_model_for_a_new_file_kind(tmp_path):
    from pydantic import BaseModel

    class Rec(BaseModel):
        model: str
        blocks: list[int]

    ok = read_json(_write(tmp_path, "rec.json", '{"model": "x", "blocks": [1]}'), Rec, kind="recommendation")
    assert ok.blocks == [1]
    with pytest.raises(DataError, match=r"rec2.json is not a valid recommendation JSON: field blocks\[0\]"):
        read_json(_write(tmp_path, "rec2.json", '{"model": "x", "blocks": ["a"]}'), Rec, kind="recommendation")


#: json.load / json.loads left outside the reader, with the reason (everything else must use store.jsonio)
ALLOWED = {
    "analysis/store/jsonio.py": "the reader itself",
    "analysis/tasks/scoring.py": "the sandbox's own stdin/stdout protocol with its child process",
    "analysis/tasks/data.py": "task data shipped in pinned packages (tasks/ is the sandbox helper's)",
    "analysis/store/outdir.py": "our own ownership marker, read with its own fallback (outdir is relA's)",
    "analysis/tasks/jail.py": "runs inside the sandbox with the standard library only: its argv from the parent",
    "analysis/tasks/sandbox.py": "the sandbox's own status protocol with its child process",
}


def test_no_json_is_parsed_outside_the_strict_reader():
    found = []
    for base in ("analysis", "app_support", "pages"):
        for f in sorted((ROOT / base).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if rel not in ALLOWED and re.search(r"\bjson\.loads?\(", f.read_text()):
                found.append(rel)
    assert not found, f"parse JSON with analysis.store.jsonio.read_json / loads_strict in {found}"
