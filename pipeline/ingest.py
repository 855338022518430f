"""ingest: add a new labelled batch to data/raw/<name>/ as an immutable, DVC-versioned file.

Before anything is written, the task's suite (text rows or token sentences) checks the
batch's own rows (schema, membership of the dataset's label set: data.labels, else
data/raw/<name>/labels.json, one of which must exist) and the dataset the batch grows
(every label present, rows per label, repeats), so a week of one label or a few
corrections is a batch like any other; a failure names the rows and appends nothing.
A batch whose bytes equal an existing batch file is a no-op. Ingests
hold the data lock while they append and version, so each gets its own batch number
and `dvc add` sees a complete folder; `tuneops ingest` also holds the project lock
(tuneops.runlock), so a second ingest started meanwhile stops at once naming the first.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from pipeline.io import SUPPORTED_SUFFIXES, read_raw
from pipeline.validate import (
    CONFLICT_CHECK,
    ValidationResult,
    conflicting_labels_check,
    dropped_rows,
    repeated_rows,
)
from tuneops.config import DataConfig, ValidateConfig
from tuneops.errors import DataValidationError, ExternalToolError

if TYPE_CHECKING:
    from pipeline.drift import DriftResult

# validate(dataset_dir, reports_dir): the task's validation step over one dataset folder.
Validator = Callable[[Path, Path], ValidationResult]

BATCH_NAME = re.compile(r"^batch-(\d{4,})\.")


@dataclass(frozen=True)
class IngestResult:
    source: Path
    batch_file: Path  # the new batch, or the existing one with the same bytes
    rows: int
    added: bool  # False: the same bytes were already ingested
    # Rows of the whole dataset (this batch's and the others') that prepare will drop for a
    # text labelled two ways, under validate.conflicting_labels: drop.
    dropped_rows: list[dict[str, str]] = field(default_factory=list)
    # The batch against the champion's train split (tuneops.drift_reference), when added.
    drift: DriftResult | None = None


def ingest(
    source: Path,
    validate: Validator,
    dataset_dir: Path,
    reports_dir: Path,
    lock_file: Path,
    version: Callable[[], object],
    version_files: tuple[Path, ...] = (),
    lock_timeout_s: float = 600.0,
    suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES,
    data: DataConfig | None = None,
    policy: ValidateConfig | None = None,
) -> IngestResult:
    """Validate `source` (its rows, then the dataset it grows), then copy it in as the next
    batch and call `version()` (dvc add + push) under the lock. If versioning fails, the
    new batch is removed and
    `version_files` (data/raw.dvc) are restored, so the data version is what it was.
    `rows` in the result counts what validation counted: rows, or sentences for tokens.

    With `data` (a text classification dataset's data.* keys), texts the batch
    labels differently from the batches already there follow `policy`
    (validate.conflicting_labels and max_conflicting_rate, over the whole grown dataset).
    """
    if source.suffix.lower() not in suffixes:
        raise DataValidationError(
            f"{source}: unsupported file type {source.suffix!r}; expected one of {suffixes}"
        )
    if not source.is_file():
        raise DataValidationError(f"{source}: no such file")
    rows, dropped = _validate_with_dataset(
        source, validate, dataset_dir, reports_dir, data, policy or ValidateConfig(), suffixes
    )
    digest = _sha256(source)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock_file, timeout=lock_timeout_s):
            existing = _same_bytes(dataset_dir, digest, suffixes)
            if existing is not None:
                return IngestResult(source, existing, rows, added=False)
            batch = dataset_dir / f"batch-{_next_number(dataset_dir):04d}{source.suffix.lower()}"
            saved = {path: path.read_bytes() for path in version_files if path.exists()}
            _copy_atomically(source, batch)
            try:
                version()
            except BaseException:
                batch.unlink()  # nothing appended: the data version stays what it was
                for path, content in saved.items():
                    path.write_bytes(content)
                raise
    except Timeout as exc:
        raise ExternalToolError(
            f"{lock_file}: another ingest has held the lock for {lock_timeout_s:.0f}s"
        ) from exc
    return IngestResult(source, batch, rows, added=True, dropped_rows=dropped)


def _validate_with_dataset(
    source: Path,
    validate: Validator,
    dataset_dir: Path,
    reports_dir: Path,
    data: DataConfig | None,
    policy: ValidateConfig,
    suffixes: tuple[str, ...],
) -> tuple[int, list[dict[str, str]]]:
    """The task's suite twice, on scratch folders: the batch alone, against the dataset's
    label set (data.labels, else labels.json: required), must pass the per-row checks
    (schema, label membership); the dataset it grows (the batches there plus it) must pass
    the others (every label present, validate.min_examples_per_class, one label type,
    repeats under validate.duplicates), as the next validation of the whole dataset will
    judge it. Then the conflicting-labels policy, for conflicts that involve the batch.
    Unreadable files fail in the reader, naming the file (and line). Returns the batch's
    rows and the rows prepare will drop for conflicting labels."""
    dropped: list[dict[str, str]] = []
    labels_file = dataset_dir / "labels.json"
    existing = _batches(dataset_dir, suffixes)
    # The batch keeps its own name in messages; one that an existing batch already has
    # (batch-0000.csv from another project) is renamed in the scratch copy only.
    taken = {path.name for path in existing}
    name = source.name if source.name not in taken else f"ingested-{source.name}"
    with tempfile.TemporaryDirectory(prefix="tuneops-ingest-") as scratch:
        alone = Path(scratch) / "batch" / dataset_dir.name
        grown = Path(scratch) / "dataset" / dataset_dir.name
        for folder in (alone, grown):
            folder.mkdir(parents=True)
            shutil.copy2(source, folder / name)
            if labels_file.exists():
                shutil.copy2(labels_file, folder / "labels.json")
        for path in existing:
            (grown / path.name).symlink_to(path)
        names = {str(alone / name): str(source), str(grown / name): str(source)}
        names[str(grown)] = str(dataset_dir)
        try:
            batch = validate(alone, reports_dir / "ingest")
            if batch.label_source == "inferred":
                raise DataValidationError(
                    f"{labels_file} does not exist and data.labels is null: no label set to "
                    f"check the labels of {source} against; expected one of them "
                    f"(`tuneops stage validate` infers the labels from the data in "
                    f"{dataset_dir} and writes labels.json; or set data.labels)"
                )
            batch.raise_for_failures([c for c in batch.checks if c.per_row], on=str(source))
            whole = validate(grown, reports_dir / "ingest" / "dataset")
            apart = {CONFLICT_CHECK} if data is not None else set()  # checked below
            whole.raise_for_failures(
                [c for c in whole.checks if not c.per_row and c.name not in apart],
                on=f"the dataset with {source.name} added ({dataset_dir} and {source})",
            )
            if data is not None:
                dropped = _conflicts_with_existing(source, name, data, dataset_dir, grown, policy)
        except DataValidationError as exc:  # name the user's files, not the scratch copies
            message = str(exc)
            for scratch_path, real in sorted(names.items(), key=lambda kv: -len(kv[0])):
                message = message.replace(scratch_path, real)
            raise DataValidationError(message) from exc
    return batch.rows, dropped


def _batches(dataset_dir: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The batch files already there (none in a folder not made yet)."""
    if not dataset_dir.is_dir():
        return []
    return sorted(p for p in dataset_dir.iterdir() if p.suffix.lower() in suffixes)


def _conflicts_with_existing(
    source: Path,
    name: str,
    data: DataConfig,
    dataset_dir: Path,
    grown: Path,
    policy: ValidateConfig,
) -> list[dict[str, str]]:
    """Validation of the whole dataset judges a text labelled two ways by the policy, and
    batches are immutable: a batch the next validation would fail on is refused here,
    naming both rows (the batch's under `name`). Within the policy, the rows prepare
    will drop are returned."""
    import pandas as pd

    combined = read_raw(
        grown, data.text_column, data.label_column, encoding=data.encoding, delimiter=data.delimiter
    )
    combined["label"] = combined["label"].map(lambda v: v if pd.isna(v) else str(v))
    repeats = repeated_rows(combined)
    check = conflicting_labels_check(repeats, len(combined), policy, involving=name)
    if not check.success:
        raise DataValidationError(
            f"{source}: labels a text differently from the batches in {dataset_dir}: {check.line()}"
        )
    conflicting = repeats[repeats["conflicting"]]
    return dropped_rows(conflicting, data.label_column)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_bytes(dataset_dir: Path, digest: str, suffixes: tuple[str, ...]) -> Path | None:
    for existing in _batches(dataset_dir, suffixes):
        if _sha256(existing) == digest:
            return existing
    return None


def _next_number(dataset_dir: Path) -> int:
    numbers = [int(m.group(1)) for p in dataset_dir.iterdir() if (m := BATCH_NAME.match(p.name))]
    return max(numbers, default=-1) + 1


def _copy_atomically(source: Path, target: Path) -> None:
    """Copy to a hidden temporary name beside `target`, make it read-only, rename."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.chmod(partial, 0o444)  # batches are immutable: appended, never rewritten
    os.replace(partial, target)
