"""prepare: normalise, de-duplicate and split the raw data by a hash of each text.

The split of a row depends only on its normalised text, never on row order or on the
other rows, so appending data later never moves an existing row between splits, and
a test row can never leak into a later training set.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.config import DataConfig, PrepareConfig
from tuneops.errors import DataValidationError
from tuneops.paths import atomic_dir
from tuneops.pipeline.io import read_raw

SPLITS = ("train", "validation", "test")
_WHITESPACE = re.compile(r"\s+")


@dataclass
class PrepareResult:
    prepared_dir: Path
    fingerprint: str
    labels: tuple[str, ...]
    rows: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    dropped_duplicates: int
    dropped_conflicts: int
    conflict_examples: list[dict[str, str]] = field(default_factory=list)
    max_stratification_gap: float = 0.0
    stratification_ok: bool = True


def normalise_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, trimmed."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def split_of(text: str, validation_fraction: float, test_fraction: float) -> str:
    """The split of a normalised text: a pure function of the text (sha256 -> [0, 1))."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + validation_fraction:
        return "validation"
    return "train"


def prepare(
    data: DataConfig,
    cfg: PrepareConfig,
    labels: tuple[str, ...],
    dataset_dir: Path,
    prepared_dir: Path,
) -> PrepareResult:
    """Write {train,validation,test}.parquet and manifest.json to `prepared_dir` (atomically)."""
    frame = read_raw(dataset_dir, data.text_column, data.label_column, data.max_rows)
    frame["text"] = frame["text"].astype(str).map(normalise_text)
    frame["label"] = frame["label"].astype(str)
    frame, dropped_duplicates, conflicts = _deduplicate(frame)
    frame["split"] = [
        split_of(t, cfg.validation_fraction, cfg.test_fraction) for t in frame["text"]
    ]
    label_ids = {label: i for i, label in enumerate(labels)}
    frame["label_id"] = frame["label"].map(label_ids).astype("int64")
    counts = {s: _label_counts(frame[frame["split"] == s], labels) for s in SPLITS}
    _require_every_label(counts, frame, ("train", "test"))
    gap = _stratification_gap(frame, labels)
    result = PrepareResult(
        prepared_dir=prepared_dir,
        fingerprint=_fingerprint(frame, labels),
        labels=labels,
        rows={s: int((frame["split"] == s).sum()) for s in SPLITS},
        label_counts=counts,
        dropped_duplicates=dropped_duplicates,
        dropped_conflicts=len(conflicts),
        conflict_examples=conflicts[:10],
        max_stratification_gap=round(gap, 4),
        stratification_ok=gap <= cfg.max_stratification_gap,
    )
    write_prepared(frame, ["text", "label", "label_id", "source"], result, {})
    return result


def write_prepared(
    frame: pd.DataFrame, columns: list[str], result: PrepareResult, extra: dict[str, Any]
) -> None:
    """{train,validation,test}.parquet (`columns` of each split) and manifest.json, whole
    or not at all (atomic_dir)."""
    with atomic_dir(result.prepared_dir) as tmp:
        for split in SPLITS:
            part = frame[frame["split"] == split][columns]
            part.reset_index(drop=True).to_parquet(tmp / f"{split}.parquet", index=False)
        manifest = asdict(result) | {"prepared_dir": str(result.prepared_dir)} | extra
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, list[dict[str, str]]]:
    """Drop exact (text, label) repeats; drop every copy of a text seen with two labels.

    A text with conflicting labels cannot be trusted either way, so none of its rows
    is kept; each one is reported with its source rows.
    """
    before = len(frame)
    frame = frame.drop_duplicates(subset=["text", "label"], keep="first")
    dropped_duplicates = before - len(frame)
    labels_per_text = frame.groupby("text")["label"].transform("nunique")
    conflicting = frame[labels_per_text > 1]
    conflicts = [
        {
            "text": text[:80],
            "labels": ",".join(sorted(group["label"])),
            "sources": ",".join(group["source"]),
        }
        for text, group in conflicting.groupby("text", sort=True)
    ]
    return frame[labels_per_text == 1].reset_index(drop=True), dropped_duplicates, conflicts


def _label_counts(part: pd.DataFrame, labels: tuple[str, ...]) -> dict[str, int]:
    counts = part["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in labels}


def _require_every_label(
    counts: dict[str, dict[str, int]], frame: pd.DataFrame, splits: tuple[str, ...]
) -> None:
    for split in splits:
        empty = [label for label, n in counts[split].items() if n == 0]
        if empty:
            rows = frame.loc[frame["label"] == empty[0], "source"].tolist()
            shown = ", ".join(rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise DataValidationError(
                f"the {split} split has no rows of label(s) {empty}; expected every label in "
                f"{split}: the {len(rows)} row(s) of {empty[0]!r} ({shown}) all hash to other "
                f"splits (add data for those labels, or raise prepare.{split}_fraction)"
            )


def _stratification_gap(frame: pd.DataFrame, labels: tuple[str, ...]) -> float:
    overall = frame["label"].value_counts(normalize=True)
    gaps = [
        abs(
            frame[frame["split"] == s]["label"].value_counts(normalize=True).get(label, 0.0)
            - overall.get(label, 0.0)
        )
        for s in SPLITS
        for label in labels
        if (frame["split"] == s).any()
    ]
    return float(max(gaps, default=0.0))


def _fingerprint(frame: pd.DataFrame, labels: tuple[str, ...]) -> str:
    """sha256 over the label list and the sorted (split, text, label) rows."""
    digest = hashlib.sha256(json.dumps(list(labels)).encode())
    for split, text, label in sorted(
        zip(frame["split"], frame["text"], frame["label"], strict=True)
    ):
        digest.update(f"{split}\t{label}\t{text}\n".encode())
    return digest.hexdigest()
