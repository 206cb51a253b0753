"""The layout keeps its promises: layers import downwards, one package per edge library."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segflow"
EDGE_LIBRARIES = {"rasterio", "nibabel", "zarr"}  # only segflow/io talks to these
# lower layers first; a module may import its own layer and those before it
LAYERS = [
    {"segflow.errors", "segflow.options", "segflow.version", "segflow.heap", "segflow.bundled"},
    {"segflow.io"},
    {"segflow.models"},
    {"segflow.engine"},
    {"segflow.outputs"},  # what you do with a finished store; a run may end with it
    {"segflow.inputs", "segflow.plan", "segflow.spec", "segflow.api"},
    {"segflow.train", "segflow.samples"},
    {"segflow.cli"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _unit(module: str) -> str:
    """The layer unit a module belongs to: its sub-package, or itself at the top."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"{unit} is in no layer of tests/test_layout.py")


MODULES = _modules()


def test_only_io_imports_the_edge_libraries():
    offenders = [
        f"{name} imports {sorted(libraries)}"
        for name, path in MODULES.items()
        if not name.startswith("segflow.io")
        and (libraries := {i.split(".")[0] for i in _imports(path)} & EDGE_LIBRARIES)
    ]
    assert not offenders


def test_no_prefect_in_the_library():
    offenders = [
        n for n, p in MODULES.items() if any(i.split(".")[0] == "prefect" for i in _imports(p))
    ]
    assert not offenders


def test_layers_import_only_downwards():
    upward = []
    for name, path in MODULES.items():
        if name == "segflow":  # the facade imports from everything, lazily
            continue
        own = _layer(_unit(name))
        for imported in _imports(path):
            if not imported.startswith("segflow.") or imported == "segflow":
                continue
            target = _unit(imported)
            known = target in MODULES or any(target in layer for layer in LAYERS)
            if known and _layer(target) > own:
                upward.append(f"{name} -> {imported}")
    assert not upward


def test_no_import_cycles_between_sub_packages():
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for imported in _imports(path):
            if imported.startswith("segflow.") and _unit(imported) != _unit(name):
                edges[_unit(name)].add(_unit(imported))
    cycles = [
        f"{a} <-> {b}" for a, targets in edges.items() for b in targets if a in edges.get(b, ())
    ]
    assert not cycles


def test_at_most_ten_modules_at_the_top():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 10, top


@pytest.mark.parametrize("package", ["segflow", "flows"])
def test_no_module_over_600_lines(package):
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long
