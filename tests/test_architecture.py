"""The house rules of ``analysis/`` (docs/architecture.md), checked on the source itself.

Imports are read with :mod:`ast`, so imports inside function bodies count as much as top-level ones
(``if TYPE_CHECKING:`` blocks do not: they never run).
"""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "analysis"

#: Layers, lowest first. A module may import its own layer and the layers below, never one above.
LAYERS = [
    {"errors", "registry", "indices", "lazy"},
    {"settings", "store"},
    {"models"},
    {"data"},
    {"measure"},
    {"score"},
    {"evaluate"},
    {"channels", "heal", "tasks"},
    {"run", "export", "figures", "testing", "recommend"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    def __init__(self, name: str, is_pkg: bool):
        self.name, self.is_pkg, self.found = name, is_pkg, []

    def visit_If(self, node):  # noqa: N802 - ast API
        test = node.test
        if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            for n in node.orelse:
                self.visit(n)
            return
        self.generic_visit(node)

    def visit_Import(self, node):  # noqa: N802
        self.found += [(a.name, node.lineno) for a in node.names]

    def visit_ImportFrom(self, node):  # noqa: N802
        base = node.module or ""
        if node.level:
            pkg = self.name if self.is_pkg else self.name.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                pkg = pkg.rsplit(".", 1)[0]
            base = f"{pkg}.{base}" if base else pkg
        for a in node.names:
            self.found.append((f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, node.lineno))


def _imports(name: str) -> list[tuple[str, int]]:
    path = MODULES[name]
    v = _Imports(name, path.name == "__init__.py")
    v.visit(ast.parse(path.read_text(encoding="utf-8")))
    return sorted({(m, line) for m, line in v.found if m.split(".")[0] in ("analysis", "streamlit")})


GRAPH = {m: sorted({d for d, _ in _imports(m) if d in MODULES and d != m}) for m in MODULES}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "analysis" and _layer(m) is None]
    assert not missing, f"add these to LAYERS here and to docs/architecture.md: {missing}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for m in MODULES:
        lm = _layer(m)
        for dep, line in _imports(m):
            ld = _layer(dep) if dep.startswith("analysis.") else None
            if lm is not None and ld is not None and ld > lm:
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line} imports {dep} (layer {ld} > {lm})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_counting_imports_inside_functions():
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_analysis_never_imports_streamlit():
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}" for m in MODULES for dep, line in _imports(m)
           if dep.split(".")[0] == "streamlit"]
    assert not bad, bad
