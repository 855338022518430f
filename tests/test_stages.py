"""One stage table: the CLI, the Prefect flow and dvc.yaml follow tuneops.stages.STAGES, and
every stage depends (in dvc.yaml) on all the code it runs, so `dvc repro` can never say
"up to date" after a change to that code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from prefect import Task

import flows.training
from pipeline.tasks import TASKS
from tuneops import stages
from tuneops.cli import main
from tuneops.dvcfile import REPO, closure, module_file, render
from tuneops.stages import STAGES

DVC_YAML = REPO / "dvc.yaml"


def dvc_stages() -> dict[str, dict]:
    return dict(yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"])


def covered(path: Path, deps: list[str]) -> bool:
    """A file is a dependency when it, or a folder above it, is listed."""
    relative = path.relative_to(REPO)
    return any(relative == Path(d) or Path(d) in relative.parents for d in deps)


def missing_code_deps(stage: str, deps: list[str]) -> list[str]:
    """Files the stage runs (its module's and every task's import closure) not in `deps`."""
    runs = [STAGES[stage].module, "pipeline.tasks", "tuneops.context"]
    runs += [m for task in TASKS.values() for m in task.modules]
    return sorted(str(p.relative_to(REPO)) for p in closure(runs) if not covered(p, deps))


def test_dvc_yaml_is_written_from_the_stage_table() -> None:
    assert DVC_YAML.read_text(encoding="utf-8") == render(), "run `tuneops dvc-yaml`"
    assert list(dvc_stages()) == [s.name for s in STAGES.values() if s.dvc]
    for name, stage in dvc_stages().items():
        assert stage["cmd"] == f"python -m tuneops.cli stage {name}"


@pytest.mark.audit("M11")
def test_every_stage_depends_on_the_code_it_runs_and_on_the_task_param() -> None:
    for name, stage in dvc_stages().items():
        assert missing_code_deps(name, stage["deps"]) == [], name
        assert "tuneops/stages.py" in stage["deps"]
        assert "task" in stage["params"], name
    # The files the old hand-written dvc.yaml missed: an edit to any of them reruns export.
    export = dvc_stages()["export"]["deps"]
    for path in ("pipeline/quantize.py", "pipeline/tasks/token_steps.py"):
        assert path in export


def test_every_task_names_modules_that_exist() -> None:
    """A misspelt module in a task's `modules` would silently drop it from every stage."""
    for task in TASKS.values():
        assert task.modules and all(module_file(m) is not None for m in task.modules), task.name


@pytest.mark.audit("M11")
def test_a_missing_dependency_is_found(tmp_path: Path) -> None:
    """The check fails for a stage whose deps leave out a module it imports."""
    deps = [d for d in dvc_stages()["export"]["deps"] if d != "pipeline/quantize.py"]
    assert missing_code_deps("export", deps) == ["pipeline/quantize.py"]


@pytest.mark.audit("M11")
def test_closure_follows_imports_inside_functions(tmp_path: Path) -> None:
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "step.py").write_text("def run():\n    from pipeline import helper\n")
    (package / "helper.py").write_text("import numpy\n")
    found = closure(["pipeline.step"], tmp_path)
    assert found == {package / "__init__.py", package / "step.py", package / "helper.py"}


def test_the_flow_runs_the_table_and_the_cli_knows_every_stage(
    capsys: object,
) -> None:
    tasks = {obj.name for obj in vars(flows.training).values() if isinstance(obj, Task)}
    assert tasks == set(STAGES) | {"preflight"}
    assert main(["stage", "no-such-stage"]) != 0


def test_dvc_yaml_check_reports_drift(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(render(), encoding="utf-8")
    assert main(["--root", str(tmp_path), "dvc-yaml", "--check"]) == 0
    (tmp_path / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")
    assert main(["--root", str(tmp_path), "dvc-yaml", "--check"]) == 2


def test_every_stage_param_is_a_key_of_params_yaml() -> None:
    """`dvc repro` refuses a stage whose params name a key params.yaml lacks (a default
    that only config.py knows), so each dotted name must be in the file itself."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))

    def present(dotted: str) -> bool:
        node: object = params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = {
        name: [p for p in stage["params"] if not present(p)] for name, stage in dvc_stages().items()
    }
    assert {k: v for k, v in missing.items() if v} == {}


def test_the_gate_params_hash_follows_the_behavioural_checks_file(tmp_path: Path) -> None:
    # The retrain flow re-gates when the gate params hash moves (flows.retrain.decide); a
    # checks file (gate.behaviour_checks) is part of what the gate judges by.
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    without = stages.gate_params_hash(stages.load_context(tmp_path))
    checks = tmp_path / "data" / "checks" / "movie_sentiment.yaml"
    checks.parent.mkdir(parents=True)
    shutil.copy(REPO / "data" / "checks" / "movie_sentiment.yaml", checks)
    shipped = stages.gate_params_hash(stages.load_context(tmp_path))
    checks.write_text(checks.read_text().replace("floor: 0.90", "floor: 0.95", 1))
    edited = stages.gate_params_hash(stages.load_context(tmp_path))
    assert len({without, shipped, edited}) == 3
