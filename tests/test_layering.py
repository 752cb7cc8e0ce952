"""The layering of docs/ARCHITECTURE.md, checked on the source (every import statement,
including ones inside functions and ``TYPE_CHECKING`` blocks):

- ``gatehouse_core`` (records, verdicts, shared settings, log reader, SQLite helper) imports
  nothing of Gatehouse;
- ``policies/``, ``evaluators/`` and ``tuning/`` never import ``gateway``;
- the serving app (``gateway/`` except the ``gateway/cli`` composition layer) never imports
  ``tuning``;
- no import cycles among Gatehouse modules. Imports under ``if TYPE_CHECKING:`` count for
  the layer rules but not for cycles: they never run, and annotating a handler with the
  ``Runtime`` that builds it is not a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gatehouse_core", "gateway", "policies", "evaluators", "tuning")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _type_only(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(name: str, path: Path, runtime_only: bool = False) -> set[str]:
    """Gatehouse modules ``name`` imports (a ``from pkg import mod`` names the submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    skip = _type_only(tree) if runtime_only else set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] not in PACKAGES:
                continue
            while t and t not in MODULES:  # `import gateway.x.y` names a module or a package
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}
RUNTIME_GRAPH = {name: _imports(name, path, runtime_only=True) for name, path in MODULES.items()}


def _offences(sources: str | tuple[str, ...], forbidden: tuple[str, ...], exempt: tuple[str, ...] = ()) -> list[str]:
    sources = (sources,) if isinstance(sources, str) else sources

    def under(mod: str, pkgs: tuple[str, ...]) -> bool:
        return any(mod == p or mod.startswith(p + ".") for p in pkgs)

    return sorted(
        f"{mod} imports {dep}"
        for mod, deps in GRAPH.items()
        if under(mod, sources) and not under(mod, exempt)
        for dep in deps
        if under(dep, forbidden)
    )


def test_the_scan_sees_the_packages() -> None:
    assert {"gatehouse_core.records", "gateway.app", "policies.engine", "tuning.datasets"} <= set(MODULES)
    assert "gateway.errors" in GRAPH["gateway.app"]  # direct imports are found
    assert "gatehouse_core.records" in GRAPH["gateway.types"]


def test_bottom_layer_imports_nothing_of_gatehouse() -> None:
    assert _offences("gatehouse_core", ("gateway", "policies", "evaluators", "tuning")) == []


def test_policies_evaluators_tuning_never_import_the_gateway() -> None:
    assert _offences(("policies", "evaluators", "tuning"), ("gateway",)) == []


def test_serving_app_never_imports_tuning() -> None:
    # the CLI composes commands (tune, registry deploy) and may use tuning; the app may not
    assert _offences("gateway", ("tuning",), exempt=("gateway.cli",)) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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


def test_no_import_cycles() -> None:
    assert _cycles(RUNTIME_GRAPH) == []


def test_cycle_finder_finds_a_loop() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
