"""Text regression through the same flow: params.regression.yaml on a slice of the movie
snippets' crowd ratings, the real packaged model cut to 2 layers, a real Prefect flow run,
DVC, MLflow, the gate and the registry, and the bundle answering with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.training import RunSummary, training_flow
from tests.conftest import make_dvc_project, preset, set_dotted, store_client
from tuneops.cli import main as cli_main

pytestmark = pytest.mark.integration

REGRESSION_SLICE = {
    "data.max_rows": 1200,
    "data.hold_back_rows": 0,
    "model.num_hidden_layers": 2,
    "train.epochs": 3,
    "train.learning_rate": 2.0e-4,
    "train.max_length": 48,
    "train.batch_size": 16,
    "evaluate.frozen_baseline_train_rows": 200,
    "export.parity_examples": 64,
    "gate.floors": {"test_pearson": 0.3, "test_mae": 1.5},
    "gate.baselines": ["mean"],
    "gate.baseline_min_error_reduction": 0.02,
}


@pytest.fixture(scope="module")
def regression_run(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: None
) -> dict[str, Any]:
    root = make_dvc_project(tmp_path_factory.mktemp("regression"))
    params = preset("params.regression.yaml")
    for key, value in REGRESSION_SLICE.items():
        set_dotted(params, key, value)
    (root / "params.regression.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    params_file = str(root / "params.regression.yaml")
    state = training_flow(root=str(root), params_file=params_file, return_state=True)
    return {"root": root, "state": state, "params": params}


def test_the_regression_flow_registers_a_gated_version_in_the_targets_units(
    regression_run: dict[str, Any],
) -> None:
    state, root = regression_run["state"], regression_run["root"]
    assert state.is_completed(), state.message
    summary: RunSummary = state.result()
    metrics = json.loads((root / "reports/metrics.json").read_text())
    train = pd.read_parquet(root / "data/prepared/train.parquet")
    test = pd.read_parquet(root / "data/prepared/test.parquet")
    # The train-mean baseline, computed here from the prepared splits (4 decimals: metrics.json)
    mean_mae = float(np.abs(test["target"] - train["target"].mean()).mean())
    assert metrics["mean"]["test_mae"] == pytest.approx(mean_mae, abs=1e-6)
    assert set(metrics) >= {"tfidf", "before_finetuning", "test_rmse", "test_spearman"}
    assert metrics["test_mae"] < metrics["mean"]["test_mae"]
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["labels"] == ["rating"]
    assert manifest["target"]["train"]["mean"] == pytest.approx(float(train["target"].mean()))
    assert manifest["target"]["test"]["max"] == pytest.approx(float(test["target"].max()))
    client = store_client(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias("tuneops-movie-ratings", "champion")
    assert str(version.version) == summary.model_version == "1"
    assert version.tags["task"] == "text-regression"
    assert version.tags["gate.verdict"] == "passed"
    gate = json.loads((root / "reports/gate.json").read_text())
    checks = {c["name"]: c for c in gate["checks"]}
    assert {"floor:test_pearson", "floor:test_mae", "beats:mean"} <= set(checks)
    assert not [name for name in checks if name.startswith(("per_class", "max_ece", "behaviour"))]
    assert "ceiling" in checks["floor:test_mae"]["detail"]
    # The gate's bootstrap against the mean baseline is on MAE: its diff is (mean - model).
    diff = checks["beats:mean"]["value"]["diff"]
    shipped_mae = checks["floor:test_mae"]["value"]
    assert diff == pytest.approx(metrics["mean"]["test_mae"] - shipped_mae, abs=2e-4)
    run = client.get_run(version.run_id)
    assert "best_validation_mae" in run.data.metrics


def test_the_bundle_answers_in_the_targets_units_with_onnxruntime(
    regression_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneops.runtime import OnnxRegressor, load_bundle

    root: Path = regression_run["root"]
    bundle_dir = root / "models/export"
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert meta["task"] == "text-regression"
    summary = json.loads((root / "models/candidate/training_summary.json").read_text())
    assert meta["target"]["scale"] == summary["target_scale"]
    assert meta["target"]["name"] == "rating"
    bundle = load_bundle(bundle_dir, model="fp32")
    assert isinstance(bundle, OnnxRegressor)
    test = pd.read_parquet(root / "data/prepared/test.parquet")
    values = bundle.values(test["text"].tolist())
    # The same values evaluate scored with PyTorch (the scale folded into the head) ...
    evaluated = pd.read_parquet(root / "reports/test_predictions.parquet")
    assert np.abs(values - evaluated["predicted"].to_numpy()).max() < 1e-4
    # ... whose MAE bundle.json records for the file.
    mae = float(np.abs(values - test["target"].to_numpy()).mean())
    assert meta["models"]["fp32"]["mae"] == pytest.approx(mae, abs=1e-6)
    text = test["text"].iloc[0]
    assert cli_main(["predict", "--bundle", str(bundle_dir), "--model", "fp32", text]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["target"] == "rating"
    assert record["value"] == pytest.approx(float(values[0]), abs=1e-5)
