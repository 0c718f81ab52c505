"""Data-parallel analysis (analysis.measure.distributed): two gloo processes under torchrun write the same run as
one process. Real processes, a tiny model saved to disk, no short timeouts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from analysis.measure.distributed import shard_rows
from analysis.testing import random_tokens, tiny_loaded


def test_shards_are_whole_batches_in_order():
    for n in (1, 7, 8, 9, 30, 64):
        for bs in (1, 3, 8):
            for ws in (1, 2, 3, 5):
                spans = [shard_rows(n, bs, r, ws) for r in range(ws)]
                assert spans[0][0] == 0 and spans[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
                assert all(s % bs == 0 for s, _ in spans)
                sizes = [-(-(e - s) // bs) for s, e in spans]
                assert max(sizes) - min(sizes) <= 1


def _strip(d):
    """Drop what legitimately differs between two runs: wall times and the creation stamp."""
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items()
                if k not in ("timings", "created", "seconds", "total_s", "capture_s")}
    if isinstance(d, list):
        return [_strip(v) for v in d]
    return d


@pytest.mark.timeout(4000)
def test_torchrun_two_gloo_processes_write_the_single_process_run(tmp_path):
    lm = tiny_loaded("llama", layers=3, hidden=32)
    mdir = tmp_path / "tiny"
    lm.model.save_pretrained(mdir)
    lm.tokenizer.save_pretrained(mdir)
    tok = tmp_path / "tokens.npy"
    np.save(tok, random_tokens(10, 24, seed=5).numpy())     # 3 batches of 4: uneven shards (1 + 2 batches)
    common = ["analyze", "--model", str(mdir), "--device", "cpu", "--dtype", "fp32", "--tokens", str(tok),
              "--batch-size", "4", "--granularity", "layer", "--mi", "--mi-estimator", "cka", "--no-cache",
              "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "analysis", *common, "--out", str(one)], check=True, env=env,
                   cwd=os.getcwd(), timeout=1800)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "analysis", *common, "--out", str(two)], env=env, cwd=os.getcwd(),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["manifest"]["timings"]["world_size"] == 2 and "world_size" not in a["manifest"]["timings"]
    assert len(a["per_seq"]["bucket"]["boundary"]) == 10
    assert _strip(a) == _strip(b)
    assert b["extras"]["mi"]["estimator"] == "cka"
