"""dvc.yaml, written from the STAGES table, with each stage's code deps derived.

`dvc repro` is only as honest as each stage's deps: a stage must depend on every file of
code it runs, or a change to that code leaves it "up to date". The code a stage runs is
found by reading imports (ast, no execution): its pipeline module, every task's modules,
and all they import inside this repository, function-level imports included (they run
too), tuneops/context.py (how params are read), and tuneops/stages.py, which calls the
step. Written by `tuneops dvc-yaml`;
tests/test_stages.py fails when dvc.yaml drifts from the table or misses a module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "flows", "tuneops")  # top-level packages of this repository

HEADER = """\
# The pipeline as DVC stages: `dvc repro` reruns only what changed.
# Written by `tuneops dvc-yaml` from tuneops/stages.py (STAGES); do not edit by hand.
# Each stage's code deps are the modules it runs and everything they import.
# data/raw is tracked by `dvc add` (data/raw.dvc), written by `tuneops fetch-data` / `tuneops run`.
"""


def module_file(module: str, root: Path = REPO) -> Path | None:
    """The file of a dotted module name inside `root`, or None (not ours / not found)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (any depth: function bodies, TYPE_CHECKING blocks),
    with the parent packages that importing it runs, and `from a import b` submodules."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[: i + 1]) for i in range(len(parts))}
    return found


def closure(modules: tuple[str, ...] | list[str], root: Path = REPO) -> set[Path]:
    """The repository files that importing `modules` runs, transitively."""
    seen: set[Path] = set()
    pending = [module_file(m, root) for m in modules]
    while pending:
        path = pending.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        pending += [module_file(m, root) for m in imported_modules(path)]
    return seen


def code_deps(stage: Any, root: Path = REPO) -> list[str]:
    """A stage's code deps as dvc.yaml paths: the closure of its module, of every task and
    of tuneops/context.py (how params are read), and tuneops/stages.py itself (the adapter
    that calls the step with its arguments; the other stages' modules it imports are not
    followed, or every stage would depend on every module); a stage that runs behavioural
    checks also depends on each task's checker module."""
    from pipeline.tasks import TASKS

    modules = [stage.module, "pipeline.tasks", "tuneops.context"]
    modules += [m for t in TASKS.values() for m in t.modules]
    files = closure(modules, root) | {root / "tuneops" / "stages.py"}
    if root / "pipeline" / "behaviour.py" in files:
        # a stage that runs behavioural checks runs each task's checker, which
        # pipeline.behaviour imports by name (Task.behaviour_module), out of the ast's sight
        checkers = [t.behaviour_module for t in TASKS.values() if t.behaviour_module]
        files |= closure(checkers, root)
    return sorted(str(p.relative_to(root)) for p in files)


def render(root: Path = REPO) -> str:
    """dvc.yaml's text for the STAGES table."""
    from tuneops.stages import STAGES

    stages: dict[str, Any] = {}
    for stage in STAGES.values():
        if not stage.dvc:
            continue
        stages[stage.name] = {
            "cmd": stage.cmd,
            "deps": [*stage.deps, *code_deps(stage, root)],
            "params": ["task", *stage.params],
            **stage.outs,
        }
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=100)
