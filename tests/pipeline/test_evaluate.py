import json

import pandas as pd
import pytest

from pipeline.evaluate import evaluate
from tests.conftest import TEXT, Trained


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


def test_metrics_file_has_model_and_baselines_on_the_same_test_rows(evaluation, trained) -> None:  # type: ignore[no-untyped-def]
    metrics = json.loads((trained.paths.reports / "metrics.json").read_text())
    test_rows = len(pd.read_parquet(trained.paths.data_prepared / "test.parquet"))
    assert metrics["test_rows"] == test_rows
    for block in (metrics, metrics["majority"], metrics["tfidf"], metrics["before_finetuning"]):
        assert 0.0 <= block["test_macro_f1"] <= 1.0
        assert 0.0 <= block["test_accuracy"] <= 1.0
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
