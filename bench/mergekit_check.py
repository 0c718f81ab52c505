"""mergekit's output equals Entroscope's checkpoint: prune a whole-layer plan with ``--mergekit``, run the
real ``mergekit-yaml`` on the YAML, then compare every tensor and the logits of the two directories.

mergekit is not a dependency of Entroscope; install it in its own environment and point at it::

    python3 -m venv ~/mergekit-venv && ~/mergekit-venv/bin/pip install mergekit==0.1.5
    ENTROSCOPE_MERGEKIT=~/mergekit-venv/bin/mergekit-yaml \
        .venv/bin/python bench/mergekit_check.py [--models qwen2.5-coder-0.5b,gemma3-270m] [--out DIR]

Default plans drop 4 layers from the middle of each model (0-based). One JSON line per model:
``tensors_equal``, ``logits_equal``, ``max_abs_logit_diff``; exit status 1 when any model differs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: model -> 0-based whole layers to drop (4 each)
PLANS = {"qwen2.5-coder-0.5b": [10, 11, 12, 13], "gemma3-270m": [6, 7, 8, 9], "smollm2": [20, 21, 22, 23]}
MERGEKIT_ENV = "ENTROSCOPE_MERGEKIT"


def mergekit_binary() -> str | None:
    """``$ENTROSCOPE_MERGEKIT`` (the ``mergekit-yaml`` script, or the folder of its virtual env), else the one
    on PATH, else None."""
    env = os.environ.get(MERGEKIT_ENV, "").strip()
    if env:
        p = Path(env).expanduser()
        for cand in (p, p / "bin" / "mergekit-yaml"):
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
        return None
    return shutil.which("mergekit-yaml")


def compare_dirs(ours: Path, merged: Path, ids=None) -> dict:
    """Every tensor and the fp32 logits of two checkpoint directories."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    def tensors(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    a, b = tensors(ours), tensors(merged)
    same_keys = set(a) == set(b)
    tensors_equal = same_keys and all(torch.equal(a[k], b[k]) for k in a)
    del a, b
    ids = ids if ids is not None else (torch.arange(1, 65) * 37 % 250).unsqueeze(0)
    with torch.inference_mode():
        la = AutoModelForCausalLM.from_pretrained(ours, dtype=torch.float32)(ids).logits
        lb = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(ids).logits
    return {"same_tensor_names": same_keys, "tensors_equal": tensors_equal, "logits_equal": bool(torch.equal(la, lb)),
            "max_abs_logit_diff": float((la - lb).abs().max())}


def check(model: str, drop: list[int], workdir: Path, mergekit: str, dtype: str = "fp32") -> dict:
    """Prune ``model`` with ``--mergekit``, run mergekit on the YAML, compare (see :func:`compare_dirs`)."""
    from analysis.cli.main import main as cli

    ours, yml, merged = workdir / "ours", workdir / "plan.yaml", workdir / "merged"
    argv = ["prune", "--model", model, "--drop-layers", ",".join(map(str, drop)), "--dtype", dtype, "--device", "cpu",
            "--out", str(ours), "--mergekit", str(yml), "--quiet"]
    if cli(argv) != 0:
        return {"model": model, "error": "prune failed"}
    run = subprocess.run([mergekit, str(yml), str(merged), "--quiet"], capture_output=True, text=True)
    res = {"model": model, "drop_layers": drop, "mergekit_exit": run.returncode,
           "config_folder": (workdir / "plan-mergekit-source").is_dir()}
    if run.returncode != 0 or not (merged / "config.json").is_file():
        res["error"] = (run.stderr.strip().splitlines() or ["mergekit wrote no config.json"])[-1]
        return res
    return {**res, **compare_dirs(ours, merged)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,gemma3-270m")
    ap.add_argument("--out", default=None, help="keep the checkpoints here (default: a temporary folder)")
    args = ap.parse_args()
    mergekit = mergekit_binary()
    if mergekit is None:
        sys.exit(f"mergekit-yaml not found: set {MERGEKIT_ENV} to it (or its virtual env) or put it on PATH")
    ok = True
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.out) / model if args.out else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            res = check(model, PLANS.get(model, [1, 2, 3, 4]), work, mergekit)
        ok &= bool(res.get("logits_equal")) and bool(res.get("tensors_equal"))
        print(json.dumps(res), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
