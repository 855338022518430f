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
from tuneops.errors import ConfigError

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


# train.max_length: auto rounds the train split's 95th-percentile token length up to this.
AUTO_MULTIPLE = 16
AUTO_PERCENTILE = 95


def auto_max_length(lengths: list[int], limit: int) -> tuple[int, int]:
    """(the window, the 95th percentile) for texts of these token lengths: the percentile
    rounded up to a multiple of 16, at least 16 and at most `limit` (the model's)."""
    p95 = int(np.ceil(np.percentile(lengths, AUTO_PERCENTILE))) if lengths else AUTO_MULTIPLE
    rounded = -(-p95 // AUTO_MULTIPLE) * AUTO_MULTIPLE
    return max(AUTO_MULTIPLE, min(rounded, limit)), p95


def model_limit(model_config: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its max_position_embeddings, or the tokenizer's
    model_max_length when that is smaller (RoBERTa's 514 positions take 512 tokens)."""
    limit = int(getattr(model_config, "max_position_embeddings", 512) or 512)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < limit:
        limit = declared
    return limit


def train_window(cfg: TrainConfig, tokenizer: Any) -> Any:
    """The Window that train.max_length, long_text, chunk_overlap and max_chunks describe."""
    assert isinstance(cfg.max_length, int), "train.max_length: resolve auto first"
    return make_window(tokenizer, cfg.max_length, cfg.long_text, cfg.chunk_overlap, cfg.max_chunks)


def make_window(
    tokenizer: Any, max_length: int, long_text: str, chunk_overlap: float, max_chunks: int
) -> Any:
    """A tuneops.runtime.Window; chunks: chunk_overlap becomes the tokenizer's stride, that
    share of a window's content tokens (the window less the tokenizer's special tokens).
    Training, evaluation and export (bundle.json's chunk_stride) all build it here."""
    from tuneops.runtime import Window

    if long_text != "chunks":
        return Window(max_length, long_text)
    content = max_length - tokenizer.num_special_tokens_to_add()
    return Window(max_length, "chunks", int(chunk_overlap * content), max_chunks)


def candidate_window(candidate_dir: Path, tokenizer: Any, max_length: int) -> Any:
    """The window the candidate trained with (training_summary.json; `max_length` and
    truncate for a candidate that predates those keys)."""
    import json

    path = candidate_dir / "training_summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return make_window(
        tokenizer,
        int(summary.get("max_length") or max_length),
        str(summary.get("long_text", "truncate")),
        float(summary.get("chunk_overlap", 0.0)),
        int(summary.get("max_chunks", 1)),
    )


def window_positions(documents: list[int]) -> list[int]:
    """Each window's place in its text: 0, 1, ... for consecutive windows of one text."""
    positions, previous, count = [], None, 0
    for document in documents:
        count = count + 1 if document == previous else 0
        positions.append(count)
        previous = document
    return positions


def window_counts(part: Any) -> dict[str, int]:
    """A tokenised split's texts, windows, and texts not read whole."""
    firsts = np.asarray(part["window"]) == 0
    cut = np.asarray(part["cut"])
    return {
        "texts": int(firsts.sum()),
        "windows": len(part),
        "truncated": int((cut[firsts] == 1).sum()),
    }


class TextClassification:
    name = "text-classification"
    row_unit = "rows"
    target_column = "label"
    primary_metric = "test_macro_f1"
    primary_metric_label = "macro-F1"
    accuracy_metric = "test_accuracy"
    test_metrics: tuple[str, ...] = (
        "test_accuracy",
        "test_macro_precision",
        "test_macro_recall",
        "test_macro_f1",
        "test_weighted_precision",
        "test_weighted_recall",
        "test_weighted_f1",
    )
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
    drift_checked = True
    behaviour_module: str | None = "pipeline.behaviour"  # label checks (LABEL_CHECKS)
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
        self,
        data: DataConfig,
        cfg: PrepareConfig,
        labels: tuple[str, ...],
        dataset_dir: Path,
        seed: int,
    ) -> SplitFrame:
        from pipeline.tasks import text_steps

        return text_steps.split(data, cfg, labels, dataset_dir, seed)

    def load_model(
        self,
        path: str | Path,
        labels: tuple[str, ...] | None = None,
        num_hidden_layers: int | None = None,
        attn_implementation: str | None = None,
    ) -> Any:
        from pipeline.training.modeling import load_classifier

        return load_classifier(path, labels, num_hidden_layers, attn_implementation)

    def resolve(
        self, cfg: TrainConfig, tokenizer: Any, prepared_dir: Path, model_config: Any
    ) -> TrainConfig:
        """train.max_length: auto as a number of tokens, from the train split's texts."""
        if cfg.max_length != "auto":
            return cfg
        limit = model_limit(model_config, tokenizer)
        texts = pd.read_parquet(prepared_dir / "train.parquet", columns=["text"])["text"]
        lengths = [len(ids) for ids in tokenizer(texts.tolist(), verbose=False)["input_ids"]]
        chosen, p95 = auto_max_length(lengths, limit)
        print(
            f"train.max_length: auto chose {chosen} tokens (the train split's 95th percentile "
            f"is {p95} tokens over {len(lengths)} texts; rounded up to a multiple of "
            f"{AUTO_MULTIPLE}, at most the model's {limit})",
            flush=True,
        )
        return cfg.model_copy(update={"max_length": chosen})

    def tokenise(self, tokenizer: Any, cfg: TrainConfig) -> Callable[..., dict[str, Any]]:
        from pipeline.training.modeling import encode_window

        window = train_window(cfg, tokenizer)

        def tokenise(batch: dict[str, list[Any]]) -> dict[str, Any]:
            windows = encode_window(tokenizer, batch["text"], window)
            encoded: dict[str, Any] = dict(windows.inputs)
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            # Every window of a text trains with the text's label.
            encoded["labels"] = [batch["label_id"][d] for d in windows.documents]
            # Its place in the text (0: the first), to put validation windows back together.
            encoded["window"] = window_positions(windows.documents)
            encoded["cut"] = [int(windows.truncated[d]) for d in windows.documents]
            return encoded

        return tokenise

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(
        self, labels: tuple[str, ...], validation: Any = None
    ) -> Callable[[Any], dict[str, float]]:
        """Validation accuracy and macro-F1: `score`, the test metric, on the validation
        split, per text (a chunked text's logits: the mean of its windows')."""
        from tuneops.runtime import document_logits

        firsts = None
        if validation is not None and "window" in validation.column_names:
            firsts = np.asarray(validation["window"]) == 0

        def compute(prediction: Any) -> dict[str, float]:
            logits, label_ids = prediction
            if firsts is not None and len(firsts) == len(label_ids):
                documents = np.cumsum(firsts) - 1
                logits = document_logits(np.asarray(logits), documents, int(firsts.sum()))
                label_ids = np.asarray(label_ids)[firsts]
            scores = score(label_ids, np.argmax(logits, axis=-1), len(labels))
            return {"accuracy": scores["test_accuracy"], "macro_f1": scores["test_macro_f1"]}

        return compute

    def after_tokenise(self, splits: Any, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
        """The window, recorded with the candidate (evaluate and export read its texts the
        same way), and per split how many texts were longer than it; warned about."""
        counts = {name: window_counts(part) for name, part in splits.items()}
        summary: dict[str, Any] = {
            "max_length": cfg.max_length,
            "long_text": cfg.long_text,
            "windows": counts,
        }
        if cfg.long_text == "chunks":
            summary |= {"chunk_overlap": cfg.chunk_overlap, "max_chunks": cfg.max_chunks}
        cut = {name: c["truncated"] for name, c in counts.items() if c["truncated"]}
        if cut:
            print(
                f"train.long_text={cfg.long_text}: texts not read whole at max_length="
                f"{cfg.max_length} tokens per split: {cut}",
                flush=True,
            )
        return splits.remove_columns("cut"), summary

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
        # The window bundle.json records (export wrote it from the candidate's).
        reference = predict_logits(model, tokenizer, texts, bundle.window, batch_size=64)
        return reference, bundle.logits(texts, batch_size=64)

    def calibrate(self, bundle: Any, prepared_dir: Path) -> dict[str, Any]:
        """The temperature of `bundle`'s model file, fitted on the validation split, and
        the test split's ECE and Brier before and after it (pipeline.calibration)."""
        from pipeline.calibration import calibration_figures

        ids = {label: i for i, label in enumerate(bundle.labels)}
        rows = []
        for name in ("validation", "test"):
            split = pd.read_parquet(prepared_dir / f"{name}.parquet")
            logits = bundle.logits(split["text"].tolist(), batch_size=64)
            rows.append((logits, split["label"].map(ids).to_numpy(dtype=np.int64)))
        return calibration_figures(rows[0], rows[1])

    def describe(self, labels: list[str]) -> str:
        return f"Text classifier over {len(labels)} labels: {', '.join(labels)}."

    def test_split(self, prepared_dir: Path, labels: list[str]) -> TextTestSplit:
        """Gold ids from the label names, through `labels`' order (never the prepared
        label_id column, which follows the order the data was prepared with)."""
        test = pd.read_parquet(prepared_dir / "test.parquet")
        ids = {label: i for i, label in enumerate(labels)}
        unknown = sorted(set(test["label"]) - set(ids))
        if unknown:
            raise ConfigError(
                f"{prepared_dir / 'test.parquet'}: label(s) {unknown} that the model does not "
                f"predict (its labels: {labels}); score it on data prepared with its labels"
            )
        gold = test["label"].map(ids).to_numpy(dtype=np.int64)
        return TextTestSplit(test["text"].tolist(), gold, labels)

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

    @property
    def strata(self) -> np.ndarray:
        """Each row's gold label: resamples keep every class's test count."""
        return np.asarray(self.label_ids)

    def recorded(self, column: list[Any]) -> np.ndarray:
        """Predicted label names (reports/test_predictions.parquet) as our label ids."""
        return np.array([self.labels.index(str(label)) for label in column], dtype=np.int64)

    def agreement(self, predicted: Any, other: Any) -> float:
        return float((np.asarray(predicted) == np.asarray(other)).mean()) if len(predicted) else 1.0

    def subset(self, keep: list[bool]) -> TextTestSplit:
        texts = [text for text, kept in zip(self.texts, keep, strict=True) if kept]
        return TextTestSplit(texts, self.take(self.label_ids, keep), self.labels)

    def take(self, predicted: Any, keep: list[bool]) -> np.ndarray:
        return np.asarray(predicted)[np.asarray(keep, dtype=bool)]
