"""The token-classification pieces the train step plugs in: model, tokenising, metrics.

Tokens arrive pre-split (is_split_into_words); the first sub-token of each word carries
its tag (tokens.align_labels), the other sub-tokens are ignored by the loss unless
`train.label_all_subtokens`. Words cut off by max_length are counted, not silent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from seqeval.metrics import f1_score, precision_score, recall_score
from transformers import AutoModelForTokenClassification, PreTrainedModel

from tuneops.pipeline.modeling import load_classifier
from tuneops.pipeline.tokens import align_labels


def load_token_classifier(
    path: str | Path,
    labels: tuple[str, ...] | None = None,
    num_hidden_layers: int | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A token classifier, loaded like the sequence classifier (safetensors only)."""
    return load_classifier(
        path, labels, num_hidden_layers, attn_implementation, AutoModelForTokenClassification
    )


def tokenise_words(
    tokenizer: Any, max_length: int, all_subtokens: bool
) -> Callable[[dict[str, list[Any]]], dict[str, Any]]:
    def tokenise(batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded = tokenizer(
            batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length
        )
        labels, truncated = [], []
        for i, tag_ids in enumerate(batch["tag_ids"]):
            word_ids = encoded.word_ids(i)
            labels.append(align_labels(word_ids, list(tag_ids), all_subtokens))
            seen = {w for w in word_ids if w is not None}
            truncated.append(int(len(seen) < len(tag_ids)))
        encoded["labels"] = labels
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        encoded["truncated"] = truncated
        return encoded

    return tokenise


def word_tags(logits: np.ndarray, label_ids: np.ndarray, id2label: list[str]) -> tuple[list, list]:
    """(gold, predicted) tag sequences over the labelled positions (-100 skipped)."""
    predicted = logits.argmax(-1)
    gold_rows, predicted_rows = [], []
    for gold, guess in zip(label_ids, predicted, strict=True):
        keep = gold != -100
        gold_rows.append([id2label[i] for i in gold[keep]])
        predicted_rows.append([id2label[i] for i in guess[keep]])
    return gold_rows, predicted_rows


def validation_metrics(labels: tuple[str, ...]) -> Callable[[Any], dict[str, float]]:
    """Trainer compute_metrics: seqeval entity-level micro P/R/F1 and token accuracy."""
    id2label = list(labels)

    def compute(prediction: Any) -> dict[str, float]:
        logits, label_ids = prediction
        gold, predicted = word_tags(logits, label_ids, id2label)
        flat_gold = [t for row in gold for t in row]
        flat_predicted = [t for row in predicted for t in row]
        return {
            "entity_f1": float(f1_score(gold, predicted, zero_division=0)),
            "entity_precision": float(precision_score(gold, predicted, zero_division=0)),
            "entity_recall": float(recall_score(gold, predicted, zero_division=0)),
            "token_accuracy": float(np.mean(np.array(flat_gold) == np.array(flat_predicted))),
        }

    return compute
