"""What intent-and-slots does inside the generic steps: read, split, score, evaluate.

Built on the token task's steps (token_steps): the same IOB2 checks, de-duplication,
official-test-split policy and baselines for the tags, plus the sentence's intent (JSONL
key "intent", iob2.INTENT_KEY). The label list is one tuple: the intents as
"intent:<name>" (tuneops.runtime.joint_labels), then the tags.

Validation adds `unknown_intent` (missing, or outside the label set), which must be null.
Preparation keeps token_steps' split (the split unit is the sentence) and adds each
sentence's intent; a sentence seen with two intents outside the official test split is a
conflict and dropped, as one seen with two tag sequences is. Evaluation: intent accuracy,
slot (entity) F1, sentence accuracy (intent and every tag right: JointBERT's "sentence
accuracy"), and three baselines, each a pair (intent, tags): most_frequent (the majority
intent, each word's most frequent training tag), tfidf (TF-IDF + logistic regression
intents, most frequent tags), before_finetuning (the frozen base encoder with linear heads:
text_steps' intent probe and token_steps' tag probe).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from pipeline.prepare import SPLITS, normalise_text
from pipeline.tasks import token_steps
from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput, baseline_column
from pipeline.tasks.iob2 import INTENT_KEY, read_raw_sentences
from pipeline.tasks.token_classification import entity_scores, entity_type_report
from pipeline.training.modeling import load_tokenizer
from tuneops.errors import DataValidationError
from tuneops.runtime import INTENT_PREFIX, first_subtoken_rows, joint_labels, tags_from_rows

if TYPE_CHECKING:
    from pipeline.tasks.intent_and_slots import IntentAndSlots
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        PrepareConfig,
        ValidateConfig,
    )

# One prediction per sentence, in the TestSplit's form: (intent class, IOB2 tags).
Joint = tuple[str, list[str]]


def joint_scores(gold: list[Joint], predicted: list[Joint]) -> dict[str, float]:
    """test_intent_accuracy, test_slot_{f1,precision,recall,macro_f1} (seqeval entities),
    test_token_accuracy and test_sentence_accuracy (intent and every tag right)."""
    tags = entity_scores([g[1] for g in gold], [p[1] for p in predicted])
    right = [g[0] == p[0] for g, p in zip(gold, predicted, strict=True)]
    both = [r and g[1] == p[1] for r, g, p in zip(right, gold, predicted, strict=True)]
    return {
        "test_intent_accuracy": float(np.mean(right)) if right else 0.0,
        "test_slot_f1": tags["test_entity_f1"],
        "test_slot_precision": tags["test_entity_precision"],
        "test_slot_recall": tags["test_entity_recall"],
        "test_slot_macro_f1": tags["test_entity_macro_f1"],
        "test_token_accuracy": tags["test_token_accuracy"],
        "test_sentence_accuracy": float(np.mean(both)) if both else 0.0,
    }


def joint_report(gold: list[Joint], predicted: list[Joint]) -> dict[str, Any]:
    """Per entity type (seqeval) and per intent ("intent:<name>", sklearn) P/R/F1/support,
    with the averages of each ("micro avg", ..., "intent macro avg")."""
    from sklearn.metrics import classification_report

    report: dict[str, Any] = entity_type_report([g[1] for g in gold], [p[1] for p in predicted])
    names = sorted({g[0] for g in gold} | {p[0] for p in predicted})
    intents = classification_report(
        [g[0] for g in gold],
        [p[0] for p in predicted],
        labels=names,
        output_dict=True,
        zero_division=0,
    )
    for key, row in intents.items():
        if isinstance(row, dict):
            name = f"{INTENT_PREFIX}{key}" if key in names else f"intent {key}"
            report[name] = {m: float(v) for m, v in row.items()}
    return report


# --- validate -------------------------------------------------------------------------


def validation_input(data: DataConfig, cfg: ValidateConfig, dataset_dir: Path) -> ValidationInput:
    import great_expectations as gx

    found = token_steps.validation_input(data, cfg, dataset_dir)
    sentences = read_raw_sentences(
        dataset_dir, data.text_column, data.label_column, data.max_rows, data.encoding
    )
    declared, tags = joint_labels(found.labels)
    if not declared:  # labels inferred (or a labels file of tags only): intents too
        declared = sorted({s.intent for s in sentences if s.intent is not None})
    known = set(declared)
    found.frame["intent"] = [s.intent for s in sentences]
    found.frame["unknown_intent"] = [
        f"no {INTENT_KEY!r} field" if s.intent is None else None if s.intent in known else s.intent
        for s in sentences
    ]
    counts = Counter(s.intent for s in sentences)
    found.columns = [*found.columns, "unknown_intent"]
    found.expectations.append(gx.expectations.ExpectColumnValuesToBeNull(column="unknown_intent"))
    found.suite_name = "intent_and_slots_raw"
    found.labels = (*(f"{INTENT_PREFIX}{i}" for i in declared), *tags)
    found.label_counts = {f"{INTENT_PREFIX}{i}": counts.get(i, 0) for i in declared} | {
        t: found.label_counts.get(t, 0) for t in tags
    }
    found.column_names["unknown_intent"] = f"{INTENT_KEY} (JSONL key)"
    return found


# --- prepare --------------------------------------------------------------------------


def split(
    data: DataConfig, cfg: PrepareConfig, labels: tuple[str, ...], dataset_dir: Path
) -> SplitFrame:
    intents, tags = joint_labels(labels)
    if not intents:
        raise DataValidationError(
            f"{dataset_dir}: the label set has no intents ('{INTENT_PREFIX}<name>' entries); "
            "validate the data again (it infers them), or list them in data.labels"
        )
    found = token_steps.split(data, cfg, tuple(tags), dataset_dir)
    sentences = read_raw_sentences(
        dataset_dir, data.text_column, data.label_column, data.max_rows, data.encoding
    )
    intent_of = {s.source: s.intent for s in sentences}
    frame = found.frame
    frame["intent"] = frame["source"].map(intent_of)
    seen: dict[str, set[str | None]] = {}
    for s in sentences:
        if s.split != "test":
            seen.setdefault(" ".join(normalise_text(t) for t in s.tokens), set()).add(s.intent)
    conflicting = {text for text, found_intents in seen.items() if len(found_intents) > 1}
    dropped = frame[(frame["split"] != "test") & frame["text"].isin(conflicting)]
    conflicts = [
        {"text": t, "source": s, "reason": "two intents"}
        for t, s in zip(dropped["text"], dropped["source"], strict=True)
    ]
    frame = frame.drop(index=dropped.index)
    ids = {name: i for i, name in enumerate(intents)}
    frame["intent_id"] = frame["intent"].map(ids)
    counts = {
        s: dict(Counter(frame.loc[frame["split"] == s, "intent"])) | found.label_counts.get(s, {})
        for s in SPLITS
    }
    digest = hashlib.sha256(found.fingerprint.encode())
    for split_name, text, intent in sorted(
        zip(frame["split"], frame["text"], frame["intent"], strict=True)
    ):
        digest.update(f"{split_name}\t{intent}\t{text}\n".encode())
    found.frame = frame
    found.columns = [*found.columns, "intent", "intent_id"]
    found.label_counts = counts
    found.fingerprint = digest.hexdigest()
    found.conflicts = [*found.conflicts, *conflicts]
    return found


# --- evaluate -------------------------------------------------------------------------


@torch.inference_mode()
def joint_outputs(
    model: Any, tokenizer: Any, sentences: list[list[str]], max_length: int, batch_size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Intent logits [sentences, intents] and per sentence tag logits [words, tags] at each
    word's first sub-token (NaN rows: words cut by max_length), as the runtime reads them."""
    model.eval()
    intents: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start : start + batch_size]
        encoded = tokenizer(
            batch,
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        output = model(**encoded)
        intents.append(output.intent_logits.float().numpy())
        tags = output.tag_logits.float().numpy()
        rows += [
            first_subtoken_rows(encoded.word_ids(i), tags[i], len(words))
            for i, words in enumerate(batch)
        ]
    return (np.concatenate(intents) if intents else np.zeros((0, 0), np.float32)), rows


def predicted_pairs(
    intent_logits: np.ndarray, rows: list[np.ndarray], labels: list[str] | tuple[str, ...]
) -> list[Joint]:
    intents, tags = joint_labels(labels)
    names = [intents[int(i)] for i in intent_logits.argmax(-1)]
    return list(zip(names, tags_from_rows(rows, tags), strict=True))


def as_column(predicted: list[Joint]) -> list[list[str]]:
    """reports/test_predictions.parquet's form of a prediction: [intent, *tags]."""
    return [[intent, *tags] for intent, tags in predicted]


def from_column(column: list[Any]) -> list[Joint]:
    return [(str(row[0]), [str(t) for t in row[1:]]) for row in column]


def evaluate(
    task: IntentAndSlots,
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    prepared_dir: Path,
    candidate_dir: Path,
) -> Evaluation:
    train = pd.read_parquet(prepared_dir / "train.parquet")
    test = pd.read_parquet(prepared_dir / "test.parquet")
    labels = tuple(json.loads((candidate_dir / "labels.json").read_text(encoding="utf-8")))
    sentences = [list(t) for t in test["tokens"]]
    gold = list(zip(test["intent"].astype(str), [list(t) for t in test["tags"]], strict=True))

    model = task.load_model(candidate_dir)
    tokenizer = load_tokenizer(candidate_dir)
    predicted = predicted_pairs(
        *joint_outputs(model, tokenizer, sentences, max_length, cfg.batch_size), labels
    )
    metrics: dict[str, Any] = joint_scores(gold, predicted) | {"test_rows": len(test)}
    frame = test[["text", "tokens", "tags", "intent", "source"]].copy()
    frame["predicted"] = as_column(predicted)
    for name, pairs in _baselines(cfg, base, max_length, seed, train, test, labels).items():
        metrics[name] = joint_scores(gold, pairs)
        frame[baseline_column(name)] = as_column(pairs)
    metrics["before_finetuning"]["train_rows"] = min(cfg.frozen_baseline_train_rows, len(train))
    flat_gold = [t for _, tags in gold for t in tags]
    flat_predicted = [t for _, tags in predicted for t in tags]
    return Evaluation(
        metrics=metrics,
        per_class=joint_report(gold, predicted),
        predictions=frame,
        # the token task's word-level confusion over entity types
        plot=lambda path: token_steps._plot_type_confusion(flat_gold, flat_predicted, path),
    )


def _baselines(
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
    labels: tuple[str, ...],
) -> dict[str, list[Joint]]:
    from pipeline.tasks.text_classification import TextClassification, make_window
    from pipeline.tasks.text_steps import _frozen_encoder_baselines, tfidf_model
    from pipeline.tasks.token_classification import TokenClassification
    from pipeline.training.modeling import resolve_model_path

    intents, tags = joint_labels(labels)
    sentences = [list(t) for t in test["tokens"]]
    frequent_tags = token_steps._most_frequent_tag(train, sentences)
    majority = Counter(train["intent"]).most_common(1)[0][0]
    tfidf = tfidf_model(seed).fit(train["text"], train["intent"])
    frozen_tags = token_steps._frozen_encoder_baseline(
        TokenClassification(), cfg, base, max_length, seed, train, sentences, tuple(tags)
    )
    tokenizer = load_tokenizer(resolve_model_path(base.name_or_path))
    window = make_window(tokenizer, max_length, "truncate", 0.0, 1)
    probes = _frozen_encoder_baselines(
        TextClassification(),
        cfg,
        base,
        window,
        seed,
        train.assign(label_id=train["intent_id"]),
        test.assign(label_id=test["intent_id"]),
        len(intents),
    )
    frozen_intents = [intents[int(i)] for i in probes["before_finetuning"][1]]
    return {
        "most_frequent": [(majority, t) for t in frequent_tags],
        "tfidf": list(zip(map(str, tfidf.predict(test["text"])), frequent_tags, strict=True)),
        "before_finetuning": list(zip(frozen_intents, frozen_tags, strict=True)),
    }
