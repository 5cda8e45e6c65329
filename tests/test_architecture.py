"""The package's import graph: no circle, and no function-level import of a purejaxppo module outside
the CLI (whose lazy imports keep JAX from starting before --cpu-devices applies). Reads the source."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "purejaxppo"


def imports_of(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported purejaxppo module, whether the import sits inside a function) for each import."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("purejaxppo"):
                names = [child.module] if child.module != "purejaxppo" else \
                    [f"purejaxppo.{a.name}" for a in child.names]
                found.extend((name, inside) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names if a.name.startswith("purejaxppo"))
            visit(child, inside)

    visit(tree, False)
    return found


def graph() -> dict[str, list[tuple[str, bool]]]:
    modules = {f"purejaxppo.{p.stem}": ast.parse(p.read_text()) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: [(m, f) for m, f in imports_of(tree) if m in modules] for name, tree in modules.items()}


def test_no_function_level_imports_outside_the_cli():
    late = {name: [m for m, inside in edges if inside] for name, edges in graph().items()
            if name != "purejaxppo.cli"}
    assert {name: mods for name, mods in late.items() if mods} == {}


def test_the_imports_have_no_circle():
    # every import counts, at module level or in a function; the CLI's lazy ones lead out, never back
    edges = {name: sorted({m for m, _ in deps}) for name, deps in graph().items()}
    done: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join(path + (name,))
        if name in done:
            return
        for dep in edges[name]:
            walk(dep, path + (name,))
        done.add(name)

    for name in edges:
        walk(name, ())
    assert "purejaxppo.envs" in edges["purejaxppo.train"]  # the graph was read: train imports envs
