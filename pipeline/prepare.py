"""prepare: normalise, de-duplicate and split the raw data by a hash of each unit.

The task decides the unit (a text, a sentence) and reads the rows; the split of a row
depends only on its normalised unit, never on row order or on the other rows, so
appending data later never moves an existing row between splits, and
a test row can never leak into a later training set. One exception, never touching
test: text classification moves a train row into validation for a label that no row
hashes there (the manifest's moved_to_validation).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from pipeline.tasks.base import Task
    from tuneops.config import DataConfig, PrepareConfig

from pipeline.version_data import file_md5s
from tuneops.paths import atomic_dir

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
    # Every row dropped as a repeat or for a conflicting label: file:row, reason, label.
    dropped_rows: list[dict[str, str]] = field(default_factory=list)


def normalise_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, trimmed."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def hash_bucket(text: str) -> float:
    """A normalised text's place in [0, 1): the first 8 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of(text: str, validation_fraction: float, test_fraction: float) -> str:
    """The split of a normalised text: a pure function of the text (its hash_bucket)."""
    bucket = hash_bucket(text)
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + validation_fraction:
        return "validation"
    return "train"


def prepare(
    task: Task,
    data: DataConfig,
    cfg: PrepareConfig,
    labels: tuple[str, ...],
    dataset_dir: Path,
    prepared_dir: Path,
) -> PrepareResult:
    """Write {train,validation,test}.parquet and manifest.json to `prepared_dir` (atomically).

    The task reads, de-duplicates and assigns splits (`task.split`); this writes them.
    The manifest's `raw_files` ({path under data/raw: md5}) are the files read: the data
    version tagged on the model is the one that holds them (version_data.verified_version).
    The caller holds the data lock, so they cannot change while they are read."""
    read = file_md5s(dataset_dir, dataset_dir.parent)
    found = task.split(data, cfg, labels, dataset_dir)
    frame = found.frame
    gap = found.max_stratification_gap
    result = PrepareResult(
        prepared_dir=prepared_dir,
        fingerprint=found.fingerprint,
        labels=labels,
        rows={s: int((frame["split"] == s).sum()) for s in SPLITS},
        label_counts=found.label_counts,
        dropped_duplicates=found.dropped_duplicates,
        dropped_conflicts=len(found.conflicts),
        conflict_examples=found.conflicts[:10],
        max_stratification_gap=round(gap, 4),
        stratification_ok=gap <= cfg.max_stratification_gap,
        dropped_rows=found.dropped_rows,
    )
    extra = {"task": task.name, "raw_files": read} | found.manifest
    write_prepared(frame, found.columns, result, extra)
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
