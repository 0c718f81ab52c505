"""One source of truth for settings: a config dataclass's fields say how they are shown, and the CLI's
flags, the app's defaults and the app's reproduce command are generated from them.

A field opts in with :func:`setting` (a ``dataclasses.field`` whose metadata describes it)::

    k: int = setting(25, help="KNN neighbours", min=1)
    granularity: str = setting("attention", help="what a block is", choices="analysis.indices:GRANULARITIES")
    mi: dict = setting(dict, help="also compute MI-PRUN", nested="analysis.measure.mi_states:MIConfig")

Metadata keys (all optional except ``help``):

* ``help``; ``flag``: the CLI flag without ``--`` (default: the field name with ``-`` for ``_``);
* ``choices``: a registry (anything whose ``list()`` gives the names, read when the flags are built), a
  callable returning the names, or a lazy ``"module:attr"`` naming one, so choices follow the registries
  instead of hard-coded lists;
* ``min`` / ``max`` (``min_open`` / ``max_open``) and ``what``: the stated range of a number. It is enforced
  twice from this one declaration: by the CLI's argparse type (a one-line usage error) and by
  :func:`check_ranges`, which every config calls in ``__post_init__`` and :func:`build` calls for the app,
  so the library, the CLI and the app refuse the same values (NaN and ±inf always). ``type``: an explicit
  parser of the CLI text (also applied by :func:`check_ranges`);
* ``kind``: ``"int"``, ``"float"``, ``"str"`` or ``"tuple"`` where the default (``None``: automatic) does not say;
  ``"text"``: a value the CLI passes on as text for the library to parse, written by ``to_text(value)``
  (e.g. domain weights ``{"wiki": 1.0}`` ↔ ``wiki:1``);
* ``cli`` / ``app``: shown on the command line / in the app (default True);
* ``sep``: a tuple field is written as one ``sep``-joined value (``--also knn,renyi``);
* ``clean(value, settings)``: normalises a value given the other settings (e.g. drop the primary estimator
  from the extra ones);
* ``derive(cfg)``: a field not shown anywhere, computed from the shown ones whenever a config is built
  from settings (CLI or app), e.g. ``extensions = ("mi",)`` when MI is on;
* ``nested``: ``"module:Class"`` of a dict field holding some of another config's fields. Its flag is a
  switch (``--mi``: on = the dict is filled, off = empty) and the nested fields get ``--<flag>-<their flag>``.

The module also holds the CLI value parsers the fields use (:func:`positive_int`, :data:`seed_int`, ...).
Settings are addressed by flat keys: ``"k"``, ``"mi"`` (the switch) and ``"mi.estimator"`` (nested).
Fields without ``help`` are internal (neither on the command line nor in the app).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

from analysis.errors import EntroscopeError
from analysis.registry import is_lazy_ref
from analysis.registry import resolve as resolve_ref

SEED_MAX = 2**32 - 1          # numpy's SeedSequence / legacy seeding range; torch accepts it too
#: the largest count any unbounded "positive integer" flag accepts (a typo such as 1e12 is refused at once)
COUNT_MAX = 10**9


class SettingError(EntroscopeError):
    """A setting's value is not a finite number inside its stated range."""


# ---- CLI value parsers: refuse NaN, infinities and out-of-domain numbers with one line ------------------

def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0 or v > COUNT_MAX:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to {COUNT_MAX}, got {v}")
    return v


def finite_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
                 what: str = "a number"):
    """A float type: finite, and within [lo, hi] (open ends where asked)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        v = v + 0.0                                   # -0.0 → 0.0 (reproduce commands never say "-0.0")
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        high_bad = hi is not None and (v >= hi if hi_open else v > hi)
        if low_bad or high_bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"{v:g} is outside {left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}")
        return v

    return parse


def bounded_int(lo: int, hi: int | None = None, what: str = "an integer"):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {what} in {lo}..{hi if hi is not None else '∞'}, got {v}")
        return v

    return parse


def unchecked_float(what: str = "a number"):
    """A float type that leaves the range (NaN included) to the library's own check, whose message names
    the setting (``ratio must be in [0, 1), got nan``)."""
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


#: --seed: numpy and torch generators take 0..2**32-1
seed_int = bounded_int(0, SEED_MAX, "a seed (a whole number)")


# ---- declaring settings --------------------------------------------------------------------------------

def setting(default: Any = dataclasses.MISSING, *, help: str, factory: Callable | None = None,  # noqa: A002
            **meta) -> Any:
    """A dataclass field carrying its description; ``default`` may be a type (``dict``), or give ``factory``."""
    meta["help"] = help
    if factory is not None or (callable(default) and isinstance(default, type)):
        return dataclasses.field(default_factory=factory or default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def resolve(ref):
    """A lazy ``"module:attr"`` reference → the object (anything else is returned as is)."""
    return resolve_ref(ref) if is_lazy_ref(ref) else ref


@dataclass(frozen=True)
class Spec:
    """One flat setting: ``key`` (``"k"``, ``"mi"``, ``"mi.estimator"``), its field and how it is shown."""

    key: str
    name: str                  # the field's name in its own dataclass
    kind: str                  # bool | int | float | str | tuple | text | switch
    default: Any
    flag: str                  # "--k"
    meta: dict

    @property
    def dest(self) -> str:     # argparse's attribute for the flag
        return self.flag[2:].replace("-", "_")

    @property
    def help(self) -> str:
        return self.meta["help"]

    @property
    def nested(self) -> str | None:
        return self.key.partition(".")[0] if "." in self.key else None

    def choices(self) -> list | None:
        c = self.meta.get("choices")
        if c is None:
            return None
        c = resolve(c)
        return list(c() if callable(c) and not isinstance(c, type) else c)

    def arg_type(self) -> Callable[[str], Any]:
        m = self.meta
        if "type" in m:
            return m["type"]
        lo, hi = m.get("min"), m.get("max")
        if self.kind == "int":
            if lo == 1 and hi is None and "what" not in m:
                return positive_int
            return bounded_int(-COUNT_MAX if lo is None else lo, COUNT_MAX if hi is None else hi,
                               m.get("what", "an integer"))
        if self.kind == "float":      # always finite, even without a range
            return finite_float(lo, hi, m.get("min_open", False), m.get("max_open", False), m.get("what", "a number"))
        return str

    def check(self, value: Any, owner: str = "") -> None:
        """Refuse ``value`` unless it is a finite number of this setting's kind inside its stated range
        (``None`` passes where the default is ``None``: "automatic"). Raises :class:`SettingError`."""
        name = f"{owner}.{self.name}" if owner else self.name
        if self.kind not in ("int", "float") or (value is None and self.default is None):
            return
        if "type" in self.meta and "min" not in self.meta and "max" not in self.meta:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingError(f"{name} must be a number, got {value!r}")
            try:
                self.meta["type"](repr(value))
            except argparse.ArgumentTypeError as exc:
                if "unchecked" not in getattr(self.meta["type"], "__qualname__", ""):
                    raise SettingError(f"{name}: {exc}") from None
            return
        ok_types = (numbers.Integral,) if self.kind == "int" else (numbers.Real,)
        if isinstance(value, bool) or not isinstance(value, ok_types) or (
                self.kind == "int" and hasattr(value, "is_integer") and not value.is_integer()):
            raise SettingError(f"{name} must be {'a whole number' if self.kind == 'int' else 'a number'}, "
                               f"got {value!r}")
        try:
            self.arg_type()(repr(int(value) if self.kind == "int" else float(value)))
        except argparse.ArgumentTypeError as exc:
            raise SettingError(f"{name}: {exc}", hint=f"the CLI flag is {self.flag}"
                               if self.flag and self.meta.get("cli", True) else None) from None


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _kind(default: Any, meta: dict) -> str:
    if "nested" in meta:
        return "switch"
    if "kind" in meta:                               # a default of None ("automatic") does not say the type
        return meta["kind"]
    for kind in (bool, int, float, str, tuple):      # bool before int: True is an int
        if isinstance(default, kind):
            return kind.__name__
    raise TypeError(f"setting {default!r}: only bool, int, float, str, tuple and nested settings are supported")


def _exposed(meta: dict, cli: bool | None, app: bool | None) -> bool:
    if "help" not in meta:
        return False
    return (cli is None or meta.get("cli", True) == cli) and (app is None or meta.get("app", True) == app)


def specs(cls, *, cli: bool | None = None, app: bool | None = None) -> list[Spec]:
    """The flat settings of ``cls`` in field order (nested settings right after their switch). ``cli=True`` /
    ``app=True``: only those shown there."""
    out: list[Spec] = []
    for f in dataclasses.fields(cls):
        if not _exposed(f.metadata, cli, app):
            continue
        meta = dict(f.metadata)
        flag = "--" + meta.get("flag", f.name.replace("_", "-"))
        default = _field_default(f)
        kind = _kind(default, meta)
        out.append(Spec(f.name, f.name, kind, False if kind == "switch" else default, flag, meta))
        if kind == "switch":
            sub_cls = resolve(meta["nested"])
            for s in specs(sub_cls, cli=cli, app=app):
                out.append(dataclasses.replace(s, key=f"{f.name}.{s.key}", flag=f"{flag}-{s.flag[2:]}"))
    return out


def defaults(cls, *, cli: bool | None = None, app: bool | None = None) -> dict:
    """``{flat key: default}`` of the shown settings (``cli=True`` / ``app=True``: only those shown there)."""
    return {s.key: s.default for s in specs(cls, cli=cli, app=app)}


def _coerce(s: Spec, v: Any) -> Any:
    if v is None and s.default is None:              # "automatic" stays automatic
        return None
    if s.kind == "tuple":
        if isinstance(v, str):
            v = v.split(s.meta.get("sep", ","))
        return tuple(dict.fromkeys(str(e).strip() for e in v if str(e).strip()))     # order kept, no repeats
    if s.kind in ("bool", "switch"):
        return bool(v)
    if s.kind == "text":
        return v                                     # parsed by the library (its text form: _text)
    return {"int": int, "float": float, "str": str}[s.kind](v)


def build(cls, settings: dict | None = None):
    """The config of ``cls`` from flat settings (missing keys: the dataclass defaults); derived fields are
    filled in. Unknown keys are an error (a typo would otherwise be a silently ignored setting)."""
    settings = dict(settings or {})
    known = {s.key: s for s in specs(cls)}
    unknown = set(settings) - set(known)
    if unknown:
        raise KeyError(f"{cls.__name__} has no setting(s) {', '.join(sorted(unknown))}")
    values = {k: _coerce(s, settings.get(k, s.default)) for k, s in known.items()}
    for k, s in known.items():
        if "clean" in s.meta:
            values[k] = s.meta["clean"](values[k], values)
    return _make(cls, values)


def _make(cls, values: dict, prefix: str = ""):
    kwargs = {}
    for s in specs(cls):
        if "." in s.key:
            continue
        v = values[prefix + s.key]
        if s.kind == "switch":
            sub_cls = resolve(s.meta["nested"])
            if v:
                sub = _make(sub_cls, values, prefix + s.key + ".")
                keep = {x.name for x in specs(sub_cls)} | {f.name for f in dataclasses.fields(sub_cls)
                                                            if "derive" in f.metadata}
                v = {k: x for k, x in dataclasses.asdict(sub).items() if k in keep}
            else:
                v = {}
        kwargs[s.name] = v
    cfg = cls(**kwargs)
    for f in dataclasses.fields(cls):
        if "derive" in f.metadata:
            setattr(cfg, f.name, f.metadata["derive"](cfg))
    check_ranges(cfg)
    return cfg


def check_ranges(cfg) -> None:
    """Refuse a config whose numeric settings are not finite or lie outside their stated ``min``/``max``
    (nested settings included, e.g. ``AnalysisConfig.mi["n_tokens"]``). Every config dataclass calls this in
    ``__post_init__``; :func:`build` calls it too. Raises :class:`SettingError` naming the setting."""
    owner = type(cfg).__name__
    for s in specs(type(cfg)):
        if s.nested:
            d = getattr(cfg, s.nested)
            if isinstance(d, dict) and s.name in d:
                s.check(d[s.name], f"{owner}.{s.nested}")
            continue
        if s.kind != "switch":
            s.check(getattr(cfg, s.name), owner)


# ---- memory estimates: refuse what cannot fit, with the estimate -----------------------------------------

def available_memory() -> int | None:
    """Bytes of RAM available to this process now (psutil, else /proc/meminfo; None when unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def check_memory(need_bytes: int, what: str, hint: str, available: int | None = None) -> None:
    """Refuse (a :class:`~analysis.errors.ResourceError`) when ``need_bytes`` exceeds the memory available
    now (``available``: default :func:`available_memory`), saying both numbers."""
    from analysis.errors import ResourceError

    avail = available_memory() if available is None else available
    if avail is not None and need_bytes > avail:
        raise ResourceError(f"{what} needs about {_gib(need_bytes)} of memory, but only {_gib(avail)} is available",
                            hint=hint)


def to_settings(cfg, *, cli: bool | None = None, app: bool | None = None) -> dict:
    """Flat settings of a config (the inverse of :func:`build` on the shown settings)."""
    out = {}
    for s in specs(type(cfg), cli=cli, app=app):
        if s.nested:
            d = getattr(cfg, s.nested)
            out[s.key] = d.get(s.name, s.default) if isinstance(d, dict) else getattr(d, s.name)
        elif s.kind == "switch":
            out[s.key] = bool(getattr(cfg, s.name))
        else:
            out[s.key] = getattr(cfg, s.name)
    return out


# ---- command line --------------------------------------------------------------------------------------

def _text(s: Spec, v: Any) -> Any:
    """A "text" setting's command-line form (other settings unchanged)."""
    return v if s.kind != "text" or isinstance(v, str) or v is None else s.meta["to_text"](v)


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or "none"
    return repr(v) if isinstance(v, float) else str(v)        # repr: a float reads back exactly


def add_arguments(parser, cls, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (),
                  defaults: dict | None = None) -> None:
    """Add ``cls``'s CLI settings to ``parser`` (an ``ArgumentParser`` or argument group). ``only`` /
    ``exclude``: flat keys; ``defaults``: argparse defaults that differ from the dataclass's (``None``: "left
    to the command", e.g. ``--samples``), read back by :func:`from_args` as the dataclass default."""
    over = defaults or {}
    chosen = [s for s in specs(cls, cli=True) if (only is None or s.key in only) and s.key not in exclude]
    if only is not None:
        chosen.sort(key=lambda s: only.index(s.key))
    for s in chosen:
        help_ = s.help
        if s.kind in ("bool", "switch"):
            parser.add_argument(s.flag, action="store_true", help=help_.replace("%", "%%"))
            continue
        default = _text(s, over.get(s.key, s.default))
        if "default" not in help_ and default is not None:
            help_ += f" (default {_fmt(default)})"
        kw: dict = {"default": ",".join(default) if s.kind == "tuple" and default is not None else default,
                    "help": help_.replace("%", "%%")}
        if s.kind not in ("tuple", "text"):
            kw["type"] = s.arg_type()
            if s.choices() is not None:
                kw["choices"] = s.choices()
        parser.add_argument(s.flag, **kw)


def from_args(cls, ns: argparse.Namespace, **settings):
    """The config of ``cls`` an argparse namespace asks for (flags absent from the namespace, or left at
    ``None``, take the dataclass default); ``settings``: flat keys that override the namespace."""
    flat = {}
    for s in specs(cls, cli=True):
        v = getattr(ns, s.dest, None)
        if v is not None:
            flat[s.key] = v
    flat.update(settings)
    return build(cls, flat)


def to_argv(*cfgs) -> list[str]:
    """The CLI flags reproducing these configs: only settings that differ from their default, in field
    order. A flag shared by two configs (``--seed``) is written once and must carry one value in both."""
    seen: dict[str, Any] = {}
    argv: list[str] = []
    for cfg in cfgs:
        flat = to_settings(cfg, cli=True)
        for s in specs(type(cfg), cli=True):
            v = _text(s, _coerce(s, flat[s.key]))
            if s.flag in seen:
                if seen[s.flag] != v:
                    raise ValueError(f"{s.flag} cannot be both {_fmt(seen[s.flag])} and {_fmt(v)}")
                continue
            seen[s.flag] = v
            if s.nested and not flat[s.nested] or v == _text(s, _coerce(s, s.default)):
                continue
            if s.kind in ("bool", "switch"):
                argv.append(s.flag)
            else:
                argv += [s.flag, _fmt(v) if s.kind != "tuple" else s.meta.get("sep", ",").join(v)]
    return argv
