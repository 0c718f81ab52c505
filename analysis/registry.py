"""Named registries whose entries carry their semantics (lm-evaluation-harness ``lm_eval/api/registry.py`` style).

One :class:`Registry` per kind of plug-in: criteria (:data:`analysis.score.criteria.CRITERIA`), entropy
estimators (:data:`analysis.measure.estimators.ESTIMATORS`), MI estimators
(:data:`analysis.measure.mi.MI_ESTIMATORS`) and healing methods (:data:`analysis.heal.registry.HEAL_METHODS`).
Entries are the kind's own frozen records (``Criterion``, ``EstimatorInfo``, ...), so the CLI, the app and
the explainer render any entry without special cases.

* A name is registered once: registering it again raises (``replace=True`` or :meth:`Registry.unregister`
  are for tests and benchmarks that swap an entry on purpose).
* A registry never imports its implementations. An entry, or a callable field of an entry, may be a lazy
  ``"module:attr"`` string; :func:`resolve` imports it on first use (:class:`Lazy` is the callable form).
  That keeps the registry modules low in the layering and free of import cycles.
* Dict-like reading: ``for name in R``, ``name in R``, ``R[name]``, ``R.get(name)``, ``R.items()``, ``len(R)``.
  ``R[name]`` for an unknown name raises the registry's error type (:class:`~analysis.errors.SelectionError`
  by default) with a hint listing the choices; ``R.get(name)`` returns ``None`` as a dict does.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from analysis.errors import EntroscopeError, SelectionError

T = TypeVar("T")


def is_lazy_ref(x: Any) -> bool:
    """True for a ``"module:attr"`` string."""
    return isinstance(x, str) and ":" in x and all(x.partition(":")[::2])


def resolve(ref: str) -> Any:
    """Import a lazy ``"module:attr"`` reference (``attr`` may be dotted) and return the object."""
    if not is_lazy_ref(ref):
        raise ValueError(f"a lazy reference is written 'module:attr', got {ref!r}")
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Lazy:
    """A callable stand-in for a ``"module:attr"`` function: the module is imported on the first call."""

    __slots__ = ("ref", "_target")

    def __init__(self, ref: str):
        if not is_lazy_ref(ref):
            raise ValueError(f"a lazy reference is written 'module:attr', got {ref!r}")
        self.ref = ref
        self._target: Callable | None = None

    @property
    def target(self) -> Callable:
        if self._target is None:
            self._target = resolve(self.ref)
        return self._target

    def __call__(self, *args, **kwargs):
        return self.target(*args, **kwargs)

    def __eq__(self, other) -> bool:
        return isinstance(other, Lazy) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def __repr__(self) -> str:
        return f"Lazy({self.ref!r})"


def lazy_callable(fn: Callable | str | None) -> Callable | None:
    """``fn`` itself, or a :class:`Lazy` for a ``"module:attr"`` string."""
    return Lazy(fn) if isinstance(fn, str) else fn


class Registry(Generic[T]):
    """Entries of one kind by name; see the module docstring.

    ``kind`` names the entries in messages ("criterion", "estimator", ...); ``error`` is the exception
    type raised for an unknown name (a user error, with a hint listing the registered names).
    """

    def __init__(self, kind: str, error: type[EntroscopeError] = SelectionError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, T | str] = {}

    # ---- writing ----------------------------------------------------------------------------------
    def register(self, entry: T | str, name: str | None = None, *, replace: bool = False) -> T | str:
        """Add ``entry`` under ``name`` (default: ``entry.name``); a ``"module:attr"`` string is a lazy entry
        (``name`` required), imported on first read. A name already taken raises unless ``replace=True``."""
        if isinstance(entry, str):
            if not is_lazy_ref(entry):
                raise ValueError(f"lazy {self.kind} entry must be 'module:attr', got {entry!r}")
            if name is None:
                raise ValueError(f"a lazy {self.kind} entry needs a name")
        key = name if name is not None else getattr(entry, "name", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"{self.kind} entry {entry!r} has no name")
        if key in self._entries and not replace:
            raise ValueError(f"{self.kind} {key!r} is already registered; choose another name "
                             "(or unregister it first / pass replace=True to swap it on purpose)")
        self._entries[key] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests); unknown names raise the registry's error."""
        if name not in self._entries:
            raise self._unknown(name)
        del self._entries[name]

    def __setitem__(self, name: str, entry: T | str) -> None:  # monkeypatch.setitem: a new name only
        self.register(entry, name)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    # ---- reading ----------------------------------------------------------------------------------
    def _unknown(self, name) -> EntroscopeError:
        return self.error(f"Unknown {self.kind} {name!r}", hint=f"choose from {', '.join(self._entries)}")

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise self._unknown(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = resolve(entry)
            got = getattr(entry, "name", name)
            if got != name:
                raise ValueError(f"lazy {self.kind} {name!r} resolved to an entry named {got!r}")
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def get(self, name: str, default=None):
        """``self[name]``, or ``default`` when the name is not registered (as ``dict.get``)."""
        return self[name] if name in self._entries else default

    def names(self) -> list[str]:
        """Registered names in registration order (lazy entries are not imported)."""
        return list(self._entries)

    def keys(self) -> list[str]:
        return self.names()

    def values(self) -> list[T]:
        return [self[n] for n in self.names()]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
