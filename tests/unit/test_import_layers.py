"""The import structure of ci_runner/: no circle, and every import points to the importer's own layer
or a lower one, as docs/design.md's "Layers" table says (the one definition of the layers; this test
reads it). Every import counts: at module level, inside functions, and under TYPE_CHECKING."""

from __future__ import annotations

import ast
import functools
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PACKAGE = PROJECT / "ci_runner"
DESIGN = PROJECT / "docs" / "design.md"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name (without `ci_runner.`; the package itself is `ci_runner`) -> file."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "ci_runner"
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ci_runner modules that `name` imports (a `from package import module` counts as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package and package != "ci_runner" else []
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(["ci_runner", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        for target in targets:
            if target != "ci_runner" and not target.startswith("ci_runner."):
                continue
            short = target.removeprefix("ci_runner.") if target != "ci_runner" else "ci_runner"
            if short in known and short != name:
                found.add(short)
                break  # `from m import n`: the module n if it is one, else m
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    result = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def layers(design: str) -> list[tuple[int, str, list[str]]]:
    """The rows of design.md's Layers table: (number, what, module patterns)."""
    section = design.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = re.fullmatch(r"\|\s*(\d+)\s*\|([^|]+)\|([^|]+)\|", line.strip())
        if match:
            rows.append((int(match[1]), match[2].strip(), re.findall(r"`([^`]+)`", match[3])))
    return rows


def layer_of(rows: list[tuple[int, str, list[str]]]) -> dict[str, int]:
    """Each module's layer; a module matching no row, or two, is an error naming it."""
    result: dict[str, int] = {}
    for name in modules():
        matching = [number for number, _, patterns in rows if any(fnmatchcase(name, p) for p in patterns)]
        assert len(matching) == 1, f"{name}: in {len(matching)} rows of docs/design.md's Layers table, not 1"
        result[name] = matching[0]
    return result


def test_no_import_circle() -> None:
    assert circles(graph()) == []


def test_every_import_points_to_the_same_layer_or_a_lower_one() -> None:
    where = layer_of(layers(DESIGN.read_text(encoding="utf-8")))
    upward = sorted(f"{name} (layer {where[name]}) imports {other} (layer {where[other]})"
                    for name, targets in graph().items() for other in targets if where[other] > where[name])
    assert upward == []


def test_the_checks_see_circles_and_upward_imports() -> None:
    """The walker finds a lazy import, a relative one and a TYPE_CHECKING one; a circle is reported."""
    edges = graph()
    assert "cluster" in edges["runner"] or "cluster" in edges["run_context"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    rows = [(1, "low", ["errors"]), (2, "high", ["*"])]
    with pytest.raises(AssertionError, match="in 2 rows"):
        layer_of(rows)


def test_imports_inside_functions_and_type_checking_blocks_count(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ci_runner.cluster import Cluster\n"
                      "def f():\n    from ci_runner import runner\n    from . import states\n", encoding="utf-8")
    assert imports("reporters.mod", source, {"cluster", "runner", "reporters.states", "states"}) == {
        "cluster", "runner", "reporters.states"}
