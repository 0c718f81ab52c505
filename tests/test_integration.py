"""Integration on the real embedded SmolLM2-135M-Instruct (cached after the first load)."""
import json

import numpy as np
import pytest

from analysis.cli.main import main
from analysis.data import SampleConfig, load_corpus, sample_windows
from analysis.run import AnalysisConfig, analyze

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_run(smollm2):
    tokens = sample_windows(load_corpus("wiki"), smollm2.tokenizer, SampleConfig(n_samples=8, seq_len=128, seed=2024))
    return analyze(smollm2, tokens, AnalysisConfig(estimator="knn", extra_estimators=("bucket",), batch_size=4))


def test_real_model_two_stage_curve(smol_run):
    r = smol_run
    assert r.num_layers == 30
    for est in ("knn", "bucket"):
        e = r.entropy(est)
        for key in ("resid_pre", "resid_mid", "resid_post"):
            assert e[key].shape == (30,) and np.isfinite(e[key]).all()
    assert 0 <= r.boundary <= 15
    assert r.protected == [0, 1, 29]
    assert len(r.drop_order) == 27 and not set(r.drop_order) & {0, 1, 29}
    # the expansion stage: KNN entropy after the boundary ends well above where it starts
    curve = r.entropy("knn")["boundary"]
    assert curve[-1] > curve[r.boundary]
    assert not r.warnings or all("NonFinite" not in w for w in r.warnings)


def test_real_model_manifest(smol_run):
    m = smol_run.manifest
    assert m["model"]["fingerprint"].startswith("b179c952")
    assert m["data"]["n"] == 8 and len(m["data"]["sha256"]) == 64
    assert m["versions"]["transformers"]


def test_cli_analyze_real_model(tmp_path, smollm2):
    out = tmp_path / "run.json"
    assert main(["analyze", "--model", "smollm2", "--corpus", "wiki", "--samples", "4", "--seq-len", "64",
                 "--estimator", "bucket", "--out", str(out), "--quiet"]) == 0
    d = json.loads(out.read_text())
    assert d["num_layers"] == 30 and len(d["delta_h"]) == 30 and d["index_base"] == 0
    for crit in ("entrodrop", "cosine", "block-influence", "angular", "random", "tail"):
        assert d["baselines"][crit]["drop_order"], crit
