"""evaluate for token classification: seqeval entity-level scores, per type, and baselines.

Entity-level precision/recall/F1 (seqeval, IOB2, lenient mode) per entity type with micro
and macro averages, plus the classic token-level per-tag table. Baselines on the same
test sentences: "most_frequent_tag" (each lower-cased word form's most frequent training
tag, O when unseen) and "before_finetuning" (the base encoder frozen, only a linear
head trained on its first-sub-token features).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from seqeval.metrics import classification_report as entity_report
from seqeval.metrics import f1_score, precision_score, recall_score
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.metrics import classification_report as tag_report
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tuneops.config import EvaluateConfig, ModelConfig
from tuneops.paths import atomic_file, atomic_write_text
from tuneops.pipeline.evaluate import EvaluationResult
from tuneops.pipeline.modeling import load_tokenizer, resolve_model_path
from tuneops.pipeline.token_training import load_token_classifier
from tuneops.pipeline.tokens import OUTSIDE
from tuneops.runtime import first_subtoken_rows, tags_from_rows


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """test_entity_{f1,precision,recall} (micro), test_entity_macro_f1, test_token_accuracy."""
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
    return {k: round(float(v), 6) for k, v in scores.items()}


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


def entity_type_report(
    gold: list[list[str]], predicted: list[list[str]]
) -> dict[str, dict[str, float]]:
    """seqeval's per-type precision/recall/F1/support with micro/macro/weighted averages."""
    report = entity_report(gold, predicted, output_dict=True, zero_division=0)
    return {k: {m: float(v) for m, v in row.items()} for k, row in report.items()}


def evaluate_tokens(
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    prepared_dir: Path,
    candidate_dir: Path,
    reports_dir: Path,
) -> EvaluationResult:
    train = pd.read_parquet(prepared_dir / "train.parquet")
    test = pd.read_parquet(prepared_dir / "test.parquet")
    labels = tuple(json.loads((candidate_dir / "labels.json").read_text(encoding="utf-8")))
    sentences = [list(t) for t in test["tokens"]]
    gold = [list(t) for t in test["tags"]]

    model = load_token_classifier(candidate_dir)
    tokenizer = load_tokenizer(candidate_dir)
    logits = word_outputs(model, tokenizer, sentences, max_length, cfg.batch_size)
    predicted = tags_from_rows(logits, list(labels))

    metrics: dict[str, Any] = entity_scores(gold, predicted) | {"test_rows": len(test)}
    metrics["most_frequent_tag"] = entity_scores(gold, _most_frequent_tag(train, sentences))
    metrics["before_finetuning"] = _frozen_encoder_baseline(
        cfg, base, max_length, seed, train, sentences, gold, labels
    )
    per_type = entity_type_report(gold, predicted)
    flat_gold = [t for row in gold for t in row]
    flat_predicted = [t for row in predicted for t in row]
    per_tag = tag_report(flat_gold, flat_predicted, output_dict=True, zero_division=0)

    result = EvaluationResult.in_reports(metrics, per_type, reports_dir)
    atomic_write_text(result.report_path, json.dumps(per_type, indent=2) + "\n")
    atomic_write_text(reports_dir / "token_report.json", json.dumps(per_tag, indent=2) + "\n")
    _plot_type_confusion(flat_gold, flat_predicted, result.confusion_matrix_path)
    frame = test[["text", "tokens", "tags", "source"]].copy()
    frame["predicted"] = predicted
    with atomic_file(result.predictions_path) as tmp:
        frame.to_parquet(tmp, index=False)
    atomic_write_text(result.metrics_path, json.dumps(metrics, indent=2) + "\n")
    return result


def _most_frequent_tag(train: pd.DataFrame, sentences: list[list[str]]) -> list[list[str]]:
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for tokens, tags in zip(train["tokens"], train["tags"], strict=True):
        for token, tag in zip(tokens, tags, strict=True):
            seen[token.lower()][tag] += 1
    best = {word: counts.most_common(1)[0][0] for word, counts in seen.items()}
    return [[best.get(token.lower(), OUTSIDE) for token in sentence] for sentence in sentences]


def _frozen_encoder_baseline(
    cfg: EvaluateConfig,
    base: ModelConfig,
    max_length: int,
    seed: int,
    train: pd.DataFrame,
    sentences: list[list[str]],
    gold: list[list[str]],
    labels: tuple[str, ...],
) -> dict[str, float]:
    """A linear head on the frozen base encoder's per-word features (no fine-tuning)."""
    sample = train.sample(n=min(cfg.frozen_baseline_train_rows, len(train)), random_state=seed)
    path = resolve_model_path(base.name_or_path)
    model = load_token_classifier(path, labels, base.num_hidden_layers)
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
    predicted = [list(map(str, part)) for part in np.split(flat, bounds)]
    return entity_scores(gold, predicted) | {"train_rows": len(sample)}


def _plot_type_confusion(gold: list[str], predicted: list[str], path: Path, top: int = 15) -> None:
    """Word-level confusion over entity types (B-/I- merged), the `top` most frequent types."""

    def kind(tag: str) -> str:
        return tag if tag == OUTSIDE else tag[2:]

    counts = Counter(kind(t) for t in gold if t != OUTSIDE)
    shown = [OUTSIDE, *[t for t, _ in counts.most_common(top)]]

    def bucket(tag: str) -> str:
        return kind(tag) if kind(tag) in shown else "other"

    names = [*shown, "other"]
    fig, ax = plt.subplots(figsize=(0.6 * len(names) + 4, 0.6 * len(names) + 3))
    ConfusionMatrixDisplay.from_predictions(
        [bucket(t) for t in gold],
        [bucket(t) for t in predicted],
        labels=names,
        ax=ax,
        colorbar=False,
        xticks_rotation=90,
    )
    ax.set_title("test words by entity type")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
