"""prepare for token classification: de-duplicate sentences and split them by a hash.

As for text datasets, a sentence's split depends only on its normalised tokens. A
dataset that ships its own test split (ATIS) keeps it, so figures compare with
published ones; the rest is hash-split into train and validation. A sentence that also
occurs in the official test split is dropped from train/validation (no leakage).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pandas as pd

from tuneops.config import DataConfig, PrepareConfig
from tuneops.errors import DataValidationError
from tuneops.pipeline.prepare import (
    SPLITS,
    PrepareResult,
    normalise_text,
    split_of,
    write_prepared,
)
from tuneops.pipeline.tokens import read_raw_sentences


def prepare_tokens(
    data: DataConfig,
    cfg: PrepareConfig,
    labels: tuple[str, ...],
    dataset_dir: Path,
    prepared_dir: Path,
) -> PrepareResult:
    sentences = read_raw_sentences(dataset_dir, data.text_column, data.label_column, data.max_rows)
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
    result = PrepareResult(
        prepared_dir=prepared_dir,
        fingerprint=_fingerprint(frame, labels),
        labels=labels,
        rows={s: int((frame["split"] == s).sum()) for s in SPLITS},
        label_counts=counts,
        dropped_duplicates=duplicates,
        dropped_conflicts=len(conflicts),
        conflict_examples=conflicts[:10],
    )
    columns = ["text", "tokens", "tags", "tag_ids", "source"]
    extra = {"task": "token-classification", "official_test_split": has_test}
    write_prepared(frame, columns, result, extra)
    return result


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
