"""The import structure of the package, read from the source with ``ast``.

* no import circle among rayseq's modules (every import counts, also one inside a function;
  imports under ``if TYPE_CHECKING:`` do not run and are left out);
* no module imports a private name (``_x``) from another module;
* ``rayseq.commands`` (argument parsing and printing) is imported by ``rayseq.cli`` alone, and
  importing the drivers does not import it;
* the math (``rayseq.algorithms``, ``rayseq.models``, ``envs``) never imports ray.

Run ``python tests/test_architecture.py`` to print the module graph's circles, if any.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rayseq", "envs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the packages: dotted name → file."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, str | None]]]:
    """module → [(imported module, imported name or None)] for imports of the packages' modules."""
    graph: dict[str, list[tuple[str, str | None]]] = {}
    for name, path in mods.items():
        edges: list[tuple[str, str | None]] = []
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges += [(a.name, None) for a in node.names]
                continue
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                edges.append((sub, None) if sub in mods else (base, alias.name))
        graph[name] = [(m, n) for m, n in edges if m.split(".")[0] in PACKAGES and m in mods]
    return graph


def circles(graph: dict[str, list[tuple[str, str | None]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in {m for m, _ in graph.get(v, [])}:
            # importing a package's submodule runs the package's __init__ first; that edge is implied, not drawn
            if w not in index:
                strong(w)
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
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_no_import_circle_in_the_packages() -> None:
    assert circles(imports(modules())) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"rayseq.a": [("rayseq.b", None)], "rayseq.b": [("rayseq.c", "f")], "rayseq.c": [("rayseq.a", None)], "rayseq.d": []}
    assert circles(graph) == [["rayseq.a", "rayseq.b", "rayseq.c"]]


def test_no_module_imports_a_private_name_from_another() -> None:
    graph = imports(modules())
    private = sorted(f"{m} imports {name} from {src}" for m, edges in graph.items() for src, name in edges
                     if name is not None and name.startswith("_") and not name.startswith("__") and src != m)
    assert private == []


def test_commands_are_imported_by_the_cli_alone() -> None:
    graph = imports(modules())
    users = sorted({m for m, edges in graph.items() for src, _ in edges
                    if src.startswith("rayseq.commands") and not m.startswith("rayseq.commands") and m != "rayseq.cli"})
    assert users == []


def test_importing_the_drivers_imports_no_command_module() -> None:
    code = ("import sys, rayseq.drivers, rayseq.drivers.actor_critic, rayseq.drivers.swapin, rayseq.drivers.vaml; "
            "print(sorted(m for m in sys.modules if m.startswith('rayseq.commands')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_math_never_imports_ray() -> None:
    math_modules = [m for m in modules() if m.startswith(("rayseq.algorithms", "rayseq.models", "envs"))]
    offenders = []
    for name in math_modules:
        tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
        for node in _import_nodes(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            offenders += [f"{name}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert offenders == []


if __name__ == "__main__":
    for circle in circles(imports(modules())):
        print(" -> ".join(circle))
