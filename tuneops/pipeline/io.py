"""Reading labelled tables (CSV, JSONL, Parquet) with errors that name the file."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from tuneops.errors import DataValidationError

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".parquet")


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV (UTF-8, optional BOM), JSONL or Parquet file into a DataFrame of objects."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(
                path,
                encoding="utf-8-sig",
                dtype=object,
                keep_default_na=False,
                na_values=[""],
                quoting=csv.QUOTE_MINIMAL,
            )
        elif suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise DataValidationError(
                f"{path}: unsupported file type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}"
            )
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{path}: not valid UTF-8 at byte {exc.start}; expected UTF-8 text"
        ) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise DataValidationError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from exc
    return frame


def raw_files(dataset_dir: Path, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES) -> list[Path]:
    """The dataset's batch files in name order (batches are appended, never rewritten)."""
    if not dataset_dir.is_dir():
        raise DataValidationError(
            f"{dataset_dir}: raw dataset folder not found (run `tuneops fetch-data`)"
        )
    files = sorted(p for p in dataset_dir.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise DataValidationError(
            f"{dataset_dir}: no data files; expected {', '.join(suffixes)} files"
        )
    return files


def read_raw(
    dataset_dir: Path, text_column: str, label_column: str, max_rows: int | None = None
) -> pd.DataFrame:
    """All batches of a raw dataset as one frame with columns text, label, source.

    `source` is "file:row" (1-based data row, header excluded) so that every later
    error can point at the exact input line.
    """
    frames = []
    for path in raw_files(dataset_dir):
        frame = read_table(path)
        missing = [c for c in (text_column, label_column) if c not in frame.columns]
        if missing:
            raise DataValidationError(
                f"{path}: missing column(s) {missing}; expected {text_column!r} and "
                f"{label_column!r}, found {list(frame.columns)}"
            )
        frames.append(
            pd.DataFrame(
                {
                    "text": frame[text_column],
                    "label": frame[label_column],
                    "source": [f"{path.name}:{i + 1}" for i in range(len(frame))],
                }
            )
        )
    raw = pd.concat(frames, ignore_index=True)
    return _slice(raw, max_rows) if max_rows else raw


def _slice(raw: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """`max_rows` rows chosen by a hash of their text, kept in file order.

    Not the first N rows: files are often sorted by label. A hash keeps the slice
    independent of row order and stable as batches are appended.
    """
    # Salted, so that the slice is not correlated with the split (which hashes the text too).
    chosen = rows_by_text_hash(raw, max_rows, salt="slice")
    return raw.loc[chosen].reset_index(drop=True)


def rows_by_text_hash(frame: pd.DataFrame, rows: int, salt: str) -> list[Any]:
    """Index labels of the `rows` rows with the smallest sha256("<salt>:<text>"), in
    frame order: a choice independent of row order and stable as rows are appended."""
    keys = frame["text"].map(lambda t: hashlib.sha256(f"{salt}:{t}".encode()).hexdigest())
    return sorted(keys.sort_values(kind="stable").index[:rows])


def read_label_file(dataset_dir: Path) -> tuple[str, ...] | None:
    """The frozen label set of a dataset (labels.json beside its batches), if it has one."""
    path = dataset_dir / "labels.json"
    if not path.exists():
        return None
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels) and labels):
        raise DataValidationError(f"{path}: expected a non-empty JSON list of label strings")
    return tuple(labels)
