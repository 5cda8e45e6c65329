"""The package's import graph: no circle; no function-level import of a purejaxppo module outside the CLI
(whose lazy imports keep JAX from starting before --cpu-devices applies); and the layout's wings kept
apart: the compiled program imports no host, front-end, file or process code, the envs import no run
code, the host no front end, and the errors module nothing. Reads the source."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "purejaxppo"


def imports_of(tree: ast.AST, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported purejaxppo module, whether the import sits inside a function) for each import."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("purejaxppo"):
                # `from purejaxppo.envs import custom` imports the submodule purejaxppo.envs.custom
                names = [f"{child.module}.{a.name}" for a in child.names if f"{child.module}.{a.name}" in modules]
                if not names or any(f"{child.module}.{a.name}" not in modules for a in child.names):
                    names.append(child.module)
                found.extend((name, inside) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names if a.name.startswith("purejaxppo"))
            visit(child, inside)

    visit(tree, False)
    return found


def module_name(path: Path) -> str:
    """purejaxppo/envs/brax.py -> purejaxppo.envs.brax; purejaxppo/envs/__init__.py -> purejaxppo.envs."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, list[tuple[str, bool]]]:
    paths = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"]
    modules = {module_name(p): ast.parse(p.read_text()) for p in paths}
    return {name: [(m, f) for m, f in imports_of(tree, set(modules)) if m in modules and m != name]
            for name, tree in modules.items()}


def stdlib_imports() -> dict[str, set[str]]:
    """Per module, the top-level names of the non-purejaxppo modules it imports."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[module_name(path)] = names - {"purejaxppo"}
    return out


FRONT_ENDS = {f"purejaxppo.{m}" for m in ("cli", "console", "plots", "single", "sweep", "pbt", "tune")}
# what touching files, processes, signals or threads takes: none of it runs under jit
FILE_AND_PROCESS = {"os", "pathlib", "shutil", "signal", "subprocess", "threading", "multiprocessing", "socket",
                    "fcntl", "tempfile", "csv", "json", "yaml", "orbax", "io", "logging"}


def within(module: str, package: str) -> bool:
    return module == f"purejaxppo.{package}" or module.startswith(f"purejaxppo.{package}.")


def violations(edges: dict[str, set[str]], stdlib: dict[str, set[str]]) -> list[str]:
    """The import rules the layout makes visible, each broken import in words."""
    shared = {"purejaxppo.config", "purejaxppo.errors"}
    out = []
    for name, deps in sorted(edges.items()):
        for dep in sorted(deps):
            if within(name, "program") and not (within(dep, "program") or within(dep, "envs") or dep in shared):
                out.append(f"{name}, in the compiled program, imports {dep}")
            if within(name, "envs") and not (within(dep, "envs") or dep == "purejaxppo.errors"):
                out.append(f"{name}, an env module, imports {dep}")
            if within(name, "host") and dep in FRONT_ENDS:
                out.append(f"{name}, in the host, imports the front end {dep}")
            if name in shared and dep != "purejaxppo.errors":
                out.append(f"{name} imports {dep}")
        if within(name, "program"):
            forbidden = sorted(stdlib.get(name, set()) & FILE_AND_PROCESS)
            out += [f"{name}, in the compiled program, imports {m}" for m in forbidden]
    return out


def test_the_wings_keep_apart():
    edges = {name: {m for m, _ in deps} for name, deps in graph().items()}
    assert violations(edges, stdlib_imports()) == []
    assert "purejaxppo.program.ppo" in edges and "purejaxppo.host.loop" in edges  # the graph was read


def test_each_rule_catches_a_planted_violation():
    planted = {
        "purejaxppo.program.ppo": ({"purejaxppo.host.loop"}, set()),
        "purejaxppo.program.chunk": ({"purejaxppo.cli"}, set()),
        "purejaxppo.program.losses": (set(), {"os"}),
        "purejaxppo.envs.gymnax": ({"purejaxppo.config"}, set()),
        "purejaxppo.host.prepare": ({"purejaxppo.sweep"}, set()),
        "purejaxppo.errors": ({"purejaxppo.config"}, set()),
    }
    found = violations({k: v[0] for k, v in planted.items()}, {k: v[1] for k, v in planted.items()})
    assert found == [
        "purejaxppo.envs.gymnax, an env module, imports purejaxppo.config",
        "purejaxppo.errors imports purejaxppo.config",
        "purejaxppo.host.prepare, in the host, imports the front end purejaxppo.sweep",
        "purejaxppo.program.chunk, in the compiled program, imports purejaxppo.cli",
        "purejaxppo.program.losses, in the compiled program, imports os",
        "purejaxppo.program.ppo, in the compiled program, imports purejaxppo.host.loop",
    ]


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
    assert "purejaxppo.envs" in edges["purejaxppo.program.ppo"]  # the graph was read: the program imports envs
    assert "purejaxppo.envs.custom" in edges["purejaxppo.envs"]  # and the subpackages' modules


def test_env_families_are_imported_only_when_used():
    # a gymnax user never imports Brax or MuJoCo: each family's module is found by its name's prefix
    script = (
        "import sys, jax\n"
        "from purejaxppo import PPOConfig, make_train\n"
        "from purejaxppo.envs import make_env\n"
        "make_train(PPOConfig(total_timesteps=256, num_envs=4, num_steps=16, num_minibatches=2))\n"
        "jax.eval_shape(make_env('CartPole-v1').reset, jax.random.key(0))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('brax', 'mujoco', 'mujoco_playground'))\n"
        "assert not loaded, loaded\n"
        "make_env('brax/inverted_pendulum')\n"
        "assert 'brax' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
