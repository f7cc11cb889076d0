"""The package's shape, checked: no import cycles between autoprune's modules (lazy imports inside
functions and imports only for type checkers included), every import goes down the package layers
(:data:`LAYERS`), the library never imports the CLI, no module past about 400 lines, no objective key
spelled as a string outside the table that defines them, and a study's target profile loaded once."""

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
    ("autoprune.errors", "autoprune.registry", "autoprune.io", "autoprune.structures", "autoprune.compute",
     "autoprune.records"),
    ("autoprune.hardware", "autoprune.models"),
    ("autoprune.data", "autoprune.idx", "autoprune.profiling", "autoprune.pruning"),
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


#: The objectives' record keys (``OBJECTIVES[name][1]``): written as strings only in their table.
OBJECTIVE_KEYS_HOME = PKG / "search" / "config.py"


def _objective_keys() -> set[str]:
    from autoprune.search.config import OBJECTIVES

    return {attr for _, attr, _ in OBJECTIVES.values()}


def objective_key_literals(path: Path, keys: set[str]) -> list[int]:
    """Lines of ``path`` with a string literal equal to an objective key (``__all__`` entries and docstrings
    are names and prose, not keys, and are left out)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skip |= {id(n) for n in ast.walk(node.value)}
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            skip.add(id(first.value))
    return sorted({n.lineno for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and n.value in keys and id(n) not in skip})


def test_objective_keys_are_not_spelled_outside_their_table():
    """A record is read by attribute (``TrialRecord.latency_ms``) or through ``OBJECTIVES``, never by a key
    written again as a string: the one exception is :class:`~autoprune.records.TrialRecord`'s defaulting of
    ``size_mb`` for records from before the size objective."""
    keys = _objective_keys()
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        if path == OBJECTIVE_KEYS_HOME:
            continue
        lines = objective_key_literals(path, keys)
        if path.name == "records.py" and path.parent == PKG:  # the size_mb default, one line
            lines = lines[1:] if len(lines) == 1 else lines
        if lines:
            found[str(path.relative_to(PKG))] = lines
    assert found == {}, f"objective keys {sorted(keys)} written as strings (file: lines): {found}"


def test_the_literal_check_finds_a_key(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""doc latency_ms"""\n__all__ = ["latency_ms"]\nrow = {"latency_ms": 1.0}\n')
    assert objective_key_literals(bad, _objective_keys()) == [3]


@pytest.mark.slow
def test_a_search_loads_its_target_profile_once(tiny_dense, results_root, monkeypatch):
    """``autoprune search`` resolves its target once (StudyContext) and passes the loaded profile down: the
    profile file is parsed once per search, a new study and a resume alike."""
    import autoprune.hardware.profile as hp
    from autoprune.cli import main
    from tests.conftest import TINY_REF

    loads: list[str] = []
    real = hp.load_profile_file

    def counting(path):
        loads.append(Path(path).stem)
        return real(path)

    monkeypatch.setattr(hp, "load_profile_file", counting)
    url = f"sqlite:///{results_root / 'profile-once.db'}"
    args = ["--storage", url, "--no-progress", "--study", "once"]
    assert main(["search", "--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0",
                 "--trials", "2", *args]) == 0
    assert loads == ["jetson-nano"], f"profiles loaded by one search: {loads}"
    loads.clear()
    assert main(["search", "--trials", "1", *args]) == 0
    assert loads == ["jetson-nano"], f"profiles loaded by one resume: {loads}"
