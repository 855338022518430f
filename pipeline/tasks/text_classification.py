"""Text classification: one label per text (sentiment, topic, intent, spam).

Rows come from CSV/JSONL/Parquet files with a text and a label column; the split unit
is the normalised text; the metric is macro-F1 over every label of the model (a label
with no support and no predictions scores 0), the same in validation, test, the int8
decision and the gate's bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.io import SUPPORTED_SUFFIXES
from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput, check_keys

if TYPE_CHECKING:
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        Params,
        PrepareConfig,
        TrainConfig,
        ValidateConfig,
    )

# before_finetuning is the stronger of the two frozen-encoder probes (text_steps.py).
BASELINES = (
    "majority",
    "tfidf",
    "before_finetuning",
    "before_finetuning_pooler",
    "before_finetuning_mean_pooled",
)


def score(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> dict[str, float]:
    """accuracy and macro/weighted precision, recall and F1 over all `n_labels` labels."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

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
    return scores


def per_class_report(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """sklearn's per-label precision/recall/F1/support, every label listed."""
    from sklearn.metrics import classification_report

    report: dict[str, Any] = classification_report(
        y_true,
        y_pred,
        labels=list(range(len(labels))),
        target_names=list(labels),
        output_dict=True,
        zero_division=0,
    )
    return report


def row_counts(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Per row and label: (true positive, predicted, gold) as 0/1 (for the bootstrap)."""
    gold, predicted = np.eye(n_labels)[y_true], np.eye(n_labels)[y_pred]
    return np.stack([gold * predicted, predicted, gold], axis=-1)


def class_weights(
    setting: str | dict[str, float], train_label_ids: np.ndarray, labels: tuple[str, ...]
) -> list[float] | None:
    """train.class_weights as one weight per label: balanced is n / (labels * count) over
    the train split (sklearn's compute_class_weight), a mapping names labels (others 1)."""
    from sklearn.utils.class_weight import compute_class_weight

    from tuneops.errors import ConfigError

    if setting == "none":
        return None
    if setting == "balanced":
        ids = np.arange(len(labels))
        weights = compute_class_weight("balanced", classes=ids, y=train_label_ids)
        return [float(w) for w in weights]
    assert isinstance(setting, dict)
    unknown = sorted(set(setting) - set(labels))
    if unknown:
        raise ConfigError(
            f"train.class_weights: unknown label(s) {unknown}; expected some of {list(labels)}"
        )
    return [float(setting.get(label, 1.0)) for label in labels]


class TextClassification:
    name = "text-classification"
    row_unit = "rows"
    target_column = "label"
    primary_metric = "test_macro_f1"
    primary_metric_label = "macro-F1"
    accuracy_metric = "test_accuracy"
    validation_metrics: tuple[str, ...] = ("accuracy", "macro_f1", "loss")
    baselines: tuple[str, ...] = BASELINES
    reproduce_metrics: tuple[str, ...] = (
        "test_accuracy",
        "test_macro_f1",
        "test_weighted_f1",
        "best_validation_macro_f1",
    )
    peft_task_type = "SEQ_CLS"
    logits_axes: tuple[str, ...] = ("batch",)
    cross_batch_conflicts = True
    raw_suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES
    example_inputs: tuple[str, ...] = ("a great, moving film", "dull and far too long")
    modules: tuple[str, ...] = ("pipeline.tasks.text_classification", "pipeline.tasks.text_steps")

    def check(self, params: Params) -> None:
        check_keys(self, params)

    def validation_input(
        self, data: DataConfig, cfg: ValidateConfig, dataset_dir: Path
    ) -> ValidationInput:
        from pipeline.tasks import text_steps

        return text_steps.validation_input(data, cfg, dataset_dir)

    def split(
        self, data: DataConfig, cfg: PrepareConfig, labels: tuple[str, ...], dataset_dir: Path
    ) -> SplitFrame:
        from pipeline.tasks import text_steps

        return text_steps.split(data, cfg, labels, dataset_dir)

    def load_model(
        self,
        path: str | Path,
        labels: tuple[str, ...] | None = None,
        num_hidden_layers: int | None = None,
        attn_implementation: str | None = None,
    ) -> Any:
        from pipeline.training.modeling import load_classifier

        return load_classifier(path, labels, num_hidden_layers, attn_implementation)

    def tokenise(self, tokenizer: Any, cfg: TrainConfig) -> Callable[..., dict[str, Any]]:
        from pipeline.training.modeling import encode_window

        def tokenise(batch: dict[str, list[Any]]) -> dict[str, Any]:
            encoded: dict[str, Any] = encode_window(
                tokenizer, batch["text"], cfg.max_length, cfg.long_text
            )
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            encoded["labels"] = batch["label_id"]
            return encoded

        return tokenise

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, labels: tuple[str, ...]) -> Callable[[Any], dict[str, float]]:
        """Validation accuracy and macro-F1: `score`, the test metric, on the validation split."""

        def compute(prediction: Any) -> dict[str, float]:
            logits, label_ids = prediction
            scores = score(label_ids, np.argmax(logits, axis=-1), len(labels))
            return {"accuracy": scores["test_accuracy"], "macro_f1": scores["test_macro_f1"]}

        return compute

    def after_tokenise(self, splits: Any, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
        # Recorded with the candidate: evaluate and export read its texts the same way.
        return splits, {"long_text": cfg.long_text}

    def class_weights(
        self, splits: Any, cfg: TrainConfig, labels: tuple[str, ...]
    ) -> list[float] | None:
        return class_weights(cfg.class_weights, np.asarray(splits["train"]["labels"]), labels)

    def evaluate(
        self,
        cfg: EvaluateConfig,
        base: ModelConfig,
        max_length: int,
        seed: int,
        prepared_dir: Path,
        candidate_dir: Path,
    ) -> Evaluation:
        from pipeline.tasks import text_steps

        return text_steps.evaluate(self, cfg, base, max_length, seed, prepared_dir, candidate_dir)

    def parity_logits(
        self, model: Any, tokenizer: Any, bundle: Any, test: pd.DataFrame, max_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from pipeline.training.modeling import predict_logits

        texts = test["text"].tolist()
        reference = predict_logits(
            model, tokenizer, texts, max_length, batch_size=64, long_text=bundle.long_text
        )
        return reference, bundle.logits(texts, batch_size=64)

    def describe(self, labels: list[str]) -> str:
        return f"Text classifier over {len(labels)} labels: {', '.join(labels)}."

    def test_split(self, prepared_dir: Path, labels: list[str]) -> TextTestSplit:
        test = pd.read_parquet(prepared_dir / "test.parquet")
        return TextTestSplit(test["text"].tolist(), test["label_id"].to_numpy(), labels)

    def dataset_frame(self, split: pd.DataFrame) -> pd.DataFrame:
        return split[["text", "label"]]


@dataclass
class TextTestSplit:
    """The current test split of a text classification task, as the gate scores it."""

    texts: list[str]
    label_ids: np.ndarray
    labels: list[str]

    def rescore(self, bundle: Any) -> np.ndarray:
        """Predicted label ids of a bundle (its own label order mapped to ours)."""
        predicted = bundle.logits(self.texts, batch_size=64).argmax(axis=1)
        mapping = np.array([self.labels.index(label) for label in bundle.labels])
        return np.asarray(mapping[predicted])

    def report(self, predicted: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        metrics = score(self.label_ids, predicted, len(self.labels))
        return metrics, per_class_report(self.label_ids, predicted, self.labels)

    def gate_labels(self, per_class: dict[str, Any]) -> list[str]:
        return self.labels

    def row_counts(self, predicted: Any) -> np.ndarray:
        return row_counts(self.label_ids, predicted, len(self.labels))

    def recorded(self, column: list[Any]) -> np.ndarray:
        """Predicted label names (reports/test_predictions.parquet) as our label ids."""
        return np.array([self.labels.index(str(label)) for label in column], dtype=np.int64)

    def agreement(self, predicted: Any, other: Any) -> float:
        return float((np.asarray(predicted) == np.asarray(other)).mean()) if len(predicted) else 1.0
