"""The layers of src/tcpmq import downwards only: no import cycle, handlers free of the connection.

Reads the source with `ast` (nothing is imported), counting imports under
`if TYPE_CHECKING:` too: a cycle of type hints is still a knot in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tcpmq

PACKAGE = Path(tcpmq.__file__).parent


def module_name(path: Path) -> str:
    parts = ["tcpmq", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The tcpmq modules `path` imports (a package counts as its __init__)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            root = f"{base}.{node.module}" if node.level and node.module else node.module or base
            # `from . import wire` names a module; `from .x import y` a member of x.
            targets = [
                f"{root}.{alias.name}" if f"{root}.{alias.name}" in modules else root
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "tcpmq.ops" in graph and "tcpmq.connection" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_handlers_know_no_connection_or_server() -> None:
    graph = import_graph()
    for module in ("tcpmq.ops", "tcpmq.app", "tcpmq.backend.core", "tcpmq.broker"):
        assert not graph[module] & {"tcpmq.connection", "tcpmq.server"}, module


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check itself must be able to fail.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_but_the_fuzzer_imports_the_fuzzer() -> None:
    # tcpmq.fuzz is a test tool shipped beside the server, never part of it.
    graph = import_graph()
    assert "tcpmq.fuzz.session" in graph
    for module, targets in graph.items():
        if not module.startswith("tcpmq.fuzz"):
            assert not {t for t in targets if t.startswith("tcpmq.fuzz")}, module
