"""prepare: normalise, de-duplicate and split the raw data by a hash of each unit.

The task decides the unit (a text, a sentence) and reads the rows; the split of a row
depends only on its normalised unit, never on row order or on the other rows, so
appending data later never moves an existing row between splits, and
a test row can never leak into a later training set. One exception: text classification
moves a train row into validation, then one into test, for a label that no row hashes
there (the manifest's moved_to_validation, moved_to_test; the label's lowest-hash train
rows, so appending data picks the same row again or a new one, never a row a model
trained on while the fractions stay; text_steps._fill_split).

That holds while the split itself stays: changing prepare.test_fraction or
validation_fraction (or the split function, SPLIT_VERSION) moves rows. So the manifest
and every model version record the split (split_record; tags split.*), and a model is
re-scored only on rows that were test rows under its own split (held_out_under).
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

from pipeline import label_audit
from pipeline.version_data import file_md5s
from tuneops.errors import ConfigError
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
    # The label audit's counts (prepare.label_issues; reports/label_issues.json has the rows).
    label_issues: dict[str, Any] = field(default_factory=dict)


def normalise_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, trimmed."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def hash_bucket(text: str) -> float:
    """A normalised text's place in [0, 1): the first 8 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


# The split function's version, recorded on every model version (tag split.version): bump
# it when normalise_text, hash_bucket or split_of change which split a row gets, so that a
# version split by the old function is never re-split here as if by the new one.
SPLIT_VERSION = "1"
# What decides a row's split, as recorded on each model version (tags split.<key>).
SPLIT_KEYS = ("version", "test_fraction", "validation_fraction", "max_rows", "official_test")


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
    seed: int = 42,
    reports_dir: Path | None = None,
) -> PrepareResult:
    """Write {train,validation,test}.parquet and manifest.json to `prepared_dir` (atomically),
    and the label audit's reports/label_issues.{json,md} to `reports_dir` (None: none).

    The task reads, de-duplicates and assigns splits (`task.split`, `seed`: train.seed,
    the label audit's folds; 42 is its default) and audits the train labels; this writes them.
    The manifest's `raw_files` ({path under data/raw: md5}) are the files read: the data
    version tagged on the model is the one that holds them (version_data.verified_version).
    The caller holds the data lock, so they cannot change while they are read."""
    read = file_md5s(dataset_dir, dataset_dir.parent)
    found = task.split(data, cfg, labels, dataset_dir, seed)
    audited = found.label_audit
    if audited is None:  # the task has no one label per row (token classification)
        audited = label_audit.skipped(
            cfg.label_issues, f"the label audit does not apply to {task.name}"
        )
        if cfg.label_issues != "off":
            print(
                f"prepare.label_issues: {cfg.label_issues}: {audited.reason}; skipped", flush=True
            )
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
        label_issues=audited.summary(),
    )
    official = bool(found.manifest.get("official_test_split", False))
    record = {
        "task": task.name,
        "split": split_record(data, cfg, official),
        "raw_files": read,
    } | found.manifest
    write_prepared(frame, found.columns, result, record)
    if reports_dir is not None:
        label_audit.write_reports(audited, reports_dir)
    return result


def split_record(data: DataConfig, cfg: PrepareConfig, official_test: bool) -> dict[str, Any]:
    """What decided each prepared row's split (manifest.json's "split", and the split.*
    tags of the model versions trained on it)."""
    return {
        "version": SPLIT_VERSION,
        "test_fraction": cfg.test_fraction,
        "validation_fraction": cfg.validation_fraction,
        "max_rows": data.max_rows,
        # the dataset's own test split is the test split (ATIS); else the hash decides
        "official_test": official_test,
    }


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


def current_split(prepared_dir: Path) -> dict[str, Any]:
    """The split record of the prepared data in `prepared_dir` (its manifest.json)."""
    manifest = json.loads((prepared_dir / "manifest.json").read_text(encoding="utf-8"))
    if "split" not in manifest:
        raise ConfigError(
            f"{prepared_dir / 'manifest.json'}: records no split parameters (prepared by an "
            "older tuneops); run the prepare stage again (tuneops stage prepare)"
        )
    return dict(manifest["split"])


def split_tags(record: dict[str, Any]) -> dict[str, str]:
    """A split record as model-version tags: split.test_fraction = "0.1", ..."""
    return {f"split.{key}": str(record[key]).lower() for key in SPLIT_KEYS}


def recorded_split(tags: dict[str, str]) -> dict[str, Any] | None:
    """The split record a model version's tags hold; None for a version registered before
    tuneops recorded it."""
    if any(f"split.{key}" not in tags for key in SPLIT_KEYS):
        return None
    max_rows = tags["split.max_rows"]
    return {
        "version": tags["split.version"],
        "test_fraction": float(tags["split.test_fraction"]),
        "validation_fraction": float(tags["split.validation_fraction"]),
        "max_rows": None if max_rows == "none" else int(max_rows),
        "official_test": tags["split.official_test"] == "true",
    }


def held_out_under(
    recorded: dict[str, Any], current: dict[str, Any], texts: list[str], whose: str
) -> list[bool]:
    """For each row of the current test split (its normalised unit in `texts`): was it a
    test row under the `recorded` split too, i.e. one that the model split so was never
    trained or selected on? Raises ConfigError, naming the keys, when that cannot be known.

    data.max_rows and validation_fraction never move a row into test, and rows that were
    not in the model's data at all were not trained on either: only the split function,
    the test fraction and an official test split decide."""
    if recorded["version"] != current["version"]:
        raise ConfigError(
            f"{whose} was split by split function version {recorded['version']} (tag "
            f"split.version), this tuneops splits by version {current['version']}; its "
            "training rows cannot be told apart on the current test split, so it is not "
            "compared (promote by hand with --force)"
        )
    if recorded["official_test"] != current["official_test"]:
        then, now = (
            "the dataset's own test split" if official else "a hash of each row"
            for official in (recorded["official_test"], current["official_test"])
        )
        raise ConfigError(
            f"{whose}'s test split was {then} (tag split.official_test), the current one is "
            f"{now}; its training rows cannot be told apart on the current test split, so "
            "it is not compared (promote by hand with --force)"
        )
    if recorded["official_test"] or recorded["test_fraction"] == current["test_fraction"]:
        return [True] * len(texts)
    return [
        split_of(text, recorded["validation_fraction"], recorded["test_fraction"]) == "test"
        for text in texts
    ]
