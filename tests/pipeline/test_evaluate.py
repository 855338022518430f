import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from pipeline.evaluate import evaluate
from pipeline.tasks.base import baseline_column
from tests.conftest import TEXT, Trained, reprepare
from tuneops.errors import ConfigError


@pytest.fixture(scope="module")
def evaluation(trained: Trained):  # type: ignore[no-untyped-def]
    p = trained.params
    return evaluate(
        TEXT,
        p.evaluate,
        p.model,
        p.train.max_length,
        p.train.seed,
        trained.paths.data_prepared,
        trained.paths.candidate,
        trained.paths.reports,
    )


@pytest.mark.audit("T8")
def test_metrics_file_has_model_and_baselines_on_the_same_test_rows(evaluation, trained) -> None:  # type: ignore[no-untyped-def]
    metrics = json.loads((trained.paths.reports / "metrics.json").read_text())
    test_rows = len(pd.read_parquet(trained.paths.data_prepared / "test.parquet"))
    assert metrics["test_rows"] == test_rows
    # Each block's figures are sklearn's on the per-row predictions evaluate wrote (metrics.json
    # rounds to 6 digits).
    predictions = pd.read_parquet(trained.paths.reports / "test_predictions.parquet")
    assert len(predictions) == test_rows
    labels = ["negative", "positive"]
    blocks = {"predicted": metrics} | {
        baseline_column(name): metrics[name] for name in ("majority", "tfidf", "before_finetuning")
    }
    for column, block in blocks.items():
        gold, predicted = predictions["label"], predictions[column]
        macro_f1 = f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)
        assert block["test_macro_f1"] == round(macro_f1, 6), column
        assert block["test_accuracy"] == round(accuracy_score(gold, predicted), 6), column
    assert metrics["before_finetuning"]["train_rows"] == 100


def test_majority_baseline_scores_the_majority_share(evaluation, trained) -> None:  # type: ignore[no-untyped-def]
    train = pd.read_parquet(trained.paths.data_prepared / "train.parquet")
    test = pd.read_parquet(trained.paths.data_prepared / "test.parquet")
    majority = train["label"].value_counts().idxmax()
    expected = float((test["label"] == majority).mean())
    assert evaluation.metrics["majority"]["test_accuracy"] == pytest.approx(expected, abs=1e-6)


def test_per_class_report_confusion_matrix_and_predictions_are_written(evaluation, trained) -> None:  # type: ignore[no-untyped-def]
    assert set(evaluation.per_class) >= {"negative", "positive", "macro avg", "weighted avg"}
    png = trained.paths.reports / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = pd.read_parquet(trained.paths.reports / "test_predictions.parquet")
    accuracy = float((predictions["predicted_id"] == predictions["label_id"]).mean())
    assert accuracy == pytest.approx(evaluation.metrics["test_accuracy"], abs=1e-6)


def test_flat_metric_names_match_dvc_and_mlflow(evaluation) -> None:  # type: ignore[no-untyped-def]
    flat = evaluation.flat_metrics()
    assert {
        "test_macro_f1",
        "tfidf.test_macro_f1",
        "before_finetuning.test_macro_f1",
        "majority.test_accuracy",
    } <= set(flat)


def test_each_baselines_per_row_test_predictions_are_kept_and_give_its_score(
    evaluation, trained
) -> None:  # type: ignore[no-untyped-def]
    # The gate bootstraps (model - baseline) on the same rows, so the rows are kept.
    from sklearn.metrics import f1_score

    predictions = pd.read_parquet(trained.paths.reports / "test_predictions.parquet")
    test = pd.read_parquet(trained.paths.data_prepared / "test.parquet")
    assert predictions["text"].tolist() == test["text"].tolist()
    for name in ("majority", "tfidf", "before_finetuning"):
        predicted = predictions[f"{name}_predicted"]
        f1 = f1_score(test["label"], predicted, average="macro", labels=["negative", "positive"])
        assert round(float(f1), 6) == evaluation.metrics[name]["test_macro_f1"]


def test_evaluate_and_export_refuse_data_prepared_with_another_label_order(
    trained: Trained, tmp_path: Path
) -> None:
    """The candidate's head follows its labels.json; data prepared again with the labels in
    another order has label ids that mean other classes: both steps refuse it up front."""
    from pipeline.export import export

    p = trained.params
    labels = json.loads((trained.paths.candidate / "labels.json").read_text())
    flipped = reprepare(trained, tmp_path / "flipped", labels=tuple(reversed(labels)))
    expected = (
        f"{trained.paths.candidate / 'labels.json'} has label order {labels}, but "
        f"{flipped / 'manifest.json'} has {list(reversed(labels))}; the candidate was trained "
        "on other prepared data: train it again (tuneops stage train)"
    )
    with pytest.raises(ConfigError) as evaluated:
        evaluate(
            TEXT,
            p.evaluate,
            p.model,
            p.train.max_length,
            p.train.seed,
            flipped,
            trained.paths.candidate,
            tmp_path / "reports",
        )
    with pytest.raises(ConfigError) as exported:
        export(TEXT, p.export, p.train.max_length, trained.paths.candidate, flipped, tmp_path / "b")
    assert str(evaluated.value) == str(exported.value) == expected
    assert not (tmp_path / "reports").exists() and not (tmp_path / "b").exists()


@pytest.mark.audit("M15")
def test_mean_pooled_features_average_only_the_real_tokens(trained: Trained) -> None:
    """Batched with padding, each text's mean_pooled feature is the mean of its own last
    hidden states (padding masked out), and pooler is what the head reads (BERT's pooler)."""
    import numpy as np
    import torch

    from pipeline.training.modeling import load_tokenizer
    from pipeline.training.probe import encoder_features

    model = TEXT.load_model(trained.params.model.name_or_path, ("a", "b"))
    tokenizer = load_tokenizer(trained.params.model.name_or_path)
    texts = ["short", "a much longer text, padded least of all in its batch", "mid length"]
    found = encoder_features(model, tokenizer, texts, 32, batch_size=3)
    for i, text in enumerate(texts):
        with torch.inference_mode():
            alone = model.bert(**tokenizer([text], return_tensors="pt"))
        np.testing.assert_allclose(
            found["mean_pooled"][i], alone.last_hidden_state[0].mean(dim=0).numpy(), atol=1e-5
        )
        np.testing.assert_allclose(found["pooler"][i], alone.pooler_output[0].numpy(), atol=1e-5)


@pytest.mark.audit("M15")
def test_before_finetuning_reports_both_probes_and_is_the_stronger(evaluation, trained) -> None:  # type: ignore[no-untyped-def]
    metrics = json.loads((trained.paths.reports / "metrics.json").read_text())
    pooler, mean = metrics["before_finetuning_pooler"], metrics["before_finetuning_mean_pooled"]
    stronger = "mean_pooled" if mean["test_macro_f1"] >= pooler["test_macro_f1"] else "pooler"
    chosen = metrics["before_finetuning"]
    assert chosen.pop("features") == stronger
    assert chosen == metrics[f"before_finetuning_{stronger}"]
    predictions = pd.read_parquet(trained.paths.reports / "test_predictions.parquet")
    assert (
        predictions["before_finetuning_predicted"]
        == predictions[f"before_finetuning_{stronger}_predicted"]
    ).all()
    flat = evaluation.flat_metrics()
    assert {
        "before_finetuning_pooler.test_macro_f1",
        "before_finetuning_mean_pooled.test_macro_f1",
    } <= set(flat)
    assert "before_finetuning.features" not in flat  # text: an MLflow tag, not a metric
    assert evaluation.flat_tags() == {"before_finetuning.features": stronger}
