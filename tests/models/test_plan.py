"""Plans: validation, normalisation, JSON round trips, provenance from a selection."""
import json

import pytest

from analysis.score.criteria import Selection
from analysis.errors import DataError, SelectionError
from analysis.models.plan import Plan, plan_from_args


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


@pytest.mark.parametrize("plan, match", [
    (Plan(drop_layers=[8]), r"layer 8.*8 layers.*0\.\.7"),
    (Plan(drop_attn=[12]), r"attention sub-block 12.*0\.\.7"),
    (Plan(drop_mlp=[-1]), r"MLP sub-block -1.*non-negative.*0\.\.7"),
    (Plan(drop_attn=[3, 3]), r"attention sub-block 3 twice"),
    (Plan(drop_layers=list(range(8))), r"drops all 8 layers"),
    (Plan(drop_attn=list(range(8)), drop_mlp=list(range(8))), r"drops all 8 layers"),
    (Plan(drop_layers=["2"]), r"not a block index"),
])
def test_validate_errors_name_the_block_and_range(plan, match):
    with pytest.raises(SelectionError, match=match):
        plan.validate(8)


def test_validate_returns_plan_and_accepts_overlaps():
    p = Plan(drop_attn=[5], drop_layers=[5, 6])
    assert p.validate(8) is p


def test_normalized_folds_subblocks():
    p = Plan(drop_attn=[1, 3, 5], drop_mlp=[3, 4, 6], drop_layers=[6, 0], source={"x": 1})
    n = p.normalized()
    assert n.drop_layers == [0, 3, 6] and n.drop_attn == [1, 5] and n.drop_mlp == [4]
    assert n.source == {"x": 1}
    assert p.kept_layers(8) == [1, 2, 4, 5, 7]
    assert p.first_dropped() == 0 and Plan().first_dropped() is None


def test_reindexed_to_remaining_layers():
    p = Plan(drop_attn=[5], drop_mlp=[2], drop_layers=[0, 3])
    r = p.reindexed(8)
    assert r.drop_attn == [3] and r.drop_mlp == [1] and r.drop_layers == []


def test_describe_and_is_empty():
    assert Plan(drop_attn=[7, 5], drop_layers=[21, 20]).describe() == "layers [20, 21]; attention [5, 7]"
    assert Plan(drop_mlp=[9]).describe() == "MLP [9]"
    assert Plan().is_empty and Plan().describe() == "nothing dropped"
    assert not Plan(drop_mlp=[1]).is_empty


def test_json_round_trip_has_a_schema_version_and_the_four_plan_keys(tmp_path):
    p = Plan(drop_attn=[5, 7], drop_mlp=[9], drop_layers=[20, 21], source={"criterion": "manual"})
    path = tmp_path / "plan.json"
    p.save(path)
    d = json.loads(path.read_text())
    assert list(d) == ["schema_version", "drop_attn", "drop_mlp", "drop_layers", "source"]
    assert d == {"schema_version": 1, "drop_attn": [5, 7], "drop_mlp": [9], "drop_layers": [20, 21],
                 "source": {"criterion": "manual"}}
    assert Plan.load(path) == p
    assert Plan.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid plan JSON"),
    ('{"num_layers": 30, "drop_order": [1]}', "not a plan"),
    ("[1, 2]", "expected a JSON object"),
    ('{"drop_attn": "5,7"}', "must be a list"),
    ('{"drop_attn": [5.5]}', "must hold integers"),
    ('{"drop_attn": [5], "source": 3}', "'source' must be a JSON object"),
    ('{"drop_attn": [5], "extra": 1}', "unknown keys"),
])
def test_bad_plan_files_raise_data_error(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        Plan.load(path)


def test_missing_plan_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Plan.load(tmp_path / "nope.json")
    with pytest.raises(DataError, match="directory"):
        Plan.load(tmp_path)


def test_from_selection_records_provenance():
    sel = Selection("entrodrop", "attention", 2, [7, 5], [5, 7, 9], [0.1] * 10, [0, 1, 9])

    class Run:
        manifest = {"model": {"name": "tiny"}}

    p = Plan.from_selection(sel, Run())
    assert p.drop_attn == [5, 7] and p.drop_mlp == [] and p.drop_layers == []
    assert p.source["criterion"] == "entrodrop" and p.source["k"] == 2 and p.source["granularity"] == "attention"
    assert p.source["order"] == [5, 7, 9] and p.source["run_manifest"] == {"model": {"name": "tiny"}}
    layer = Plan.from_selection(Selection("cosine", "layer", 1, [4], [4], [], []))
    assert layer.drop_layers == [4] and layer.source["run_manifest"] == {}


def test_plan_from_args():
    assert plan_from_args() is None
    p = plan_from_args(drop_layers=[20, 21], drop_attn=[5])
    assert p.drop_layers == [20, 21] and p.drop_attn == [5] and p.source["criterion"] == "manual"
    assert plan_from_args(drop_mlp=[]).is_empty


def test_plan_file_and_lists_conflict(tmp_path):
    path = tmp_path / "p.json"
    Plan(drop_attn=[1]).save(path)
    assert plan_from_args(str(path)).drop_attn == [1]
    with pytest.raises(SelectionError, match="either a plan file"):
        plan_from_args(str(path), drop_layers=[2])


def test_select_command_writes_a_plan(tmp_path):
    from analysis.cli.main import main
    from analysis.run import AnalysisConfig, analyze
    from analysis.testing import random_tokens, tiny_loaded

    run = analyze(tiny_loaded("llama", layers=6), random_tokens(4, 24), AnalysisConfig(estimator="bucket"))
    run.save(tmp_path / "run.json")
    out = tmp_path / "plan.json"
    assert main(["select", "--run", str(tmp_path / "run.json"), "--k", "2", "--out", str(out)]) == 0
    p = Plan.load(out)
    assert len(p.drop_attn) == 2 and p.source["criterion"] == "entrodrop" and p.source["run_manifest"]
    assert list(json.loads(out.read_text())) == ["schema_version", "drop_attn", "drop_mlp", "drop_layers", "source"]
