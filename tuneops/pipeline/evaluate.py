"""evaluate: score the candidate and three baselines on the same test split.

Baselines: the majority class, TF-IDF + logistic regression, and "before fine-tuning"
(the base encoder frozen, only a linear head trained on its features). A fine-tuned
model that does not beat them has not earned its compute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    precision_recall_fscore_support,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tuneops.config import EvaluateConfig, ModelConfig
from tuneops.paths import atomic_file, atomic_write_text
from tuneops.pipeline.modeling import (
    load_classifier,
    load_tokenizer,
    predict_logits,
    resolve_model_path,
)

BASELINES = ("majority", "tfidf", "before_finetuning")


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]  # the content of reports/metrics.json
    per_class: dict[str, dict[str, float]]
    metrics_path: Path
    report_path: Path
    confusion_matrix_path: Path
    predictions_path: Path

    @classmethod
    def in_reports(
        cls, metrics: dict[str, Any], per_class: dict[str, Any], reports_dir: Path
    ) -> EvaluationResult:
        """A result whose files go to the standard names in `reports_dir` (as dvc.yaml says)."""
        reports_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            metrics=metrics,
            per_class=per_class,
            metrics_path=reports_dir / "metrics.json",
            report_path=reports_dir / "classification_report.json",
            confusion_matrix_path=reports_dir / "confusion_matrix.png",
            predictions_path=reports_dir / "test_predictions.parquet",
        )

    def flat_metrics(self) -> dict[str, float]:
        """MLflow names: test_macro_f1, tfidf.test_macro_f1, ... (as `dvc metrics show`)."""
        flat = {k: v for k, v in self.metrics.items() if not isinstance(v, dict)}
        for name, baseline in self.metrics.items():
            if isinstance(baseline, dict):
                flat |= {f"{name}.{k}": v for k, v in baseline.items()}
        return flat


def score(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> dict[str, float]:
    """accuracy and macro/weighted precision, recall and F1 (named test_*)."""
    label_ids = list(range(n_labels))
    scores = {"test_accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=label_ids, average=average, zero_division=0
        )
        scores |= {
            f"test_{average}_precision": float(p),
            f"test_{average}_recall": float(r),
            f"test_{average}_f1": float(f),
        }
    return {k: round(v, 6) for k, v in scores.items()}


def evaluate(
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    prepared_dir: Path,
    candidate_dir: Path,
    reports_dir: Path,
) -> EvaluationResult:
    """Write reports/metrics.json, classification_report.json, confusion_matrix.png and
    test_predictions.parquet."""
    train = pd.read_parquet(prepared_dir / "train.parquet")
    test = pd.read_parquet(prepared_dir / "test.parquet")
    labels = tuple(json.loads((candidate_dir / "labels.json").read_text(encoding="utf-8")))
    y_test = test["label_id"].to_numpy()

    model = load_classifier(candidate_dir)
    tokenizer = load_tokenizer(candidate_dir)
    logits = predict_logits(model, tokenizer, test["text"].tolist(), max_length, cfg.batch_size)
    predicted = logits.argmax(axis=1)

    metrics: dict[str, Any] = score(y_test, predicted, len(labels))
    metrics["test_rows"] = len(test)
    metrics |= _baselines(cfg, base, max_length, seed, train, test, len(labels))

    per_class = classification_report(
        y_test,
        predicted,
        labels=list(range(len(labels))),
        target_names=list(labels),
        output_dict=True,
        zero_division=0,
    )
    result = EvaluationResult.in_reports(metrics, per_class, reports_dir)
    atomic_write_text(result.report_path, json.dumps(per_class, indent=2) + "\n")
    _plot_confusion(y_test, predicted, labels, result.confusion_matrix_path)
    _write_predictions(test, logits, labels, result.predictions_path)
    atomic_write_text(result.metrics_path, json.dumps(metrics, indent=2) + "\n")
    return result


def _baselines(
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_labels: int,
) -> dict[str, Any]:
    y_train, y_test = train["label_id"].to_numpy(), test["label_id"].to_numpy()
    majority = DummyClassifier(strategy="most_frequent").fit(train[["text"]], y_train)
    tfidf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
    ).fit(train["text"], y_train)
    return {
        "majority": score(y_test, majority.predict(test[["text"]]), n_labels),
        "tfidf": score(y_test, tfidf.predict(test["text"]), n_labels),
        "before_finetuning": _frozen_encoder_baseline(
            cfg, base, max_length, seed, train, test, n_labels
        ),
    }


def _frozen_encoder_baseline(
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_labels: int,
) -> dict[str, float]:
    """The base encoder frozen, only the head trained: a logistic regression on the
    features the classification head reads (equivalent to training that linear head)."""
    sample = train.sample(n=min(cfg.frozen_baseline_train_rows, len(train)), random_state=seed)
    path = resolve_model_path(base.name_or_path)
    model = load_classifier(path, tuple(str(i) for i in range(n_labels)), base.num_hidden_layers)
    tokenizer = load_tokenizer(path)
    x_train = predict_logits(
        model, tokenizer, sample["text"].tolist(), max_length, cfg.batch_size, features=True
    )
    x_test = predict_logits(
        model, tokenizer, test["text"].tolist(), max_length, cfg.batch_size, features=True
    )
    # Standardising first keeps it a linear head (the scaling folds into its weights) but
    # lets the regulariser treat every feature alike; raw pooler features are near-saturated.
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    head.fit(x_train, sample["label_id"])
    scores = score(test["label_id"].to_numpy(), head.predict(x_test), n_labels)
    return scores | {"train_rows": len(sample)}


def _plot_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...], path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(labels))),
        display_labels=list(labels),
        ax=ax,
        colorbar=False,
        xticks_rotation=45,
    )
    ax.set_title("test split")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _write_predictions(
    test: pd.DataFrame, logits: np.ndarray, labels: tuple[str, ...], path: Path
) -> None:
    """Per-example predictions: what the gate's bootstrap and error analysis read."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    frame = test[["text", "label", "label_id", "source"]].copy()
    frame["predicted_id"] = logits.argmax(axis=1)
    frame["predicted"] = [labels[i] for i in frame["predicted_id"]]
    frame["confidence"] = probabilities.max(axis=1)
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)
