"""Joint intent + slots through the same flow: params.joint.yaml on a slice of ATIS, the real
packaged model cut to 2 layers, a real Prefect flow run, DVC, MLflow and the registry."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from flows.training import RunSummary, training_flow
from tests.conftest import make_dvc_project, preset, set_dotted, store_client
from tuneops.cli import main as cli_main

pytestmark = pytest.mark.integration

JOINT_SLICE = {
    "data.max_rows": 1200,
    "model.num_hidden_layers": 2,
    "train.epochs": 3,
    "train.learning_rate": 3.0e-4,
    "train.max_length": 48,
    "train.batch_size": 16,
    "evaluate.frozen_baseline_train_rows": 200,
    "export.parity_examples": 64,
    "gate.floors": {"test_intent_accuracy": 0.6, "test_slot_f1": 0.5},
    "gate.baselines": ["most_frequent"],
    "gate.per_class": False,
}


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> dict[str, Any]:
    root = make_dvc_project(tmp_path_factory.mktemp("joint"))
    params = preset("params.joint.yaml")
    for key, value in JOINT_SLICE.items():
        set_dotted(params, key, value)
    (root / "params.joint.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    state = training_flow(
        root=str(root), params_file=str(root / "params.joint.yaml"), return_state=True
    )
    return {"root": root, "state": state}


def test_the_joint_flow_registers_a_champion_gated_on_both_heads(
    joint_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    state, root = joint_run["state"], joint_run["root"]
    assert state.is_completed(), state.message
    summary: RunSummary = state.result()
    metrics = json.loads((root / "reports/metrics.json").read_text())
    gate = json.loads((root / "reports/gate.json").read_text())
    checks = {c["name"]: c for c in gate["checks"]}
    assert {"floor:test_intent_accuracy", "floor:test_slot_f1"} <= set(checks)
    assert {"beats:most_frequent", "beats:most_frequent:test_intent_accuracy"} <= set(checks)
    # the gate judges the file the bundle ships (its default model, int8 when kept)
    meta = json.loads((root / "models/export/bundle.json").read_text())
    shipped = meta["models"][meta["default_model"]]
    assert checks["floor:test_slot_f1"]["value"] == round(shipped["slot_f1"], 4)
    assert checks["floor:test_intent_accuracy"]["value"] == round(shipped["intent_accuracy"], 4)
    assert set(metrics) >= {"most_frequent", "tfidf", "before_finetuning"}
    version = store_client(f"sqlite:///{root / 'mlflow.db'}").get_model_version_by_alias(
        "tuneops-atis-joint", "champion"
    )
    assert str(version.version) == summary.model_version == "1"
    assert version.tags["task"] == "intent-and-slots"
    text = "show me flights from boston to denver"
    bundle = root / "models/export"
    assert cli_main(["predict", "--bundle", str(bundle), "--model", "fp32", text]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["intent"].startswith("atis_") and record["intents"] == record["intent"].split(";")
    assert all(text[e["start"] : e["end"]] == e["text"] for e in record["entities"])
