"""The shape of gateway/ that docs/architecture.md describes: no import cycles (and no TYPE_CHECKING
imports to hide one), the pipeline contract free of the features, and aiohttp's server nowhere but in
the sandbox."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
# The only module that knows aiohttp's server: the sandbox (a stand-in vendor, itself an aiohttp
# server). The gateway serves with its own (gateway.http.server).
SERVER_EDGE = {"gateway.sandbox"}


def modules() -> dict[str, Path]:
    found = {}
    for path in GATEWAY.rglob("*.py"):
        parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(
    name: str, path: Path, known: dict[str, Path], *, lazy: bool = False
) -> tuple[set[str], set[str], set[str]]:
    """(gateway modules imported, of those under TYPE_CHECKING, third-party modules imported); with
    ``lazy``, imports inside functions count too."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inner: set[str] = set()
    guarded: set[str] = set()
    outer: set[str] = set()

    def visit(node: ast.AST, under_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and not lazy:
                continue  # runs when called, not at import (open_store loads the Redis client lazily)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                visit(child, True)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    if child.level > 1:
                        base = base[: -(child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                    for candidate in [target, *(f"{target}.{a.name}" for a in child.names)]:
                        if candidate in known and candidate != name:
                            (guarded if under_type_checking else inner).add(candidate)
                elif child.module:
                    outer.add(child.module)
            elif isinstance(child, ast.Import):
                outer.update(alias.name for alias in child.names)
            visit(child, under_type_checking)

    visit(tree, False)
    return inner, guarded, outer


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        inner, _, _ = imports(name, path, known)
        edges[name] = set(inner)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for dep in inner:
            # Importing a.b from outside a runs a/__init__.py first: that is a dependency too.
            parents = {".".join(dep.split(".")[:i]) for i in range(2, dep.count(".") + 1)}
            edges[name] |= {parent for parent in parents if parent in known and parent not in own}
    return edges


def test_gateway_has_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)


def test_no_type_checking_imports_between_gateway_modules() -> None:
    known = modules()
    guarded = {name: sorted(imports(name, path, known)[1]) for name, path in known.items()}
    assert {name: deps for name, deps in guarded.items() if deps} == {}


def test_the_pipeline_contract_imports_only_config_errors_and_messages() -> None:
    known = modules()
    inner, _, _ = imports("gateway.pipeline", known["gateway.pipeline"], known)
    assert inner <= {"gateway.config", "gateway.errors", "gateway.messages"}


def test_only_the_edge_knows_aiohttps_server() -> None:
    known = modules()
    offenders = {}
    for name, path in known.items():
        _, _, outer = imports(name, path, known, lazy=True)
        source = path.read_text()
        if name not in SERVER_EDGE and (
            "aiohttp.web" in outer or "from aiohttp import web" in source or "aiohttp.ClientSession" in source
        ):
            offenders[name] = str(path)
    assert offenders == {}
