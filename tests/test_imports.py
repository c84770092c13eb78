"""The package's import graph: no cycle inside ``advisor/`` and no private name imported across packages.

Walks every module's source with :mod:`ast` (imports at module level and inside functions; not those under
``if TYPE_CHECKING:``, which never run), resolves relative imports, and checks the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "advisor"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _package_of(name: str) -> str:
    return name if _is_package(name) else name.rpartition(".")[0]


class _Imports(ast.NodeVisitor):
    """(target module, imported name or None, line) of every import in one module, TYPE_CHECKING blocks skipped."""

    def __init__(self, module: str):
        self.module = module
        self.found: list[tuple[str, str | None, int]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "advisor":
                self.found.append((alias.name, None, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = _package_of(self.module).split(".")
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != "advisor":
            return
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in MODULES:
                self.found.append((sub, None, node.lineno))
            else:
                self.found.append((source, alias.name, node.lineno))


def _imports() -> dict[str, list[tuple[str, str | None, int]]]:
    out = {}
    for name, path in MODULES.items():
        visitor = _Imports(name)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        out[name] = visitor.found
    return out


IMPORTS = _imports()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself); Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_the_packages_imports():
    # The checks below are only as good as the walk: it must find imports at both levels, resolved.
    assert ("advisor.cli.flags", None) in {(t, n) for t, n, _ in IMPORTS["advisor.cli.estimate"]}
    assert any(t == "advisor.api" for t, _, _ in IMPORTS["advisor.cli.estimate"])      # inside a function
    assert ("advisor.errors", "InputError") in {(t, n) for t, n, _ in IMPORTS["advisor.api"]}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle_inside_advisor():
    graph = {m: {t for t, _, _ in found if t in MODULES and t != m} for m, found in IMPORTS.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module- or function-level): " + "; ".join(" <-> ".join(c) for c in cycles)


def _private_across_packages() -> list[str]:
    bad = []
    for module, found in IMPORTS.items():
        here = _package_of(module)
        for target, name, line in found:
            private_module = any(p.startswith("_") and not p.startswith("__") for p in target.split("."))
            if name is not None and name.startswith("_") and not name.startswith("__"):
                if _package_of(target) != here:
                    bad.append(f"{module}:{line} imports {name} from {target}")
            elif private_module and _package_of(target) != here and not target.startswith(here + "."):
                bad.append(f"{module}:{line} imports the private module {target}")
    return bad


def test_no_private_name_imported_across_packages():
    bad = _private_across_packages()
    assert not bad, "private names used across packages:\n" + "\n".join(bad)
