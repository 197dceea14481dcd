"""The layers of ``search``: which modules import which, read from the source (every import: top level, inside
functions and under TYPE_CHECKING), and what reading a search's results back costs at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("spec", "store", "raytune", "products", "cli")  # each may import only itself and the ones before it


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the search package."""
    out = {}
    for path in sorted((ROOT / "search").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``search`` that the file imports anywhere in its source (``from X import name`` counts as
    importing X.name when that is a module, else X)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return {name for name in found if name in modules and name != "search"}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (its modules in order, the first repeated at the end), or [] if it has none."""
    state: dict[str, str] = {}  # module -> "open" (on the current path) or "done"
    path: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = "open"
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[name] = "done"
        path.pop()
        return []

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return []


def _layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_two_modules_of_search_import_each_other_even_around_a_loop():
    graph = _graph()
    assert "search.raytune.tuner" in graph and graph["search.raytune.tuner"], "the walk found no imports"
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_every_module_sits_in_a_layer_and_imports_no_later_layer():
    graph = _graph()
    assert all(_layer(name) >= 0 for name in graph if name != "search"), sorted(n for n in graph if _layer(n) < 0)
    upward = [f"{name} -> {dep}" for name, deps in graph.items() for dep in deps if _layer(dep) > _layer(name)]
    assert not upward, "imports of a later layer: " + "; ".join(sorted(upward))


@pytest.mark.parametrize("module", ["search.products.report", "search.products.export", "search.store.warm_start",
                                    "search.store.study", "search.store.results"])
def test_reading_a_search_back_imports_no_ray(module):
    """In a fresh interpreter (this session has Ray imported already)."""
    code = f"import sys, {module}; print(sorted(m for m in ('ray', 'ray.tune') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"
