"""Corrupt or truncated model files: every command that loads one stops with exit code 8
and one line naming the file, not a library's traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.export import ExportResult
from tests.conftest import Trained, write_params
from tests.reliability.conftest import record, run_cli
from tuneops.tracking import MlflowTracker


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00not a model\xff" * 64)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def candidate_project(root: Path, trained: Trained, base_model: Path, uri: str) -> Path:
    """The trained candidate, its prepared data, and a real MLflow run it belongs to."""
    shutil.copytree(trained.paths.candidate, root / "models" / "candidate")
    shutil.copytree(trained.paths.data_prepared, root / "data" / "prepared")
    overrides = {"model.name_or_path": str(base_model), "train.max_length": 32}
    overrides |= {"evaluate.frozen_baseline_train_rows": 20, "tracking.uri": uri}
    write_params(root, overrides)
    run = MlflowTracker.start(uri, "corrupt", None, "candidate", {})
    summary_file = root / "models" / "candidate" / "training_summary.json"
    summary = json.loads(summary_file.read_text()) | {"mlflow_run_id": run.run_id}
    summary_file.write_text(json.dumps(summary))
    return root


# (case, file under the project or bundle, damage, command after --root ROOT)
CASES: list[tuple[str, str, Callable[[Path], None], tuple[str, ...]]] = [
    (
        "truncated candidate model.safetensors (tuneops stage evaluate)",
        "models/candidate/model.safetensors",
        truncate,
        ("stage", "evaluate"),
    ),
    (
        "candidate model.safetensors overwritten with garbage (tuneops stage export)",
        "models/candidate/model.safetensors",
        garbage,
        ("stage", "export"),
    ),
    (
        "truncated base model model.safetensors (tuneops stage train)",
        "base/model.safetensors",
        truncate,
        ("stage", "train"),
    ),
    (
        "truncated model.onnx (tuneops predict)",
        "bundle/model.onnx",
        truncate,
        ("predict", "--bundle", "{bundle}", "--model", "fp32", "ok"),
    ),
    (
        "model.onnx overwritten with garbage (tuneops serve)",
        "bundle/model.onnx",
        garbage,
        ("serve", "--bundle", "{bundle}", "--model", "fp32"),
    ),
    (
        "truncated bundle.json (tuneops predict)",
        "bundle/bundle.json",
        truncate,
        ("predict", "--bundle", "{bundle}", "a text"),
    ),
]


@pytest.mark.parametrize(("case", "file", "damage", "command"), CASES, ids=[c[0] for c in CASES])
def test_a_damaged_model_file_is_named_with_exit_code_8(
    case: str,
    file: str,
    damage: Callable[[Path], None],
    command: tuple[str, ...],
    trained: Trained,
    exported: ExportResult,
    tiny_model_dir: Path,
    tracking_uri: str,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    record_property: Any,
) -> None:
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    bundle = shutil.copytree(exported.export_dir, tmp_path / "bundle")
    root = candidate_project(tmp_path / "project", trained, base, tracking_uri)
    target = (tmp_path if file.startswith(("base/", "bundle/")) else root) / file
    damage(target)
    argv = [part.format(bundle=bundle) for part in command]
    run = run_cli(capfd, "--root", str(root), *argv)
    record(
        record_property,
        "fault",
        case,
        "survived" if run.exit_code == 8 else "not named",
        f"exit {run.exit_code}: {run.error_line}",
    )
    assert run.exit_code == 8, run.err[-3000:]
    assert run.error_line.startswith(f"tuneops: ModelFileError: {target}"), run.error_line
    assert len(run.error_line.splitlines()) == 1
    assert "Traceback" not in run.err + run.out
