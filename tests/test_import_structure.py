# This file is part of meas_rbnet.
"""The package's modules import each other without circles.

The graph is built from the source with `ast`, without importing anything:
a node per module of ``lsst.meas.rbnet``, an edge ``a -> b`` when ``a`` has an
import statement naming ``b``.

- Every import statement counts, at module level or inside a function, a class,
  an ``if`` or a ``try``: an import inside a function is still a dependency, and
  deferring it only hides a circle until the function runs (the circles
  ``sim.io <-> sim.visit``, ``sim.sequences <-> sim.series`` and
  ``nn._all <-> nn.registry`` were all of that kind).
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the
  package, otherwise to ``pkg`` (the name is read from its ``__init__``).
- Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b`` first; those are
  not edges (every package's ``__init__`` imports its own submodules, so counting them
  would make a circle of every package).
- Names loaded through ``importlib.import_module`` (the lazy ``__getattr__`` of
  ``tasks`` and ``cli``) are not seen.
"""

import ast
from pathlib import Path

import lsst.meas.rbnet

PACKAGE = "lsst.meas.rbnet"


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``) of every ``.py`` file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join([package, *parts])] = (path, is_package)
    return out


def _targets(module: str, is_package: bool, node, modules) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
    return submodules + ([target] if len(submodules) < len(node.names) else [])


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Intra-package import graph of the sources under ``root`` (see the module docstring)."""
    modules = _modules(root, package)
    graph = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(
                    t for t in _targets(name, is_package, node, modules) if t in modules and t != name
                )
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as a list of nodes (first == last), or `None`."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circles():
    root = Path(lsst.meas.rbnet.__file__).parent
    graph = import_graph(root, PACKAGE)
    # The graph is the package's: the simulator's series imports its shared pieces.
    assert f"{PACKAGE}.sim.detector" in graph[f"{PACKAGE}.sim.series"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(c.removeprefix(PACKAGE + ".") for c in cycle)


#: Outer layers of DESIGN.md section 4, in order; each imports only the ones before it and the
#: science layers (cutouts, nn, model package, scoring, training: rank 0 here).
OUTER_LAYERS = ("tasks", "butler", "sim", "cli")


def _rank(module: str) -> int:
    first = module.removeprefix(PACKAGE + ".").split(".")[0]
    return OUTER_LAYERS.index(first) + 1 if first in OUTER_LAYERS else 0


def test_layers_import_only_the_ones_above():
    """The tasks import no Butler layer (storage classes come from ``storage_classes``), and so on."""
    graph = import_graph(Path(lsst.meas.rbnet.__file__).parent, PACKAGE)
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _rank(b) > _rank(a))
    assert not wrong, "imports of a lower layer: " + ", ".join(w.replace(PACKAGE + ".", "") for w in wrong)


def test_circle_inside_a_function_is_found(tmp_path):
    """The checker sees a circle closed by an import inside a function, and ignores parent packages."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) in (["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.sub.b", "pkg.a", "pkg.sub.b"])
    (pkg / "sub" / "b.py").write_text("def f():\n    pass\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None
