"""The package's shape holds: layers (import-linter contracts in pyproject.toml), no import cycle, small modules.

Imports are read by grimp (import-linter's own graph), counting imports inside functions and leaving out
``if TYPE_CHECKING:`` blocks. An edge goes to the module an import names: ``from mainsail.x import y`` is an
edge to ``mainsail.x`` (its ``__init__``) unless ``y`` is a submodule, in which case it is an edge to
``mainsail.x.y``. docs/architecture.md draws the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src" / "mainsail"
ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _strongly_connected(graph: grimp.ImportGraph, package: str = "mainsail") -> list[list[str]]:
    """Tarjan's algorithm over ``package``'s modules; only the components of more than one module."""

    def inside(module: str) -> bool:
        return module == package or module.startswith(package + ".")

    modules = sorted(m for m in graph.modules if inside(m))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in modules:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if not inside(nxt):
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_import_cycle_among_mainsail_modules() -> None:
    graph = grimp.build_graph("mainsail", exclude_type_checking_imports=True, cache_dir=None)
    assert _strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cyclic import b\n")
    (package / "b.py").write_text("from cyclic.a import f\n")
    (package / "c.py").write_text("import cyclic.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("cyclic", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert _strongly_connected(graph, "cyclic") == [["cyclic.a", "cyclic.b"]]


def test_no_module_is_over_400_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import with whether it sits inside a function (TYPE_CHECKING blocks left out)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def _names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""]


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for name, path in _modules().items():
        for node, _ in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mainsail"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{name}: from {node.module} import {', '.join(private)}")
    assert offenders == []


def test_imports_inside_functions_are_for_heavy_dependencies_and_say_why() -> None:
    """A mainsail import inside a function stays only to defer a heavy dependency (or a plane's start-up
    cost), and a comment on its line or the line above says so."""
    offenders = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node, in_function in _imports(ast.parse("\n".join(lines))):
            if not in_function or not any(n.startswith("mainsail") for n in _names(node)):
                continue
            if not _explained(lines, node.lineno - 1):
                offenders.append(f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert offenders == []


def _explained(lines: list[str], index: int) -> bool:
    """A comment on the import's line, or above the block of imports (and blank lines) it belongs to."""
    if "#" in lines[index]:
        return True
    above = index - 1
    while above >= 0 and (not lines[above].strip() or lines[above].lstrip().startswith(("from ", "import "))):
        above -= 1
    return above >= 0 and lines[above].lstrip().startswith("#")


def test_nothing_in_the_package_imports_its_public_surface() -> None:
    """``mainsail/__init__.py`` re-exports lazily from the client; a module importing it would close a cycle."""
    offenders = [f"{name}:{node.lineno}" for name, path in _modules().items() if name != "mainsail"
                 for node, _ in _imports(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module == "mainsail" and node.level == 0]
    assert offenders == []
