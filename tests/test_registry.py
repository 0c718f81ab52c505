"""The generic registry (analysis.registry): one name once, lazy "module:attr" entries, dict-like reading."""
from __future__ import annotations

import subprocess
import sys

import pytest

from analysis.errors import SelectionError
from analysis.registry import Lazy, Registry, resolve


class _Entry:
    def __init__(self, name, value=0):
        self.name, self.value = name, value


def test_a_name_registered_twice_is_an_error_unless_replaced_on_purpose():
    r = Registry("widget")
    a = r.register(_Entry("a", 1))
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        r.register(_Entry("a", 2))
    assert r["a"] is a
    r.register(_Entry("a", 3), replace=True)
    assert r["a"].value == 3
    r.unregister("a")
    assert "a" not in r and len(r) == 0


def test_unknown_names_raise_the_registry_error_with_the_choices():
    r = Registry("widget")
    r.register(_Entry("a"))
    r.register(_Entry("b"))
    with pytest.raises(SelectionError, match="Unknown widget 'c'") as exc:
        r["c"]
    assert exc.value.hint == "choose from a, b"
    assert r.get("c") is None and r.get("c", 5) == 5


def test_dict_like_reading_keeps_registration_order():
    r = Registry("widget")
    for n in ("z", "a", "m"):
        r.register(_Entry(n))
    assert list(r) == r.names() == list(r.keys()) == ["z", "a", "m"]
    assert [n for n, e in r.items()] == ["z", "a", "m"] and all(e.name == n for n, e in r.items())
    assert [e.name for e in r.values()] == ["z", "a", "m"]


def test_lazy_entries_are_imported_on_first_read_and_must_carry_their_name():
    r = Registry("logger")
    r.register("logging:root", name="root")                 # logging.root.name == "root"
    r.register("logging:root", name="other")
    assert r.names() == ["root", "other"]
    assert r["root"] is __import__("logging").root
    with pytest.raises(ValueError, match="resolved to an entry named 'root'"):
        r["other"]
    with pytest.raises(ValueError, match="module:attr"):
        r.register("not-a-ref", name="x")
    with pytest.raises(ValueError, match="needs a name"):
        r.register("logging:root")


def test_lazy_callables_import_their_module_on_first_call_only():
    code = ("import sys; from analysis.registry import Lazy; f = Lazy('colorsys:rgb_to_hsv'); "
            "assert 'colorsys' not in sys.modules; assert f(1, 0, 0) == (0.0, 1.0, 1); assert 'colorsys' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert Lazy("json:dumps") == Lazy("json:dumps") and resolve("json:dumps") is __import__("json").dumps


def test_monkeypatch_setitem_adds_and_removes_a_new_entry(monkeypatch):
    r = Registry("widget")
    r.register(_Entry("a"))
    with monkeypatch.context() as m:
        m.setitem(r, "tmp", _Entry("tmp"))
        assert "tmp" in r
    assert r.names() == ["a"]


def test_every_project_registry_is_a_registry_with_named_entries():
    from analysis.heal import HEAL_METHODS
    from analysis.measure.estimators import ESTIMATORS
    from analysis.score.criteria import CRITERIA
    from analysis.measure.mi import MI_ESTIMATORS

    for reg in (CRITERIA, ESTIMATORS, MI_ESTIMATORS, HEAL_METHODS):
        assert isinstance(reg, Registry) and len(reg) > 0
        assert all(e.name == n for n, e in reg.items())
    assert {"entrodrop", "mi-prun", "delta-ppl"} <= set(CRITERIA)
    assert {"none", "linear", "distill"} <= set(HEAL_METHODS)
