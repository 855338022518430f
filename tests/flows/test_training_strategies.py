"""A LoRA model goes through the real flow like a full one: train, evaluate, export (merged),
gate and registry, in a real git + DVC repository, on the tiny BERT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from safetensors.numpy import load_file

from flows.training import RunSummary, training_flow
from pipeline.training.modeling import load_classifier, load_tokenizer, predict_logits
from tests.conftest import make_dvc_project, store_client, tiny_overrides, write_params
from tuneops.runtime import OnnxClassifier

pytestmark = pytest.mark.integration

MODEL = "tuneops-movie-sentiment"


@pytest.fixture(scope="module")
def lora_flow(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: None, tiny_model_dir: Path
) -> dict[str, Any]:
    root = make_dvc_project(tmp_path_factory.mktemp("lora-flow"))
    overrides = tiny_overrides(tiny_model_dir) | {
        "train.strategy": "lora",
        "train.lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "train.learning_rate": 2.0e-3,
    }
    write_params(root, overrides)
    state = training_flow(root=str(root), return_state=True)
    return {"root": root, "state": state}


def test_lora_run_is_gated_registered_and_champion(lora_flow: dict[str, Any]) -> None:
    state = lora_flow["state"]
    assert state.is_completed(), state.message
    summary: RunSummary = state.result()
    assert summary.model_version == "1"
    assert summary.aliases == ["challenger", "champion"]
    assert summary.gate.startswith("gate passed")
    client = store_client(f"sqlite:///{lora_flow['root'] / 'mlflow.db'}")
    version = client.get_model_version(MODEL, "1")
    assert version.tags["strategy"] == "lora"
    assert version.tags["gate.verdict"] == "passed"


def test_candidate_and_onnx_are_a_plain_model_with_the_adapter_merged(
    lora_flow: dict[str, Any],
) -> None:
    root: Path = lora_flow["root"]
    candidate = root / "models" / "candidate"
    assert not [k for k in load_file(str(candidate / "model.safetensors")) if "lora" in k]
    assert (candidate / "adapter" / "adapter_model.safetensors").exists()
    graph = onnx.load(str(root / "models" / "export" / "model.onnx"), load_external_data=False)
    assert not [i.name for i in graph.graph.initializer if "lora" in i.name.lower()]
    texts = pd.read_parquet(root / "data/prepared/test.parquet")["text"].tolist()
    reference = predict_logits(load_classifier(candidate), load_tokenizer(candidate), texts, 32, 16)
    np.testing.assert_allclose(
        OnnxClassifier(root / "models/export", model="fp32").logits(texts), reference, atol=1e-4
    )


def test_mlflow_run_has_the_adapter_and_parameter_counts(lora_flow: dict[str, Any]) -> None:
    client = store_client(f"sqlite:///{lora_flow['root'] / 'mlflow.db'}")
    run = client.get_run(lora_flow["state"].result().mlflow_run_id)
    assert run.data.params["train.strategy"] == "lora"
    metrics = run.data.metrics
    assert 0 < metrics["trainable_params"] < 0.05 * metrics["total_params"]
    assert metrics["peak_memory_mb"] > 0 and metrics["train_tokens_per_s"] > 0
    assert "test_macro_f1" in metrics
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter
