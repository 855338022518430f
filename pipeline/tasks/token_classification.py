"""Token classification (NER, slot filling): an IOB2 tag per word.

Sentences come pre-split (JSONL token/tag lists or CoNLL files, see iob2.py); the split
unit is the sentence, and a dataset's own test split is kept. The first sub-token of
each word carries its tag (iob2.align_labels); the other sub-tokens are ignored by the
loss unless `train.label_all_subtokens`. The metric is seqeval's entity-level micro-F1
(exact span and type), the same in validation, test, the int8 decision and the gate's
bootstrap over sentences.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput, check_keys
from pipeline.tasks.iob2 import TOKEN_SUFFIXES, align_labels
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


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """test_entity_{f1,precision,recall} (micro), test_entity_macro_f1, test_token_accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    flat_gold = np.array([t for row in gold for t in row])
    flat_predicted = np.array([t for row in predicted for t in row])
    scores = {
        "test_entity_f1": f1_score(gold, predicted, zero_division=0),
        "test_entity_precision": precision_score(gold, predicted, zero_division=0),
        "test_entity_recall": recall_score(gold, predicted, zero_division=0),
        "test_entity_macro_f1": f1_score(gold, predicted, average="macro", zero_division=0),
        "test_token_accuracy": float((flat_gold == flat_predicted).mean())
        if len(flat_gold)
        else 0.0,
    }
    return {k: float(v) for k, v in scores.items()}


def entity_type_report(
    gold: list[list[str]], predicted: list[list[str]]
) -> dict[str, dict[str, float]]:
    """seqeval's per-type precision/recall/F1/support with micro/macro/weighted averages."""
    from seqeval.metrics import classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    return {k: {m: float(v) for m, v in row.items()} for k, row in report.items()}


def row_counts(gold: list[list[str]], predicted: list[list[str]]) -> np.ndarray:
    """Per sentence [[true positives, predicted entities, gold entities]] (exact span+type):
    one class column, so the bootstrap's statistic is entity-level micro-F1."""
    from tuneops.runtime import iob2_entities

    counts = np.zeros((len(gold), 1, 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        gold_set, predicted_set = set(iob2_entities(g)), set(iob2_entities(p))
        counts[i, 0] = (len(gold_set & predicted_set), len(predicted_set), len(gold_set))
    return counts


def word_tags(logits: np.ndarray, label_ids: np.ndarray, id2label: list[str]) -> tuple[list, list]:
    """(gold, predicted) tag sequences over the labelled positions (-100 skipped)."""
    predicted = logits.argmax(-1)
    gold_rows, predicted_rows = [], []
    for gold, guess in zip(label_ids, predicted, strict=True):
        keep = gold != -100
        gold_rows.append([id2label[i] for i in gold[keep]])
        predicted_rows.append([id2label[i] for i in guess[keep]])
    return gold_rows, predicted_rows


class TokenClassification:
    name = "token-classification"
    row_unit = "sentences"
    raw_suffixes: tuple[str, ...] = TOKEN_SUFFIXES
    target_column = "tags"
    primary_metric = "test_entity_f1"
    primary_metric_label = "entity-F1"
    accuracy_metric = "test_token_accuracy"
    test_metrics: tuple[str, ...] = (
        "test_entity_f1",
        "test_entity_precision",
        "test_entity_recall",
        "test_entity_macro_f1",
        "test_token_accuracy",
    )
    validation_metrics: tuple[str, ...] = (
        "entity_f1",
        "entity_precision",
        "entity_recall",
        "token_accuracy",
        "loss",
    )
    baselines: tuple[str, ...] = ("most_frequent_tag", "before_finetuning")
    reproduce_metrics: tuple[str, ...] = (
        "test_token_accuracy",
        "test_entity_f1",
        "test_entity_precision",
        "test_entity_recall",
        "best_validation_entity_f1",
    )
    peft_task_type = "TOKEN_CLS"
    logits_axes: tuple[str, ...] = ("batch", "sequence")
    cross_batch_conflicts = False
    drift_checked = False
    behaviour_module: str | None = "pipeline.tasks.token_behaviour"  # entity checks
    example_inputs: tuple[str, ...] = (
        "show me flights from boston to denver",
        "a morning flight to dallas",
    )
    modules: tuple[str, ...] = (
        "pipeline.tasks.token_classification",
        "pipeline.tasks.token_steps",
        "pipeline.tasks.iob2",
    )

    def check(self, params: Params) -> None:
        check_keys(self, params)
        if params.train.long_text != "truncate":
            raise ConfigError(
                f"train.long_text: {params.train.long_text!r} is for text classification; "
                f"{self.name} cuts a sentence at train.max_length (set it to truncate)"
            )
        if params.train.max_length == "auto":
            raise ConfigError(
                f"train.max_length: auto is for text classification; {self.name} takes a "
                "number of tokens (e.g. 128)"
            )
        if params.train.class_weights != "none":
            raise ConfigError(
                f"train.class_weights: {params.train.class_weights!r} is for text "
                f"classification; {self.name} trains on the model's unweighted per-token "
                "loss (set it to none)"
            )
        if params.train.distill.teacher:
            raise ConfigError(
                f"train.distill.teacher: distillation is for text classification; {self.name} "
                "would need the teacher's logits per word (set it to null)"
            )
        if params.train.strategy == "prompt_tuning":
            raise ConfigError(
                f"train.strategy: prompt_tuning is for text classification; {self.name} "
                "labels every token, and the virtual tokens peft prepends shift the logits "
                "off the labels (peft 0.21 does not extend them: its loss fails), so there "
                "is no tag for them; use lora, adalora or ia3"
            )
        if params.gate.max_ece is not None:
            raise ConfigError(
                f"gate.max_ece: {params.gate.max_ece} is for text classification; {self.name}'s "
                "entity scores are not calibrated, so there is no ECE to judge (set it to null)"
            )

    def validation_input(
        self, data: DataConfig, cfg: ValidateConfig, dataset_dir: Path
    ) -> ValidationInput:
        from pipeline.tasks import token_steps

        return token_steps.validation_input(data, cfg, dataset_dir)

    def split(
        self,
        data: DataConfig,
        cfg: PrepareConfig,
        labels: tuple[str, ...],
        dataset_dir: Path,
        seed: int,
    ) -> SplitFrame:
        """No label audit (prepare.label_issues): it judges one label per row, and a
        sentence has one per token; `seed` is unused (the split is a hash)."""
        from pipeline.tasks import token_steps

        return token_steps.split(data, cfg, labels, dataset_dir)

    def load_model(
        self,
        path: str | Path,
        labels: tuple[str, ...] | None = None,
        num_hidden_layers: int | None = None,
        attn_implementation: str | None = None,
    ) -> Any:
        """A token classifier, loaded like the sequence classifier (safetensors only)."""
        from transformers import AutoModelForTokenClassification

        from pipeline.training.modeling import load_classifier

        return load_classifier(
            path, labels, num_hidden_layers, attn_implementation, AutoModelForTokenClassification
        )

    def tokenise(self, tokenizer: Any, cfg: TrainConfig) -> Callable[..., dict[str, Any]]:
        def tokenise(batch: dict[str, list[Any]]) -> dict[str, Any]:
            encoded = tokenizer(
                batch["tokens"],
                is_split_into_words=True,
                truncation=True,
                max_length=cfg.max_length,
            )
            labels, truncated = [], []
            for i, tag_ids in enumerate(batch["tag_ids"]):
                word_ids = encoded.word_ids(i)
                labels.append(align_labels(word_ids, list(tag_ids), cfg.label_all_subtokens))
                seen = {w for w in word_ids if w is not None}
                truncated.append(int(len(seen) < len(tag_ids)))
            encoded["labels"] = labels
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            encoded["truncated"] = truncated
            return dict(encoded)

        return tokenise

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def resolve(
        self, cfg: TrainConfig, tokenizer: Any, prepared_dir: Path, model_config: Any
    ) -> TrainConfig:
        return cfg  # check() refuses train.max_length: auto for this task

    def compute_metrics(
        self, labels: tuple[str, ...], validation: Any = None
    ) -> Callable[[Any], dict[str, float]]:
        """Validation entity P/R/F1 and token accuracy: `entity_scores`, the test metric."""
        id2label = list(labels)

        def compute(prediction: Any) -> dict[str, float]:
            logits, label_ids = prediction
            scores = entity_scores(*word_tags(logits, label_ids, id2label))
            return {
                "entity_f1": scores["test_entity_f1"],
                "entity_precision": scores["test_entity_precision"],
                "entity_recall": scores["test_entity_recall"],
                "token_accuracy": scores["test_token_accuracy"],
            }

        return compute

    def after_tokenise(self, splits: Any, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
        """Sentences cut by max_length are counted and warned about, not silent."""
        truncated = {s: int(sum(splits[s]["truncated"])) for s in splits}
        if any(truncated.values()):
            warnings.warn(
                f"sentences cut at max_length={cfg.max_length} tokens (their last words get "
                f"no prediction): {truncated}",
                stacklevel=2,
            )
        return splits.remove_columns("truncated"), {"truncated_sentences": truncated}

    def class_weights(
        self, splits: Any, cfg: TrainConfig, labels: tuple[str, ...]
    ) -> list[float] | None:
        return None  # check() refuses train.class_weights for this task

    def evaluate(
        self,
        cfg: EvaluateConfig,
        base: ModelConfig,
        max_length: int,
        seed: int,
        prepared_dir: Path,
        candidate_dir: Path,
    ) -> Evaluation:
        from pipeline.tasks import token_steps

        return token_steps.evaluate(self, cfg, base, max_length, seed, prepared_dir, candidate_dir)

    def parity_logits(
        self, model: Any, tokenizer: Any, bundle: Any, test: pd.DataFrame, max_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per word (words cut by max_length left out), PyTorch and onnxruntime."""
        from pipeline.tasks.token_steps import word_outputs

        sentences = [list(t) for t in test["tokens"]]
        reference = _stack(word_outputs(model, tokenizer, sentences, max_length, 64))
        return reference, _stack(bundle.word_logits(sentences, batch_size=64))

    def calibrate(self, bundle: Any, prepared_dir: Path) -> None:
        return None  # entity scores are not calibrated (yet): issue 19 is for classifiers

    def describe(self, labels: list[str]) -> str:
        return f"Token classifier (IOB2) over {len(labels)} tags."

    def test_split(self, prepared_dir: Path, labels: list[str]) -> TokenTestSplit:
        test = pd.read_parquet(prepared_dir / "test.parquet")
        return TokenTestSplit(
            [list(t) for t in test["tokens"]], [list(t) for t in test["tags"]], labels
        )

    def dataset_frame(self, split: pd.DataFrame) -> pd.DataFrame:
        """A tag sequence as one space-joined string per sentence."""
        frame = split[["text", "tags"]].copy()
        frame["tags"] = frame["tags"].map(" ".join)
        return frame


@dataclass
class TokenTestSplit:
    """The current test split of a token classification task: sentences and gold tags."""

    sentences: list[list[str]]
    tags: list[list[str]]
    labels: list[str]

    @property
    def texts(self) -> list[str]:
        return [" ".join(s) for s in self.sentences]

    def rescore(self, bundle: Any) -> list[list[str]]:
        return list(bundle.predict_words(self.sentences, batch_size=64))

    def report(self, predicted: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return entity_scores(self.tags, predicted), entity_type_report(self.tags, predicted)

    def gate_labels(self, per_class: dict[str, Any]) -> list[str]:
        return [k for k in per_class if not k.endswith(" avg")]

    def row_counts(self, predicted: Any) -> np.ndarray:
        return row_counts(self.tags, predicted)

    @property
    def strata(self) -> None:
        """None: a sentence holds entities of several types, so it has no one class."""
        return None

    def recorded(self, column: list[Any]) -> list[list[str]]:
        """Tag lists (reports/test_predictions.parquet) as rescore's lists of lists."""
        return [[str(tag) for tag in tags] for tags in column]

    def agreement(self, predicted: Any, other: Any) -> float:
        """Per word: the tags two models give each word of every sentence."""
        a = [t for row in predicted for t in row]
        b = [t for row in other for t in row]
        return float(np.mean([x == y for x, y in zip(a, b, strict=True)])) if a else 1.0

    def subset(self, keep: list[bool]) -> TokenTestSplit:
        return TokenTestSplit(
            self.take(self.sentences, keep), self.take(self.tags, keep), self.labels
        )

    def take(self, predicted: Any, keep: list[bool]) -> list[list[str]]:
        return [row for row, kept in zip(predicted, keep, strict=True) if kept]


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Per-word rows of every sentence, words cut by max_length (NaN) left out."""
    stacked = np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)
    return stacked[~np.isnan(stacked).any(axis=1)]
