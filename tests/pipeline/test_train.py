import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file
from sklearn.metrics import f1_score

from pipeline.training.modeling import load_classifier, load_tokenizer, predict_logits
from tests.conftest import Trained


def test_candidate_folder_holds_safetensors_tokenizer_and_label_map(trained: Trained) -> None:
    candidate = trained.paths.candidate
    assert (candidate / "model.safetensors").exists()
    assert not list(candidate.glob("*.bin"))
    assert (candidate / "tokenizer.json").exists()
    assert json.loads((candidate / "labels.json").read_text()) == ["negative", "positive"]
    config = json.loads((candidate / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}


@pytest.mark.audit("T8")
def test_training_summary_records_steps_device_and_token_throughput(trained: Trained) -> None:
    summary = json.loads((trained.paths.candidate / "training_summary.json").read_text())
    train_rows = len(pd.read_parquet(trained.paths.data_prepared / "train.parquet"))
    steps_per_epoch = -(-train_rows // trained.params.train.batch_size)
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["global_steps"] == 2 * steps_per_epoch  # epochs: 2, no early stop on 2
    assert summary["tokens_per_s"] > 0
    assert summary["trainable_params"] == summary["total_params"]  # full fine-tuning
    # The best checkpoint is the saved candidate: its validation macro-F1, by sklearn over
    # every label, is the one recorded.
    validation = pd.read_parquet(trained.paths.data_prepared / "validation.parquet")
    model = load_classifier(trained.paths.candidate)
    tokenizer = load_tokenizer(trained.paths.candidate)
    logits = predict_logits(
        model, tokenizer, validation["text"].tolist(), trained.params.train.max_length, 8
    )
    macro_f1 = f1_score(
        validation["label_id"], logits.argmax(1), labels=[0, 1], average="macro", zero_division=0
    )
    assert summary["best_validation"]["macro_f1"] == pytest.approx(macro_f1, abs=1e-12)


def test_training_changed_the_weights_and_the_saved_model_reloads(trained: Trained) -> None:
    weights = load_file(str(trained.paths.candidate / "model.safetensors"))
    base = load_file(str(trained.params.model.name_or_path + "/model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not np.allclose(weights[key], base[key.removeprefix("bert.")])
    model = load_classifier(trained.paths.candidate)
    tokenizer = load_tokenizer(trained.paths.candidate)
    logits = predict_logits(model, tokenizer, ["a fine film", "a dull film"], 32, 8)
    assert logits.shape == (2, 2) and np.isfinite(logits).all()


def test_predict_logits_returns_rows_in_input_order(trained: Trained) -> None:
    model = load_classifier(trained.paths.candidate)
    tokenizer = load_tokenizer(trained.paths.candidate)
    texts = ["short", "a much longer text that sorts last by length", "mid length text"]
    together = predict_logits(model, tokenizer, texts, 32, 2)
    one_by_one = np.concatenate([predict_logits(model, tokenizer, [t], 32, 1) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_balanced_class_weights_come_from_the_train_split_and_are_recorded(
    trained: Trained, tmp_path: Path
) -> None:
    from pipeline.train import train
    from tests.conftest import TEXT

    p = trained.params
    cfg = p.train.model_copy(update={"class_weights": "balanced", "max_steps": 2})
    candidate = tmp_path / "candidate"
    train(TEXT, p.model, cfg, trained.paths.data_prepared, candidate, tmp_path / "ck", tmp_path)
    summary = json.loads((candidate / "training_summary.json").read_text())
    ids = pd.read_parquet(trained.paths.data_prepared / "train.parquet")["label_id"]
    counts = ids.value_counts()
    expected = {
        label: len(ids) / (2 * counts[i]) for i, label in enumerate(["negative", "positive"])
    }
    assert summary["class_weights"] == pytest.approx(expected, abs=1e-12)
    assert summary["global_steps"] == 2
