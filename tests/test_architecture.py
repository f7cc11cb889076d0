"""The package's shape, checked: no import cycles between autoprune's modules (lazy imports inside
functions and imports only for type checkers included), every import goes down the package layers
(:data:`LAYERS`), the library never imports the CLI, and no module past about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "autoprune"
MAX_LINES = 420  # "about 400"

#: autoprune's top-level modules and packages, lowest layer first. A module may import modules of its
#: own layer and of lower layers, never of a higher one. Siblings of one layer may import each other
#: (without a cycle: ``test_no_import_cycles``). The root package (``autoprune``, for ``__version__``)
#: may be imported by anyone, and itself imports nothing of autoprune.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("autoprune.errors", "autoprune.registry", "autoprune.io", "autoprune.structures", "autoprune.compute"),
    ("autoprune.hardware", "autoprune.models"),
    ("autoprune.data", "autoprune.profiling", "autoprune.pruning"),
    ("autoprune.costmodel", "autoprune.train", "autoprune.device"),
    ("autoprune.pipeline",),
    ("autoprune.search",),
    ("autoprune.deploy",),
    ("autoprune.dashboard",),
    ("autoprune.commands", "autoprune.cli", "autoprune.__main__"),
)
ROOT = "autoprune"
ROOT_LAYER = -1  # below every layer: whatever it imported, everyone reading __version__ would import too


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the autoprune modules it imports, anywhere in the file: lazy imports inside functions and
    imports under ``if TYPE_CHECKING:`` included (a type checker, or a reader, follows those too)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join([*base, node.module] if node.module else base)
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("autoprune"):
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its submodules is not a cycle of logic: drop the edges from a
    package to its own submodules."""
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def top_level(module: str) -> str:
    """``autoprune.costmodel.targets`` → ``autoprune.costmodel``; ``autoprune`` stays ``autoprune``."""
    return ".".join(module.split(".")[:2])


def layer_of() -> dict[str, int]:
    """Top-level module → its index in :data:`LAYERS`."""
    return {m: i for i, names in enumerate(LAYERS) for m in names}


def test_no_import_cycles():
    graph = _without_package_inits(import_graph())
    found = cycles(graph)
    arrows = [f"{m} → {d}" for comp in found for m in comp for d in sorted(graph[m]) if d in comp]
    assert found == [], f"import cycles (TYPE_CHECKING imports count): {found}; their arrows: {arrows}"


def test_every_top_level_module_has_a_layer():
    named = [m for names in LAYERS for m in names]
    assert len(named) == len(set(named)), f"a module is in two LAYERS: {sorted(m for m in named if named.count(m) > 1)}"
    tops = {top_level(m) for m in import_graph()} - {ROOT}
    missing = sorted(tops - set(named))
    assert missing == [], (f"{', '.join(missing)} has no layer: add it to LAYERS in tests/test_architecture.py "
                           "(no lower than anything it imports, no higher than anything that imports it)")


def test_imports_go_down_the_layers():
    layer = layer_of() | {ROOT: ROOT_LAYER}
    backward = []
    for m, deps in sorted(import_graph().items()):
        for d in sorted(deps):
            src, dst = top_level(m), top_level(d)
            if dst == ROOT or src not in layer or dst not in layer:  # unassigned: the test above says so
                continue
            if layer[dst] > layer[src]:
                backward.append(f"{m} → {d} (layer {layer[src]} {src} imports layer {layer[dst]} {dst})")
    assert backward == [], "imports against the layers (see LAYERS):\n  " + "\n  ".join(backward)


def test_the_library_never_imports_the_cli():
    bad = {m: sorted(d for d in deps if d.startswith("autoprune.commands") or d == "autoprune.cli")
           for m, deps in import_graph().items()
           if not (m.startswith("autoprune.commands") or m in ("autoprune.cli", "autoprune.__main__"))}
    assert {m: d for m, d in bad.items() if d} == {}


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_stay_readable_in_one_sitting(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG)} has {n} lines (> {MAX_LINES}); split it by concept"
