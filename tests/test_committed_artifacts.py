"""The data version and metrics file committed to this repository are those of a real
default run (`make run` on a fresh clone), not leftovers of a test (audit M12, D11): a
fresh clone's first run then leaves `data/raw.dvc` as it was, and `dvc metrics diff`
compares against the default model's figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_dvc_project, run_tool
from tuneops import stages

pytestmark = pytest.mark.integration


@pytest.mark.audit("M12", "D11")
def test_the_committed_data_version_and_metrics_are_a_default_run_s(tmp_path: Path) -> None:
    root = make_dvc_project(tmp_path)
    ctx = stages.load_context(root)
    # What the training flow does before `dvc add`: fetch, validate, prepare.
    stages.step_fetch(ctx)
    stages.step_validate(ctx)
    stages.step_prepare(ctx)
    run_tool(root, sys.executable, "-m", "dvc", "add", "-q", "data/raw")
    produced = yaml.safe_load((root / "data" / "raw.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((REPO / "data" / "raw.dvc").read_text())["outs"][0]
    assert {k: committed[k] for k in ("md5", "size", "nfiles")} == {
        k: produced[k] for k in ("md5", "size", "nfiles")
    }
    manifest = json.loads((ctx.paths.data_prepared / "manifest.json").read_text())
    metrics = json.loads((REPO / "reports" / "metrics.json").read_text())
    assert metrics["test_rows"] == manifest["rows"]["test"]
    # The default model, not the majority class a 60-row test leftover was (M12).
    assert metrics["test_macro_f1"] > metrics["majority"]["test_macro_f1"]
