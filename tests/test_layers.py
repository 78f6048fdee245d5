"""The house's floors: every import inside reslab (at the top of a module or inside a function)
runs down or sideways, never up, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# bottom to top; a module belongs to the longest prefix listed (a package's __init__ to the package)
LAYERS: list[tuple[str, ...]] = [
    ("reslab", "reslab.errors", "reslab.processes", "reslab.files"),  # the ground floor
    ("reslab.weights.files", "reslab.weights.checks", "reslab.hub"),  # files, names: no networks
    ("reslab.models",),  # the networks (create_model(weights=) loads through the floor below)
    ("reslab.typecheck", "reslab.strict_yaml", "reslab.config"),  # run configs, checked
    ("reslab.data",),  # datasets, views, loaders
    ("reslab.weights.trained",),  # a trained network with its normalisation and classes
    ("reslab.engine",),  # training, evaluation, checkpoints, prediction, export
    ("reslab.analysis", "reslab.bench", "reslab.detection", "reslab.experiments"),
    ("reslab.cli", "reslab.__main__"),
]
PACKAGES_ONLY = ("reslab", "reslab.weights")  # their __init__ holds a docstring and nothing else


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[1])
            ):
                best = (level, prefix)
    assert best is not None, f"{module} is on no floor of the table: add it"
    return best[0]


def _imports() -> dict[str, set[str]]:
    """module -> the reslab modules it imports, anywhere in it (``from reslab import hub`` counts
    as importing ``reslab.hub``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / "reslab").rglob("*.py")):
        module, found = _module(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("reslab")}
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("reslab")
            ):
                for alias in node.names:  # `from reslab.engine import distributed`: a submodule
                    sub = Path(*f"{node.module}.{alias.name}".split("."))
                    is_module = (SRC / sub).with_suffix(".py").is_file() or (
                        SRC / sub / "__init__.py"
                    ).is_file()
                    found.add(f"{node.module}.{alias.name}" if is_module else node.module)
        graph[module] = found
    return graph


def test_no_import_runs_upward():
    upward = [
        f"{a} -> {b}" for a, targets in _imports().items() for b in targets if _floor(b) > _floor(a)
    ]
    assert upward == []


def test_no_modules_import_each_other_in_a_circle():
    graph = {a: {b for b in bs if b != a} for a, bs in _imports().items()}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_table_covers_every_module_and_the_bare_packages_stay_bare():
    for module in _imports():
        _floor(module)
    for package in PACKAGES_ONLY:
        init = SRC / Path(*package.split(".")) / "__init__.py"
        body = ast.parse(init.read_text()).body
        assert all(isinstance(n, ast.Expr | ast.Assign) for n in body), package
