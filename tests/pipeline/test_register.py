"""register's gate judges the file the bundle ships (bundle.json's default model), on a real
MLflow SQLite store and registry."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import classification_report, f1_score

from pipeline.export import export
from pipeline.register import RegisterInputs, gate_and_register
from tests.conftest import TEXT, Trained
from tuneops.config import ExportConfig, GateConfig
from tuneops.runtime import OnnxClassifier
from tuneops.tracking import MlflowTracker


def test_floors_baselines_and_per_class_judge_the_default_model_not_pytorch_reports(
    trained: Trained, tmp_path: Path
) -> None:
    p = trained.params
    bundle = tmp_path / "bundle"
    export(
        TEXT,
        ExportConfig(int8_max_f1_drop=1.0),
        p.train.max_length,
        trained.paths.candidate,
        trained.paths.data_prepared,
        bundle,
    )
    meta = json.loads((bundle / "bundle.json").read_text())
    # What the PyTorch candidate's evaluate step would have written, flattering on purpose:
    # a gate that reads these figures passes a model it never scored.
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "metrics.json").write_text(
        json.dumps(
            {"test_macro_f1": 0.999, "test_accuracy": 0.999, "tfidf": {"test_macro_f1": 0.1}}
        )
    )
    labels = json.loads((bundle / "labels.json").read_text())
    perfect = {label: {"recall": 1.0, "f1-score": 1.0, "support": 20.0} for label in labels}
    (reports / "classification_report.json").write_text(json.dumps(perfect))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker.start(uri, "tests", (tmp_path / "artifacts").as_uri(), "run", {})
    cfg = GateConfig(
        floors={"test_macro_f1": 0.9},
        baselines=("tfidf",),
        vs_champion=False,
        per_class_floor=0.5,
    )
    inputs = RegisterInputs(TEXT, cfg, uri, "shipped", trained.paths.data_prepared, reports)
    verdict, _ = gate_and_register(inputs, tracker, bundle, {})

    # The shipped file's own predictions, cross-checked with sklearn.
    test = pd.read_parquet(trained.paths.data_prepared / "test.parquet")
    shipped = OnnxClassifier(bundle)
    assert shipped.model_file == meta["models"][meta["default_model"]]["file"]
    predicted = shipped.logits(test["text"].tolist()).argmax(1)
    gold = test["label_id"].to_numpy()
    macro_f1 = f1_score(gold, predicted, average="macro", labels=[0, 1], zero_division=0)
    recall = classification_report(
        gold, predicted, labels=[0, 1], target_names=labels, output_dict=True, zero_division=0
    )
    checks = {c.name: c for c in verdict.checks}
    assert checks["floor:test_macro_f1"].value == round(macro_f1, 4)
    assert checks["beats:tfidf"].value == round(macro_f1 - 0.1, 4)
    assert checks["per_class_recall"].value == {k: round(recall[k]["recall"], 4) for k in labels}
    # bundle.json records the same per-class figures for the default model.
    recorded = meta["models"][meta["default_model"]]["per_class"]
    assert {k: recorded[k]["recall"] for k in labels} == {k: recall[k]["recall"] for k in labels}
    assert verdict.passed is (macro_f1 >= 0.9 and min(recall[k]["recall"] for k in labels) >= 0.5)
    assert "export_parity" not in checks
