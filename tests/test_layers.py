"""The import rules of DESIGN.md, read from the source (ast, nothing is imported).

Imports run one way: tuneops.cli -> flows -> tuneops.stages -> pipeline -> core. pipeline
never imports Prefect, flows or the shell; the bundle runtime imports only onnxruntime,
tokenizers and numpy (and the standard library); module-level imports have no cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import flows
import pipeline
from tuneops.dvcfile import PACKAGES

REPO = Path(__file__).resolve().parent.parent
# What pipeline/ may use of tuneops/: the core and the runtime it exports.
CORE = {
    "tuneops",
    "tuneops.config",
    "tuneops.errors",
    "tuneops.paths",
    "tuneops.tracking",
    "tuneops.lineage",
    "tuneops.quiet",
    "tuneops.runtime",
    "tuneops.mlflow_model",  # registry.py logs it as the pyfunc's code
}
RUNTIME_ALLOWED = {"onnxruntime", "tokenizers", "numpy"}


def modules() -> dict[str, Path]:
    """Every module of the repository's packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Absolute module names `path` imports; with `module_level_only`, only the imports that
    run when it is imported (not in functions, not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _module_level(tree.body) if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.If | ast.Try | ast.With):
            found += _module_level(node.body)
            found += _module_level(getattr(node, "orelse", []))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
    return found


def ours(names: set[str], known: dict[str, Path]) -> set[str]:
    """The repository modules among `names` (a `from a import b` name counts only if b is
    a module)."""
    return {n for n in names if n in known}


def violations_of_layers(known: dict[str, Path]) -> list[str]:
    found = []
    for name, path in known.items():
        names = imports(path)
        tops = {n.split(".")[0] for n in names}
        if name.split(".")[0] == "pipeline":
            if "prefect" in tops or "flows" in tops:
                found.append(f"{name} imports Prefect or flows")
            shell = {n for n in ours(names, known) if n.startswith("tuneops")} - CORE
            if shell:
                found.append(f"{name} imports the shell: {sorted(shell)}")
        if name in ("tuneops.config", "tuneops.errors", "tuneops.paths"):
            upward = {n for n in ours(names, known) if not n.startswith("tuneops")}
            if upward:
                found.append(f"core module {name} imports {sorted(upward)}")
        if name.split(".")[0] == "flows" and "tuneops.cli" in names:
            found.append(f"{name} imports tuneops.cli")
        if name == "tuneops.runtime":
            foreign = tops - RUNTIME_ALLOWED - set(sys.stdlib_module_names) - {"__future__"}
            if foreign:
                found.append(f"the bundle runtime imports {sorted(foreign)}")
    return found


def cycles(known: dict[str, Path]) -> list[list[str]]:
    """Cycles of module-level imports (those break at import time; lazy ones do not)."""
    graph = {
        name: sorted(ours(imports(path, module_level_only=True), known) - {name})
        for name, path in known.items()
    }
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state[nxt] == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif state[nxt] == 0:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if state[node] == 0:
            visit(node, [node])
    return found


def test_pipeline_and_flows_are_this_repositorys_packages() -> None:
    """No installed distribution provides a top-level `pipeline` or `flows` that wins."""
    assert Path(pipeline.__file__).resolve() == REPO / "pipeline" / "__init__.py"
    assert Path(flows.__file__).resolve() == REPO / "flows" / "__init__.py"


def test_imports_run_one_way() -> None:
    assert violations_of_layers(modules()) == []


def test_module_level_imports_have_no_cycle() -> None:
    assert cycles(modules()) == []


def test_the_rules_catch_a_broken_rule(tmp_path: Path) -> None:
    """The checks fail on a pipeline module that imports Prefect, a runtime that imports
    torch, and two modules that import each other at module level."""
    known = {
        "pipeline.bad": tmp_path / "bad.py",
        "tuneops.runtime": tmp_path / "runtime.py",
        "pipeline.a": tmp_path / "a.py",
        "pipeline.b": tmp_path / "b.py",
    }
    known["pipeline.bad"].write_text("def f():\n    import prefect\n")
    known["tuneops.runtime"].write_text("import json\nimport numpy\nimport torch\n")
    known["pipeline.a"].write_text("from pipeline import b\n")
    known["pipeline.b"].write_text("import pipeline.a\n")
    assert violations_of_layers(known) == [
        "pipeline.bad imports Prefect or flows",
        "the bundle runtime imports ['torch']",
    ]
    assert cycles(known) == [["pipeline.a", "pipeline.b", "pipeline.a"]]


@pytest.mark.parametrize(
    "task_name",
    [
        "text-classification",
        "token-classification",
        "intent-and-slots",
    ],
)
def test_only_the_registries_name_a_task(task_name: str) -> None:
    """A step asks the task; only pipeline/tasks/ and the runtime's RUNTIMES name one."""
    named = [
        str(path.relative_to(REPO))
        for name, path in modules().items()
        if f'"{task_name}"' in path.read_text(encoding="utf-8")
        and not name.startswith("pipeline.tasks")
        and name != "tuneops.runtime"
    ]
    # config.py holds the default of params.yaml's `task`
    assert named == (["tuneops/config.py"] if task_name == "text-classification" else [])
