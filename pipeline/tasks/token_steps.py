"""What token classification does inside the generic steps: read, split, evaluate.

Kept apart from token_classification.py (the task's facts and small hooks) so that each
file reads on a screen or two; nothing outside that package calls this one.

Validation: GX has no expectation over a sequence, so two per-sentence facts are
computed here and then checked by GX like any column: `bio_error` (the first IOB2
violation, see iob2.bio_error) and `unknown_tag` (the first tag outside the tag set);
both must be null. Preparation: a sentence's split depends only on its normalised
tokens; a dataset that ships its own test split (ATIS) keeps it, so figures compare
with published ones, and the rest is hash-split into train and validation. A sentence
that also occurs in the official test split is dropped from train/validation.
Evaluation: seqeval entity-level scores per type, the classic token-level per-tag
table, and two baselines on the same test sentences: "most_frequent_tag" (each
lower-cased word form's most frequent training tag, O when unseen) and
"before_finetuning" (the frozen base encoder, a linear head on first-sub-token features).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.io import read_label_file
from pipeline.plots import write_confusion_matrix
from pipeline.prepare import SPLITS, normalise_text, split_of
from pipeline.tasks.base import Evaluation, SplitFrame, ValidationInput, baseline_column
from pipeline.tasks.iob2 import OUTSIDE, bio_error, read_raw_sentences
from pipeline.tasks.token_classification import entity_scores, entity_type_report
from pipeline.training.modeling import load_tokenizer, resolve_model_path
from tuneops.errors import DataValidationError
from tuneops.runtime import first_subtoken_rows, tags_from_rows

if TYPE_CHECKING:
    from pipeline.tasks.token_classification import TokenClassification
    from tuneops.config import (
        DataConfig,
        EvaluateConfig,
        ModelConfig,
        PrepareConfig,
        ValidateConfig,
    )

COLUMNS = ["text", "n_tokens", "n_tags", "bio_error", "unknown_tag"]


# --- validate -------------------------------------------------------------------------


def validation_input(data: DataConfig, cfg: ValidateConfig, dataset_dir: Path) -> ValidationInput:
    sentences = read_raw_sentences(
        dataset_dir, data.text_column, data.label_column, data.max_rows, data.encoding
    )
    labels = tuple(data.labels) if data.labels else read_label_file(dataset_dir)
    label_source = "params" if data.labels else "labels.json"
    if labels is None:
        labels = (OUTSIDE, *sorted({t for s in sentences for t in s.tags} - {OUTSIDE}))
        label_source = "inferred"
    known = set(labels)
    frame = pd.DataFrame(
        {
            "text": [" ".join(s.tokens) for s in sentences],
            "n_tokens": [len(s.tokens) for s in sentences],
            "n_tags": [len(s.tags) for s in sentences],
            "bio_error": [bio_error(s.tags) for s in sentences],
            "unknown_tag": [next((t for t in s.tags if t not in known), None) for s in sentences],
            "source": [s.source for s in sentences],
        }
    )
    counts = Counter(t for s in sentences for t in s.tags)
    return ValidationInput(
        frame=frame,
        columns=COLUMNS,
        expectations=_suite(cfg),
        suite_name="token_classification_raw",
        labels=labels,
        label_source=label_source,
        label_counts={tag: counts.get(tag, 0) for tag in labels},
    )


def _suite(cfg: ValidateConfig) -> list[Any]:
    import great_expectations as gx

    ex = gx.expectations
    return [
        ex.ExpectColumnValuesToBeBetween(
            column="n_tokens", min_value=max(cfg.min_tokens, 1), max_value=cfg.max_tokens
        ),
        ex.ExpectColumnPairValuesToBeEqual(column_A="n_tokens", column_B="n_tags"),
        ex.ExpectColumnValuesToBeNull(column="bio_error"),
        ex.ExpectColumnValuesToBeNull(column="unknown_tag"),
        ex.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="text", min_value=1.0 - cfg.max_duplicate_rate
        ),
    ]


# --- prepare --------------------------------------------------------------------------


def split(
    data: DataConfig, cfg: PrepareConfig, labels: tuple[str, ...], dataset_dir: Path
) -> SplitFrame:
    sentences = read_raw_sentences(
        dataset_dir, data.text_column, data.label_column, data.max_rows, data.encoding
    )
    frame = pd.DataFrame(
        {
            "tokens": [[normalise_text(t) for t in s.tokens] for s in sentences],
            "tags": [list(s.tags) for s in sentences],
            "source": [s.source for s in sentences],
            "official_test": [s.split == "test" for s in sentences],
        }
    )
    frame["text"] = frame["tokens"].map(" ".join)
    frame, duplicates, conflicts = _deduplicate(frame)
    has_test = bool(frame["official_test"].any())
    validation_share_of_rest = cfg.validation_fraction / (1 - cfg.test_fraction)
    frame["split"] = [
        "test"
        if official
        else split_of(text, validation_share_of_rest, 0.0)
        if has_test
        else split_of(text, cfg.validation_fraction, cfg.test_fraction)
        for text, official in zip(frame["text"], frame["official_test"], strict=True)
    ]
    tag_ids = {tag: i for i, tag in enumerate(labels)}
    frame["tag_ids"] = frame["tags"].map(lambda tags: [tag_ids[t] for t in tags])
    counts = {s: _entity_counts(frame[frame["split"] == s]) for s in SPLITS}
    if not counts["train"]:
        raise DataValidationError(f"{dataset_dir}: no entity tags in the train split")
    return SplitFrame(
        frame=frame,
        columns=["text", "tokens", "tags", "tag_ids", "source"],
        label_counts=counts,
        fingerprint=_fingerprint(frame, labels),
        dropped_duplicates=duplicates,
        conflicts=conflicts,
        manifest={"official_test_split": has_test},
    )


def _deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, list[dict[str, str]]]:
    """The official test rows stay as shipped (published figures use all of them).

    Elsewhere: one copy per sentence; a copy of an official test sentence is dropped (no
    leakage); a sentence seen with two tag sequences is dropped (the annotation disagrees
    with itself).
    """
    test = frame[frame["official_test"]]
    rest = frame[~frame["official_test"] & ~frame["text"].isin(set(test["text"]))]
    tag_key = rest["tags"].map(" ".join)
    variants = pd.DataFrame({"text": rest["text"], "tags": tag_key}).groupby("text")["tags"]
    conflicting = set(variants.nunique()[lambda n: n > 1].index)
    conflicts = [
        {"text": t, "source": s}
        for t, s in zip(rest["text"], rest["source"], strict=True)
        if t in conflicting
    ]
    kept = rest[~rest["text"].isin(conflicting)].drop_duplicates(subset="text", keep="first")
    dropped = len(frame) - len(test) - len(kept) - len(conflicts)
    return pd.concat([kept, test]).sort_index(), dropped, conflicts


def _entity_counts(part: pd.DataFrame) -> dict[str, int]:
    counts = Counter(t[2:] for tags in part["tags"] for t in tags if t.startswith("B-"))
    return dict(sorted(counts.items()))


def _fingerprint(frame: pd.DataFrame, labels: tuple[str, ...]) -> str:
    digest = hashlib.sha256(json.dumps(list(labels)).encode())
    rows = zip(frame["split"], frame["text"], frame["tags"].map(" ".join), strict=True)
    for split, text, tags in sorted(rows):
        digest.update(f"{split}\t{tags}\t{text}\n".encode())
    return digest.hexdigest()


# --- evaluate -------------------------------------------------------------------------


@torch.inference_mode()
def word_outputs(
    model: Any,
    tokenizer: Any,
    sentences: list[list[str]],
    max_length: int,
    batch_size: int,
    hidden: bool = False,
) -> list[np.ndarray]:
    """Per sentence, one row per word: the logits (or, with `hidden`, the encoder's last
    hidden state) at the word's first sub-token. Words cut off by max_length get NaN rows."""
    model.eval()
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
        output = model(**encoded, output_hidden_states=hidden)
        values = (output.hidden_states[-1] if hidden else output.logits).float().numpy()
        rows += [
            first_subtoken_rows(encoded.word_ids(i), values[i], len(words))
            for i, words in enumerate(batch)
        ]
    return rows


def evaluate(
    task: TokenClassification,
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    prepared_dir: Path,
    candidate_dir: Path,
) -> Evaluation:
    from sklearn.metrics import classification_report as tag_report

    train = pd.read_parquet(prepared_dir / "train.parquet")
    test = pd.read_parquet(prepared_dir / "test.parquet")
    labels = tuple(json.loads((candidate_dir / "labels.json").read_text(encoding="utf-8")))
    sentences = [list(t) for t in test["tokens"]]
    gold = [list(t) for t in test["tags"]]

    model = task.load_model(candidate_dir)
    tokenizer = load_tokenizer(candidate_dir)
    logits = word_outputs(model, tokenizer, sentences, max_length, cfg.batch_size)
    predicted = tags_from_rows(logits, list(labels))

    metrics: dict[str, Any] = entity_scores(gold, predicted) | {"test_rows": len(test)}
    most_frequent = _most_frequent_tag(train, sentences)
    metrics["most_frequent_tag"] = entity_scores(gold, most_frequent)
    frozen = _frozen_encoder_baseline(task, cfg, base, max_length, seed, train, sentences, labels)
    metrics["before_finetuning"] = entity_scores(gold, frozen) | {
        "train_rows": min(cfg.frozen_baseline_train_rows, len(train))
    }
    flat_gold = [t for row in gold for t in row]
    flat_predicted = [t for row in predicted for t in row]
    frame = test[["text", "tokens", "tags", "source"]].copy()
    frame["predicted"] = predicted
    frame[baseline_column("most_frequent_tag")] = most_frequent
    frame[baseline_column("before_finetuning")] = frozen
    return Evaluation(
        metrics=metrics,
        per_class=entity_type_report(gold, predicted),
        predictions=frame,
        reports={
            "token_report": tag_report(flat_gold, flat_predicted, output_dict=True, zero_division=0)
        },
        plot=lambda path: _plot_type_confusion(flat_gold, flat_predicted, path),
    )


def _most_frequent_tag(train: pd.DataFrame, sentences: list[list[str]]) -> list[list[str]]:
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for tokens, tags in zip(train["tokens"], train["tags"], strict=True):
        for token, tag in zip(tokens, tags, strict=True):
            seen[token.lower()][tag] += 1
    best = {word: counts.most_common(1)[0][0] for word, counts in seen.items()}
    return [[best.get(token.lower(), OUTSIDE) for token in sentence] for sentence in sentences]


def _frozen_encoder_baseline(
    task: TokenClassification,
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    train: pd.DataFrame,
    sentences: list[list[str]],
    labels: tuple[str, ...],
) -> list[list[str]]:
    """A linear head on the frozen base encoder's per-word features (no fine-tuning): its
    tags for each test sentence."""
    sample = train.sample(n=min(cfg.frozen_baseline_train_rows, len(train)), random_state=seed)
    path = resolve_model_path(base.name_or_path)
    model = task.load_model(path, labels, base.num_hidden_layers)
    tokenizer = load_tokenizer(path)
    train_rows = word_outputs(
        model, tokenizer, [list(t) for t in sample["tokens"]], max_length, cfg.batch_size, True
    )
    x = np.concatenate(train_rows)
    y = np.array([t for tags in sample["tags"] for t in tags])
    keep = ~np.isnan(x).any(axis=1)
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed))
    head.fit(x[keep], y[keep])
    test_rows = word_outputs(model, tokenizer, sentences, max_length, cfg.batch_size, True)
    x_test = np.concatenate(test_rows)
    valid = ~np.isnan(x_test).any(axis=1)
    flat = np.full(len(x_test), OUTSIDE, dtype=object)
    flat[valid] = head.predict(x_test[valid])
    bounds = np.cumsum([len(rows) for rows in test_rows])[:-1]
    return [list(map(str, part)) for part in np.split(flat, bounds)]


def _plot_type_confusion(gold: list[str], predicted: list[str], path: Path, top: int = 15) -> None:
    """Word-level confusion over entity types (B-/I- merged), the `top` most frequent types."""

    def kind(tag: str) -> str:
        return tag if tag == OUTSIDE else tag[2:]

    counts = Counter(kind(t) for t in gold if t != OUTSIDE)
    shown = [OUTSIDE, *[t for t, _ in counts.most_common(top)]]

    def bucket(tag: str) -> str:
        return kind(tag) if kind(tag) in shown else "other"

    names = [*shown, "other"]
    write_confusion_matrix(
        [bucket(t) for t in gold],
        [bucket(t) for t in predicted],
        names,
        path,
        "test words by entity type",
        (0.6 * len(names) + 4, 0.6 * len(names) + 3),
        rotation=90,
        dpi=100,
    )
