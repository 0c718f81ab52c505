"""Inputs are validated before they are used (docs/reliability.md, classes V1–V12), through the CLI:
numbers, degenerate analyses, --samples for token files, run/plan schemas, provenance, checkpoints,
the model cache, --text file names, what a run lacks, broken pipes and unusable devices."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.cli import main
from analysis.testing import tiny_model, tiny_tokenizer
from test_reliability_cli import expect, run_cli


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-v")
    tiny_model("llama", layers=4).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ids-v") / "ids.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, size=(4, 32)))
    return str(p)


@pytest.fixture(scope="module")
def run_json(tiny_dir, ids_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-v") / "run.json"
    assert main(["analyze", "--model", tiny_dir, "--tokens", ids_file, "--out", str(out), "--quiet", "--no-cache"]) == 0
    return str(out)


# ---- V1 numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,pattern", [
    (["--estimator", "renyi", "--alpha", "nan"], "finite number"),
    (["--estimator", "renyi", "--alpha", "inf"], "finite number"),
    (["--estimator", "renyi", "--alpha", "-2"], "outside (0, 1000]"),
    (["--estimator", "renyi", "--alpha", "0"], "outside (0, 1000]"),
    (["--bins", "1"], "bin count in 2..100000"),
    (["--bins", "1000000000"], "bin count in 2..100000"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**40)], "seed"),
    (["--seed", "1e3"], "seed"),
])
def test_numbers_out_of_domain_are_refused(capsys, tmp_path, tiny_dir, ids_file, argv, pattern):
    err = expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--out", str(tmp_path / "r.json"),
                          *argv], pattern)
    assert not (tmp_path / "r.json").exists() and "unexpected" not in err


def test_select_and_channel_numbers(capsys, run_json, tiny_dir, tmp_path):
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "angular", "--granularity", "layer",
                    "--window", "0"], "block window in 1..")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "angular", "--granularity", "layer",
                    "--window", "4"], "spans the whole 4-layer model")
    expect(capsys, ["select", "--run", run_json, "--k", "1", "--criterion", "random", "--seed", "-5"], "seed")
    for bad in ("nan", "inf", "1.5", "-0.1"):
        expect(capsys, ["channels", "--model", tiny_dir, "--ratio", bad, "--out", str(tmp_path / "c")], "[0, 1)")
    expect(capsys, ["channels", "--model", tiny_dir, "--min-keep-frac", "nan", "--out", str(tmp_path / "c")],
           "finite number")
    expect(capsys, ["miprun", "--run", run_json, "--n", "1", "--K", "-3"], "count in 0..")


def test_alpha_validated_in_the_library_too():
    from analysis.errors import SelectionError
    from analysis.run import AnalysisConfig

    with pytest.raises(SelectionError, match="alpha"):
        AnalysisConfig(estimator="renyi", alpha=float("nan")).validate()


# ---- V2 degenerate analyses, --samples / --seq-len for token files ------------------------------------------
def test_one_usable_token_is_refused(capsys, tmp_path, tiny_dir):
    for shape, extra in (((4, 1), []), ((4, 2), ["--skip-first-token"])):
        p = tmp_path / f"ids{shape[1]}.npy"
        np.save(p, np.random.default_rng(0).integers(0, 256, size=shape))
        expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(p), "--out", str(tmp_path / "r.json"),
                        "--no-cache", *extra], "needs at least 2")


def test_all_zero_delta_h_is_a_named_warning(capsys, tmp_path, tiny_dir):
    p = tmp_path / "const.npy"
    np.save(p, np.full((4, 32), 7))                      # one repeated token: nothing varies across tokens
    code, err = run_cli(capsys, ["analyze", "--model", tiny_dir, "--tokens", str(p), "--out", str(tmp_path / "r.json"),
                                 "--no-cache"])
    assert code == 0 and "warning: DegenerateScores: every attention ΔH is 0" in err, err
    assert any(w.startswith("DegenerateScores") for w in json.loads((tmp_path / "r.json").read_text())["warnings"])


def test_all_null_entropies_are_refused():
    from analysis.errors import DataError
    from analysis.result import AnalysisResult
    from analysis.run import degenerate_warnings

    nan = float("nan")
    r = AnalysisResult(num_layers=2, estimator="bucket", granularity="attention", protect="none",
                       per_seq={"bucket": {"boundary": [[nan] * 3], "mid": [[nan] * 2]}}, angular=None,
                       norms={}, boundary=0, protected=[])
    with pytest.raises(DataError, match="Every bucket entropy is null"):
        degenerate_warnings(r)


def test_samples_and_seq_len_honoured_for_token_files(capsys, tmp_path, tiny_dir, ids_file):
    out = tmp_path / "r.json"
    assert run_cli(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--samples", "2", "--out", str(out),
                            "--quiet", "--no-cache"])[0] == 0
    d = json.loads(out.read_text())
    assert len(d["per_seq"]["bucket"]["mid"]) == 2 and d["manifest"]["data"]["n"] == 2
    expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--samples", "9", "--out", str(out)],
           "holds 4 windows but --samples 9")
    expect(capsys, ["analyze", "--model", tiny_dir, "--tokens", ids_file, "--seq-len", "16", "--out", str(out)],
           "windows of 32 tokens")
