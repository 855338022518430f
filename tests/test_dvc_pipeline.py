"""dvc.yaml with the real `dvc` CLI in a fresh git repository: repro, no-op, partial rerun."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score

from tests.conftest import run_tool, tiny_overrides, write_params

pytestmark = pytest.mark.integration

STAGES = ["validate", "prepare", "train", "evaluate", "export", "register"]


def dvc(root: Path, *args: str) -> str:
    return run_tool(root, sys.executable, "-m", "dvc", *args).stdout


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


@pytest.mark.audit("M11", "T8", "T10")
def test_repro_runs_all_then_nothing_then_only_what_a_param_touches_or_code_a_stage_imports(
    dvc_project: Path, tiny_model_dir: Path
) -> None:
    root = dvc_project
    write_params(root, tiny_overrides(tiny_model_dir))
    run_tool(root, sys.executable, "-m", "tuneops.cli", "fetch-data")
    run_tool(root, sys.executable, "-m", "tuneops.cli", "stage", "version-data")

    assert ran(dvc(root, "repro")) == STAGES
    assert ran(second := dvc(root, "repro")) == []
    assert "up to date" in second

    metrics = json.loads(dvc(root, "metrics", "show", "--json"))
    shown = metrics[""]["data"]["reports/metrics.json"]["data"]
    # dvc shows what evaluate wrote, and that is sklearn's macro-F1 of the predictions.
    assert shown == json.loads((root / "reports" / "metrics.json").read_text())
    predictions = pd.read_parquet(root / "reports" / "test_predictions.parquet")
    macro_f1 = f1_score(
        predictions["label"],
        predictions["predicted"],
        labels=["negative", "positive"],
        average="macro",
        zero_division=0,
    )
    assert shown["test_macro_f1"] == round(macro_f1, 6)  # metrics.json keeps 6 digits
    assert "tfidf" in shown and "before_finetuning" in shown

    run_tool(root, "git", "add", "-A")
    run_tool(root, "git", "commit", "-qm", "first model")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["learning_rate"] = 1.0e-3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    diff = json.loads(dvc(root, "params", "diff", "--json"))["params.yaml"]
    assert list(diff) == ["train.learning_rate"]
    assert (diff["train.learning_rate"]["old"], diff["train.learning_rate"]["new"]) == (5e-4, 1e-3)
    assert ran(dvc(root, "repro")) == ["train", "evaluate", "export", "register"]
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert registry["version"] == "2"

    # An edit to a module a stage imports, not the stage's own module (bootstrap.py, which
    # pipeline/register.py imports): dvc repro reruns that stage and nothing before it.
    run_tool(root, "git", "add", "-A")
    run_tool(root, "git", "commit", "-qm", "second model")
    with (root / "pipeline" / "bootstrap.py").open("a", encoding="utf-8") as code:
        code.write("\n# an edit that dvc must see\n")
    assert "modified:           pipeline/bootstrap.py" in dvc(root, "status", "register")
    assert ran(dvc(root, "repro")) == ["register"]
    assert json.loads((root / "reports" / "registry.json").read_text())["version"] == "3"

    # Which checks file gate.behaviour_checks picks changes the pass rates the model card
    # shows, so export is stale too, not only register (the tiny model's params have none).
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["gate"]["behaviour_checks"] is None
    params["gate"]["behaviour_checks"] = "data/checks/movie_sentiment.yaml"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "gate.behaviour_checks" in dvc(root, "status", "export")
